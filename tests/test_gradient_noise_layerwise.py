"""GradientNoise's method="layerwise" (one backward pass, plugins/per_example_norms.py) against vmap.

Tolerances: float64 models agree with the vmap path to 1e-10 (relative), float32 models to 1e-5 (the
two differ by float32 rounding of the per-example gradients, about 1e-7 of each, which the sums of
squares amplify by the ratio of mean to spread).
"""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn import functional as F

import plugins.gradient_noise as gradient_noise
from plugins import GradientNoise
from plugins.gradient_noise import gradient_noise_scale, per_sample_gradients
from plugins.per_example_norms import layerwise_gradients, linear_moments
from tdl_lightning.models import LeNet5
from tdl_lightning.tasks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def _cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _images(n, dtype=torch.float32, seed=0, channels=1, side=28):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, side, side, generator=g).to(dtype), torch.randint(
        0, 10, (n,), generator=g
    )


def _assert_same_noise(fast, slow, rel):
    for key in ("b_simple", "gradient_norm_sq", "trace_covariance"):
        assert getattr(fast, key) == pytest.approx(getattr(slow, key), rel=rel), key
    assert fast.snr.keys() == slow.snr.keys() and fast.batch_size == slow.batch_size
    for layer, value in slow.snr.items():
        assert fast.snr[layer] == pytest.approx(value, rel=rel), layer


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_layerwise_equals_vmap_on_lenet5(dtype, rel):
    """LeNet-5 (tanh, average pooling), cross-entropy, 24 images: every statistic and the batch's
    gradient; no parameter is left to vmap."""
    torch.manual_seed(0)
    model = LeNet5().to(dtype)
    batch = _images(24, dtype)
    slow, slow_mean = gradient_noise._statistics(per_sample_gradients(model, _cross_entropy, batch, None))
    fast = gradient_noise._layerwise_statistics(model, _cross_entropy, batch, None)
    assert fast.found.rest == [] and fast.rest == {}
    assert sorted(fast.found.moments) == [f"fc{i}.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    _assert_same_noise(fast.noise, slow, rel)
    for name, value in slow_mean.items():
        torch.testing.assert_close(
            fast.mean[name].to(dtype), value, rtol=rel, atol=rel * float(value.abs().max())
        )


class _Convs(nn.Module):
    """Convolutions of every kind served (stride, dilation, 'same' with an even kernel, 'valid',
    groups, no bias) and a linear layer on (batch, positions, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(4, 4, 3, dilation=2, padding="same", groups=2, bias=False)
        self.even = nn.Conv2d(4, 6, (2, 4), padding="same")
        self.valid = nn.Conv2d(6, 5, 3, padding="valid")
        self.tokens = nn.Linear(5, 3)
        self.readout = nn.Linear(3, 10)

    def forward(self, x):
        h = torch.tanh(self.strided(x))
        h = torch.tanh(self.dilated(h))
        h = torch.tanh(self.even(h))
        h = torch.tanh(self.valid(h))  # (B, 5, 2, 2)
        h = torch.tanh(self.tokens(h.flatten(2).transpose(1, 2)))  # (B, 4, 3): 4 positions
        return self.readout(h.mean(1))


def test_layerwise_per_example_gradients_of_convolutions_equal_vmaps():
    torch.manual_seed(0)
    model = _Convs().double()
    batch = _images(6, torch.float64, channels=3, side=9)
    found = layerwise_gradients(model, _cross_entropy, batch)
    slow = per_sample_gradients(model, _cross_entropy, batch)
    assert found.rest == [] and sorted(found.moments) == ["readout.bias", "readout.weight"]
    assert set(found.per_example) == set(slow) - {"readout.bias", "readout.weight"}
    for name, value in found.per_example.items():
        torch.testing.assert_close(value, slow[name], rtol=1e-10, atol=1e-12)
    for name, moments in found.moments.items():
        flat = slow[name].reshape(6, -1)
        torch.testing.assert_close(moments.norms_sq, flat.pow(2).sum(1), rtol=1e-10, atol=0)
        assert moments.deviation == pytest.approx(float((flat - flat.mean(0)).pow(2).sum()), rel=1e-10)
    _assert_same_noise(gradient_noise_scale(model, _cross_entropy, batch, method="layerwise"),
                       gradient_noise._statistics(slow)[0], 1e-10)  # fmt: skip


class _Mixed(nn.Module):
    """Parameters the layer formulas cannot serve beside ones they can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")  # not zero padding
        self.norm = nn.LayerNorm(8)  # another layer type
        self.twice = nn.Linear(8, 8)  # called twice in a forward
        self.inplace = nn.Linear(8, 8)  # its output changed in place
        self.scale = nn.Parameter(torch.tensor(1.5))  # a parameter of the model itself
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.readout = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).mean(1).flatten(1)[:, :8]
        h = torch.tanh(self.twice(torch.tanh(self.twice(self.norm(h)))))
        h = F.relu(self.inplace(h), inplace=True)
        return self.readout(self.frozen(h) * self.scale)


