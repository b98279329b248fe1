"""The plugin base: schedule, fixed probe batch, transparency, files, checkpoint state."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from torch import nn

from plugins.base import DiagnosticCallback, ProbeResult, preserved_training_state, require_loss
from tdl_lightning.data import MNIST5k, TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Classifier, Regressor
from tests.harness import assert_same_weights, fit_and_collect


class OutputStats(DiagnosticCallback):
    """A plugin that disturbs everything it can: mode, RNG, grads, BN statistics, weights."""

    name = "output_stats"

    def probe(self, pl_module, batch):
        x = batch[0]
        pl_module.eval()
        torch.randn(10)  # consumes RNG
        out = pl_module(x)
        pl_module.loss(batch).backward()  # writes .grad
        with torch.no_grad():
            for p in pl_module.parameters():
                p.add_(1.0)  # perturbs the weights
        fig = Figure()
        fig.subplots().plot(out.detach()[:, 0])
        return ProbeResult(
            scalars={"mean": float(out.detach().mean())},
            arrays={"out": out},
            histograms={"out": out},
            figures={"outputs": fig},
        )


def _bn_task():
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))
    return Regressor(net)


def _data():
    return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)


def test_plugin_leaves_training_untouched(tmp_path):
    cb = OutputStats(every_n_steps=1, at_end=True, probe_size=32)
    with_plugin = fit_and_collect(_bn_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_bn_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4]


def test_schedule_files_and_checkpoint_state(tmp_path):
    cb = OutputStats(at_init=True, every_n_epochs=1, probe_size=50)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        enable_progress_bar=False,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    trainer.fit(_bn_task(), _data())
    assert [(h["when"], h["step"]) for h in cb.history] == [("init", 0), ("epoch", 3), ("epoch", 6)]
    out = tmp_path / "plugins" / "output_stats"
    assert (out / "outputs_step0000003.png").stat().st_size > 1000
    saved = json.loads((out / "history.json").read_text())
    assert saved == cb.history
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=False)
    state = ckpt["callbacks"][cb.state_key]
    fresh = OutputStats(at_init=True, every_n_epochs=1)
    fresh.load_state_dict(state)
    assert fresh.history == cb.history


class Pictures(DiagnosticCallback):
    """A plugin whose pictures are pixels, not matplotlib figures."""

    name = "pictures"

    def probe(self, pl_module, batch):
        grey = torch.linspace(0, 1, 12).reshape(1, 3, 4)
        rgb = np.zeros((2, 5, 3), dtype=np.uint8)
        rgb[..., 1] = 200
        return ProbeResult(images={"grey": grey, "rgb": rgb, "colour": grey.expand(3, -1, -1)})


def test_images_are_saved_as_png_from_their_pixels(tmp_path):
    from PIL import Image

    cb = Pictures(at_init=True, probe_size=8)
    fit_and_collect(_bn_task, _data, [cb], default_root_dir=str(tmp_path))
    out = tmp_path / "plugins" / "pictures"
    grey = np.asarray(Image.open(out / "grey_step0000000.png"))
    assert grey.shape == (3, 4) and grey[0, 0] == 0 and grey[-1, -1] == 255
    assert np.array_equal(grey, (np.linspace(0, 1, 12).reshape(3, 4) * 255).round().astype(np.uint8))
    assert np.asarray(Image.open(out / "rgb_step0000000.png")).tolist() == [[[0, 200, 0]] * 5] * 2
    colour = np.asarray(Image.open(out / "colour_step0000000.png"))
    assert colour.shape == (3, 4, 3) and np.array_equal(colour[..., 0], grey)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        from plugins.base import _pixels

        _pixels(torch.zeros(2, 4, 4))


def test_fixed_layout_figures_keep_their_margins_and_others_are_laid_out(tmp_path):
    """A fixed-layout figure is saved with the margins it was made with (no second draw); a plain
    figure gets the tight layout, which moves its margins."""
    from plugins.base import fixed_layout_figure

    cb = OutputStats(probe_size=8)
    cb.out_dir = tmp_path
    fixed, (ax,) = fixed_layout_figure(5, 3.5)
    plain = Figure(figsize=(5, 3.5))
    for axes in (ax, plain.subplots()):
        axes.plot([1, 2, 3])
        axes.set_xlabel("step")
    before = fixed.subplotpars.left, plain.subplotpars.left
    cb._save_figure(fixed, "fixed", 0)
    cb._save_figure(plain, "plain", 0)
    assert fixed.subplotpars.left == before[0] == pytest.approx(0.8 / 5)
    assert plain.axes[0].get_position().x0 != pytest.approx(before[1])
    assert (tmp_path / "fixed_step0000000.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no room"):
        fixed_layout_figure(1.0, 3.0, ncols=2)


def test_probe_batch_is_fixed_and_drawn_without_touching_rng():
    dm = MNIST5k(batch_size=64)
    dm.setup()
    loader = dm.train_dataloader()
    from plugins.base import take_probe_batch

    state = torch.get_rng_state()
    a = take_probe_batch(loader, 100, seed=1)
    b = take_probe_batch(loader, 100, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a[0].shape == (100, 1, 28, 28) and torch.equal(a[0], b[0])
    assert len(torch.unique(a[1])) >= 8  # a random draw, not the first (sorted) rows


def test_preserved_state_restores_bn_and_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with preserved_training_state(net):
        net(torch.randn(16, 3))
        net.eval()
    assert net.training and net[1].training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_loss_is_a_clear_error():
    with pytest.raises(MisconfigurationException, match="loss\\(batch\\)"):
        require_loss("HessianEigenvalues", nn.Linear(2, 2), None)


@pytest.mark.parametrize("arg", [{"every_n_steps": 0}, {"every_n_epochs": -1}, {"probe_size": 0}])
def test_bad_schedule_is_refused(arg):
    with pytest.raises(MisconfigurationException, match="whole number|probe batch"):
        OutputStats(**arg)


def test_classifier_probe_works_with_module_loss(tmp_path):
    cb = OutputStats(at_init=True, probe_size=16)
    task = Classifier(DeepMLP(input_dim=784, width=32, depth=2, output_dim=10))
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    trainer.fit(task, MNIST5k(batch_size=16))
    assert cb.history[0]["when"] == "init"


class Curves(DiagnosticCallback):
    """A plugin whose figures are figure makers: drawn when training ends unless figures_at says now."""

    name = "curves"

    def __init__(self, now: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.now, self.drawn, self.seen = now, [], []

    def figures_at(self, when):
        return when in self.now

    def probe(self, pl_module, batch):
        self.seen.append((self.probe_when, self.probe_step, self.probe_is_last))
        step = self.probe_step

        def draw():
            self.drawn.append(step)
            fig = Figure(figsize=(3, 2), layout=PlaceHolderLayoutEngine(True, True))
            fig.subplots().plot([0, 1], [0, step or 0])
            return fig

        return ProbeResult(arrays={"x": np.arange(3)}, figures={"curve": draw})


class DrawnSoFar(L.Callback):
    """Notes, at every training step, which probes' figures a plugin has drawn so far."""

    def __init__(self, plugin):
        self.plugin, self.during = plugin, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.during.append(list(self.plugin.drawn))


