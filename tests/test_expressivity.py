"""Linear regions: Telgarsky's sawtooth, exact breakpoints against brute force, the callback.

Exactness: the sawtooth's count is exactly 2**k (k = 1..10). On small random nets (ReLU, leaky
ReLU, hard tanh, conv + max-pool) the exact search is compared with the activation patterns on a
grid of 200,001 points along the segment: every grid point's pattern equals the pattern of the exact
region it lies in (no breakpoint missed at grid resolution), consecutive exact regions have
different patterns (no breakpoint invented), and where no region is shorter than two grid steps the
brute-force count of pattern changes equals the exact count.
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.checks import PluginConfigError
from plugins.expressivity import (
    LinearRegions,
    activation_pattern_ids,
    count_neurons,
    linear_regions_along_line,
    linear_regions_in_plane,
)
from tdl_lightning.data import SawtoothData
from tdl_lightning.models import DeepMLP, Sawtooth, tent_map
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights, fit_and_collect, quiet_trainer_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("k", range(1, 11))
def test_sawtooth_has_exactly_two_to_the_k_pieces(k):
    net = Sawtooth(k)
    regions = linear_regions_along_line(net, torch.zeros(1), torch.ones(1))
    assert regions.count == 2**k
    # the breakpoints are the sawtooth's peaks and valleys: m / 2^k for m = 1 .. 2^k - 1
    expected = torch.arange(1, 2**k, dtype=torch.float64) / 2**k
    torch.testing.assert_close(regions.breakpoints, expected, rtol=0, atol=1e-12)
    x = torch.rand(257, 1)
    assert torch.equal(net(x), tent_map(x, k))
    assert sum(p.numel() for p in net.parameters()) == 6 * k + 1


def _grid_patterns(net, a, b, n=200_001):
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    x = a.double() + t.reshape(-1, *[1] * a.dim()) * (b.double() - a.double())
    return t, activation_pattern_ids(net, x)


def _mlp(act, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 2))


def _conv(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def _conv_padded_pool(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class _Residual(nn.Module):
    """``h -> relu(h + block(h))`` twice after a first layer: branches that meet again, as in a ResNet."""

    def __init__(self, conv: bool, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        width = 2 if conv else 6

        def layer(inputs: int = width) -> nn.Module:
            return nn.Conv2d(inputs, width, 3, padding=1) if conv else nn.Linear(inputs, width)

        self.first = layer(1 if conv else 3)
        self.blocks = nn.ModuleList(nn.Sequential(layer(), nn.ReLU(), layer()) for _ in range(2))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * (64 if conv else 1), 3))

    def forward(self, x):
        h = self.first(x)
        for block, act in zip(self.blocks, self.acts, strict=True):
            h = act(h + block(h))
        return self.head(h)


CASES = [
    *[(f"residual-mlp-{s}", lambda s=s: _Residual(False, s), (3,)) for s in (0, 2, 3)],
    *[(f"residual-conv-{s}", lambda s=s: _Residual(True, s), (1, 8, 8)) for s in range(2)],
    *[(f"relu-{s}", lambda s=s: _mlp(nn.ReLU(), s), (3,)) for s in range(3)],
    *[(f"leaky-{s}", lambda s=s: _mlp(nn.LeakyReLU(0.1), s), (3,)) for s in range(3)],
    *[(f"hardtanh-{s}", lambda s=s: _mlp(nn.Hardtanh(), s), (3,)) for s in (0, 2)],
    *[(f"conv-maxpool-{s}", lambda s=s: _conv(s), (1, 8, 8)) for s in range(3)],
    *[(f"conv-padded-maxpool-{s}", lambda s=s: _conv_padded_pool(s), (1, 8, 8)) for s in range(2)],
]


@pytest.mark.parametrize("case, make, shape", CASES, ids=[c[0] for c in CASES])
def test_exact_regions_agree_with_a_fine_grid(case, make, shape):
    net = make()
    torch.manual_seed(100)
    a, b = 2 * torch.randn(shape), 2 * torch.randn(shape)
    regions = linear_regions_along_line(net, a, b)
    t, grid_ids = _grid_patterns(net, a, b)
    assert regions.count > 1
    # every grid point has the pattern of its exact region
    region_of = torch.searchsorted(regions.breakpoints, t)
    first = torch.full((regions.count,), -1, dtype=torch.long)
    first.scatter_reduce_(0, region_of, grid_ids, reduce="amax", include_self=False)
    last = torch.full((regions.count,), -1, dtype=torch.long)
    last.scatter_reduce_(0, region_of, -grid_ids, reduce="amax", include_self=False)
    seen = first >= 0
    assert torch.equal(first[seen], -last[seen]), "a breakpoint was missed"
    # consecutive exact regions differ
    edges = torch.cat(
        [torch.zeros(1, dtype=torch.float64), regions.breakpoints, torch.ones(1, dtype=torch.float64)]
    )
    mids = (edges[:-1] + edges[1:]) / 2
    mid_ids = activation_pattern_ids(net, a.double() + mids.reshape(-1, *[1] * a.dim()) * (b - a).double())
    assert bool((mid_ids[1:] != mid_ids[:-1]).all()), "a breakpoint was invented"
    if float(torch.diff(edges).min()) > 2 / (len(t) - 1):
        assert int((grid_ids[1:] != grid_ids[:-1]).sum()) + 1 == regions.count


def test_a_segment_whose_positions_outgrow_memory_is_refused(monkeypatch):
    from plugins import expressivity

    net = Sawtooth(10)  # 1024 regions on [0, 1]
    assert linear_regions_along_line(net, torch.zeros(1), torch.ones(1)).count == 1024
    monkeypatch.setattr(expressivity, "MAX_PASS_BYTES", 8 * 4 * 600)  # at most 600 positions of one unit
    with pytest.raises(PluginConfigError, match=r"linear regions on the segment by .* need .* GiB"):
        linear_regions_along_line(net, torch.zeros(1), torch.ones(1))


def test_one_hidden_layer_plane_is_the_hyperplane_arrangement():
    """In a plane, a one-hidden-layer net's regions are the cells cut by its units' lines:
    the ids equal iff the sign vectors of W x + b do (checked at every pixel)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1))
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    ids = linear_regions_in_plane(net, torch.zeros(2), 2 * e1, 2 * e2, resolution=64)
    grid = torch.linspace(-1, 1, 64, dtype=torch.float64)
    b, a = torch.meshgrid(grid.flip(0), grid, indexing="ij")
    x = torch.stack([2 * a, 2 * b], dim=-1).reshape(-1, 2)
    signs = (x @ net[0].weight.double().T + net[0].bias.double() > 0).long()
    _, expected = torch.unique(signs, dim=0, return_inverse=True)
    flat = ids.flatten()
    assert torch.equal(flat[:, None] == flat[None, :], expected[:, None] == expected[None, :])
    assert int(ids.max()) + 1 <= 1 + 6 + 15  # at most sum_{i<=2} C(6, i) cells


