"""The information plane: binned MI against the plug-in entropy formula, the KDE bound's limits,
the 12-bit task, and the callback's rules."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from plugins.information_plane import (
    InformationPlane,
    discrete_entropy,
    mutual_information_binned,
    mutual_information_kde_upper,
    pattern_ids,
)
from tdl_lightning.data import IBTask, icosahedron_vertices, twelve_bit_task
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Classifier
from tests.harness import assert_same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _plug_in_mi(a: list[int], b: list[int]) -> float:
    """sum_{a,b} p(a,b) log2 p(a,b) / (p(a) p(b)), written out from counts."""
    n = len(a)
    joint: dict[tuple[int, int], int] = {}
    for pair in zip(a, b, strict=True):
        joint[pair] = joint.get(pair, 0) + 1
    pa = {v: a.count(v) / n for v in set(a)}
    pb = {v: b.count(v) / n for v in set(b)}
    return sum(c / n * math.log2(c / n / (pa[i] * pb[j])) for (i, j), c in joint.items())


@pytest.mark.parametrize("units, bins", [(1, 30), (4, 30), (10, 30), (14, 30), (3, 2)])
def test_binned_mi_equals_the_row_wise_entropies_exactly(units, bins):
    # the 1-D ids (mixed-radix rows; 14 units of 30 bins overflow int64 and take unique(dim=0)) give
    # the counts of discrete_mutual_information on the rows, in the same order: the same floats
    from plugins.information_plane import _binned, discrete_mutual_information

    g = torch.Generator().manual_seed(units)
    t = torch.tanh(3 * torch.randn(600, units, generator=g))
    for x_ids in (torch.arange(600), torch.randint(0, 9, (600,), generator=g)):
        y = torch.randint(3, 6, (600,), generator=g)  # labels need not start at 0
        binned = _binned(t, bins)
        expected = discrete_mutual_information(x_ids, binned), discrete_mutual_information(binned, y)
        assert mutual_information_binned(t, x_ids, y, bins=bins) == expected


def test_binned_mi_on_discrete_variables_is_the_plug_in_formula():
    g = torch.Generator().manual_seed(0)
    t_values = torch.randint(0, 5, (300,), generator=g)  # 5 levels, one bin each
    y = (t_values + torch.randint(0, 3, (300,), generator=g)) % 2
    x_ids = t_values * 3 + torch.randint(0, 3, (300,), generator=g)  # T is a function of X
    i_xt, i_ty = mutual_information_binned(t_values.double().unsqueeze(1), x_ids, y, bins=5)
    assert i_ty == pytest.approx(_plug_in_mi(t_values.tolist(), y.tolist()), abs=1e-12)
    assert i_xt == pytest.approx(_plug_in_mi(x_ids.tolist(), t_values.tolist()), abs=1e-12)
    assert i_xt == pytest.approx(discrete_entropy(t_values), abs=1e-12)  # H(T|X) = 0


def test_binned_mi_limits():
    x = torch.randn(64, 3)
    ids, y = pattern_ids(x), torch.arange(64) % 2
    assert mutual_information_binned(x, ids, y, bins=10_000)[0] == pytest.approx(
        6.0
    )  # every input its own bin
    assert mutual_information_binned(torch.zeros(64, 3), ids, y) == (0.0, 0.0)  # a constant layer
    with pytest.raises(ValueError, match="one row per sample"):
        mutual_information_binned(x, ids[:10], y)


def test_kde_upper_bound_limits():
    y = torch.arange(32) % 2
    apart = torch.arange(32.0).unsqueeze(1) * 100
    i_xt, i_ty = mutual_information_kde_upper(apart, y, noise_variance=1.0)
    assert i_xt == pytest.approx(5.0) and i_ty == pytest.approx(1.0)
    i_xt, i_ty = mutual_information_kde_upper(torch.zeros(32, 2), y, noise_variance=1.0)
    assert i_xt == pytest.approx(0.0, abs=1e-12) and i_ty == pytest.approx(0.0, abs=1e-12)
    noisy = mutual_information_kde_upper(torch.randn(32, 2), y, noise_variance=0.1)[0]
    assert 0 < noisy < 5


def test_twelve_bit_task():
    v = icosahedron_vertices()
    assert torch.allclose(v.norm(dim=1), torch.ones(12, dtype=torch.float64))
    assert torch.allclose(v.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    x, y = twelve_bit_task()
    assert x.shape == (4096, 12) and len(torch.unique(x, dim=0)) == 4096
    assert int(y.sum()) == 2036
    # the rule is invariant under the icosahedron's symmetries: the antipodal map x_i -> x_{-i}
    antipode = (v @ v.T).argmin(dim=1)
    assert torch.equal(y, twelve_bit_task()[1][_index(x[:, antipode])])
    dm = IBTask(seed=1)
    dm.setup()
    assert [len(dm.splits[k][0]) for k in ("train", "val", "test")] == [3482, 307, 307]


def _index(x: torch.Tensor) -> torch.Tensor:
    """The row of each pattern in twelve_bit_task's binary counting order."""
    return (x.long() * (2 ** torch.arange(11, -1, -1))).sum(1)


def test_callback_keeps_training_as_it_was(fit_collect, tmp_path):
    def task():
        return Classifier(
            DeepMLP(12, widths=[6, 4], output_dim=2, activation="tanh", init="xavier"), num_classes=2
        )

    def data():
        return IBTask(batch_size=512)

    plain = fit_collect(task, data, [], default_root_dir=str(tmp_path))
    cb = InformationPlane(every_n_steps=2, every_n_epochs=None, kde_noise_variance=0.1, probe_size=512)
    probed = fit_collect(task, data, [cb], default_root_dir=str(tmp_path))
    assert_same_weights(plain, probed)
    last = cb.history[-1]
    assert {f"information_plane/i_xt_layer_{l}" for l in (1, 2, 3)} <= set(last)
    assert 0 <= last["information_plane/i_ty_layer_3"] <= 1 <= last["information_plane/i_xt_layer_1"] <= 9
    assert last["information_plane/kde_i_xt_layer_1"] <= 9 + 1e-9  # log2 of 512 patterns
    assert list((tmp_path / "plugins" / "information_plane").glob("information_plane_step*.png"))


def test_callback_refuses_bad_arguments():
    with pytest.raises(MisconfigurationException, match="bins"):
        InformationPlane(bins=0)
    with pytest.raises(MisconfigurationException, match="variance"):
        InformationPlane(kde_noise_variance=0.0)
    with pytest.raises(MisconfigurationException, match="labels"):
        InformationPlane().probe(torch.nn.Linear(2, 2), torch.randn(4, 2))
