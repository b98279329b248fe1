"""Optimisers beyond ``torch.optim``: the full-memory quasi-Newton BFGS, and sharpness-aware minimisation.

:class:`SAM` (Foret et al. 2021; ASAM, Kwon et al. 2021, with ``adaptive=True``) takes each step of a
base optimiser with the gradient at the worst point of a small ball around the weights; both take a
closure, so Lightning's automatic optimisation drives them as it drives ``torch.optim.LBFGS``, and
``tdl`` chooses them by name (``--optimizer SAM --optimizer.rho 0.05``).

BFGS: self-scaling and a strong Wolfe line search.

For models of up to some thousands of weights (PINNs, small regression nets), a dense inverse-Hessian
approximation costs little next to one loss evaluation and converges in far fewer iterations than
L-BFGS's limited memory. The self-scaling (Al-Baali) enlarges the approximation where it
underestimates the inverse curvature along the last step and never shrinks it.

Example:
    >>> w = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    >>> optimizer = BFGS([w], max_iter=100)
    >>> def closure():
    ...     optimizer.zero_grad()
    ...     loss = (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2  # Rosenbrock
    ...     loss.backward()
    ...     return loss
    >>> _ = optimizer.step(closure)
    >>> [round(v, 4) for v in w.detach().tolist()]
    [1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypedDict, Unpack

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from typing_extensions import override

from tdl_lightning.errors import ConfigError

__all__ = ["BFGS", "MAX_BFGS_WEIGHTS", "SAM", "SAMBaseArguments"]

MAX_BFGS_WEIGHTS = 20_000  # a dense n x n float64 matrix of 3.2 GB beyond this: use L-BFGS


def _cubic_minimum(
    t1: float, f1: float, d1: float, t2: float, f2: float, d2: float, low: float, high: float
) -> float:
    """The minimiser in ``[low, high]`` of the cubic through two points with their slopes (Nocedal &
    Wright eq. 3.59); the interval's midpoint where the cubic has none."""
    if t1 == t2:
        return (low + high) / 2
    e = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    disc = e * e - d1 * d2
    if disc < 0:
        return (low + high) / 2
    root = math.copysign(math.sqrt(disc), t2 - t1)
    denominator = d2 - d1 + 2 * root
    if denominator == 0:
        return (low + high) / 2
    t = t2 - (t2 - t1) * (d2 + root - e) / denominator
    return min(max(t, low), high) if math.isfinite(t) else (low + high) / 2


class _LineSearch:
    """Strong Wolfe line search (Nocedal & Wright, algorithms 3.5 and 3.6) along ``direction``.

    ``evaluate(t)`` returns ``(loss, gradient)`` at ``x + t direction``. The result is the accepted
    step with its loss and gradient, or the best point seen when ``max_evals`` runs out.
    """

    def __init__(
        self,
        evaluate: Callable[[float], tuple[float, Tensor]],
        direction: Tensor,
        f0: float,
        slope0: float,
        c1: float,
        c2: float,
        max_evals: int,
        tolerance_change: float,
    ) -> None:
        self.evaluate, self.direction = evaluate, direction
        self.f0, self.slope0, self.c1, self.c2 = f0, slope0, c1, c2
        self.max_evals, self.tolerance_change = max_evals, tolerance_change
        self.evals = 0

    def _at(self, t: float) -> tuple[float, Tensor, float]:
        self.evals += 1
        f, g = self.evaluate(t)
        return f, g, float(g @ self.direction)

    def _sufficient(self, t: float, f: float) -> bool:
        return f <= self.f0 + self.c1 * t * self.slope0

    def _curvature(self, slope: float) -> bool:
        return abs(slope) <= -self.c2 * self.slope0

    def search(self, t: float, g0: Tensor) -> tuple[float, float, Tensor]:
        """The step length, loss and gradient accepted."""
        prev = (0.0, self.f0, g0, self.slope0)
        while True:
            f, g, slope = self._at(t)
            if not math.isfinite(f) or not self._sufficient(t, f) or (self.evals > 1 and f >= prev[1]):
                return self._zoom(prev, (t, f, g, slope))
            if self._curvature(slope):
                return t, f, g
            if slope >= 0:
                return self._zoom((t, f, g, slope), prev)
            if self.evals >= self.max_evals:
                return t, f, g
            t_next = _cubic_minimum(prev[0], prev[1], prev[3], t, f, slope, 2 * t, 10 * t)
            prev = (t, f, g, slope)
            t = t_next

    def _zoom(
        self, low: tuple[float, float, Tensor, float], high: tuple[float, float, Tensor, float]
    ) -> tuple[float, float, Tensor]:
        """Shrink ``[low, high]`` (``low`` meets the sufficient decrease with the lower loss) to a point
        that meets both Wolfe conditions."""
        while self.evals < self.max_evals:
            a, b = sorted((low[0], high[0]))
            width = b - a
            if width * float(self.direction.abs().max()) < self.tolerance_change:
                break
            high_f = high[1] if math.isfinite(high[1]) else low[1] + abs(low[1]) + 1.0
            t = _cubic_minimum(
                low[0], low[1], low[3], high[0], high_f, high[3], a + 0.1 * width, b - 0.1 * width
            )
            f, g, slope = self._at(t)
            if not math.isfinite(f) or not self._sufficient(t, f) or f >= low[1]:
                high = (t, f, g, slope)
                continue
            if self._curvature(slope):
                return t, f, g
            if slope * (high[0] - low[0]) >= 0:
                high = low
            low = (t, f, g, slope)
        return low[0], low[1], low[2]


