"""The PINN's optimisation phases: Adam for some steps, then a quasi-Newton optimiser (L-BFGS or BFGS).

Each training step of the task is one step of the current phase. An Adam step is one loss evaluation
and one update; a quasi-Newton step is one ``optimizer.step(closure)`` that runs up to
``lbfgs_iters_per_step`` iterations, each with a strong Wolfe line search that calls the closure once
or more. :class:`OptimiserPhases` decides which phase a step belongs to, runs it, counts the
quasi-Newton iterations, reports each closure evaluation (iteration and loss) to a ``progress``
function (the task puts them on the progress bar), and says when training is over: after
``adam_steps + lbfgs_steps`` steps, or when a quasi-Newton step makes no iteration (converged to its
tolerances). :class:`CPUWeights` lets the quasi-Newton optimiser keep its vectors on the CPU while the
network sits on a GPU (``lbfgs_device="cpu"``).

The phases know nothing about Lightning: the task hands over its optimisers, an ``evaluate`` function
(loss and backward) and a ``progress`` function, which :class:`ProgressBarPostfix` turns into
``qn_iter`` and ``qn_loss`` on Lightning's TQDM progress bar while a long quasi-Newton step runs.

Example:
    >>> w = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    >>> adam = torch.optim.Adam([w], lr=0.1)
    >>> bfgs = make_quasi_newton("bfgs", [w], iters_per_step=20, history=10, dtype=torch.float64)
    >>> def evaluate():
    ...     loss = (w - 1).square().sum()
    ...     loss.backward()
    ...     return loss
    >>> phases = OptimiserPhases(adam_steps=2, quasi_newton_steps=1)
    >>> [phases.step(k, adam, bfgs, evaluate) for k in range(3)]  # the last step is the last one
    [False, False, True]
    >>> [round(v, 6) for v in w.detach().tolist()], phases.iterations
    ([1.0, 1.0], 2)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypedDict

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from tdl_lightning.errors import ConfigError
from tdl_lightning.optim import BFGS, MAX_BFGS_WEIGHTS

__all__ = ["QUASI_NEWTON", "CPUWeights", "OptimiserPhases", "ProgressBarPostfix", "make_quasi_newton"]

QUASI_NEWTON = ("lbfgs", "bfgs")

Progress = Callable[[int, float], None]  # (quasi-Newton iterations so far, loss just evaluated)


class _QuasiNewtonArgs(TypedDict):
    """The arguments that ``torch.optim.LBFGS`` and :class:`~tdl_lightning.optim.BFGS` share."""

    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float


def make_quasi_newton(
    kind: str, weights: list[Tensor], iters_per_step: int, history: int, dtype: torch.dtype
) -> torch.optim.Optimizer:
    """``torch.optim.LBFGS`` (``kind="lbfgs"``) or the dense :class:`~tdl_lightning.optim.BFGS`, with a
    strong Wolfe line search, unit first step and tolerances suited to ``dtype``.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        >>> lbfgs = make_quasi_newton("lbfgs", [w], iters_per_step=50, history=20, dtype=torch.float64)
        >>> type(lbfgs).__name__, lbfgs.defaults["max_eval"]
        ('LBFGS', 63)
    """
    if kind not in QUASI_NEWTON:
        raise ConfigError(f"unknown PINN quasi_newton {kind!r}: choose one of {list(QUASI_NEWTON)}")
    common = _QuasiNewtonArgs(
        lr=1.0,
        max_iter=iters_per_step,
        max_eval=math.ceil(1.25 * iters_per_step),
        tolerance_grad=1e-12 if dtype == torch.float64 else 1e-7,
        tolerance_change=1e-14 if dtype == torch.float64 else 1e-9,
    )
    if kind == "bfgs":
        size = sum(w.numel() for w in weights)
        if size > MAX_BFGS_WEIGHTS:
            raise ConfigError(
                f"PINN quasi_newton='bfgs' keeps a dense {size} x {size} matrix, too large beyond "
                f"{MAX_BFGS_WEIGHTS} weights: use quasi_newton: lbfgs for this network"
            )
        return BFGS(weights, **common)
    return torch.optim.LBFGS(weights, history_size=history, line_search_fn="strong_wolfe", **common)


class CPUWeights:
    """A CPU copy of a network's weights, for a quasi-Newton optimiser that works on the CPU.

    ``torch.optim.LBFGS`` turns GPU scalars into Python numbers twice per history entry per iteration
    (a device sync each); for a network of a few thousand weights those syncs set the pace on a GPU.
    With this copy the optimiser works on :attr:`weights` (CPU tensors); :meth:`evaluate` sends them
    to the network in one transfer, runs the loss and backward there, and brings the gradient and
    the loss back in one transfer.

    Example:
        >>> net = torch.nn.Linear(2, 1).double()
        >>> copy = CPUWeights(list(net.parameters()))
        >>> def evaluate():
        ...     loss = net(torch.ones(4, 2, dtype=torch.float64)).square().mean()
        ...     loss.backward()
        ...     return loss
        >>> loss = copy.evaluate(evaluate)
        >>> loss.device.type, [w.grad.shape for w in copy.weights]
        ('cpu', [torch.Size([1, 2]), torch.Size([1])])
    """

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.weights = [p.detach().to("cpu", copy=True).requires_grad_(True) for p in params]

    @torch.no_grad()
    def pull(self) -> None:
        """The copy takes the network's weights (the quasi-Newton phase starts from Adam's)."""
        vector_to_parameters(parameters_to_vector(self.params).cpu(), self.weights)

    @torch.no_grad()
    def push(self) -> None:
        """The network takes the copy's weights (one transfer)."""
        device = self.params[0].device
        vector_to_parameters(parameters_to_vector(self.weights).to(device), self.params)

    def evaluate(self, evaluate: Callable[[], Tensor]) -> Tensor:
        """``evaluate()`` (loss and backward) at the copy's weights; the gradient lands on the copy.

        Returns the loss as a CPU tensor.
        """
        self.push()
        for p in self.params:
            p.grad = None
        value = evaluate()
        with torch.no_grad():
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
            host = torch.cat([parameters_to_vector(grads), value.detach().reshape(1)]).cpu()
            cpu_grads = [torch.empty_like(w) for w in self.weights]
            vector_to_parameters(host[:-1], cpu_grads)
        for w, g in zip(self.weights, cpu_grads, strict=True):
            w.grad = g
        return host[-1]


