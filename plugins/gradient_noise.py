"""Gradient noise: per-example gradients, the simple noise scale and the per-layer signal-to-noise ratio.

A mini-batch gradient is the mean of per-example gradients ``g_i``, whose mean over the data is
the true gradient ``G`` and whose covariance is ``Sigma``. McCandlish et al. (2018, "An empirical
model of large-batch training") call ``B_simple = tr(Sigma) / |G|^2`` the simple noise scale: the
batch size at which the noise of a mini-batch gradient, ``tr(Sigma) / B``, equals its signal
``|G|^2``. Well below it, doubling the batch nearly halves the steps needed; well above it, a
larger batch buys little. :func:`per_sample_gradients` computes the ``g_i`` with ``torch.func``
(``vmap`` of ``grad``, chunked; :mod:`plugins.per_sample`), :func:`gradient_noise_scale` the unbiased
estimates of ``tr(Sigma)`` and ``|G|^2`` from them, and :class:`GradientNoise` logs both over
training. Its default, ``method="layerwise"``, needs no ``vmap`` for ``nn.Linear`` and ``nn.Conv2d``
layers: their per-example gradients (or, for a linear layer, just the sums the estimates need) follow
from one backward pass of the batch (:mod:`plugins.per_example_norms`).

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
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import (
    DiagnosticCallback,
    LossFn,
    ProbeResult,
    check_loss_on_parameters,
    preserved_training_state,
    probe_inputs,
    require_loss,
)
from plugins.checks import PluginConfigError, check_whole_number
from plugins.filter_grids import _evaluating
from plugins.per_example_norms import LayerwiseGradients, layerwise_gradients
from plugins.per_sample import _example_dims, _select, _trainable, _vmap_gradients, per_sample_gradients

__all__ = ["GradientNoise", "GradientNoiseScale", "gradient_noise_scale", "per_sample_gradients"]

METHODS = ("layerwise", "vmap", "loop")


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
    moments = {name: _deviation_and_mean_sq(g.reshape(n, -1)) for name, g in grads.items()}
    return _noise_scale(moments, n), {name: g.mean(0) for name, g in grads.items()}


def _noise_scale(moments: dict[str, tuple[float, float]], n: int) -> GradientNoiseScale:
    """The noise scale from ``{parameter name: (sum_i |g_i - m|^2, |m|^2)}`` of ``n`` examples."""
    if n < 2:
        raise PluginConfigError(
            f"the gradient noise needs at least 2 examples to estimate a variance, got {n}"
        )
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for name, (deviation, mean_sq) in moments.items():
        trace = deviation / (n - 1)
        layer = _layer(name)
        noise[layer] = noise.get(layer, 0.0) + trace
        signal[layer] = signal.get(layer, 0.0) + mean_sq - trace / n
    total_signal, total_noise = sum(signal.values()), sum(noise.values())
    snr = {layer: signal[layer] / noise[layer] if noise[layer] > 0 else math.inf for layer in signal}
    b_simple = total_noise / total_signal if total_signal > 0 else math.inf
    return GradientNoiseScale(b_simple, total_signal, total_noise, snr, n)


@dataclass(frozen=True)
class _Layerwise:
    """One probe by ``method="layerwise"``: the noise scale, the batch's gradient, and what it came from."""

    noise: GradientNoiseScale
    mean: dict[str, Tensor]
    found: LayerwiseGradients
    rest: dict[str, Tensor]  # the vmap path's per-example gradients of the parameters left over


def _layerwise_statistics(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    chunk_size: int | None,
    batch_gradient: bool = False,
    preserve: bool = True,
) -> _Layerwise:
    """The noise scale from :func:`~plugins.per_example_norms.layerwise_gradients` (its
    ``batch_gradient`` and ``preserve``), with ``vmap`` (chunks of ``chunk_size``) for the parameters
    that it leaves over."""
    params = _trainable(model)
    if not params:
        raise PluginConfigError(
            f"{type(model).__name__} has no trainable parameter (requires_grad) to differentiate"
        )
    found = layerwise_gradients(model, loss_fn, batch, batch_gradient=batch_gradient, preserve=preserve)
    rest = _vmap_gradients(model, loss_fn, batch, found.rest, chunk_size, "vmap") if found.rest else {}
    n = found.batch_size
    moments: dict[str, tuple[float, float]] = {}
    mean: dict[str, Tensor] = {}
    for name in params:  # in the order of named_parameters(), as the vmap path sums them
        if name in found.moments:
            reduced = found.moments[name]
            moments[name], mean[name] = (reduced.deviation, reduced.mean_sq), reduced.mean
        else:
            g = found.per_example[name] if name in found.per_example else rest[name]
            moments[name], mean[name] = _deviation_and_mean_sq(g.reshape(n, -1)), g.mean(0)
    return _Layerwise(_noise_scale(moments, n), mean, found, rest)


