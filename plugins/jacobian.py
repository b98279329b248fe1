"""The input-output Jacobian's singular values at initialisation and during training (Pennington 2017/18).

For a deep network ``J = D^L W^L ... D^1 W^1`` with ``D^l = diag(phi'(h^l))``. Its mean squared
singular value is ``chi_1^L`` (vanishing or exploding gradients away from the edge of chaos), and
its spread decides trainability: *dynamical isometry* -- all singular values near 1 -- needs
orthogonal weights and an activation whose ``phi'`` concentrates near 1 (tanh with small ``q*``,
not ReLU). :func:`jacobian_singular_values` measures the spectrum exactly with ``torch.func``,
:func:`jacobian_spectrum_moments` gives the free-probability prediction (both in
:mod:`plugins.jacobian_spectra`, re-exported here), and :class:`JacobianSpectrum` logs both
during a fit.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh())
    >>> result = JacobianSpectrum(probe_size=3).probe(net, torch.randn(3, 8))
    >>> sorted(result.scalars)[:2]
    ['condition_number', 'max_singular_value']
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from plugins.base import DiagnosticCallback, ProbeResult, fixed_layout_figure, probe_inputs, share_work
from plugins.forward import ForwardFn, probes_through_forward_fn, recorded_calls
from plugins.free_probability import predicted_spectral_density
from plugins.jacobian_spectra import (
    ChunkSize,
    SpectrumMoments,
    auto_chunk_size,
    check_chunk_size,
    check_submodule,
    input_output_jacobians,
    jacobian_singular_values,
    jacobian_spectrum_moments,
    spectrum_statistics,
)
from plugins.signal_propagation import ActivationLike, describe_init

__all__ = [
    "JacobianSpectrum",
    "SpectrumMoments",
    "auto_chunk_size",
    "check_chunk_size",
    "check_submodule",
    "input_output_jacobians",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
    "predicted_spectral_density",
    "spectrum_statistics",
]


class JacobianSpectrum(DiagnosticCallback):
    """Singular values of the input-output Jacobian on a fixed probe batch, beside the theory.

    Logged per probe (key ``jacobian_spectrum/<name>``): ``mean_squared_singular_value``,
    ``variance_squared_singular_value``, ``max_singular_value``, ``min_singular_value``,
    ``condition_number``; a W&B histogram of the singular values; a figure of their histogram with
    the measured and predicted root-mean-square lines. When the model states ``activation``,
    ``sigma_w``, ``sigma_b`` and ``init`` (``DeepMLP`` does), ``mean_squared_singular_value_theory``
    and ``variance_squared_singular_value_theory`` (:func:`jacobian_spectrum_moments` at the probe inputs'
    ``q0``, for the
    ``nn.Linear`` layers the Jacobian passes through; a final linear read-out counts in the mean as
    ``sigma_w^2``, and its variance term is left out) are logged too. For the Jacobian of a square
    hidden stack (no read-out on the path) a second figure, ``density``, draws the histogram of the
    squared singular values on a linear axis under :func:`predicted_spectral_density` at ``q*``.

    The module is probed in ``eval()`` mode (restored afterwards). Needs: ``pl_module(x)`` (or
    ``forward_fn``). Under
    DDP every rank takes a contiguous share of the probe inputs and global rank zero gathers their
    singular values (the same as one process), then logs; ``probe_seconds`` is logged too.

    Args:
        output_layer: name of the submodule (as in ``pl_module.named_modules()``) whose output the
            Jacobian differentiates, e.g. ``model.act8`` for the hidden stack of a depth-8 ``DeepMLP``
            inside a task; ``None``: the module's output.
        chunk_size: inputs per ``vmap`` chunk: ``"auto"`` (as many as fit in 1 GiB by
            :func:`auto_chunk_size`'s estimate), a number, or ``None`` (all at once).
        input_layer: name of the submodule whose output the Jacobian differentiates with respect to
            (e.g. ``model.embedding`` for token inputs, which have no Jacobian); ``None``: the inputs.
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)`` for Lightning's demo Transformer);
            default ``pl_module(x)``.
        probe_size: inputs in the probe batch (default here: 32).
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_seed`` of
            :class:`~plugins.base.DiagnosticCallback` (default: at init only).

    Example:
        >>> cb = JacobianSpectrum(every_n_steps=50, probe_size=4)
        >>> net = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        >>> round(cb.probe(net, torch.randn(4, 6)).scalars["condition_number"], 2) >= 1
        True
    """

    name = "jacobian_spectrum"
    distributed = True  # under DDP the probe inputs are shared across ranks
    runs_train_mode = False
    needs_forward = True
    state_key_args = ("output_layer", "input_layer")

    def __init__(
        self,
        output_layer: str | None = None,
        chunk_size: ChunkSize = "auto",
        input_layer: str | None = None,
        forward_fn: ForwardFn | None = None,
        *,
        probe_size: int = 32,
        **schedule: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **schedule)
        check_chunk_size(chunk_size, "JacobianSpectrum")
        self.output_layer, self.chunk_size = output_layer, chunk_size
        self.input_layer, self.forward_fn = input_layer, forward_fn

    def check_module(self, pl_module: L.LightningModule) -> None:
        check_submodule(pl_module, self.output_layer, "output_layer", "JacobianSpectrum")
        check_submodule(pl_module, self.input_layer, "input_layer", "JacobianSpectrum")

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        start = time.perf_counter()
        pl_module.eval()
        x = probe_inputs(batch)
        rows = share_work(
            range(len(x)),
            lambda share: self._singular_values(pl_module, x, share),
            "JacobianSpectrum's probe",
        )
        if rows is None:  # another rank than zero: its share is done, rank zero logs
            return ProbeResult()
        s = torch.stack(rows)
        scalars = spectrum_statistics(s)
        theory = self._theory(pl_module, x) if self.input_layer is None else None
        if theory is not None:
            scalars["mean_squared_singular_value_theory"] = theory.mean_squared_singular_value
            scalars["variance_squared_singular_value_theory"] = theory.variance
        values, theory_mean_sq = s.detach().cpu(), scalars.get("mean_squared_singular_value_theory")
        figures: dict[str, Callable[[], Figure]] = {}
        figures["spectrum"] = lambda: _spectrum_figure(values, theory_mean_sq)
        density = self._predicted_density(pl_module, x, s) if self.input_layer is None else None
        if density is not None:  # figure makers: drawn beside training (DiagnosticCallback.figures_at)
            figures["density"] = lambda: _density_figure(values, *density)
        scalars["probe_seconds"] = time.perf_counter() - start
        return ProbeResult(
            scalars=scalars,
            arrays={"singular_values": s},
            histograms={"singular_values": s.flatten()},
            figures=figures,
        )

    def _singular_values(self, pl_module: nn.Module, x: Tensor, share: list[int]) -> list[Tensor]:
        """The singular values of the inputs ``share`` (contiguous indices of ``x``), one row each."""
        return list(
            jacobian_singular_values(
                pl_module,
                x[share[0] : share[-1] + 1],
                self.output_layer,
                self.chunk_size,
                input_layer=self.input_layer,
            )
        )

    def _predicted_density(
        self, pl_module: nn.Module, x: Tensor, s: Tensor
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The predicted density at ``q*`` for a square hidden stack (no read-out); else ``None``."""
        spec = describe_init(pl_module)
        if spec is None or s.shape[1] != x[0].numel():
            return None
        path = _layers_on_path(pl_module, x[:1], self.output_layer)
        linears = [m for m in path if isinstance(m, nn.Linear)]
        if (
            not linears
            or isinstance(path[-1], nn.Linear)
            or any(m.in_features != m.out_features for m in linears)
        ):
            return None
        weights = "orthogonal" if spec["init"] == "orthogonal" else "gaussian"
        upper = float((s.double() ** 2).max()) * 1.05
        args = (spec["activation"], float(spec["sigma_w"]), float(spec["sigma_b"]), len(linears), weights)
        return _density(*args, max(upper, 1e-12))

    def _theory(self, pl_module: nn.Module, x: Tensor) -> SpectrumMoments | None:
        spec = describe_init(pl_module)
        if spec is None:
            return None
        path = _layers_on_path(pl_module, x[:1], self.output_layer)
        depth = sum(isinstance(m, nn.Linear) for m in path)
        if depth == 0:
            return None
        readout = isinstance(path[-1], nn.Linear)
        weights = "orthogonal" if spec["init"] == "orthogonal" else "gaussian"
        q0 = float((x.double() ** 2).mean())
        args = (spec["activation"], float(spec["sigma_w"]), float(spec["sigma_b"]))
        if not readout:
            return _moments(*args, depth, weights, q0)
        mean = args[1] ** 2
        if depth > 1:
            mean *= _moments(*args, depth - 1, weights, q0).mean_squared_singular_value
        return SpectrumMoments(mean, math.nan)