class BFGS(torch.optim.Optimizer):
    """BFGS with a dense inverse-Hessian approximation, self-scaling, and a strong Wolfe line search.

    Used like ``torch.optim.LBFGS``: ``optimizer.step(closure)`` runs up to ``max_iter`` iterations,
    each a line search along ``-H g`` and a rank-two update of ``H``; the closure recomputes the loss
    and its gradient. The first update scales ``H`` to ``(y's / y'y) I``; later updates multiply the
    part carried over from ``H`` by ``max(1, y's / y'Hy)`` when ``self_scaling`` (Al-Baali's choice:
    the approximation is enlarged where it underestimates the inverse curvature, never shrunk). For
    PINNs this reaches a given loss in several times fewer iterations than L-BFGS.

    Memory and time: ``H`` is ``n x n`` in the weights' dtype, so the optimizer refuses more than
    :data:`MAX_BFGS_WEIGHTS` weights; each iteration costs ``O(n^2)`` on top of the closure calls.

    Why written here: torch has only the limited-memory ``LBFGS`` (no dense ``H``, no self-scaling) and
    keeps its strong Wolfe search private (``torch.optim.lbfgs._strong_wolfe``); the weights go in and
    out of one vector with ``torch.nn.utils.parameters_to_vector``/``vector_to_parameters``.

    Args:
        params: the weights (one parameter group).
        lr: the first step length tried in every line search after the first iteration.
        max_iter: iterations per ``step``.
        max_eval: closure calls per ``step`` (default ``1.25 * max_iter``).
        tolerance_grad: stop when the largest gradient entry falls below this.
        tolerance_change: stop when the loss or the step changes by less than this.
        self_scaling: Al-Baali's self-scaling (``False``: plain BFGS).
        c1: sufficient-decrease constant of the line search.
        c2: curvature constant of the line search (strong Wolfe).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> a = torch.randn(8, 3, dtype=torch.float64)
        >>> w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        >>> optimizer = BFGS([w], max_iter=20)
        >>> def closure():
        ...     optimizer.zero_grad()
        ...     loss = (a @ w - 1).square().sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = optimizer.step(closure)
        >>> exact = torch.linalg.lstsq(a, torch.ones(8, 1, dtype=torch.float64)).solution[:, 0]
        >>> bool(torch.allclose(w, exact))
        True
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        self_scaling: bool = True,
        c1: float = 1e-4,
        c2: float = 0.9,
    ) -> None:
        if not lr > 0:
            raise ConfigError(f"BFGS lr={lr}: use a positive first step length such as 1.0")
        if max_iter < 1:
            raise ConfigError(f"BFGS max_iter={max_iter}: use at least 1")
        if not 0 < c1 < c2 < 1:
            raise ConfigError(f"BFGS needs 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval if max_eval is not None else math.ceil(1.25 * max_iter),
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            self_scaling=self_scaling,
            c1=c1,
            c2=c2,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ConfigError("BFGS takes one parameter group (it keeps one matrix for all weights)")
        self._params: list[Tensor] = self.param_groups[0]["params"]
        size = sum(p.numel() for p in self._params)
        if size > MAX_BFGS_WEIGHTS:
            raise ConfigError(
                f"BFGS keeps a dense {size} x {size} matrix; that is too large beyond "
                f"{MAX_BFGS_WEIGHTS} weights: use torch.optim.LBFGS for this model"
            )

    def _flat_grad(self) -> Tensor:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        return parameters_to_vector(grads)

    def _flat_weights(self) -> Tensor:
        return parameters_to_vector(self._params).detach()  # a new tensor (cat copies)

    def _set_weights(self, flat: Tensor) -> None:
        vector_to_parameters(flat, self._params)

    def _evaluator(
        self, closure: Callable[[], Tensor], x: Tensor, direction: Tensor
    ) -> Callable[[float], tuple[float, Tensor]]:
        """``t -> (loss, gradient)`` at the weights ``x + t direction`` (left in the model)."""

        def evaluate(t: float) -> tuple[float, Tensor]:
            self._set_weights(x + t * direction)
            value = float(closure().detach())
            return value, self._flat_grad()

        return evaluate

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """Up to ``max_iter`` BFGS iterations; returns the (detached) loss at the starting weights.

        Example:
            >>> w = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
            >>> optimizer = BFGS([w])
            >>> def closure():
            ...     optimizer.zero_grad()
            ...     loss = (w - 1).square().sum()
            ...     loss.backward()
            ...     return loss
            >>> float(optimizer.step(closure)), round(w.item(), 8)
            (4.0, 1.0)
        """
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        state = self.state[self._params[0]]
        state.setdefault("n_iter", 0)
        state.setdefault("func_evals", 0)

        first_loss = closure()
        f, g = float(first_loss.detach()), self._flat_grad()
        evals = 1
        state["func_evals"] += 1
        if not math.isfinite(f):
            raise FloatingPointError(f"BFGS: the loss is {f} at the current weights; nothing to optimise")
        if float(g.abs().max()) <= group["tolerance_grad"]:
            return first_loss.detach()
        x = self._flat_weights()
        inverse = state.get("inverse_hessian")
        for _ in range(group["max_iter"]):
            direction = -g if inverse is None else -(inverse @ g)
            slope = float(g @ direction)
            if not slope < 0:  # not a descent direction (rounding): restart from the gradient
                inverse, direction, slope = None, -g, -float(g @ g)
            t0 = group["lr"] if inverse is not None else min(1.0, 1.0 / float(g.abs().sum())) * group["lr"]

            search = _LineSearch(
                self._evaluator(closure, x, direction),
                direction,
                f,
                slope,
                group["c1"],
                group["c2"],
                max(1, min(25, group["max_eval"] - evals)),
                group["tolerance_change"],
            )
            t, f_new, g_new = search.search(t0, g)
            evals += search.evals
            state["func_evals"] += search.evals
            if t == 0:  # no step length decreased the loss: converged to rounding
                self._set_weights(x)
                break
            state["n_iter"] += 1
            s = t * direction
            x = x + s
            self._set_weights(x)
            y = g_new - g
            ys = float(y @ s)
            if ys > 1e-10 * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)):
                if inverse is None:
                    inverse = torch.eye(len(x), dtype=x.dtype, device=x.device) * (ys / float(y @ y))
                hy = inverse @ y
                yhy = float(y @ hy)
                rho = 1.0 / ys
                scale = max(1.0, ys / yhy) if group["self_scaling"] else 1.0
                inverse.mul_(scale)
                inverse.addr_(s, hy, alpha=-scale * rho)
                inverse.addr_(hy, s, alpha=-scale * rho)
                inverse.addr_(s, s, alpha=scale * rho * rho * yhy + rho)
            change = abs(f_new - f)
            f, g = f_new, g_new
            if (
                float(g.abs().max()) <= group["tolerance_grad"]
                or float(s.abs().max()) <= group["tolerance_change"]
                or change < group["tolerance_change"]
                or evals >= group["max_eval"]
            ):
                break
        state["inverse_hessian"] = inverse
        state["loss"] = f
        return first_loss.detach()


class SAMBaseArguments(TypedDict, total=False):
    """The base optimiser's arguments that :class:`SAM` passes on: those of SGD, Adam/AdamW and RMSprop.

    ``tdl`` accepts these as ``--optimizer.<name>`` (``--optimizer SAM --optimizer.lr 0.1
    --optimizer.momentum 0.9``); a key the base optimiser does not take is refused with one line.

    Example:
        >>> SAMBaseArguments(lr=0.1, momentum=0.9)
        {'lr': 0.1, 'momentum': 0.9}
    """

    lr: float
    momentum: float
    dampening: float
    nesterov: bool
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    amsgrad: bool
    alpha: float
    centered: bool


def _base_optimizer_class(base_optimizer: str | type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The base optimiser's class from its ``torch.optim`` name (or the class itself)."""
    stepping = {
        name: c
        for name, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and name not in ("Optimizer", "LBFGS")
    }
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
        return base_optimizer
    if base_optimizer in stepping:
        return stepping[str(base_optimizer)]
    raise ConfigError(
        f"SAM base_optimizer={base_optimizer!r}: use the name of a torch.optim optimizer that steps once "
        f"per gradient ({', '.join(sorted(stepping))}) or such a class"
    )


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021): a base optimiser's step with the gradient at
    the worst point of a ball of radius ``rho`` around the weights.

    Each :meth:`step` calls the closure twice: at the weights ``w`` (gradient ``g``), then at the
    ascent point ``w + e`` with ``e = rho g / ||g||``; the weights go back to ``w`` and the base
    optimiser steps with the second gradient. ``adaptive=True`` is ASAM (Kwon et al. 2021): the ball
    is scaled per weight by ``|w|``, ``e = rho T^2 g / ||T g||`` with ``T = diag(|w|)``, so the
    sharpness it sees does not change when a layer's weights are rescaled. Norms are taken over all
    parameter groups together; each group may set its own ``rho`` and ``adaptive``.

    Lightning's automatic optimisation hands its closure (``training_step`` and ``backward``) to
    ``step``, as it does for ``torch.optim.LBFGS``; so each training step runs ``training_step``
    twice, and the ``train/`` metrics of the epoch average both evaluations (at ``w`` and at
    ``w + e``): compare runs on ``val/`` metrics. The state dict holds the base optimiser's state
    (momentum buffers, Adam's moments), so a resumed run continues where it was.

    Args:
        params: the weights, or parameter groups.
        base_optimizer: a ``torch.optim`` optimiser's name (``"SGD"``, ``"Adam"``, ...) or class.
        rho: the radius of the ball (the neighbourhood whose worst loss is minimised).
        adaptive: ASAM's scale-invariant ball.
        **base_kwargs: the base optimiser's arguments (``lr``, ``momentum``, ``weight_decay``, ...:
            :class:`SAMBaseArguments`).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> optimizer = SAM([w], "SGD", rho=0.5, lr=0.1)
        >>> def closure():
        ...     optimizer.zero_grad()
        ...     loss = 0.5 * (w * torch.tensor([1.0, 3.0]) * w).sum()  # gradient (w1, 3 w2)
        ...     loss.backward()
        ...     return loss
        >>> float(optimizer.step(closure))  # the loss at w
        2.0
        >>> [round(v, 4) for v in w.detach().tolist()]  # w - 0.1 A (w + 0.5 g / ||g||)
        [0.8842, 0.5577]
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: str | type[torch.optim.Optimizer] = "SGD",
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Unpack[SAMBaseArguments],
    ) -> None:
        if not rho >= 0:
            raise ConfigError(f"SAM rho={rho}: use a radius >= 0 such as 0.05 (0 is the base optimiser)")
        base_class = _base_optimizer_class(base_optimizer)
        arguments: dict[str, Any] = dict(base_kwargs)
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **arguments))
        try:
            self.base_optimizer = base_class(self.param_groups, **arguments)
        except TypeError as err:
            raise ConfigError(f"SAM base_optimizer {base_class.__name__}: {err}") from err
        self._share_with_base()
        self.defaults.update(self.base_optimizer.defaults)

    def _share_with_base(self) -> None:
        """One list of parameter groups and one state for SAM and its base, so that LR schedulers,
        ``state_dict`` and ``load_state_dict`` see the base optimiser's settings and buffers."""
        self.param_groups = self.base_optimizer.param_groups
        self.base_optimizer.state = self.state

    @torch.no_grad()
    def _ascend(self) -> None:
        """Move the weights to the ascent point ``w + e``, remembering ``e``."""
        adaptive = [bool(group["adaptive"]) for group in self.param_groups]
        scaled = [
            (p.abs() * p.grad if adaptive_ else p.grad).norm()
            for group, adaptive_ in zip(self.param_groups, adaptive, strict=True)
            for p in group["params"]
            if p.grad is not None
        ]
        norm = torch.stack(scaled).norm() if scaled else None
        for group, adaptive_ in zip(self.param_groups, adaptive, strict=True):
            scale = group["rho"] / (norm + 1e-12) if norm is not None else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (p.square() if adaptive_ else 1.0) * p.grad * scale
                p.add_(e)
                self.state[p]["sam_e"] = e

    @torch.no_grad()
    def _descend(self) -> None:
        """Back to ``w`` and the base optimiser's step with the gradient taken at ``w + e``."""
        for group in self.param_groups:
            for p in group["params"]:
                e = self.state[p].pop("sam_e", None)
                if e is not None:
                    p.sub_(e)
        self.base_optimizer.step()

    @override
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One SAM step; the closure (zero the gradients, loss, backward) is called twice.

        Returns the loss at the weights before the step (the first closure's, detached).

        Example:
            >>> w = torch.nn.Parameter(torch.tensor([2.0]))
            >>> optimizer = SAM([w], rho=0.0, lr=0.25)  # rho = 0: plain SGD
            >>> def closure():
            ...     optimizer.zero_grad()
            ...     loss = (w**2).sum()
            ...     loss.backward()
            ...     return loss
            >>> float(optimizer.step(closure)), float(w.detach())
            (4.0, 1.0)
        """
        if closure is None:
            raise ConfigError(
                "SAM.step needs a closure that zeroes the gradients, computes the loss and calls backward: "
                "it evaluates the gradient twice per step (Lightning's automatic optimisation passes one)"
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        self._ascend()
        closure()
        self._descend()
        return loss.detach()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        self.base_optimizer.state = self.state