def gradient_noise_scale(
    model: nn.Module, loss_fn: LossFn, batch: Any, chunk_size: int | None = 32, method: str = "vmap"
) -> GradientNoiseScale:
    """McCandlish et al.'s simple noise scale and the per-layer SNR from ``batch``'s per-example gradients.

    ``tr(Sigma)`` is estimated by the per-example gradients' sample variance (summed over the
    parameters, divided by ``B - 1``) and ``|G|^2`` by ``|mean|^2 - tr(Sigma) / B``: both unbiased for
    examples drawn independently. ``chunk_size`` and ``method`` (``"vmap"``, ``"loop"``) are those of
    :func:`per_sample_gradients`; ``method="layerwise"`` takes the ``nn.Linear`` and ``nn.Conv2d``
    layers from one backward pass of the batch (:func:`~plugins.per_example_norms.layerwise_gradients`,
    several times faster) and the other parameters by ``vmap``: the same numbers for a loss that is a
    mean of per-example terms and a model that does not couple the examples (which
    :class:`GradientNoise` checks at its first probe).

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(4, 1)
        >>> batch = (torch.randn(64, 4), torch.randn(64, 1))
        >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
        >>> noise = gradient_noise_scale(model, mse, batch)
        >>> noise.trace_covariance > 0, noise.b_simple == noise.trace_covariance / noise.gradient_norm_sq
        (True, True)
        >>> fast = gradient_noise_scale(model, mse, batch, method="layerwise")
        >>> abs(fast.b_simple / noise.b_simple - 1) < 1e-4
        True
    """
    if method not in METHODS:
        raise PluginConfigError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "layerwise":
        check_whole_number("", "chunk_size", chunk_size, none_means="all examples at once")
        return _layerwise_statistics(model, loss_fn, batch, chunk_size).noise
    return _statistics(per_sample_gradients(model, loss_fn, batch, chunk_size, method))[0]


CHECKED_EXAMPLES = 8
"""Examples whose per-example gradients the first probe of ``method="layerwise"`` also takes one by one."""


def _layerwise_disagreement(model: nn.Module, loss_fn: LossFn, batch: Any, found: _Layerwise) -> str | None:
    """Where ``method="layerwise"`` disagrees with ``vmap`` on ``batch`` (``None``: nowhere).

    Checked: the mean of the per-example gradients against autograd's gradient of the batch's loss
    (1e-3 of its norm, as the ``vmap`` path's check), and, for the first :data:`CHECKED_EXAMPLES`
    examples, each layer-served parameter's per-example squared norm against its value from the
    gradient of that example alone (``method="loop"``; 1e-3 of it, plus 1e-9 of the example's whole
    squared norm).
    """
    gradient = found.found.batch_gradient
    assert gradient is not None
    difference = math.sqrt(
        sum(float((found.mean[k].double() - gradient[k].double()).pow(2).sum()) for k in gradient)
    )
    scale = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gradient.values()))
    if difference > 1e-3 * scale + 1e-12:
        share = difference / max(scale, 1e-30)
        return f"the mean of its per-example gradients differs from the batch's gradient by {share:.1%}"
    served = [name for name in gradient if name not in found.found.rest]
    if not served:
        return None
    n = found.found.batch_size
    k = min(n, CHECKED_EXAMPLES)
    few = _vmap_gradients(  # one autograd.grad per example: the reference, for any loss
        model, loss_fn, _select(batch, _example_dims(batch, n), slice(0, k)), served, None, "loop"
    )
    expected = {name: g.reshape(k, -1).double().pow(2).sum(1) for name, g in few.items()}
    total = sum(expected.values())
    for name in served:
        if name in found.found.moments:
            norms = found.found.moments[name].norms_sq[:k]
        else:
            norms = found.found.per_example[name][:k].reshape(k, -1).double().pow(2).sum(1)
        if bool(((norms - expected[name]).abs() > 1e-3 * expected[name] + 1e-9 * total).any()):
            return f"the per-example gradients of {name} differ from vmap's"
    return None