@functools.lru_cache(maxsize=64)
def _moments(
    activation: ActivationLike, sigma_w: float, sigma_b: float, depth: int, weights: str, q0: float
) -> SpectrumMoments:
    """:func:`jacobian_spectrum_moments`, remembered per arguments (in a run they stay the same: the
    probe batch and the init are fixed), so the ~40 ms quadrature at depth 32 is paid once."""
    return jacobian_spectrum_moments(activation, sigma_w, sigma_b, depth=depth, weights=weights, q0=q0)


@functools.lru_cache(maxsize=16)
def _density(
    activation: ActivationLike, sigma_w: float, sigma_b: float, depth: int, weights: str, upper: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predicted_spectral_density` on 300 points of ``[0, upper]``, remembered per arguments."""
    grid = np.linspace(0.0, upper, 300)
    return predicted_spectral_density(activation, sigma_w, sigma_b, depth, weights=weights, grid=grid)


def _density_figure(s: Tensor, x: np.ndarray, density: np.ndarray) -> Figure:
    """The histogram of the squared singular values (linear axis) under the predicted density."""
    fig, (ax,) = fixed_layout_figure(5, 3.2, reuse="jacobian_spectrum/density")
    lam = (s.detach().cpu().double() ** 2).flatten().numpy()
    ax.hist(lam, bins=np.linspace(0.0, x[-1], 60).tolist(), density=True, alpha=0.6, label="measured")
    shown = density.copy()
    shown[0] = (
        density[1] if len(density) > 1 else density[0]
    )  # an atom at 0 is a spike: leave it off the scale
    ax.plot(x, shown, "r", lw=1.2, label="free probability")
    ax.set_xlabel(r"squared singular value $\lambda$ of the input-output Jacobian")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig


def _layers_on_path(module: nn.Module, x: Tensor, output_layer: str | None) -> list[nn.Module]:
    """The leaf modules called by one forward, in order, up to and including ``output_layer``."""
    target = module.get_submodule(output_layer) if output_layer else None
    watched = [(n, m) for n, m in module.named_modules() if not list(m.children()) or m is target]
    calls = [m for _, m, _ in recorded_calls(module, x, watched)]
    if target is not None and target in calls:
        calls = calls[: calls.index(target) + 1]
    return [m for m in calls if isinstance(m, nn.Linear) or m is calls[-1]]


def _spectrum_figure(s: Tensor, theory_mean_sq: float | None) -> Figure:
    fig, (ax,) = fixed_layout_figure(5, 3.2, reuse="jacobian_spectrum/spectrum")
    all_values = s.detach().cpu().double().flatten().numpy()
    # numerical zeros (dead ReLU units: 0, or 1e-10 of the largest value and below) stay off the log axis
    floor = max(float(all_values.max()), 1e-300) * 1e-10
    values = all_values[all_values > floor]
    zeros = len(all_values) - len(values)
    values = values if len(values) else np.array([floor])
    bins = np.geomspace(values.min(), values.max() * (1 + 1e-9), 50)  # exact ends: no value left out
    counts, _ = np.histogram(values, bins=bins)
    # the fraction per bin: a density per unit of a log-spaced axis would swell the narrow bins
    label = "measured" if zeros == 0 else f"measured ({zeros} of {len(all_values)} numerical zeros left out)"
    ax.stairs(counts / len(all_values), bins, fill=True, alpha=0.7, label=label)  # one artist
    ax.axvline(math.sqrt(float((all_values**2).mean())), color="k", ls="--", label="measured RMS")
    if theory_mean_sq is not None and theory_mean_sq > 0:
        ax.axvline(math.sqrt(theory_mean_sq), color="r", label=r"theory RMS $\sqrt{\chi^L}$")
    ax.set_xscale("log")
    ax.minorticks_off()  # a log axis's minor ticks are most of the cost of drawing it
    ax.set_xlabel("singular value of the input-output Jacobian")
    ax.set_ylabel("fraction of singular values")
    ax.legend(fontsize=8)
    return fig
