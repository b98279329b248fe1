"""Physics-informed neural networks: a network ``u(x, t)`` trained on a PDE residual.

The objective on a batch of collocation points is
``w_pde mean(N[u]^2) + w_ic mean((u - u_0)^2) + w_bc mean((u - g)^2)``, the residual ``N[u]`` taken
by autograd. With ``constraint="hard"`` the network output passes through the problem's output
transform, which meets the initial and boundary conditions exactly, and only the residual is trained.
Training runs Adam for ``adam_steps`` steps, then a quasi-Newton optimiser, L-BFGS or a dense
self-scaled BFGS (strong Wolfe line search), for ``lbfgs_steps`` steps of ``lbfgs_iters_per_step``
iterations each, by manual optimisation; then the task stops the trainer. ``val/rel_l2`` is the
relative L2 error against the problem's solution on its fixed grid; pictures of solution, reference,
error and time slices go to the run directory and W&B. Under DDP every process fits its share of the
points (``PDECollocation``) and all take the same steps (:mod:`~tdl_lightning.tasks.pinn_phases`).

Example:
    >>> from tdl_lightning.data.pde import Heat1D
    >>> from tdl_lightning.models import DeepMLP
    >>> net = DeepMLP(input_dim=2, width=8, depth=2, output_dim=1, activation="tanh", init="xavier")
    >>> task = PINN(net, problem=Heat1D(), constraint="hard")
    >>> batch = {"x": torch.rand(16, 2, dtype=torch.float64)}
    >>> float(task.loss(batch).detach()) > 0
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.data.pde import PDEProblem, partial_derivatives, require_whole_numbers
from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.pinn_derivatives import (
    TaylorResidual,
    is_affine_in_output,
    mlp_derivatives,
    taylor_layers,
)
from tdl_lightning.tasks.pinn_evaluation import ReferenceComparison, relative_l2, solution_figure
from tdl_lightning.tasks.pinn_phases import (
    QUASI_NEWTON,
    CPUWeights,
    OptimiserPhases,
    ProgressBarPostfix,
    make_quasi_newton,
)

__all__ = ["PINN", "mlp_derivatives", "relative_l2", "solution_figure", "taylor_layers"]

CONSTRAINTS = ("soft", "hard")
DERIVATIVE_MODES = ("auto", "taylor", "autograd")
LBFGS_DEVICES = ("auto", "model", "cpu")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TERMS = ("pde", "ic", "bc")


class PINN(ReferenceComparison):
    """A PINN for one :class:`~tdl_lightning.data.pde.PDEProblem`: residual loss, Adam then (L-)BFGS.

    The problem comes from the data module (``PDECollocation``) at ``setup``, or from ``problem=``.
    ``loss(batch)`` is the full PINN objective on a dict batch of collocation points (``x``, and for
    soft constraints ``x_initial``/``u_initial``, ``x_boundary``/``u_boundary``): what plugins such as
    ``HessianEigenvalues`` probe. ``forward(x)`` is the network's ``u`` (constraint transform included).

    Args:
        model: the network; ``len(problem.coords)`` inputs, one output (e.g. ``DeepMLP`` with tanh).
        constraint: ``soft`` (penalty terms) or ``hard`` (output transform).
        loss_weights: weights of the terms ``pde``, ``ic``, ``bc`` (default 1 each).
        lr: Adam's learning rate.
        adam_steps: Adam steps before the switch to the quasi-Newton phase.
        lbfgs_steps: quasi-Newton steps (each one ``optimizer.step(closure)``) after Adam; 0 for Adam
            only.
        lbfgs_iters_per_step: quasi-Newton iterations inside one step.
        lbfgs_history: L-BFGS history size.
        quasi_newton: the second phase's optimiser: ``lbfgs`` (``torch.optim.LBFGS``, limited memory)
            or ``bfgs`` (:class:`~tdl_lightning.optim.BFGS`: a dense, self-scaled inverse-Hessian
            approximation; for networks of up to some thousands of weights it needs several times
            fewer iterations to a given loss). Both use a strong Wolfe line search.
        freeze_points: stop the data module's resampling at the switch to the quasi-Newton phase
            (default). ``False`` keeps drawing fresh points every ``resample_every_n_epochs``: each
            quasi-Newton step then sees one point set, and the next step the next one, which keeps a
            fast optimiser from fitting the residual only at the points it was given.
        dtype: ``float32`` or ``float64`` (the network and all points; float32 floors the error
            near 1e-3..1e-4).
        normalize_inputs: map the domain box onto ``[-1, 1]^d`` before the network.
        plot_every_n_epochs: pictures every this many epochs besides the final one (0: final only).
        derivatives: how the residual's partial derivatives are taken: ``taylor`` propagates them
            forward through the MLP with the values (:func:`mlp_derivatives`; needs a ``Linear``/``tanh``
            network and, with ``constraint="hard"``, a transform ``g(x) + D(x) n`` affine in the network
            output, as all the bundled problems have), ``autograd`` nests ``torch.autograd.grad`` calls
            (any network), ``auto`` (default) takes ``taylor`` where it applies. Both give the same loss
            and gradients to rounding; ``taylor`` is the faster one.
        lbfgs_device: where (L-)BFGS keeps its vectors and does its own arithmetic: ``model`` (with the
            network), ``cpu`` (a CPU copy of the weights; each loss evaluation copies the weights to the
            network's device and the gradient back, one transfer each way), or ``auto`` (default:
            ``cpu`` when the network is on a GPU). ``torch.optim.LBFGS`` turns a GPU scalar into a Python
            number twice per history entry per iteration (a device sync each); for a network of a few
            thousand weights those syncs, not the arithmetic, set the pace on a GPU.
        compile: run the optimisers' loss evaluations through ``torch.compile`` (the Taylor-mode
            residual and its backward fused into a few loops; needs ``derivatives`` taylor/auto on a
            tanh MLP). The first evaluation pays the compilation (15-30 s on a CPU); where it cannot
            compile (e.g. no C++ compiler) a warning says so and training goes on uncompiled. Loss
            evaluations outside ``training_step`` (plugins such as ``HessianEigenvalues``, which
            differentiate twice) stay uncompiled.
        problem: the PDE problem, when no ``PDECollocation`` data module provides it.

    Metrics: ``train/loss``, ``train/loss_pde``, ``train/loss_ic``, ``train/loss_bc`` (soft only),
    ``val/rel_l2`` (and ``test/rel_l2``).

    Example:
        >>> from tdl_lightning.data.pde import Burgers
        >>> from tdl_lightning.models import DeepMLP
        >>> net = DeepMLP(input_dim=2, width=8, depth=2, output_dim=1, init="xavier")
        >>> task = PINN(net, problem=Burgers(), adam_steps=10, lbfgs_steps=2)
        >>> task(torch.zeros(3, 2)).dtype, task.total_steps
        (torch.float64, 12)
    """

    # buffers registered by attach_problem (the domain box and the forward-mode tangents)
    _center: Tensor
    _half_width: Tensor
    _tangents: Tensor

    def __init__(
        self,
        model: nn.Module,
        constraint: str = "soft",
        loss_weights: dict[str, float] | None = None,
        lr: float = 1e-3,
        adam_steps: int = 2000,
        lbfgs_steps: int = 0,
        lbfgs_iters_per_step: int = 50,
        lbfgs_history: int = 50,
        dtype: str = "float64",
        normalize_inputs: bool = True,
        plot_every_n_epochs: int = 0,
        derivatives: str = "auto",
        lbfgs_device: str = "auto",
        compile: bool = False,
        quasi_newton: str = "lbfgs",
        freeze_points: bool = True,
        problem: PDEProblem | None = None,
    ) -> None:
        super().__init__(model)
        choices = (
            ("constraint", constraint, CONSTRAINTS),
            ("derivatives", derivatives, DERIVATIVE_MODES),
            ("lbfgs_device", lbfgs_device, LBFGS_DEVICES),
            ("quasi_newton", quasi_newton, QUASI_NEWTON),
            ("dtype", dtype, tuple(DTYPES)),
        )
        for name, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"unknown PINN {name} {value!r}: choose one of {list(allowed)}")
        weights = {k: 1.0 for k in _TERMS} | dict(loss_weights or {})
        unknown = sorted(set(weights) - set(_TERMS))
        if unknown or any(not (math.isfinite(w) and w >= 0) for w in weights.values()):
            raise ConfigError(
                f"PINN loss_weights {dict(loss_weights or {})} are not valid: use keys {list(_TERMS)} "
                "with finite values >= 0"
            )
        require_whole_numbers(
            "PINN",
            adam_steps=(adam_steps, 0),
            lbfgs_steps=(lbfgs_steps, 0),
            lbfgs_iters_per_step=(lbfgs_iters_per_step, 1),
            lbfgs_history=(lbfgs_history, 1),
            plot_every_n_epochs=(plot_every_n_epochs, 0),
        )
        if adam_steps + lbfgs_steps == 0:
            raise ConfigError("PINN has nothing to train: set adam_steps or lbfgs_steps > 0")
        if not lr > 0:
            raise ConfigError(f"PINN lr must be > 0, got {lr}")
        self.save_hyperparameters(ignore=["model", "problem"])
        self.automatic_optimization = False
        self.constraint, self.loss_weights, self.lr = constraint, weights, lr
        self.adam_steps, self.lbfgs_steps = adam_steps, lbfgs_steps
        self.lbfgs_iters_per_step, self.lbfgs_history = lbfgs_iters_per_step, lbfgs_history
        self.normalize_inputs, self.plot_every_n_epochs = normalize_inputs, plot_every_n_epochs
        self.model.to(DTYPES[dtype])
        self.derivative_mode = derivatives
        self.lbfgs_device = lbfgs_device
        self.compile_residual = bool(compile)  # hparam `compile`; the name `compile` is LightningModule's
        self.quasi_newton, self.freeze_points = quasi_newton, bool(freeze_points)
        self._compiled: Any = None  # the torch.compile'd residual, made at its first use
        self._in_step = False  # inside training_step: the loss evaluations that compile=True compiles
        self._phases = OptimiserPhases(
            adam_steps, lbfgs_steps, on_switch=self._stop_resampling, stop_together=self._stop_on_every_rank
        )
        self._progress_bar = ProgressBarPostfix()
        self._taylor = taylor_layers(self.model)
        if derivatives == "taylor" and self._taylor is None:
            raise ConfigError(
                "PINN derivatives='taylor' needs an MLP of Linear and tanh layers (DeepMLP with "
                "activation tanh); use derivatives: autograd for this network"
            )
        self.use_taylor = False
        self._forward: TaylorResidual | None = None  # the forward-mode residual, made by attach_problem
        self.problem: PDEProblem | None = None
        self._terms: dict[str, Tensor] = {}
        self._eval_sums: list[Tensor] = []
        if problem is not None:
            self.attach_problem(problem)

    @property
    def total_steps(self) -> int:
        """Adam steps plus quasi-Newton steps: the trainer is stopped after this many.

        Example:
            >>> from tdl_lightning.data.pde import Heat1D
            >>> PINN(nn.Linear(2, 1), problem=Heat1D(), adam_steps=5, lbfgs_steps=1).total_steps
            6
        """
        return self.adam_steps + self.lbfgs_steps

    def attach_problem(self, problem: PDEProblem) -> None:
        """Use ``problem``'s residual, conditions and domain (done at ``setup`` from the data module).

        Example:
            >>> from tdl_lightning.data.pde import Poisson2D
            >>> task = PINN(nn.Linear(2, 1))
            >>> task.attach_problem(Poisson2D())
            >>> task.problem
            Poisson2D(kx=1, ky=2)
        """
        if not isinstance(problem, PDEProblem):
            raise ConfigError(f"PINN needs a PDEProblem, got {type(problem).__name__}")
        bounds = torch.tensor(problem.bounds, dtype=self.model_dtype)
        self.problem = problem
        self.register_buffer("_center", bounds.mean(dim=1), persistent=False)
        self.register_buffer("_half_width", (bounds[:, 1] - bounds[:, 0]) / 2, persistent=False)
        self._forward = TaylorResidual(self._taylor or [], problem, self.constraint)
        scale = 1.0 / self._half_width if self.normalize_inputs else torch.ones_like(self._half_width)
        self.register_buffer("_tangents", self._forward.tangents(scale), persistent=False)
        self._compiled = None
        affine = self.constraint == "soft" or is_affine_in_output(problem, self.model_dtype)
        if self.derivative_mode == "taylor" and not affine:
            raise ConfigError(
                f"PINN derivatives='taylor' with a hard constraint needs {problem!r}.hard_constraint(x, n) "
                "= g(x) + D(x) n (affine in n); use derivatives: autograd"
            )
        self.use_taylor = self.derivative_mode != "autograd" and self._taylor is not None and affine
        if self.compile_residual and not self.use_taylor:
            network = "a tanh MLP" if self._taylor else "not a tanh MLP"
            raise ConfigError(
                "PINN compile=True compiles the Taylor-mode residual, which this setup does not use "
                f"(derivatives={self.derivative_mode!r}, {network}, {self.constraint} constraint): set "
                "compile: false, or use a DeepMLP with tanh and derivatives: auto"
            )

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the network's parameters (float64 or float32)."""
        return next(self.model.parameters()).dtype

    @override
    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            if not isinstance(strategy, DDPStrategy):
                raise ConfigError(
                    f"PINN shares its collocation points over processes with DDP, and this Trainer runs "
                    f"{self.trainer.world_size} processes with {type(strategy).__name__}: use "
                    "trainer.strategy: ddp (or ddp_spawn), or trainer.devices: 1"
                )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        problem = getattr(datamodule, "problem", None)
        if problem is not None:
            if self.problem is not None and repr(self.problem) != repr(problem):
                raise ConfigError(
                    f"PINN was given {self.problem!r} but the data module serves {problem!r}: give the "
                    "problem in one place only (the data module's problem/problem_args)"
                )
            self.attach_problem(problem)
        self._require_problem()
        attach = getattr(datamodule, "attach_residual", None)
        if callable(attach):  # residual-based adaptive sampling (PDECollocation adaptive='rad')
            attach(self.residual_at)

    @override
    def forward(self, x: Tensor) -> Tensor:
        problem = self._require_problem()
        x = x.to(self.model_dtype)
        n = self.model(self._network_input(x))
        return problem.hard_constraint(x, n) if self.constraint == "hard" else n

    def _network_input(self, x: Tensor) -> Tensor:
        """``x`` as the network sees it: the domain box mapped onto ``[-1, 1]^d`` (``normalize_inputs``)."""
        return (x - self._center) / self._half_width if self.normalize_inputs else x

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The PINN objective on a batch of collocation points (see the class docstring).

        Example:
            >>> from tdl_lightning.data.pde import PDECollocation
            >>> from tdl_lightning.models import DeepMLP
            >>> dm = PDECollocation("burgers", n_interior=32, n_initial=8, n_boundary=8)
            >>> task = PINN(DeepMLP(input_dim=2, width=8, depth=2, output_dim=1), problem=dm.problem)
            >>> loss = task.loss(dm.make_batch())
            >>> sorted(task._terms), loss.requires_grad
            (['bc', 'ic', 'pde'], True)
        """
        self._require_problem()
        if not isinstance(batch, dict) or "x" not in batch:
            raise ConfigError(
                "PINN batches are dicts with collocation points under 'x' (see PDECollocation), got "
                f"{type(batch).__name__}"
            )
        terms = {"pde": self.pde_residual(batch["x"]).square().mean()}
        if self.constraint == "soft":
            for term, key in (("ic", "initial"), ("bc", "boundary")):
                if f"x_{key}" in batch and len(batch[f"x_{key}"]):
                    target = batch[f"u_{key}"].to(self.model_dtype)
                    terms[term] = (self(batch[f"x_{key}"]) - target).square().mean()
        self._terms = {k: v.detach() for k, v in terms.items()}
        return self._weighted_sum(terms)

    def _weighted_sum(self, terms: dict[str, Tensor]) -> Tensor:
        """``sum_k loss_weights[k] * terms[k]`` over the (non-empty) ``terms``, in their order."""
        first, *rest = (self.loss_weights[k] * v for k, v in terms.items())
        return sum(rest, start=first)

    def pde_residual(self, x: Tensor) -> Tensor:
        """The PDE residual ``N[u]`` at the points ``x`` (shape ``(N, 1)``), differentiable in the weights.

        Example:
            >>> from tdl_lightning.data.pde import Burgers
            >>> from tdl_lightning.models import DeepMLP
            >>> net = DeepMLP(input_dim=2, width=8, depth=2, output_dim=1)
            >>> task = PINN(net, problem=Burgers(), constraint="hard")
            >>> x = torch.rand(6, 2, dtype=torch.float64)
            >>> r = task.pde_residual(x)
            >>> task.use_taylor, r.shape
            (True, torch.Size([6, 1]))
            >>> task.use_taylor = False  # the same residual by nested autograd
            >>> bool(torch.allclose(task.pde_residual(x), r))
            True
        """
        problem = self._require_problem()
        key = x
        x = x.detach().to(self.model_dtype)
        if self.use_taylor:
            assert self._forward is not None
            parts = self._forward.constraint_parts(key, x) if self.constraint == "hard" else {}
            h = self._network_input(x)
            if self.compile_residual and self._in_step:
                return self._compiled_residual(x, h, parts)
            return self._taylor_residual(x, h, parts)
        x = x.requires_grad_(True)
        u = self(x)
        d = partial_derivatives(u, x, problem.derivatives, problem.coords)
        return problem.residual(x, u, d)

    def residual_at(self, x: Tensor) -> Tensor:
        """The PDE residual at the points ``x``, without a graph for the weights (no gradient).

        Example:
            >>> from tdl_lightning.data.pde import Heat1D
            >>> task = PINN(nn.Linear(2, 1), problem=Heat1D(), derivatives="autograd")
            >>> r = task.residual_at(torch.rand(5, 2))
            >>> r.shape, r.requires_grad
            (torch.Size([5, 1]), False)
        """
        x = x.to(self.device)
        if self.use_taylor:
            with torch.no_grad():
                return self.pde_residual(x)
        with torch.enable_grad():  # nested autograd derivatives need a graph for the points
            return self.pde_residual(x).detach()

    def _taylor_residual(self, x: Tensor, h: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """The residual by forward-mode derivatives (:class:`TaylorResidual`): what ``compile=True``
        compiles."""
        assert self._forward is not None
        return self._forward.residual(x, h, self._tangents, parts)

    @property
    def _parts(self) -> tuple[Tensor | None, int, dict[str, Tensor]]:
        """The hard constraint's cached parts: ``(points, their version, parts)``."""
        return self._forward.cache if self._forward is not None else (None, -1, {})

    def _compiled_residual(self, x: Tensor, h: Tensor, parts: dict[str, Tensor]) -> Tensor:
        if self._compiled is None:
            self._compiled = torch.compile(self._taylor_residual, dynamic=False)
        if self._compiled is False:  # compilation failed once: eager from then on
            return self._taylor_residual(x, h, parts)
        try:
            return self._compiled(x, h, parts)
        except Exception as error:  # noqa: BLE001 - any backend failure falls back to eager maths
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"PINN compile=True: torch.compile failed ({type(error).__name__}: {first_line}); "
                "training goes on uncompiled (set compile: false to skip the attempt)",
                stacklevel=2,
            )
            self._compiled = False
            return self._taylor_residual(x, h, parts)

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        adam = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        on_cpu = self.lbfgs_device == "cpu" or (self.lbfgs_device == "auto" and self.device.type != "cpu")
        params: list[Tensor] = list(self.model.parameters())
        self._phases.cpu_weights = CPUWeights(params) if on_cpu else None
        weights = self._phases.cpu_weights.weights if self._phases.cpu_weights is not None else params
        quasi_newton = make_quasi_newton(
            self.quasi_newton, weights, self.lbfgs_iters_per_step, self.lbfgs_history, self.model_dtype
        )
        return [adam, quasi_newton]

    def _optimizer_pair(self) -> tuple[Any, Any]:
        return self.optimizer_pair(
            "PINN chooses its optimisers itself, Adam then (L-)BFGS (set model.init_args.lr, adam_steps, "
            "lbfgs_steps and quasi_newton)"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_compiled"] = None  # a compiled function does not pickle (ddp_spawn); it is made again
        return state

    @contextmanager
    def _optimiser_evaluations(self) -> Iterator[None]:
        """The loss evaluations of the optimisers' steps: the ones that ``compile=True`` compiles."""
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False

    @property
    def lbfgs_iterations(self) -> int:
        """Quasi-Newton iterations so far (all steps of the L-BFGS or BFGS phase together)."""
        return self._phases.iterations

    @property
    def _shadow(self) -> list[Tensor]:
        """The quasi-Newton optimiser's CPU copy of the weights (``lbfgs_device`` cpu), else empty."""
        cpu = self._phases.cpu_weights
        return cpu.weights if cpu is not None else []

    def _stop_on_every_rank(self, stop: bool) -> bool:
        """A quasi-Newton step's stop decision, taken by every process if one takes it (under DDP)."""
        return self.trainer.strategy.reduce_boolean_decision(stop, all=False)

    def _stop_resampling(self) -> None:
        """Keep the data module's current points (``freeze_points``; called at the switch to (L-)BFGS)."""
        stop = getattr(getattr(self.trainer, "datamodule", None), "stop_resampling", None)
        if self.freeze_points and callable(stop):
            stop()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        with self._optimiser_evaluations():
            return self._optimiser_step(batch)

    def _optimiser_step(self, batch: dict[str, Tensor]) -> Tensor:
        adam, quasi_newton = self._optimizer_pair()

        step = self.global_step
        # under DDP each process has a share of the points: manual_backward averages the gradients, and
        # the quasi-Newton line search gets the mean loss, the same on every process, so that every
        # process takes the same steps
        share = self.trainer.world_size > 1 and self._phases.phase(step) == "quasi_newton"

        def evaluate() -> Tensor:
            value = self.loss(batch)
            self.manual_backward(value)
            return self.trainer.strategy.reduce(value.detach(), reduce_op="mean") if share else value

        if self._phases.step(step, adam, quasi_newton, evaluate, progress=self._show_progress):
            self.trainer.should_stop = True
        total = self._weighted_sum(self._terms)
        # log only on the steps the loggers write (every log_every_n_steps, and the last): a logged
        # value costs hook work and, on a GPU, the progress bar's sync; an Adam step of a small PINN is
        # only a few hundred microseconds of work
        every = max(1, getattr(self.trainer, "log_every_n_steps", 1))
        quasi = self._phases.phase(step) == "quasi_newton"
        if self.global_step % every == 0 or self.trainer.should_stop or quasi:
            shared = self.trainer.world_size > 1  # the loss on all the points: the mean over the processes
            self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True, sync_dist=shared)
            for term, value in self._terms.items():
                self.log(f"train/loss_{term}", value, on_step=True, on_epoch=False, sync_dist=shared)
            self.log("train/lbfgs_iterations", float(self.lbfgs_iterations), on_step=True, on_epoch=False)
            if quasi:  # the bar keeps the count between steps (it redraws its metrics at each step's end)
                self.log("qn_iter", float(self.lbfgs_iterations), prog_bar=True, logger=False, on_step=True)
        return total

    def _show_progress(self, iterations: int, loss: float) -> None:
        """Put the quasi-Newton phase's iterations and latest loss on the progress bar, at each loss
        evaluation: one (L-)BFGS step runs many iterations, and the bar would not move meanwhile."""
        if self._trainer is not None:
            self._progress_bar(self.trainer, self, iterations, loss)
