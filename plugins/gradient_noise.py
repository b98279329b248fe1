"""Gradient noise: per-example gradients, the simple noise scale and the per-layer signal-to-noise ratio.

A mini-batch gradient is the mean of per-example gradients ``g_i``, whose mean over the data is
the true gradient ``G`` and whose covariance is ``Sigma``. McCandlish et al. (2018, "An empirical
model of large-batch training") call ``B_simple = tr(Sigma) / |G|^2`` the simple noise scale: the
batch size at which the noise of a mini-batch gradient, ``tr(Sigma) / B``, equals its signal
``|G|^2``. Well below it, doubling the batch nearly halves the steps needed; well above it, a
larger batch buys little. :func:`per_sample_gradients` computes the ``g_i`` with ``torch.func``
(``vmap`` of ``grad``, chunked), :func:`gradient_noise_scale` the unbiased estimates of ``tr(Sigma)``
and ``|G|^2`` from them, and :class:`GradientNoise` logs both over training.

The loss protocol: ``loss_fn(model, batch)`` (default ``pl_module.loss(batch)``) is the *mean over
the batch's examples of a per-example loss*, so that on a batch of one it is that example's loss.
Each example is cut out of the batch (every tensor of a tuple, list or dict along its first
dimension), given back a batch dimension of one, and differentiated inside ``vmap``; the model is
in ``eval()`` mode meanwhile (dropout off, BatchNorm on its running statistics: per-example
gradients of a loss that couples examples are not defined) and restored afterwards. A loss that
``vmap`` cannot run (``.item()``, data-dependent Python branches) gets one clear error; pass
``method="loop"`` for such a loss.

Example:
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    >>> batch = (torch.randn(8, 3), torch.randn(8, 1))
    >>> {name: tuple(g.shape) for name, g in per_sample_gradients(model, mse, batch).items()}
    {'weight': (8, 1, 3), 'bias': (8, 1)}
    >>> noise = gradient_noise_scale(model, mse, batch)
    >>> noise.batch_size, sorted(noise.snr)
    (8, ['bias', 'weight'])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import (
    DiagnosticCallback,
    LossFn,
    ProbeResult,
    preserved_training_state,
    probe_inputs,
    require_loss,
)
from plugins.checks import PluginConfigError, check_whole_number

__all__ = ["GradientNoise", "GradientNoiseScale", "gradient_noise_scale", "per_sample_gradients"]


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _example_dims(batch: Any, n: int) -> Any:
    """``vmap``'s ``in_dims`` for a batch: 0 for every tensor with ``n`` rows, ``None`` for the rest."""
    if isinstance(batch, Tensor):
        return 0 if batch.dim() > 0 and len(batch) == n else None
    if isinstance(batch, (tuple, list)):
        return type(batch)(_example_dims(item, n) for item in batch)
    if isinstance(batch, dict):
        return {key: _example_dims(value, n) for key, value in batch.items()}
    return None


def _batch_of_one(example: Any, dims: Any) -> Any:
    """An example (as ``vmap`` hands it over, its batch dimension removed) as a batch of one."""
    if isinstance(example, Tensor):
        return example.unsqueeze(0) if dims == 0 else example
    if isinstance(example, (tuple, list)):
        return type(example)(_batch_of_one(e, d) for e, d in zip(example, dims, strict=True))
    if isinstance(example, dict):
        return {key: _batch_of_one(value, dims[key]) for key, value in example.items()}
    return example


def _select(batch: Any, dims: Any, index: slice) -> Any:
    if isinstance(batch, Tensor):
        return batch[index] if dims == 0 else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_select(b, d, index) for b, d in zip(batch, dims, strict=True))
    if isinstance(batch, dict):
        return {key: _select(value, dims[key], index) for key, value in batch.items()}
    return batch