def _gradient(model: nn.Module, loss_fn: LossFn, batch: Any, preserve: bool = True) -> dict[str, Tensor]:
    """The gradient of ``loss_fn(model, batch)`` (eval mode, no ``.grad`` written; ``preserve``: as
    :func:`~plugins.per_example_norms.layerwise_gradients`'s)."""
    params = _trainable(model)
    with (
        preserved_training_state(model) if preserve else nullcontext(),
        _evaluating(model),
        torch.enable_grad(),
    ):
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

    ``method="layerwise"`` (the default) takes the per-example gradients of the ``nn.Linear`` and
    ``nn.Conv2d`` layers from one backward pass of the probe batch
    (:func:`~plugins.per_example_norms.layerwise_gradients`) and those of any other parameter by
    ``vmap``: the same numbers as ``method="vmap"`` (within float32 rounding, about ``1e-5`` of each),
    several times faster. Its first probe also takes the gradients of a few examples one at a time
    and compares their norms, layer by layer, and the mean gradient with the batch's: where they
    differ (a model that couples the examples, a layer whose parameters are also used outside it), a
    warning says so and every probe of the run is taken by ``vmap``.

    Args:
        chunk_size: examples per ``vmap`` chunk (``None``: all at once).
        loss_fn: ``loss_fn(model, batch)``; default ``pl_module.loss``.
        method: ``"layerwise"``, ``"vmap"`` or ``"loop"`` (see :func:`gradient_noise_scale`).
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
        method: str = "layerwise",
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
        if method not in METHODS:
            raise PluginConfigError(
                f"GradientNoise(method={method!r}): use 'layerwise' (one backward pass, vmap for other "
                "layers), 'vmap' (torch.func for every parameter) or 'loop' (the reference)"
            )
        self.chunk_size, self.loss_fn, self.method = chunk_size, loss_fn, method
        self._last_batch: Any = None
        self._checked = False
        self._per_example_method = method  # "vmap" from the first probe on where "layerwise" disagrees

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
        if not self.history:  # the first probe of the fit (or of a notebook's calls)
            check_loss_on_parameters("GradientNoise", pl_module, loss_fn, batch)
        noise, mean = self._noise_scale(pl_module, loss_fn, batch)
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
            last_gradient = _gradient(pl_module, loss_fn, self._last_batch, preserve=False)
            scalars["cosine_minibatch"] = _cosine(last_gradient, mean)
            if signal > 0:
                product = (signal + variance / b) * (signal + variance / noise.batch_size)
                scalars["cosine_expected"] = signal / math.sqrt(product)
        scalars["probe_seconds"] = time.perf_counter() - start
        return ProbeResult(scalars=scalars)

    def _noise_scale(
        self, pl_module: nn.Module, loss_fn: LossFn, batch: Any
    ) -> tuple[GradientNoiseScale, dict[str, Tensor]]:
        """The probe batch's noise scale and gradient, by the configured method (checked at the first
        probe; the first probe of ``layerwise`` also checks it against ``vmap``)."""
        problem = None
        try:
            if self._per_example_method == "layerwise":
                layerwise = _layerwise_statistics(  # inside the probe's preserved_training_state
                    pl_module,
                    loss_fn,
                    batch,
                    self.chunk_size,
                    batch_gradient=not self._checked,
                    preserve=False,
                )
                if self._checked:
                    return layerwise.noise, layerwise.mean
                problem = _layerwise_disagreement(pl_module, loss_fn, batch, layerwise)
                if problem is None:
                    self._checked = True
                    return layerwise.noise, layerwise.mean
                self._per_example_method = "vmap"
            grads = per_sample_gradients(pl_module, loss_fn, batch, self.chunk_size, self._per_example_method)
        except ValueError as err:
            raise PluginConfigError(f"GradientNoise: {err}") from err
        noise, mean = _statistics(grads)
        if not self._checked:
            self._check_per_example(mean, _gradient(pl_module, loss_fn, batch, preserve=False))
        if problem is not None:  # vmap serves this model and loss, where the layer formulas do not
            rank_zero_warn(
                f"GradientNoise: method='layerwise' does not serve {type(pl_module).__name__} ({problem}): "
                "every probe of this run takes the per-example gradients by vmap (pass method='vmap' to "
                "skip the check)"
            )
        return noise, mean

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