def test_parameters_the_layers_cannot_serve_are_left_to_vmap_and_agree():
    torch.manual_seed(0)
    model = _Mixed().double()
    batch = _images(10, torch.float64, side=4)
    found = layerwise_gradients(model, _cross_entropy, batch, batch_gradient=True)
    assert found.rest == [
        "scale",
        "conv.weight",
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "twice.weight",
        "twice.bias",
        "inplace.weight",
        "inplace.bias",
    ]
    assert sorted(found.moments) == ["readout.bias", "readout.weight"] and found.per_example == {}
    assert found.batch_gradient is not None and "frozen.weight" not in found.batch_gradient
    slow = gradient_noise_scale(model, _cross_entropy, batch, method="vmap")
    _assert_same_noise(gradient_noise_scale(model, _cross_entropy, batch, method="layerwise"), slow, 1e-10)


def test_linear_moments_keep_a_large_mean_over_a_small_spread():
    """Per-example gradients ~3e3 times their spread from their mean (float32 inputs): the float64
    closed form keeps the centred sum to 1e-8 of the float64 reference written out on the same
    inputs, closer than the vmap path's reduction of float32 gradients (~1e-5 off here), where the
    same formula in float32 loses a fifth of it."""
    g = torch.Generator().manual_seed(0)
    n = 256
    a = 1 + 3e-4 * torch.randn(n, 40, generator=g)
    delta = (1 + 3e-4 * torch.randn(n, 7, generator=g)) / n
    weight, bias = linear_moments(a, delta)
    flat = (n * delta.double()[:, :, None] * a.double()[:, None, :]).reshape(n, -1)  # float64 g_i
    reference = float((flat - flat.mean(0)).pow(2).sum())
    assert float(flat.mean(0).pow(2).sum()) * n > 1e6 * reference  # a case of cancellation
    assert weight.deviation == pytest.approx(reference, rel=1e-8)
    assert weight.mean_sq == pytest.approx(float(flat.mean(0).pow(2).sum()), rel=1e-12)
    torch.testing.assert_close(weight.mean, flat.mean(0).reshape(7, 40), rtol=1e-12, atol=0)
    torch.testing.assert_close(weight.norms_sq, flat.pow(2).sum(1), rtol=1e-12, atol=0)
    signal = n * delta.double()
    assert bias.deviation == pytest.approx(float((signal - signal.mean(0)).pow(2).sum()), rel=1e-10)
    single = (n * delta[:, :, None] * a[:, None, :]).reshape(n, -1)  # float32 g_i, as vmap's
    vmap_like = gradient_noise._deviation_and_mean_sq(single)[0]
    assert abs(weight.deviation - reference) < 0.01 * abs(vmap_like - reference)
    naive = float(single.pow(2).sum()) - n * float(single.mean(0).pow(2).sum())  # the closed form in float32
    assert abs(naive - reference) > 0.1 * reference


def _probe(callback, model, batch, last_batch):
    callback._last_batch = last_batch
    return callback.probe(model, batch).scalars


