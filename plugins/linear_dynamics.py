"""Exact learning dynamics of deep linear networks (Saxe, McClelland & Ganguli 2014).

A linear network ``y = W_L ... W_1 x`` trained by gradient descent on the squared error with
whitened inputs (``E[x x^T] = I``) sees the data only through the input-output correlation
``Sigma_yx = E[y x^T] = U S V^T``. From a balanced start whose end-to-end map is diagonal in
the same singular vectors, every mode ``alpha`` evolves alone: its strength
``u = u_alpha^T W_L ... W_1 v_alpha`` obeys ``tau du/dt = 2 u (s - u)`` for two layers, a logistic
curve that takes a time ``~ tau / s * ln(s / u0)``: strong modes are learnt first, each after a
plateau, in sudden drops of the loss. Deeper nets (``L`` layers) follow
``tau du/dt = L u^(2 - 2/L) (s - u)``.

:func:`saxe_mode_strength` is the two-layer solution, :func:`deep_mode_strength` the ``L``-layer
one (integrated numerically), :func:`mode_strengths` measures ``diag(U^T W_L ... W_1 V)`` in a
model, and :class:`LinearDynamics` puts measurement and theory side by side during a fit.

Example:
    >>> t = torch.tensor([0.0, 1e6])
    >>> saxe_mode_strength(t, s=2.0, u0=1e-3, tau=1.0).tolist()  # from u0 to s
    [0.001, 2.0]
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from scipy.integrate import solve_ivp
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import DiagnosticCallback, ProbeResult, find_layers, fixed_layout_figure, probe_inputs
from plugins.checks import PluginConfigError, check_whole_number
from plugins.expressivity import PIECEWISE_LINEAR, SMOOTH
from plugins.forward import ForwardFn, probes_through_forward_fn

NOT_IN_A_DEEP_LINEAR_NET: tuple[type[nn.Module], ...] = (
    *PIECEWISE_LINEAR,
    *SMOOTH,
    nn.Softmax,
    nn.LogSoftmax,
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
)
"""Layers that a deep linear net (Saxe et al.'s: ``nn.Linear`` layers and identity activations) lacks:
:class:`LinearDynamics` refuses a module that holds one, at setup."""

__all__ = [
    "NOT_IN_A_DEEP_LINEAR_NET",
    "LinearDynamics",
    "deep_mode_strength",
    "end_to_end_map",
    "input_output_correlation",
    "mode_strengths",
    "saxe_mode_strength",
    "time_to_learn",
]


def saxe_mode_strength(t: Tensor | float, s: float, u0: float, tau: float) -> Tensor:
    """The strength of one mode of a two-layer linear net: the logistic curve of Saxe et al. (2014).

    ``u(t) = s e^{2st/tau} / (e^{2st/tau} - 1 + s/u0)``, the solution of ``tau du/dt = 2 u (s - u)``
    with ``u(0) = u0 > 0`` (Saxe et al. 2014, eq. 7),
    for a mode of singular value ``s`` of the input-output correlation. With gradient descent of
    learning rate ``lr`` on ``1/2`` the mean squared error summed over outputs, ``tau = 1 / lr``
    in steps; on ``torch.nn.functional.mse_loss`` (also averaged over ``K`` outputs) ``tau = K / (2 lr)``.

    Example:
        >>> round(float(saxe_mode_strength(0.5 * math.log(2 / 0.01 - 1), 2.0, 0.01, 2.0)), 6)  # half-way
        1.0
    """
    if not (s > 0 and u0 > 0 and tau > 0):
        raise PluginConfigError(f"s, u0 and tau must be > 0, got s={s}, u0={u0}, tau={tau}")
    t = torch.as_tensor(t, dtype=torch.float64)
    x = 2.0 * s * t / tau
    # divide through by e^x: stable for large x (u -> s), exact at x = 0 (u = u0)
    return s / (1.0 - torch.exp(-x) * (1.0 - s / u0))


def deep_mode_strength(t: Tensor | float, s: float, u0: float, tau: float, depth: int) -> Tensor:
    """The strength of one mode of a balanced ``depth``-layer linear net.

    It solves ``tau du/dt = depth u^(2-2/depth) (s - u)``.

    Integrated numerically (``scipy.integrate.solve_ivp``, LSODA, relative tolerance 1e-10);
    ``depth=2`` is :func:`saxe_mode_strength`'s equation, ``depth=1`` the linear model's
    exponential approach ``tau du/dt = s - u``.

    Example:
        >>> t = torch.linspace(0, 5, 3)
        >>> torch.allclose(deep_mode_strength(t, 2.0, 0.01, 1.0, 2), saxe_mode_strength(t, 2.0, 0.01, 1.0))
        True
    """
    if not (s > 0 and u0 > 0 and tau > 0) or not isinstance(depth, int) or depth < 1:
        raise PluginConfigError(
            f"s, u0, tau must be > 0 and depth a whole number >= 1, got {s}, {u0}, {tau}, {depth}"
        )
    times = np.atleast_1d(torch.as_tensor(t, dtype=torch.float64).numpy())
    order = np.argsort(times)

    def rate(_t: float, u: np.ndarray) -> np.ndarray:
        return depth * np.abs(u) ** (2.0 - 2.0 / depth) * (s - u) / tau

    span = (0.0, float(max(times.max(), 0.0)))
    if span[1] == 0.0:
        return torch.full(torch.as_tensor(t).shape, u0, dtype=torch.float64)
    sol = solve_ivp(rate, span, [u0], t_eval=times[order], method="LSODA", rtol=1e-10, atol=1e-12 * s)
    values = np.empty_like(times)
    values[order] = sol.y[0]
    return torch.from_numpy(values).reshape(torch.as_tensor(t).shape)


def time_to_learn(s: float, u0: float, tau: float, fraction: float = 0.5) -> float:
    """The time a two-layer mode takes to reach ``fraction * s``: ``tau / (2 s) ln((s/u0 - 1) f / (1 - f))``.

    Example:
        >>> round(time_to_learn(2.0, 0.01, 1.0), 6) == round(math.log(199) / 4, 6)
        True
    """
    if not 0 < fraction < 1 or not u0 < fraction * s:
        raise PluginConfigError(
            f"fraction must be in (0, 1) and u0 < fraction * s, got {fraction}, u0={u0}, s={s}"
        )
    return tau / (2.0 * s) * math.log((s / u0 - 1.0) * fraction / (1.0 - fraction))


def end_to_end_map(model: nn.Module, input_dim: int) -> Tensor:
    """The matrix ``W_L ... W_1`` of a linear ``model`` (``K x d``): its outputs on the basis vectors
    minus its output at zero, so biases drop out. Evaluated as the model is (put it in ``eval()``).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        >>> torch.allclose(end_to_end_map(net, 3), net[1].weight @ net[0].weight, atol=1e-6)
        True
    """
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    basis = torch.cat(
        [
            torch.eye(input_dim, dtype=dtype, device=device),
            torch.zeros(1, input_dim, dtype=dtype, device=device),
        ]
    )
    with torch.no_grad():
        out = model(basis)
    return (out[:-1] - out[-1:]).T


def mode_strengths(model: nn.Module, u: Tensor, v: Tensor) -> Tensor:
    """``diag(U^T W_L ... W_1 V)``: the strength of each mode of the input-output correlation in ``model``.

    ``model`` is any deep linear network (a stack of ``nn.Linear`` with identity activations);
    ``u`` (``K x r``) and ``v`` (``d x r``) hold the left and right singular vectors as columns.

    Example:
        >>> net = nn.Linear(2, 2, bias=False)
        >>> _ = net.weight.data.copy_(torch.diag(torch.tensor([3.0, 0.5])))
        >>> mode_strengths(net, torch.eye(2), torch.eye(2)).tolist()
        [3.0, 0.5]
    """
    if u.dim() != 2 or v.dim() != 2 or u.shape[1] != v.shape[1]:
        raise PluginConfigError(
            f"u (K x r) and v (d x r) need as many columns, got {tuple(u.shape)} and {tuple(v.shape)}"
        )
    w = end_to_end_map(model, v.shape[0]).double()
    return ((u.double().to(w.device).T @ w) * v.double().to(w.device).T).sum(1).cpu()


def input_output_correlation(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """The SVD ``U S V^T`` of ``Sigma_yx = Y^T X / n``, and ``|X^T X / n - I|_max`` (0 for white inputs).

    Example:
        >>> x = 2 * torch.eye(4)
        >>> _, s, _, off = input_output_correlation(x, x @ torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0])))
        >>> s[:2].tolist(), off
        ([3.0, 1.0], 0.0)
    """
    x, y = x.double().reshape(len(x), -1), y.double().reshape(len(y), -1)
    u, s, vh = torch.linalg.svd(y.T @ x / len(x), full_matrices=False)
    whiteness = float((x.T @ x / len(x) - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)).abs().max())
    return u, s, vh.T, whiteness


class LinearDynamics(DiagnosticCallback):
    """The mode strengths of a deep linear net over training, beside Saxe et al.'s exact curves.

    At the first probe the input-output correlation of the probe batch gives the singular vectors
    ``U``, ``V`` and values ``s`` (or ``singular_values`` states them); every probe then logs
    ``linear_dynamics/mode_<a>`` (:func:`mode_strengths`) and ``mode_<a>_theory``: for two layers
    :func:`saxe_mode_strength`, deeper :func:`deep_mode_strength`, at the time since the first
    probe in optimizer steps, with ``u0`` the mode's effective initial strength (below). The figure
    shows measured (dots) over theory (lines), and the step at which each mode reached half its
    value against ``1/s`` (a line through the origin for two layers from equal ``u0``); it is
    drawn at init, at epoch ends and at the end, not at the step probes.

    ``tau`` defaults to ``K / (2 lr)`` with ``lr`` the first optimizer's learning rate: plain
    gradient descent on ``torch.nn.functional.mse_loss`` (mean over the batch and the ``K``
    outputs, the ``Regressor``'s loss); pass ``tau`` for another loss or optimizer. The theory
    is exact for white inputs (a warning is raised if the probe batch's second-moment matrix is
    off the identity by more than 0.05), full-batch gradient descent and balanced inits; from a
    small random init a two-layer mode's effective ``u0`` is ``|(W_1 v + W_2^T u) / 2|^2`` (the
    part of the two layers' vectors that grows; the rest decays), deeper ones use the measured
    strength at the first probe.

    Needs: ``pl_module(x)`` (or ``forward_fn``) linear in ``x``, its ``nn.Linear`` layers, and targets as the
        batch's
    second item.

    Args:
        singular_values: the data's singular values, if stated (else from the probe batch).
        tau: the time constant in optimizer steps (default from the learning rate, above).
        modes: how many of the strongest modes to follow (default all).
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: every step, 4096 samples).

    Example:
        >>> cb = LinearDynamics(tau=10.0)
        >>> x = torch.eye(3) * 3 ** 0.5
        >>> y = x @ torch.diag(torch.tensor([2.0, 1.0, 0.5]))
        >>> net = nn.Sequential(nn.Linear(3, 8, bias=False), nn.Linear(8, 3, bias=False))
        >>> scalars = cb.probe(net, (x, y)).scalars
        >>> [k for k in sorted(scalars) if k.startswith("mode_")]
        ['mode_0', 'mode_0_theory', 'mode_1', 'mode_1_theory', 'mode_2', 'mode_2_theory']
    """

    name = "linear_dynamics"
    needs_forward = True

    def __init__(
        self,
        singular_values: list[float] | None = None,
        tau: float | None = None,
        modes: int | None = None,
        forward_fn: ForwardFn | None = None,
        *,
        every_n_steps: int | None = 1,
        at_end: bool = True,
        probe_size: int = 4096,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_steps=every_n_steps, at_end=at_end, probe_size=probe_size, **schedule)
        self.forward_fn = forward_fn
        if tau is not None and not tau > 0:
            raise PluginConfigError(f"LinearDynamics(tau={tau}): the time constant must be > 0")
        check_whole_number("LinearDynamics", "modes", modes, none_means="all modes")
        self.singular_values = None if singular_values is None else [float(s) for s in singular_values]
        self.tau, self.modes = tau, modes
        self.u: Tensor | None = None
        self.v: Tensor | None = None
        self.s: Tensor | None = None
        self.u0: Tensor | None = None
        self.start_step = 0
        self.depth = 0

    def check_module(self, pl_module: L.LightningModule) -> None:
        if not find_layers(pl_module, nn.Linear):
            raise PluginConfigError(
                f"LinearDynamics follows deep linear nets, and {type(pl_module).__name__} has no nn.Linear "
                "layer: attach it to a stack of nn.Linear layers (e.g. DeepMLP with activation: linear)"
            )
        found = find_layers(pl_module, NOT_IN_A_DEEP_LINEAR_NET)
        if found:
            name, layer = found[0]
            raise PluginConfigError(
                f"LinearDynamics follows deep linear nets (nn.Linear layers, identity activations), and "
                f"{type(pl_module).__name__} has a {type(layer).__name__} at {name!r}: the exact solutions "
                "do not hold there; attach it to a stack of nn.Linear layers (e.g. DeepMLP with activation: "
                "linear)"
            )

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.tau is None:
            self._trainer = trainer

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        pl_module.eval()
        if self.u is None:
            self._start(pl_module, batch)
        assert self.u is not None and self.v is not None and self.s is not None and self.u0 is not None
        strengths = mode_strengths(pl_module, self.u, self.v)
        elapsed = max(self.last_probe_step, 0) - self.start_step
        tau = self._tau()
        theory = self._theory(torch.tensor([float(elapsed)]), tau)[:, 0]
        scalars: dict[str, float] = {}
        for a, (measured, predicted) in enumerate(zip(strengths.tolist(), theory.tolist(), strict=True)):
            scalars[f"mode_{a}"] = measured
            scalars[f"mode_{a}_theory"] = predicted
        scalars["max_abs_error"] = float((strengths - theory).abs().max())
        scalars["tau"] = tau
        figures = {} if self.probe_when == "step" else {"modes": self._figure(scalars, elapsed, tau)}
        return ProbeResult(
            scalars=scalars,
            arrays={"mode_strengths": strengths, "singular_values": self.s, "u0": self.u0},
            figures=figures,
        )

    def _start(self, pl_module: nn.Module, batch: Any) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise PluginConfigError("LinearDynamics needs (inputs, targets) batches to find the data's modes")
        x, y = probe_inputs(batch), batch[1]
        u, s, v, whiteness = input_output_correlation(x, y)
        if whiteness > 0.05:
            rank_zero_warn(
                f"LinearDynamics: the probe inputs' second moment is off the identity by {whiteness:.3g}; "
                "the exact solution assumes white inputs (TeacherStudent(whiten=True), probe_size >= "
                "the train set)"
            )
        r = int((s > 1e-6 * s[0]).sum())  # the rank of Sigma_yx: modes with no data are left out
        r = r if self.modes is None else min(self.modes, r)
        self.u, self.v, self.s = u[:, :r].cpu(), v[:, :r].cpu(), s[:r].cpu()
        if self.singular_values is not None:
            self.s = torch.tensor(self.singular_values[:r], dtype=torch.float64)
        layers = [m for _, m in find_layers(pl_module, nn.Linear) if isinstance(m, nn.Linear)]
        self.depth = len(layers)
        if self.depth == 2:
            first, second = (end_to_end_map(m, m.in_features).double().cpu() for m in layers)
            grow = 0.5 * (first @ self.v + second.T @ self.u)
            self.u0 = (grow**2).sum(0)
        else:
            self.u0 = mode_strengths(pl_module, self.u, self.v).abs()
        self.u0 = self.u0.clamp_min(1e-12)
        self.start_step = max(self.last_probe_step, 0)

    def _tau(self) -> float:
        if self.tau is not None:
            return float(self.tau)
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not trainer.optimizers:
            raise PluginConfigError(
                "LinearDynamics needs tau= when it is not attached to a fit with an optimizer"
            )
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        assert self.u is not None
        return self.u.shape[0] / (2.0 * lr)

    def _theory(self, t: Tensor, tau: float) -> Tensor:
        """``(modes, len(t))`` predicted strengths."""
        assert self.s is not None and self.u0 is not None
        rows = []
        for s, u0 in zip(self.s.tolist(), self.u0.tolist(), strict=True):
            if self.depth == 2:
                rows.append(saxe_mode_strength(t, s, u0, tau))
            else:
                rows.append(deep_mode_strength(t, s, u0, tau, max(self.depth, 1)))
        return torch.stack(rows)

    def _figure(self, latest: dict[str, float], elapsed: int, tau: float) -> Figure:
        assert self.s is not None
        fig, (ax, ax_t) = fixed_layout_figure(10, 3.4, ncols=2)
        steps = [h["step"] - self.start_step for h in self.history] + [elapsed]
        grid = torch.linspace(0, max(steps[-1], 1), 200, dtype=torch.float64)
        theory = self._theory(grid, tau)
        halves = []
        for a, s in enumerate(self.s.tolist()):
            values = [h.get(f"{self.name}/mode_{a}", math.nan) for h in self.history] + [latest[f"mode_{a}"]]
            (line,) = ax.plot(grid.numpy(), theory[a].numpy(), lw=1)
            ax.plot(steps, values, ".", color=line.get_color(), ms=3, label=f"s = {s:.3g}")
            reached = [t for t, value in zip(steps, values, strict=True) if value >= s / 2]
            halves.append((1 / s, reached[0] if reached else math.nan))
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(r"mode strength $u_\alpha$")
        ax.legend(fontsize=7)
        inverse, measured = zip(*halves, strict=True)
        ax_t.plot(inverse, measured, "o", label="measured")
        ax_t.set_xlabel(r"$1/s$")
        ax_t.set_ylabel("steps to reach s/2")
        ax_t.legend(fontsize=8)
        return fig

    @override
    def state_dict(self) -> dict[str, Any]:
        extra = {k: getattr(self, k) for k in ("u", "v", "s", "u0", "start_step", "depth")}
        return {**super().state_dict(), **extra}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for key in ("u", "v", "s", "u0"):
            setattr(self, key, state_dict.get(key))
        self.start_step, self.depth = int(state_dict.get("start_step", 0)), int(state_dict.get("depth", 0))