class _LossOf(nn.Module):
    """``model`` and ``loss_fn`` as one module, so that ``torch.func.functional_call`` can swap the
    model's parameters for the ones being differentiated, whatever ``loss_fn`` calls inside."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    @override
    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    chunk_size: int | None = 32,
    method: str = "vmap",
) -> dict[str, Tensor]:
    """One gradient per example: ``{parameter name: tensor (batch, *parameter shape)}``.

    ``method="vmap"``: ``torch.func.vmap`` of ``torch.func.grad`` of ``loss_fn`` on a batch of one,
    ``chunk_size`` examples at a time (``None``: all at once); ``method="loop"``: the reference, one
    ``torch.autograd.grad`` per example, for losses that ``vmap`` cannot run. Only trainable
    parameters (``requires_grad``) are differentiated. The model is differentiated in ``eval()``
    mode and left as it was; no ``.grad`` is written. See the module docstring for the protocol
    ``loss_fn`` must keep.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 1, bias=False)
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> grads = per_sample_gradients(model, lambda m, b: (m(b[0]) - b[1]).pow(2).mean(), (x, y))
        >>> exact = 2 * (x @ model.weight.detach().T - y) * x  # d/dw (w.x - y)^2 per example
        >>> torch.allclose(grads["weight"][:, 0], exact, atol=1e-6)
        True
    """
    if method not in ("vmap", "loop"):
        raise PluginConfigError(
            f"method must be 'vmap' (batched torch.func) or 'loop' (reference), got {method!r}"
        )
    check_whole_number("", "chunk_size", chunk_size, none_means="all examples at once")
    n = len(probe_inputs(batch))
    dims = _example_dims(batch, n)
    params = _trainable(model)
    if not params:
        raise PluginConfigError(
            f"{type(model).__name__} has no trainable parameter (requires_grad) to differentiate"
        )
    with preserved_training_state(model):
        model.eval()
        if method == "loop":
            rows = []
            for i in range(n):
                with torch.enable_grad():
                    loss = loss_fn(model, _select(batch, dims, slice(i, i + 1)))
                    rows.append(torch.autograd.grad(loss, list(params.values()), allow_unused=True))
            return {
                name: torch.stack([torch.zeros_like(p) if row[j] is None else row[j] for row in rows])
                for j, (name, p) in enumerate(params.items())
            }
        if chunk_size is not None and chunk_size >= n:  # one chunk: vmap's unchunked path, no concatenation
            chunk_size = None
        wrapper = _LossOf(model, loss_fn)
        detached = {f"model.{name}": p.detach() for name, p in params.items()}

        def example_loss(weights: dict[str, Tensor], example: Any) -> Tensor:
            return torch.func.functional_call(wrapper, weights, (_batch_of_one(example, dims),))

        per_example = torch.func.vmap(
            torch.func.grad(example_loss), in_dims=(None, dims), chunk_size=chunk_size
        )
        try:
            grads = per_example(detached, batch)
        except (RuntimeError, ValueError, TypeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PluginConfigError(
                "per-example gradients: loss_fn(model, batch) cannot run on one example inside "
                f"torch.func.vmap ({type(err).__name__}: {reason[:200]}); the loss must be a mean of "
                "per-example terms in plain torch ops (no .item(), no data-dependent Python branches, "
                "no batch statistics), or use method='loop'"
            ) from err
    return {name: grads[f"model.{name}"] for name in params}


@dataclass(frozen=True)
class GradientNoiseScale:
    """What :func:`gradient_noise_scale` measures on one batch of ``batch_size`` examples.

    Attributes:
        b_simple: the simple noise scale ``tr(Sigma) / |G|^2`` (``inf`` where the estimate of
            ``|G|^2`` is not positive: the gradient is lost in the noise at this batch size).
        gradient_norm_sq: unbiased estimate of ``|G|^2``, the squared norm of the true gradient.
        trace_covariance: unbiased estimate of ``tr(Sigma)``, the summed variance of one example's
            gradient.
        snr: per layer (parameters grouped by the module that owns them, e.g. ``conv1``), the
            signal-to-noise ratio of one example's gradient, ``|G_l|^2 / tr(Sigma_l)``; a mean over
            ``b`` examples has ``b`` times it. The inverse of the layer's own noise scale.
        batch_size: the number of examples the estimates come from.

    Example:
        >>> GradientNoiseScale(4.0, 1.0, 4.0, {"fc": 0.25}, 32).b_simple
        4.0
    """

    b_simple: float
    gradient_norm_sq: float
    trace_covariance: float
    snr: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


STATISTICS_CHUNK = 2**16
"""Per-example gradient entries converted to float64 at once by :func:`_statistics` (512 KiB: the
columns of a chunk stay in cache, where one float64 copy of all of them would not)."""


def _deviation_and_mean_sq(flat: Tensor) -> tuple[float, float]:
    """``sum_i |g_i - m|^2`` and ``|m|^2`` of the rows ``g_i`` of ``flat`` (``m`` their mean), in float64,
    a few columns at a time.

    Example:
        >>> _deviation_and_mean_sq(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
        (4.0, 5.0)
    """
    n, columns = flat.shape
    step = max(1, STATISTICS_CHUNK // max(n, 1))
    deviation = torch.zeros((), dtype=torch.float64, device=flat.device)
    mean_sq = torch.zeros((), dtype=torch.float64, device=flat.device)
    for begin in range(0, columns, step):
        part = flat[:, begin : begin + step].double()
        mean = part.mean(0)
        deviation += (part - mean).pow_(2).sum()
        mean_sq += mean.pow(2).sum()
    return float(deviation), float(mean_sq)


def _statistics(grads: dict[str, Tensor]) -> tuple[GradientNoiseScale, dict[str, Tensor]]:
    """The noise scale from per-example gradients, and their mean (the batch's gradient).

    With ``m`` the mean of the ``B`` gradients: ``tr(Sigma) ~ sum_i |g_i - m|^2 / (B - 1)`` and
    ``|G|^2 ~ |m|^2 - tr(Sigma) / B`` are unbiased, because ``E |m|^2 = |G|^2 + tr(Sigma) / B``
    (McCandlish et al.'s two-batch-size estimators with batch sizes 1 and ``B``).
    """
    n = len(next(iter(grads.values())))
    if n < 2:
        raise PluginConfigError(
            f"the gradient noise needs at least 2 examples to estimate a variance, got {n}"
        )
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    means: dict[str, Tensor] = {}
    for name, g in grads.items():
        deviation, mean_sq = _deviation_and_mean_sq(g.reshape(n, -1))
        trace = deviation / (n - 1)
        layer = _layer(name)
        noise[layer] = noise.get(layer, 0.0) + trace
        signal[layer] = signal.get(layer, 0.0) + mean_sq - trace / n
        means[name] = g.mean(0)
    total_signal, total_noise = sum(signal.values()), sum(noise.values())
    snr = {layer: signal[layer] / noise[layer] if noise[layer] > 0 else math.inf for layer in signal}
    b_simple = total_noise / total_signal if total_signal > 0 else math.inf
    return GradientNoiseScale(b_simple, total_signal, total_noise, snr, n), means


def gradient_noise_scale(
    model: nn.Module, loss_fn: LossFn, batch: Any, chunk_size: int | None = 32, method: str = "vmap"
) -> GradientNoiseScale:
    """McCandlish et al.'s simple noise scale and the per-layer SNR from ``batch``'s per-example gradients.

    ``tr(Sigma)`` is estimated by the per-example gradients' sample variance (summed over the
    parameters, divided by ``B - 1``) and ``|G|^2`` by ``|mean|^2 - tr(Sigma) / B``: both unbiased for
    examples drawn independently. ``chunk_size`` and ``method`` are those of :func:`per_sample_gradients`.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(4, 1)
        >>> batch = (torch.randn(64, 4), torch.randn(64, 1))
        >>> noise = gradient_noise_scale(model, lambda m, b: (m(b[0]) - b[1]).pow(2).mean(), batch)
        >>> noise.trace_covariance > 0, noise.b_simple == noise.trace_covariance / noise.gradient_norm_sq
        (True, True)
    """
    return _statistics(per_sample_gradients(model, loss_fn, batch, chunk_size, method))[0]


def _gradient(model: nn.Module, loss_fn: LossFn, batch: Any) -> dict[str, Tensor]:
    """The gradient of ``loss_fn(model, batch)`` (eval mode, no ``.grad`` written)."""
    params = _trainable(model)
    with preserved_training_state(model), torch.enable_grad():
        model.eval()
        grads = torch.autograd.grad(loss_fn(model, batch), list(params.values()), allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads, strict=True)
    }


def _cosine(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    norm_a = math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in a))
    norm_b = math.sqrt(sum(float(b[k].double().pow(2).sum()) for k in b))
    return dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else math.nan


class GradientNoise(DiagnosticCallback):
    """Logs the gradient noise scale on a fixed probe batch over training (McCandlish et al. 2018).

    Logged scalars (``gradient_noise/<key>``): ``b_simple``, ``gradient_norm_sq``,
    ``trace_covariance`` and ``snr/<layer>`` (see :class:`GradientNoiseScale`), ``train_batch_size``
    (the size ``b`` of the last training batch, to set ``b_simple`` against), and after the first
    training step ``cosine_minibatch``: the cosine between the gradient of the last training batch
    and the probe batch's gradient, both at the current weights, beside ``cosine_expected``, its
    value for independent noise, ``|G|^2 / sqrt((|G|^2 + tr(Sigma)/b) (|G|^2 + tr(Sigma)/B))``
    (``B`` the probe batch's size); ``probe_seconds``.

    At the first probe the mean of the per-example gradients is checked against the gradient of the
    probe batch's loss: a loss that is not a mean of per-example terms (a sum, batch statistics) is
    refused with one line. Needs ``pl_module.loss(batch)`` (or ``loss_fn``), see the module docstring.

    Args:
        chunk_size: examples per ``vmap`` chunk (``None``: all at once).
        loss_fn: ``loss_fn(model, batch)``; default ``pl_module.loss``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: at init and every epoch,
            256 examples).

    Example:
        >>> from torch import nn
        >>> task = nn.Linear(3, 1)
        >>> loss = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
        >>> result = GradientNoise(loss_fn=loss).probe(task, (torch.randn(16, 3), torch.randn(16, 1)))
        >>> sorted(k for k in result.scalars if not k.startswith("snr/"))
        ['b_simple', 'gradient_norm_sq', 'probe_seconds', 'trace_covariance']
    """

    name = "gradient_noise"

    def __init__(
        self,
        chunk_size: int | None = 32,
        loss_fn: LossFn | None = None,
        *,
        every_n_epochs: int | None = 1,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, **schedule)
        if self.probe_size < 2:
            raise PluginConfigError(
                f"GradientNoise(probe_size={self.probe_size}): a variance needs a probe batch of >= 2 "
                "examples"
            )
        check_whole_number("GradientNoise", "chunk_size", chunk_size, none_means="all examples at once")
        self.chunk_size, self.loss_fn = chunk_size, loss_fn
        self._last_batch: Any = None
        self._checked = False

    @override
    def check_module(self, pl_module: L.LightningModule) -> None:
        require_loss("GradientNoise", pl_module, self.loss_fn)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last_batch = batch
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        start = time.perf_counter()
        loss_fn = require_loss("GradientNoise", pl_module, self.loss_fn)
        try:
            grads = per_sample_gradients(pl_module, loss_fn, batch, self.chunk_size)
        except ValueError as err:
            raise PluginConfigError(f"GradientNoise: {err}") from err
        noise, mean = _statistics(grads)
        if not self._checked:
            self._check_per_example(mean, _gradient(pl_module, loss_fn, batch))
        scalars = {
            "b_simple": noise.b_simple,
            "gradient_norm_sq": noise.gradient_norm_sq,
            "trace_covariance": noise.trace_covariance,
            **{f"snr/{layer}": value for layer, value in noise.snr.items()},
        }
        if self._last_batch is not None:
            b = len(probe_inputs(self._last_batch))
            signal, variance = noise.gradient_norm_sq, noise.trace_covariance
            scalars["train_batch_size"] = float(b)
            scalars["cosine_minibatch"] = _cosine(_gradient(pl_module, loss_fn, self._last_batch), mean)
            if signal > 0:
                product = (signal + variance / b) * (signal + variance / noise.batch_size)
                scalars["cosine_expected"] = signal / math.sqrt(product)
        scalars["probe_seconds"] = time.perf_counter() - start
        return ProbeResult(scalars=scalars)

    def _check_per_example(self, mean: dict[str, Tensor], batch_gradient: dict[str, Tensor]) -> None:
        difference = math.sqrt(sum(float((mean[k] - batch_gradient[k]).double().pow(2).sum()) for k in mean))
        scale = math.sqrt(sum(float(g.double().pow(2).sum()) for g in batch_gradient.values()))
        if difference > 1e-3 * scale + 1e-12:
            raise PluginConfigError(
                "GradientNoise: the mean of the per-example gradients differs from the probe batch's "
                f"gradient by {difference / max(scale, 1e-30):.1%} of its norm: the loss must be the mean "
                "over the batch of a per-example loss (no sum reduction, no batch statistics); "
                "pass such a `loss_fn=`"
            )
        self._checked = True