def test_smooth_and_hidden_nonlinearities_are_refused():
    tanh_net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"Tanh at '1' is smooth: linear regions exist for piecewise-linear"):
        linear_regions_along_line(tanh_net, torch.zeros(2), torch.ones(2))

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 8)

        def forward(self, x):
            return torch.relu(self.fc(x)).sum(dim=1, keepdim=True)

    with pytest.raises(ValueError, match="not affine between the breakpoints"):
        linear_regions_along_line(Hidden(), -3 * torch.ones(2), 3 * torch.ones(2))
    with pytest.raises(ValueError, match="max_regions=8"):
        linear_regions_along_line(Sawtooth(4), torch.zeros(1), torch.ones(1), max_regions=8)
    with pytest.raises(ValueError, match="training mode"):
        linear_regions_along_line(nn.Sequential(nn.Linear(2, 2), nn.Dropout()), torch.zeros(2), torch.ones(2))


def test_count_neurons_counts_conv_units():
    assert count_neurons(_conv(0), torch.zeros(1, 8, 8)) == 3 * 6 * 6 + 4 * 2 * 2


# --------------------------------------------------------------------------- callback
def _task():
    return Regressor(DeepMLP(input_dim=1, width=8, depth=3, output_dim=1, activation="relu", init="he"))


