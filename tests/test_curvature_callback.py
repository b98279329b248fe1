"""HessianEigenvalues' parameter blocks and per-layer lambda_max, and its misuse errors as one line.

Per-layer values equal Lanczos on each layer's block of the same probe batch and weights (1e-5).
"""

from __future__ import annotations

import lightning as L
import pytest
from lightning.fabric.utilities.exceptions import MisconfigurationException

from plugins.base import module_loss_fn
from plugins.curvature import HessianEigenvalues, HessianOperator, lanczos_eigenvalues, layer_blocks
from tdl_lightning.cli import user_error
from tests.test_hessian import _bn_task, _data

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit_at_init(cb, tiny_trainer_kwargs):
    L.seed_everything(0, verbose=False)
    task, dm = _bn_task(), _data()
    init = {k: v.clone() for k, v in task.state_dict().items()}
    trainer = L.Trainer(callbacks=[cb], **{**tiny_trainer_kwargs, "max_steps": 1, "limit_val_batches": 0})
    trainer.fit(task, dm)
    task.load_state_dict(init)
    return task.train()


def test_per_layer_lambda_max_is_the_top_of_each_layer_block(tiny_trainer_kwargs):
    cb = HessianEigenvalues(k=1, per_layer=True, at_end=False, probe_size=64, tol=1e-6)
    task = _fit_at_init(cb, tiny_trainer_kwargs)
    blocks = layer_blocks(task)
    assert list(blocks) == ["model.0", "model.1", "model.3"]  # two Linear layers and the BatchNorm
    logged = cb.history[0]
    for layer, names in blocks.items():
        op = HessianOperator(task, module_loss_fn, cb.probe_batch, parameters=names)
        expected = float(lanczos_eigenvalues(op, 1, tol=1e-6)[0])
        assert logged[f"hessian/{layer}/lambda_max"] == pytest.approx(expected, rel=1e-5), layer
    # a block is no bigger than the whole: each layer's lambda_max <= the full lambda_max (Cauchy interlacing)
    assert max(logged[f"hessian/{layer}/lambda_max"] for layer in blocks) <= logged["hessian/lambda_max"] * (
        1 + 1e-5
    )


def test_parameters_restrict_the_probe_to_a_block(tiny_trainer_kwargs):
    cb = HessianEigenvalues(k=2, parameters=["model.3"], at_end=False, probe_size=64, tol=1e-6)
    task = _fit_at_init(cb, tiny_trainer_kwargs)
    op = HessianOperator(task, module_loss_fn, cb.probe_batch, parameters=["model.3"])
    expected = lanczos_eigenvalues(op, 2, tol=1e-6)
    assert [cb.history[0][f"hessian/lambda_{i}"] for i in (1, 2)] == pytest.approx(
        expected.tolist(), rel=1e-5
    )


def _one_line(err: BaseException) -> str:
    cause = user_error(err)  # what `tdl` prints, alone, as "tdl: error: <cause>"
    assert cause is not None, f"tdl would print a traceback for {err!r}"
    assert "\n" not in str(cause)
    return str(cause)


def test_misuse_prints_as_one_line_from_tdl(tiny_trainer_kwargs):
    with pytest.raises(MisconfigurationException) as caught:
        HessianEigenvalues(k=0)
    assert "k=0" in _one_line(caught.value)
    with pytest.raises(MisconfigurationException) as caught:  # at setup: a name the module lacks
        _fit_at_init(HessianEigenvalues(parameters=["model.9"]), tiny_trainer_kwargs)
    assert "did you mean 'model.3'" in _one_line(caught.value)
    vector_loss = HessianEigenvalues(loss_fn=lambda m, b: (m(b[0]) - b[1]).pow(2), probe_size=16)
    with pytest.raises(ValueError) as caught:  # inside the probe: a loss that is not a scalar
        _fit_at_init(vector_loss, tiny_trainer_kwargs)
    assert "must return a scalar tensor" in _one_line(caught.value)


def test_the_density_replays_the_top_k_products_at_init():
    """At a density probe with no warm start, the top-k run starts at the density's first vector: the
    density's run replays those products, so the probe makes density_steps products in all, and both
    results equal those of separate runs (the density bit for bit)."""
    import torch

    from plugins.curvature import functions
    from plugins.curvature.slq import spectral_density

    torch.manual_seed(0)
    task, batch = _bn_task(), next(iter(_data().train_dataloader()))
    made = []

    def counted(*args, **kwargs):
        made.append(functions.curvature_operator(*args, **kwargs))
        return made[-1]

    cb = HessianEigenvalues(k=2, tol=1e-6, density_at=["init"], density_steps=30)
    cb.probe_when = "init"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("plugins.curvature.callback.curvature_operator", counted)
        result = cb.probe(task, batch)
    assert made[0].num_matvecs == 30
    op = HessianOperator(task, module_loss_fn, batch)
    alone = spectral_density(op, steps=30)
    assert result.arrays["density"].tolist() == alone.density.tolist()
    top = lanczos_eigenvalues(op, 2, tol=1e-6)
    assert result.arrays["eigenvalues"].tolist() == pytest.approx(top.tolist(), rel=1e-5)