def test_callback_layerwise_logs_what_vmap_logs_on_lenet5():
    """Two probes of each method on float32 LeNet-5 in its Classifier (the experiment's loss, the first
    probe with its checks): every logged number but the seconds within 1e-5 (relative)."""
    torch.manual_seed(0)
    model = Classifier(LeNet5(), num_classes=10)
    batch, last = _images(32), _images(8, seed=1)
    fast, slow = GradientNoise(method="layerwise"), GradientNoise(method="vmap")
    for _ in range(2):
        a, b = _probe(fast, model, batch, last), _probe(slow, model, batch, last)
        assert a.keys() == b.keys() and {"cosine_minibatch", "cosine_expected", "snr/model.conv1"} <= set(a)
        for key in a.keys() - {"probe_seconds"}:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert fast._per_example_method == "layerwise" and fast._checked


class _Tied(nn.Module):
    """A layer whose weight is used outside it too: the layer formulas miss that use."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return F.linear(torch.tanh(self.fc(x)), self.fc.weight)


def test_callback_falls_back_to_vmap_with_a_warning_where_layerwise_disagrees():
    torch.manual_seed(0)
    model = _Tied()
    g = torch.Generator().manual_seed(0)
    batch, last = (torch.randn(16, 6, generator=g), torch.randint(0, 6, (16,), generator=g)), None
    fast, slow = GradientNoise(loss_fn=_cross_entropy), GradientNoise(loss_fn=_cross_entropy, method="vmap")
    with pytest.warns(UserWarning, match="does not serve _Tied .*batch's gradient"):
        a = _probe(fast, model, batch, last)
    b = _probe(slow, model, batch, last)
    assert fast._per_example_method == "vmap"
    assert all(a[key] == pytest.approx(b[key], rel=1e-6) for key in b.keys() - {"probe_seconds"})


def _sum_loss(model, batch):  # a sum over the examples, not a mean
    return F.cross_entropy(model(batch[0]), batch[1], reduction="sum")


def _centred_loss(model, batch):  # couples the examples through the batch's mean
    out = model(batch[0])
    return (out - out.mean(0)).pow(2).mean()


@pytest.mark.parametrize("loss_fn", [_sum_loss, _centred_loss])
def test_layerwise_refuses_a_loss_that_is_not_a_mean_as_vmap_does(loss_fn):
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g))
    with pytest.raises(MisconfigurationException, match="mean over the batch of a per-example loss"):
        GradientNoise(loss_fn=loss_fn).probe(nn.Linear(3, 2), batch)


def test_a_method_that_does_not_exist_is_refused():
    with pytest.raises(MisconfigurationException, match="method='fast'.*'layerwise'"):
        GradientNoise(method="fast")
    with pytest.raises(MisconfigurationException, match="'layerwise', 'vmap', 'loop'"):
        gradient_noise_scale(
            nn.Linear(2, 1), _sum_loss, (torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), method="x"
        )


def test_layerwise_serves_a_loss_vmap_cannot_run_and_equals_the_loop_reference():
    """A mean loss with ``.item()`` inside (vmap refuses it): the layer formulas need no vmap, and the
    first probe's check takes its examples one at a time."""

    def item_loss(m, batch):
        scale = 2.0 if float(batch[0].abs().sum().item()) > 0 else 1.0
        return scale * (m(batch[0]) - batch[1]).pow(2).mean()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(12, 3, generator=g, dtype=torch.float64),
        torch.randn(12, 2, generator=g, dtype=torch.float64),
    )
    fast = _probe(GradientNoise(loss_fn=item_loss), model, batch, batch)
    slow = _probe(GradientNoise(loss_fn=item_loss, method="loop"), model, batch, batch)
    assert all(fast[key] == pytest.approx(slow[key], rel=1e-10) for key in slow.keys() - {"probe_seconds"})
    with pytest.raises(MisconfigurationException, match="method='loop'"):
        _probe(GradientNoise(loss_fn=item_loss, method="vmap"), model, batch, batch)
