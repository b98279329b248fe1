"""Signal propagation at initialisation: measurement beside mean-field theory (Poole 2016, Schoenholz 2017).

The theory -- the q-map and c-map of ``h^l = W^l phi(h^{l-1}) + b^l``, their fixed points
``q*`` and ``c*``, ``chi_1``, the depth scale and the edge of chaos -- lives in
:mod:`plugins.mean_field` (its names are importable from here too). This module measures the same
quantities in any model built from ``nn.Linear`` layers: :func:`preactivation_variances` gives
``q^l`` and :func:`correlation_propagation` gives ``c^l``; :class:`InitStatistics` puts
measurement and theory side by side during a fit.

Example:
    >>> round(q_star("tanh", 1.5, 0.1), 6)
    0.813322
    >>> round(chi_1("relu", 2 ** 0.5, 0.0), 6)
    1.0
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from plugins.base import (
    DiagnosticCallback,
    ProbeResult,
    find_layers,
    fixed_layout_figure,
    probe_inputs,
    require_layers,
)
from plugins.checks import PluginConfigError
from plugins.forward import ForwardFn, probes_through_forward_fn
from plugins.mean_field import (
    ACTIVATION_NAMES,
    ActivationLike,
    c_map,
    c_map_iterates,
    c_star,
    chi_1,
    chi_c,
    critical_sigma_w,
    depth_scale,
    derivative_moments,
    q_map,
    q_map_iterates,
    q_star,
    reference_q,
)

__all__ = [
    "ACTIVATION_NAMES",
    "ActivationLike",
    "InitStatistics",
    "c_map",
    "c_map_iterates",
    "c_star",
    "chi_1",
    "chi_c",
    "critical_sigma_w",
    "correlation_propagation",
    "depth_scale",
    "derivative_moments",
    "describe_init",
    "preactivation_variances",
    "q_map",
    "q_map_iterates",
    "q_star",
    "reference_q",
]


# --------------------------------------------------------------------------- measurement
def _preactivations(model: nn.Module, x: Tensor, layer_types: tuple[type, ...]) -> list[Tensor]:
    """The outputs of every layer of the given types, flattened per sample, in call order."""
    layers: list[tuple[str, nn.Module]] = find_layers(model, layer_types)
    if not layers:
        names = "/".join(t.__name__ for t in layer_types)
        raise PluginConfigError(
            f"{type(model).__name__} has no {names} layer whose pre-activations could be measured"
        )
    seen: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach())) for _, m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [h.reshape(h.shape[0], -1).double() for h in seen]


def preactivation_variances(
    model: nn.Module, x: Tensor, layer_types: tuple[type, ...] = (nn.Linear,)
) -> Tensor:
    """Measured ``q^l``: the mean squared pre-activation per unit, averaged over the inputs ``x``.

    The pre-activations are the outputs of the model's ``nn.Linear`` layers (or ``layer_types``),
    one entry per layer call, in call order. The model's mode is used as it is.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
        >>> _ = nn.init.ones_(net[0].weight)
        >>> preactivation_variances(net, torch.ones(5, 4))[0].item()
        16.0
    """
    return torch.stack([(h**2).mean() for h in _preactivations(model, x, layer_types)])


def correlation_propagation(
    model: nn.Module, x_a: Tensor, x_b: Tensor, layer_types: tuple[type, ...] = (nn.Linear,)
) -> Tensor:
    """Measured ``c^l``: the cosine of the pre-activations of paired inputs, averaged over pairs.

    ``c^l = <h^l(x_a), h^l(x_b)> / (|h^l(x_a)| |h^l(x_b)|)`` for the pairs ``(x_a[i], x_b[i])``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8))
        >>> x = torch.randn(4, 3)
        >>> [round(c, 12) for c in correlation_propagation(net, x, x).tolist()]
        [1.0, 1.0]
    """
    if x_a.shape != x_b.shape:
        raise PluginConfigError(
            f"x_a and x_b must pair up, got shapes {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    hs = _preactivations(model, torch.cat([x_a, x_b]), layer_types)
    n = len(x_a)
    return torch.stack([torch.nn.functional.cosine_similarity(h[:n], h[n:], dim=1).mean() for h in hs])


def describe_init(module: nn.Module) -> dict[str, Any] | None:
    """``activation``, ``sigma_w``, ``sigma_b`` and ``init`` of the first submodule that states them
    (as ``DeepMLP`` does), or ``None``: the plugins then show measurements without theory.

    Example:
        >>> describe_init(nn.Linear(2, 2)) is None
        True
    """
    for m in module.modules():
        values = {k: getattr(m, k, None) for k in ("activation", "sigma_w", "sigma_b")}
        if None not in values.values() and values["activation"] in ACTIVATION_NAMES:
            return {**values, "init": getattr(m, "init", "gaussian")}
    return None


# --------------------------------------------------------------------------- callback
class InitStatistics(DiagnosticCallback):
    """Per-layer ``q^l`` and ``c^l`` on a fixed probe batch, with the mean-field prediction overlaid.

    The probe batch's first half is paired with its second half for ``c^l``. When the model states
    ``activation``, ``sigma_w`` and ``sigma_b`` (``DeepMLP`` does), the q-map and covariance-map
    iterates from the probe inputs' own ``q0`` and ``c0`` are logged beside the measurement, with
    ``q_star`` and ``chi_1``. Logged per probe: ``init_statistics/q_layer_<l>``, ``c_layer_<l>``,
    their ``*_theory`` twins and ``q_max_rel_error``, ``c_max_abs_error``; one figure per probe.

    Needs: ``pl_module(x)`` (or ``forward_fn``) and ``nn.Linear`` layers. Under DDP global rank zero
    probes alone (one forward through every layer: nothing worth splitting), with no collective inside.

    Args:
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed`` of :class:`~plugins.base.DiagnosticCallback` (default: at init only, 256 inputs).

    Example:
        >>> cb = InitStatistics(every_n_steps=100)
        >>> net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64))
        >>> sorted(cb.probe(net, torch.randn(16, 4)).scalars)[:2]
        ['c_layer_01', 'c_layer_02']
    """

    name = "init_statistics"
    needs_forward = True

    def __init__(
        self,
        forward_fn: ForwardFn | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(**schedule)
        self.forward_fn = forward_fn
        if self.probe_size < 2:
            raise PluginConfigError(
                f"InitStatistics(probe_size={self.probe_size}): c^l pairs inputs, so use probe_size >= 2"
            )
        # the mean-field curves depend only on the fixed probe batch and the init: one computation
        # (~0.2 s of quadrature for 32 layers) serves every probe of a run
        self._theory: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    def check_module(self, pl_module: L.LightningModule) -> None:
        require_layers(type(self).__name__, pl_module, nn.Linear)

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        x = probe_inputs(batch)
        half = len(x) // 2
        q = preactivation_variances(pl_module, x).cpu().numpy()
        c = correlation_propagation(pl_module, x[:half], x[half : 2 * half]).cpu().numpy()
        scalars: dict[str, float] = {}
        arrays: dict[str, Any] = {"q": q, "c": c}
        for l, (ql, cl) in enumerate(zip(q, c, strict=True), start=1):
            scalars[f"q_layer_{l:02d}"], scalars[f"c_layer_{l:02d}"] = float(ql), float(cl)
        spec = describe_init(pl_module)
        theory_q = theory_c = None
        if spec is not None:
            flat = x.reshape(len(x), -1).double()
            q0 = float((flat**2).mean())
            c0 = float(torch.nn.functional.cosine_similarity(flat[:half], flat[half : 2 * half]).mean())
            args = (spec["activation"], float(spec["sigma_w"]), float(spec["sigma_b"]))
            key = (*args, q0, c0, len(q))
            if key not in self._theory:
                self._theory[key] = (q_map_iterates(*args, q0, len(q)), c_map_iterates(*args, c0, len(c), q0))
            theory_q, theory_c = self._theory[key]
            arrays.update(q_theory=theory_q, c_theory=theory_c)
            for l, (ql, cl) in enumerate(zip(theory_q, theory_c, strict=True), start=1):
                scalars[f"q_layer_{l:02d}_theory"], scalars[f"c_layer_{l:02d}_theory"] = float(ql), float(cl)
            scalars["q_max_rel_error"] = float(np.max(np.abs(q / theory_q - 1)))
            scalars["c_max_abs_error"] = float(np.max(np.abs(c - theory_c)))
            scalars["chi_1"] = chi_1(*args, q=float(theory_q[-1]))
        figure = lambda: _q_c_figure(q, c, theory_q, theory_c)  # noqa: E731  (drawn beside training)
        return ProbeResult(scalars=scalars, arrays=arrays, figures={"q_c": figure})


def _q_c_figure(
    q: np.ndarray, c: np.ndarray, theory_q: np.ndarray | None, theory_c: np.ndarray | None
) -> Figure:
    fig, (ax_q, ax_c) = fixed_layout_figure(8, 3.2, ncols=2, reuse="init_statistics/q_c")
    layers = np.arange(1, len(q) + 1)
    for ax, measured, theory, label in ((ax_q, q, theory_q, "q^l"), (ax_c, c, theory_c, "c^l")):
        ax.plot(layers, measured, "o", label="measured")
        if theory is not None:
            ax.plot(layers, theory, "-", label="mean-field theory")
        ax.set_xlabel("layer l")
        ax.set_ylabel(f"${label}$")
        ax.legend(fontsize=8)
    ax_q.set_yscale("log")
    ax_q.minorticks_off()  # a log axis's minor ticks are most of the cost of drawing it
    return fig
