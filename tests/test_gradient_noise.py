"""Per-example gradients and the gradient noise scale against closed forms; the callback's rules."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins import GradientNoise
from plugins.gradient_noise import gradient_noise_scale, per_sample_gradients
from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Classifier
from tests.harness import assert_same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def test_vmap_equals_a_loop_of_single_example_gradients():
    """A tanh MLP with a bias, cross-entropy, float64; chunks of 3 over 10 examples (a ragged last chunk)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))

    def cross_entropy(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    fast = per_sample_gradients(model, cross_entropy, (x, y), chunk_size=3)
    for i in range(10):
        model.zero_grad()
        cross_entropy(model, (x[i : i + 1], y[i : i + 1])).backward()
        for name, p in model.named_parameters():
            assert fast[name][i].shape == p.shape
            assert torch.allclose(fast[name][i], p.grad, atol=1e-6, rtol=0)
    loop = per_sample_gradients(model, cross_entropy, (x, y), method="loop")
    assert all(torch.allclose(fast[k], loop[k], atol=1e-6, rtol=0) for k in fast)


def _least_squares(n: int, d: int = 3):
    torch.manual_seed(1)
    model = nn.Linear(d, 1, bias=False).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = x @ torch.randn(d, 1, dtype=torch.float64) + 0.5 * torch.randn(n, 1, dtype=torch.float64)
    exact = 2 * (x @ model.weight.detach().T - y) * x  # g_i = d/dw (w.x_i - y_i)^2, (n, d)
    return model, x, y, exact


def test_chunked_statistics_and_one_chunk_equal_the_whole_float64_formula(monkeypatch):
    import plugins.gradient_noise as gradient_noise

    g = torch.Generator().manual_seed(0)
    grads = {"a.weight": torch.randn(40, 30, 7, generator=g), "a.bias": torch.randn(40, 30, generator=g) + 3}
    monkeypatch.setattr(gradient_noise, "STATISTICS_CHUNK", 40 * 11)  # 11 columns a chunk, the last shorter
    noise, means = gradient_noise._statistics(grads)
    signal = variance = 0.0
    for gi in grads.values():  # the statistics written out on one float64 copy of everything
        flat = gi.reshape(40, -1).double()
        trace = float((flat - flat.mean(0)).pow(2).sum()) / 39
        variance += trace
        signal += float(flat.mean(0).pow(2).sum()) - trace / 40
    assert noise.trace_covariance == pytest.approx(variance, rel=1e-12)
    assert noise.gradient_norm_sq == pytest.approx(signal, rel=1e-12)
    assert noise.snr["a"] == pytest.approx(signal / variance, rel=1e-12)
    torch.testing.assert_close(means["a.bias"], grads["a.bias"].mean(0), rtol=0, atol=0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))

    def mse(m, b):
        return (m(b[0]) - b[1]).pow(2).mean()

    batch = (torch.randn(24, 5, generator=g), torch.randn(24, 2, generator=g))
    chunked = per_sample_gradients(model, mse, batch, chunk_size=5)
    for whole in (
        per_sample_gradients(model, mse, batch, chunk_size=24),
        per_sample_gradients(model, mse, batch, None),
    ):
        for name, value in chunked.items():
            torch.testing.assert_close(whole[name], value, rtol=1e-6, atol=1e-7)


def test_noise_scale_equals_its_closed_form_on_linear_least_squares():
    model, x, y, g = _least_squares(50)
    noise = gradient_noise_scale(model, _mse, (x, y))
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum()) / 49
    signal = float(mean @ mean) - trace / 50
    assert noise.trace_covariance == pytest.approx(trace, rel=1e-10)
    assert noise.gradient_norm_sq == pytest.approx(signal, rel=1e-10)
    assert noise.b_simple == pytest.approx(trace / signal, rel=1e-10)
    assert noise.snr == {"weight": pytest.approx(signal / trace, rel=1e-10)} and noise.batch_size == 50


def test_estimates_are_unbiased_over_batches_drawn_from_the_data():
    """Batches of 4 drawn with replacement from 40 examples whose gradients are known exactly: the mean
    of 600 estimates lies within 4 standard errors of the population's |G|^2 and tr(Sigma)."""
    model, x, y, g = _least_squares(40)
    true_mean = g.mean(0)
    true_signal, true_trace = float(true_mean @ true_mean), float(((g - true_mean) ** 2).sum(1).mean())
    generator = torch.Generator().manual_seed(0)
    signals, traces = [], []
    for _ in range(600):
        idx = torch.randint(0, 40, (4,), generator=generator)
        noise = gradient_noise_scale(model, _mse, (x[idx], y[idx]))
        signals.append(noise.gradient_norm_sq)
        traces.append(noise.trace_covariance)
    for values, truth in ((signals, true_signal), (traces, true_trace)):
        values = torch.tensor(values, dtype=torch.float64)
        assert abs(float(values.mean()) - truth) < 4 * float(values.std()) / math.sqrt(len(values))
    naive = torch.tensor([t / 4 + s for s, t in zip(signals, traces, strict=True)]).mean()  # E|mean|^2
    assert float(naive) > true_signal * 1.05  # the plain |mean|^2 would be biased upwards


def test_a_loss_vmap_cannot_run_is_refused_in_one_line():
    model = nn.Linear(2, 1)

    def item_loss(m, batch):
        return m(batch[0]).sum() * float(batch[0].sum().item() > 0)

    with pytest.raises(ValueError, match="method='loop'"):
        per_sample_gradients(model, item_loss, (torch.randn(4, 2),))
    assert per_sample_gradients(model, item_loss, (torch.randn(4, 2),), method="loop")["weight"].shape == (
        4,
        1,
        2,
    )


def _task():
    return Classifier(DeepMLP(input_dim=6, width=8, depth=2, output_dim=3), num_classes=3)


def _data():
    return TeacherStudent(num_samples=80, input_dim=6, task="classification", num_classes=3, batch_size=16)


def test_callback_keeps_training_unchanged_and_logs_the_cosine(fit_collect, tmp_path):
    plain = fit_collect(_task, _data, [])
    cb = GradientNoise(every_n_steps=2, probe_size=32)
    probed = fit_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    assert_same_weights(plain, probed)
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    last = cb.history[-1]
    assert last["gradient_noise/train_batch_size"] == 16
    assert -1 <= last["gradient_noise/cosine_minibatch"] <= 1 and last["gradient_noise/probe_seconds"] > 0
    assert {"gradient_noise/snr/model.fc1", "gradient_noise/snr/model.readout"} <= set(last)
    assert (tmp_path / "plugins" / "gradient_noise" / "history.json").is_file()
    restored = GradientNoise(every_n_steps=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.history == cb.history


def test_callback_refuses_a_loss_that_is_not_a_mean_of_per_example_terms():
    def batch_norm_loss(m, batch):  # couples the examples through the batch's mean
        out = m(batch[0])
        return (out - out.mean(0)).pow(2).mean()

    cb = GradientNoise(loss_fn=batch_norm_loss)
    with pytest.raises(MisconfigurationException, match="mean over the batch of a per-example loss"):
        cb.probe(nn.Linear(3, 2), (torch.randn(8, 3),))