def _data():
    return SawtoothData(num_samples=320, k=3, batch_size=32)


def _trainer(tmp_path, callbacks, **kwargs):
    """A tiny CPU Trainer: no logger, checkpoints, validation or progress bar."""
    return L.Trainer(
        **quiet_trainer_kwargs(limit_val_batches=0, default_root_dir=str(tmp_path), **kwargs),
        callbacks=callbacks,
    )


def test_linear_regions_leaves_training_untouched(tmp_path):
    cb = LinearRegions(num_lines=4, plane_resolution=0, every_n_steps=2, probe_size=8)
    with_plugin = fit_and_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    restored = LinearRegions(num_lines=4, plane_resolution=0)
    restored.load_state_dict(cb.state_dict())
    assert restored.history == cb.history


def test_callback_counts_the_sawtooth_on_the_unit_interval(tmp_path):
    """A Sawtooth(5) regressor (a trained-free teacher as the model): 32 regions on [0, 1],
    10 neurons, and files written."""
    cb = LinearRegions(segments=[[[0.0], [1.0]], [[0.0], [0.5]]], plane_resolution=0, at_end=False)
    _trainer(tmp_path, [cb], max_steps=1).fit(
        Regressor(Sawtooth(5)), SawtoothData(num_samples=64, k=5, batch_size=16)
    )
    init = cb.history[0]
    assert init["linear_regions/regions_mean"] == (32 + 16) / 2
    assert init["linear_regions/regions_per_unit_length_mean"] == pytest.approx(32.0, abs=1e-12)
    assert init["linear_regions/regions_per_unit_length_std"] == pytest.approx(0.0, abs=1e-12)
    assert init["linear_regions/neurons"] == 10
    out = tmp_path / "plugins" / "linear_regions"
    assert np.load(out / "step0000000.npz")["counts"].tolist() == [32.0, 16.0]
    assert json.loads((out / "history.json").read_text())[0]["step"] == 0


def test_plane_picture_and_refusal_at_setup():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    result = LinearRegions(num_lines=2, plane_resolution=24).probe(net, torch.randn(4, 4))
    assert result.images["plane"].shape == (24, 24, 3)
    assert result.scalars["plane_regions"] == len(np.unique(result.arrays["plane_ids"]))
    assert result.scalars["regions_per_neuron"] == pytest.approx(result.scalars["regions_mean"] / 16)
    with pytest.raises(MisconfigurationException, match="Tanh at 'model.act1' is smooth"):
        LinearRegions().check_module(Regressor(DeepMLP(input_dim=2, width=4, depth=1, output_dim=1)))
    with pytest.raises(MisconfigurationException, match="probe_size >= 2 \\* num_lines"):
        LinearRegions(num_lines=20, probe_size=32)


def test_sawtooth_data_is_the_teacher_on_uniform_inputs():
    dm = SawtoothData(num_samples=1000, k=4, seed=3)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape == y.shape == (800, 1)
    assert torch.equal(y, tent_map(x, 4))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    from tdl_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="k >= 1"):
        SawtoothData(k=0)


@pytest.mark.slow
@pytest.mark.ddp
def test_linear_regions_and_intrinsic_dimension_under_two_process_ddp(tmp_path):
    """A 2-process CPU DDP fit (gloo, ddp_spawn) with both plugins: rank zero probes and writes once."""
    from plugins.intrinsic_dimension import IntrinsicDimension

    callbacks = [
        LinearRegions(num_lines=2, probe_size=8, plane_resolution=8, every_n_steps=1),
        IntrinsicDimension(k=5, probe_size=64, every_n_steps=1),
    ]
    _trainer(tmp_path, callbacks, max_steps=2, devices=2, strategy="ddp_spawn").fit(_task(), _data())
    for name in ("linear_regions", "intrinsic_dimension"):
        history = json.loads((tmp_path / "plugins" / name / "history.json").read_text())
        assert [h["step"] for h in history] == [0, 1, 2]
        assert len(list((tmp_path / "plugins" / name).glob("step*.npz"))) == 3