def _as_it_is(stop: bool) -> bool:
    """One process's stop decision is everyone's (no other process to agree with)."""
    return stop


def _optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The per-run state of a one-group optimiser (``n_iter``, ...); ``optimizer`` may be Lightning's
    wrapper around it."""
    inner = getattr(optimizer, "optimizer", optimizer)
    state: dict[str, Any] = inner.state[inner.param_groups[0]["params"][0]]
    return state


class OptimiserPhases:
    """Adam for ``adam_steps`` steps, then ``quasi_newton_steps`` quasi-Newton steps (see the module).

    :meth:`step` runs training step ``step`` of the schedule and returns whether training is over.

    Args:
        adam_steps: Adam steps before the switch.
        quasi_newton_steps: quasi-Newton steps (``optimizer.step(closure)`` each) after Adam.
        on_switch: called once, before the first quasi-Newton step (the PINN freezes its points).
        cpu_weights: the quasi-Newton optimiser works on this CPU copy (see :class:`CPUWeights`).
        stop_together: turns a quasi-Newton step's local stop decision into the one every process
            takes (under DDP, an all-reduce; by default the decision as it is).

    Example:
        >>> OptimiserPhases(adam_steps=10, quasi_newton_steps=5).phase(10)
        'quasi_newton'
    """

    def __init__(
        self,
        adam_steps: int,
        quasi_newton_steps: int,
        on_switch: Callable[[], None] | None = None,
        cpu_weights: CPUWeights | None = None,
        stop_together: Callable[[bool], bool] | None = None,
    ) -> None:
        self.adam_steps, self.quasi_newton_steps = adam_steps, quasi_newton_steps
        self.on_switch, self.cpu_weights = on_switch, cpu_weights
        self.stop_together = stop_together or _as_it_is
        self.iterations = 0  # quasi-Newton iterations so far

    @property
    def total_steps(self) -> int:
        """Adam steps plus quasi-Newton steps."""
        return self.adam_steps + self.quasi_newton_steps

    def phase(self, step: int) -> str:
        """``adam`` or ``quasi_newton``: the phase of training step ``step`` (counted from 0)."""
        return "adam" if step < self.adam_steps else "quasi_newton"

    def step(
        self,
        step: int,
        adam: Any,
        quasi_newton: Any,
        evaluate: Callable[[], Tensor],
        progress: Progress | None = None,
    ) -> bool:
        """Run training step ``step`` (0-based) and return whether training is over.

        ``evaluate()`` computes the loss on the current points, calls backward on it and returns the
        loss (the value the optimiser sees); ``progress(iterations, loss)`` is called after every
        quasi-Newton loss evaluation.
        """
        if self.phase(step) == "adam":
            adam.zero_grad()
            evaluate()
            adam.step()
            stop = False
        else:
            stop = self.stop_together(self._quasi_newton_step(step, quasi_newton, evaluate, progress))
        return stop or step + 1 >= self.total_steps

    def _quasi_newton_step(
        self, step: int, optimizer: Any, evaluate: Callable[[], Tensor], progress: Progress | None
    ) -> bool:
        first = step == self.adam_steps
        if first and self.on_switch is not None:
            self.on_switch()
        cpu = self.cpu_weights
        if cpu is not None and first:  # the CPU copy starts from Adam's weights
            cpu.pull()
        state = _optimizer_state(optimizer)
        before = state.get("n_iter", 0)

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = evaluate() if cpu is None else cpu.evaluate(evaluate)
            if progress is not None:
                progress(self.iterations + state.get("n_iter", 0) - before, float(value.detach()))
            return value

        optimizer.step(closure=closure)
        done = state.get("n_iter", 0) - before
        self.iterations += done
        if cpu is not None:  # the network keeps the accepted weights (the last evaluation may differ)
            cpu.push()
        return done == 0  # converged to the tolerances: nothing left for the optimiser to do


class ProgressBarPostfix:
    """``qn_iter`` and ``qn_loss`` on Lightning's progress bar (TQDM or Rich) while a step runs.

    One quasi-Newton step of a PINN is one training step that runs hundreds of iterations; the bar
    counts training steps, so without this it stands still for the whole phase. Called after each loss
    evaluation, it shows the iterations so far and the loss just evaluated beside the bar's other
    metrics (TQDM: the postfix, redrawn at once; Rich: the metrics column, which Rich redraws itself),
    at most every ``min_interval`` seconds (the first call always shows). Without a bar
    (``enable_progress_bar=False``, a rank other than zero) it does nothing. Returns whether it showed.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(enable_progress_bar=False, logger=False)
        >>> ProgressBarPostfix()(trainer, None, iterations=3, loss=0.25)
        False
    """

    def __init__(self, min_interval: float = 0.1) -> None:
        self.min_interval = min_interval
        self.shown_at = -math.inf

    def __call__(self, trainer: Any, pl_module: Any, iterations: int, loss: float) -> bool:
        from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

        bar = getattr(trainer, "progress_bar_callback", None)
        target: Any = None  # what shows the metrics: TQDM's bar, or Rich's metrics column
        if isinstance(bar, TQDMProgressBar):
            target = getattr(bar, "_train_progress_bar", None)
            target = None if target is None or target.disable else target
        elif isinstance(bar, RichProgressBar) and bar.is_enabled:
            target = getattr(bar, "_metric_component", None)  # made with Rich's bar
        now = time.monotonic()
        if bar is None or target is None or now - self.shown_at < self.min_interval:
            return False
        self.shown_at = now
        metrics = dict(bar.get_metrics(trainer, pl_module), qn_iter=iterations, qn_loss=f"{loss:.3e}")
        if isinstance(bar, TQDMProgressBar):
            target.set_postfix(metrics, refresh=True)
        else:
            target.update(metrics)
            bar.refresh()
        return True