def _fit(tmp_path, callbacks, **kwargs):
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        **{"logger": False, **kwargs},
    )
    trainer.fit(_bn_task(), _data())


def test_figure_makers_are_drawn_when_training_ends_under_their_own_steps(tmp_path):
    cb = Curves(at_init=True, every_n_epochs=1, probe_size=8)
    cb.background_figures = False  # in this process (tests/test_drawing.py: in a child beside training)
    spy = DrawnSoFar(cb)
    _fit(tmp_path, [cb, spy])
    assert cb.seen == [("init", 0, False), ("epoch", 3, False), ("epoch", 6, True)]
    assert all(drawn == [] for drawn in spy.during)  # nothing drawn while training ran
    assert cb.drawn == [0, 3, 6]
    out = tmp_path / "plugins" / "curves"
    for step in (0, 3, 6):
        assert (out / f"curve_step{step:07d}.png").stat().st_size > 500
        assert np.load(out / f"step{step:07d}.npz")["x"].tolist() == [0, 1, 2]  # arrays at once


def test_figures_at_draws_the_chosen_probes_at_once(tmp_path):
    cb = Curves(now=("init",), at_init=True, every_n_epochs=1, probe_size=8)
    cb.background_figures = False
    spy = DrawnSoFar(cb)
    _fit(tmp_path, [cb, spy])
    assert spy.during[0] == [0] and spy.during[-1] == [0]  # the init figure while training ran
    assert cb.drawn == [0, 3, 6]


def test_the_last_probe_is_marked_at_max_steps_and_a_maker_must_return_a_figure(tmp_path):
    from plugins.base import draw_figure

    cb = Curves(at_init=False, every_n_steps=2, at_end=True, probe_size=8)
    _fit(tmp_path, [cb], max_steps=4)
    assert cb.seen == [("step", 2, False), ("step", 4, True)]  # the end probe is skipped at step 4
    with pytest.raises(TypeError, match="must return a matplotlib Figure"):
        draw_figure(lambda: None)


def test_moved_helpers_stay_importable_from_the_base_and_batches_are_copied():
    import plugins.base as base
    from plugins import batches, distributed

    for name in distributed.__all__:  # ProbeFailure, probe_world, work_share, share_work, ...
        assert getattr(base, name) is getattr(distributed, name)
    for name in [*batches.__all__, "_num_samples", "_concat", "_truncate", "_to_device"]:
        assert getattr(base, name) is getattr(batches, name)
    assert base._ALONE is distributed._ALONE and base._to_cpu is distributed._to_cpu
    x = torch.ones(4, 2)
    batch = {"x": x, "pair": (x, [x[:, 0]]), "label": "digits"}
    copied = base._to_device(batch, torch.device("cpu"))
    x.add_(1)
    assert float(copied["x"].sum()) == 8.0 and float(copied["pair"][1][0].sum()) == 4.0
    assert isinstance(copied["pair"], tuple) and copied["label"] == "digits"
    assert base._truncate(batch, 2)["pair"][0].shape == (2, 2)
    assert base._to_cpu({"a": [x.requires_grad_()]})["a"][0].requires_grad is False
