"""Intrinsic dimension: data of known dimension, invariances, duplicates, chunks, the callback.

Tolerances: on 4,000 samples in D = 100, TwoNN and MLE (k = 20) are within 10% of d for uniform
samples of linear subspaces (a d-cube, d = 2, 4: its boundary biases both estimates down, by 7% at
d = 4 and by 14% at d = 8, so larger cubes are not tested) and of curved manifolds (spheres S^d for
d = 2, 4, 8, which have no boundary, and the Swiss roll, d = 2). Both estimators depend only on
distance ratios: a rotation and a rescaling change them by less than 1e-9 (float64).
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

import plugins.intrinsic_dimension as intrinsic_dimension
import plugins.neighbour_search as neighbour_search
from plugins.intrinsic_dimension import (
    IntrinsicDimension,
    mle_dimension,
    nearest_neighbour_distances,
    twonn_dimension,
)
from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Classifier
from tests.harness import assert_same_weights, fit_and_collect

pytestmark = pytest.mark.usefixtures("one_thread")

N, D = 4000, 100


def _rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]


def _embed(z: torch.Tensor, seed: int = 1) -> torch.Tensor:
    padded = torch.zeros(len(z), D, dtype=torch.float64)
    padded[:, : z.shape[1]] = z
    return padded @ _rotation(seed).T


def _cube(d: int) -> torch.Tensor:
    return _embed(torch.rand(N, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64))


def _sphere(d: int) -> torch.Tensor:
    z = torch.randn(N, d + 1, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    return _embed(z / z.norm(dim=1, keepdim=True))


def _swiss_roll() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(N, generator=g, dtype=torch.float64))
    height = 20 * torch.rand(N, generator=g, dtype=torch.float64)
    return _embed(torch.stack([t * t.cos(), height, t * t.sin()], dim=1))


MANIFOLDS = [
    ("cube-2", lambda: _cube(2), 2),
    ("cube-4", lambda: _cube(4), 4),
    ("sphere-2", lambda: _sphere(2), 2),
    ("sphere-4", lambda: _sphere(4), 4),
    ("sphere-8", lambda: _sphere(8), 8),
    ("swiss-roll", _swiss_roll, 2),
]


@pytest.mark.parametrize("name, make, d", MANIFOLDS, ids=[m[0] for m in MANIFOLDS])
def test_known_dimensions_within_ten_percent(name, make, d):
    x = make()
    assert twonn_dimension(x) == pytest.approx(d, rel=0.10)
    assert mle_dimension(x, k=20) == pytest.approx(d, rel=0.10)


def test_rotation_and_scale_do_not_change_the_estimates():
    x = _sphere(4)[:1500]
    moved = 3.7 * x @ _rotation(7).T + 5.0
    for estimate in (twonn_dimension, mle_dimension):
        assert estimate(moved) == pytest.approx(estimate(x), rel=1e-9)


def test_duplicates_count_once_and_chunks_change_nothing(monkeypatch):
    x = _sphere(2)[:500]
    doubled = torch.cat([x, x[:200]])[torch.randperm(700)]
    assert twonn_dimension(doubled) == twonn_dimension(x)
    assert mle_dimension(doubled) == mle_dimension(x)
    whole = nearest_neighbour_distances(x, 5)
    monkeypatch.setattr(intrinsic_dimension, "CHUNK_ELEMENTS", 7 * 500)  # 7 rows a chunk
    torch.testing.assert_close(nearest_neighbour_distances(x, 5), whole, rtol=1e-12, atol=0)
    rows = torch.unique(x, dim=0)  # the order the distances come in
    exact = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
    exact.fill_diagonal_(math.inf)
    torch.testing.assert_close(whole, exact.topk(5, largest=False).values, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="3 distinct samples cannot give 5"):
        nearest_neighbour_distances(torch.cat([x[:3], x[:3]]), 5)


def test_the_blocked_gram_matrix_equals_the_whole_product():
    # 1,024 rows of 600 features: the Gram matrix is computed by blocks and mirrored; every entry is
    # the same dot product (bitwise so on MKL; 1e-12 relative allows another BLAS), and so are the
    # distances of the search that uses it against the product written out
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 600, generator=g, dtype=torch.float64)
    torch.testing.assert_close(neighbour_search.gram(x), x @ x.T, rtol=1e-12, atol=1e-12)
    rows = torch.unique(x, dim=0)
    rows = rows - rows.mean(0)
    sq = (rows**2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * rows @ rows.T
    d2.fill_diagonal_(math.inf)
    expected = d2.topk(20, largest=False).values.clamp_min(0).sqrt()
    torch.testing.assert_close(nearest_neighbour_distances(x, 20), expected, rtol=1e-12, atol=0)


def test_a_probe_on_the_same_batch_reuses_the_input_dimensions(monkeypatch):
    torch.manual_seed(0)
    net = DeepMLP(input_dim=100, width=32, depth=1, output_dim=None, activation="relu", init="he")
    x, y = _sphere(4)[:300].float(), torch.arange(300) % 2
    cb = IntrinsicDimension(k=10)
    first = cb.probe(net, (x, y)).scalars
    searched = []
    original = intrinsic_dimension._neighbour_distances
    monkeypatch.setattr(
        intrinsic_dimension,
        "_neighbour_distances",
        lambda h, k: searched.append(len(h)) or original(h, k),
    )
    again = cb.probe(net, (x.clone(), y.clone())).scalars  # equal values: the inputs are not searched again
    assert searched == [300]  # its one layer only
    assert {k: v for k, v in again.items() if k != "probe_seconds"} == {
        k: v for k, v in first.items() if k != "probe_seconds"
    }
    other = cb.probe(net, (x.flip(0)[:200], y[:200])).scalars  # another batch: measured afresh
    assert searched[1:] == [200, 100, 100, 200] and other["twonn_input"] == twonn_dimension(x.flip(0)[:200])


def test_images_flatten_per_sample():
    images = _sphere(2)[:400].reshape(400, 1, 10, 10)
    assert twonn_dimension(images) == twonn_dimension(images.reshape(400, -1))


# --------------------------------------------------------------------------- callback
def _task():
    return Classifier(DeepMLP(input_dim=8, width=16, depth=2, output_dim=3, activation="relu", init="he"), 3)


def _data():
    return TeacherStudent(num_samples=320, input_dim=8, task="classification", num_classes=3, batch_size=32)


def test_intrinsic_dimension_leaves_training_untouched(tmp_path):
    cb = IntrinsicDimension(k=5, probe_size=64, every_n_steps=2)
    with_plugin = fit_and_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    init = cb.history[0]
    # Gaussian inputs in 8 dimensions; 3 layers (fc1, fc2, readout) measured; per-class numbers
    assert 5 < init["intrinsic_dimension/twonn_input"] < 11
    assert {f"intrinsic_dimension/mle_layer_0{l}" for l in (1, 2, 3)} <= init.keys()
    assert any(k.startswith("intrinsic_dimension/twonn_input_class_") for k in init)
    out = tmp_path / "plugins" / "intrinsic_dimension"
    assert (out / "profile_step0000000.png").stat().st_size > 1000


def test_callback_measures_what_the_functions_measure():
    torch.manual_seed(0)
    net = DeepMLP(input_dim=100, width=32, depth=1, output_dim=None, activation="relu", init="he")
    x = _sphere(4)[:300].float()
    y = torch.arange(300) % 2
    scalars = IntrinsicDimension(k=10, layers=["fc1"]).probe(net, (x, y)).scalars
    assert scalars["twonn_input"] == twonn_dimension(x)
    assert scalars["mle_input"] == mle_dimension(x, k=10)
    assert scalars["twonn_input_class_1"] == twonn_dimension(x[1::2])
    with torch.no_grad():
        assert scalars["mle_layer_01"] == mle_dimension(net.fc1(x), k=10)


def test_bad_settings_are_refused():
    with pytest.raises(MisconfigurationException, match="has no submodule 'model.fc9'"):
        IntrinsicDimension(layers=["model.fc9"]).check_module(_task())
    with pytest.raises(MisconfigurationException, match="probe_size > k"):
        IntrinsicDimension(k=20, probe_size=10)
    with pytest.raises(ValueError, match="k must be"):
        mle_dimension(torch.randn(50, 3), k=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_estimates_and_regions_on_the_gpu_equal_the_cpu_ones():
    """The same float64 arithmetic on the GPU: dimensions to 1e-9, the sawtooth's 2**k exactly."""
    from plugins.expressivity import linear_regions_along_line
    from tdl_lightning.models import Sawtooth

    x = _sphere(4)[:2000]
    for estimate in (twonn_dimension, mle_dimension):
        assert estimate(x.cuda()) == pytest.approx(estimate(x), rel=1e-9)
    ends = torch.zeros(1, device="cuda"), torch.ones(1, device="cuda")
    assert linear_regions_along_line(Sawtooth(8).cuda(), *ends).count == 256
