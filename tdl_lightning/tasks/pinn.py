"""Physics-informed neural networks: a network ``u(x, t)`` trained on a PDE residual.

The objective on a batch of collocation points is
``w_pde mean(N[u]^2) + w_ic mean((u - u_0)^2) + w_bc mean((u - g)^2)``, the residual ``N[u]`` taken
by autograd. With ``constraint="hard"`` the network output passes through the problem's output
transform, which meets the initial and boundary conditions exactly, and only the residual is trained.
Training runs Adam for ``adam_steps`` steps, then a quasi-Newton optimiser, L-BFGS or a dense
self-scaled BFGS (strong Wolfe line search), for ``lbfgs_steps`` steps of ``lbfgs_iters_per_step``
iterations each, by manual optimisation; then the task stops the trainer. ``val/rel_l2`` is the
relative L2 error against the problem's solution on its fixed grid; pictures of solution, reference,
error and time slices go to the run directory and W&B.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from tdl_lightning.data.pde import PDEProblem, partial_derivatives, require_whole_numbers
from tdl_lightning.errors import ConfigError
from tdl_lightning.optim import BFGS, MAX_BFGS_WEIGHTS
from tdl_lightning.runs import find_wandb_logger
from tdl_lightning.tasks.base import Task

__all__ = ["PINN", "mlp_derivatives", "relative_l2", "solution_figure", "taylor_layers"]

CONSTRAINTS = ("soft", "hard")
DERIVATIVE_MODES = ("auto", "taylor", "autograd")
LBFGS_DEVICES = ("auto", "model", "cpu")
QUASI_NEWTON = ("lbfgs", "bfgs")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TERMS = ("pde", "ic", "bc")


class _QuasiNewtonArgs(TypedDict):
    """The arguments that ``torch.optim.LBFGS`` and :class:`~tdl_lightning.optim.BFGS` share."""

    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float


def relative_l2(prediction: Tensor, reference: Tensor) -> Tensor:
    """``||prediction - reference||_2 / ||reference||_2`` over all points (computed in float64).

    Example:
        >>> round(float(relative_l2(torch.tensor([1.0, 1.1]), torch.tensor([1.0, 1.0]))), 4)
        0.0707
    """
    p, r = prediction.double(), reference.double()
    return torch.linalg.vector_norm(p - r) / torch.linalg.vector_norm(r)


def taylor_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers of ``model`` as a flat list, if it is an MLP that :func:`mlp_derivatives` can run.

    Supported: (nested) ``nn.Sequential`` of ``nn.Linear``, ``nn.Tanh``, ``nn.Flatten`` and
    ``nn.Identity``, such as ``DeepMLP`` with ``activation="tanh"`` or ``"linear"``; anything else
    gives ``None`` (the PINN then takes derivatives by autograd).

    Example:
        >>> from tdl_lightning.models import DeepMLP
        >>> len(taylor_layers(DeepMLP(input_dim=2, width=4, depth=2, output_dim=1)))
        5
        >>> taylor_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU())) is None
        True
    """
    layers: list[nn.Module] = []
    for module in model if isinstance(model, nn.Sequential) else [model]:
        if isinstance(module, nn.Sequential):
            inner = taylor_layers(module)
            if inner is None:
                return None
            layers += inner
        elif isinstance(module, (nn.Linear, nn.Tanh)):
            layers.append(module)
        elif not isinstance(module, (nn.Flatten, nn.Identity)):
            return None
    return layers if any(isinstance(m, nn.Linear) for m in layers) else None


def mlp_derivatives(
    layers: list[nn.Module], h: Tensor, tangents: Tensor, pairs: Sequence[tuple[int, int]] = ()
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """An MLP's output with its first and second directional derivatives, in one forward pass.

    Forward-mode (Taylor-mode) propagation through ``Linear`` and ``tanh`` layers: with
    ``z = W h + b``, ``a = tanh(z)``, ``s = 1 - a^2``, the first derivative along a direction is
    ``a' = s z'`` and the second along two directions ``a'' = s z'' - 2 a (s z'_i) z'_j``. ``tangents``
    (``(k, d_in)``) are the directions of the first derivatives (e.g. unit vectors divided by an
    input scale); ``pairs`` index two of them for each second derivative. The result is differentiable
    in the parameters by ordinary (first-order) backpropagation, with fewer operations than the
    nested autograd graph of :func:`~tdl_lightning.data.pde.partial_derivatives`; no
    ``create_graph`` is needed.

    Returns ``(y, [dy_k], [d2y_pair])``, each of shape ``(N, d_out)``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        >>> x = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
        >>> y, (y_x, y_t), (y_xx,) = mlp_derivatives(list(net), x, torch.eye(2).double(), [(0, 0)])
        >>> g = torch.autograd.grad(net(x).sum(), x, create_graph=True)[0]
        >>> g_xx = torch.autograd.grad(g[:, 0].sum(), x)[0][:, 0:1]
        >>> bool(torch.allclose(y_t, g[:, 1:]) and torch.allclose(y_xx, g_xx))
        True
    """
    value = h
    firsts: list[Tensor] = list(tangents.to(h.dtype))  # (d,) rows: constant over the points at first
    seconds: list[Tensor | None] = [None] * len(pairs)  # None: identically zero so far
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight_t = layer.weight.T
            value = value @ weight_t if layer.bias is None else torch.addmm(layer.bias, value, weight_t)
            firsts = [f @ weight_t for f in firsts]
            seconds = [None if s is None else s @ weight_t for s in seconds]
        else:  # tanh
            value = torch.tanh(value)
            slope = 1.0 - value * value
            new_firsts = [slope * f for f in firsts]
            seconds = [
                (0.0 if s is None else slope * s) - 2.0 * value * new_firsts[i] * firsts[j]
                for s, (i, j) in zip(seconds, pairs, strict=True)
            ]
            firsts = new_firsts
    firsts = [f.expand_as(value) for f in firsts]
    seconds = [torch.zeros_like(value) if s is None else s for s in seconds]
    return value, firsts, seconds  # type: ignore[return-value]


def solution_figure(
    axes: tuple[np.ndarray, np.ndarray],
    prediction: np.ndarray,
    reference: np.ndarray,
    coords: tuple[str, str] = ("x", "t"),
    title: str = "",
    n_slices: int = 3,
) -> Figure:
    """Heat maps of prediction, reference and absolute error, and slices at a few values of ``coords[1]``.

    ``prediction`` and ``reference`` have shape ``(len(axes[0]), len(axes[1]))``; the second coordinate
    (time) runs horizontally, as in Raissi et al.

    Example:
        >>> a0, a1 = np.linspace(-1, 1, 5), np.linspace(0, 1, 4)
        >>> u = np.outer(a0, a1)
        >>> len(solution_figure((a0, a1), u, u + 0.01).axes) >= 6
        True
    """
    a0, a1 = axes
    extent = (a1[0], a1[-1], a0[0], a0[-1])
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    grid = fig.add_gridspec(2, max(3, n_slices))
    error = np.abs(prediction - reference)
    vmin, vmax = float(reference.min()), float(reference.max())
    maps = (("PINN u", prediction, "RdBu_r", vmin, vmax), ("reference", reference, "RdBu_r", vmin, vmax))
    for col, (label, values, cmap, lo, hi) in enumerate(maps + (("|error|", error, "viridis", None, None),)):
        ax = fig.add_subplot(grid[0, col])
        image = ax.imshow(values, origin="lower", aspect="auto", extent=extent, cmap=cmap, vmin=lo, vmax=hi)
        ax.set(title=label, xlabel=coords[1], ylabel=coords[0])
        fig.colorbar(image, ax=ax)
    for k in range(n_slices):
        j = round((k + 1) * (len(a1) - 1) / (n_slices + 1))
        ax = fig.add_subplot(grid[1, k])
        ax.plot(a0, reference[:, j], "k-", lw=2, label="reference")
        ax.plot(a0, prediction[:, j], "r--", lw=1.5, label="PINN")
        ax.set(title=f"{coords[1]} = {a1[j]:.2f}", xlabel=coords[0], ylabel="u")
        if k == 0:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def _is_affine_in_output(problem: PDEProblem, dtype: torch.dtype) -> bool:
    """Whether ``problem.hard_constraint(x, n)`` is ``g(x) + D(x) n`` (checked at a few points)."""
    x = problem.sample_interior(8, "uniform", seed=0).to(dtype)
    zero = torch.zeros(8, 1, dtype=dtype)
    n = torch.linspace(-2.0, 3.0, 8, dtype=dtype).unsqueeze(1)
    with torch.no_grad():
        g = problem.hard_constraint(x, zero)
        slope = problem.hard_constraint(x, zero + 1.0) - g
        return bool(torch.allclose(problem.hard_constraint(x, n), g + slope * n, rtol=1e-6, atol=1e-9))


class PINN(Task):
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
        if constraint not in CONSTRAINTS:
            raise ConfigError(f"unknown PINN constraint {constraint!r}: choose one of {list(CONSTRAINTS)}")
        if derivatives not in DERIVATIVE_MODES:
            raise ConfigError(
                f"unknown PINN derivatives {derivatives!r}: choose one of {list(DERIVATIVE_MODES)}"
            )
        if lbfgs_device not in LBFGS_DEVICES:
            raise ConfigError(
                f"unknown PINN lbfgs_device {lbfgs_device!r}: choose one of {list(LBFGS_DEVICES)}"
            )
        if quasi_newton not in QUASI_NEWTON:
            raise ConfigError(
                f"unknown PINN quasi_newton {quasi_newton!r}: choose one of {list(QUASI_NEWTON)}"
            )
        if dtype not in DTYPES:
            raise ConfigError(f"unknown PINN dtype {dtype!r}: choose one of {list(DTYPES)}")
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
        self._shadow: list[Tensor] = []  # (L-)BFGS's CPU copy of the weights (lbfgs_device cpu)
        self._taylor = taylor_layers(self.model)
        if derivatives == "taylor" and self._taylor is None:
            raise ConfigError(
                "PINN derivatives='taylor' needs an MLP of Linear and tanh layers (DeepMLP with "
                "activation tanh); use derivatives: autograd for this network"
            )
        self.use_taylor = False
        self._first_names: list[str] = []
        self._pairs: list[tuple[int, int]] = []
        self._pair_names: list[str] = []  # the second derivatives' names, e.g. "xx"
        self._parts: tuple[Tensor | None, int, dict[str, Tensor]] = (None, -1, {})
        self.problem: PDEProblem | None = None
        self.lbfgs_iterations = 0
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
        # forward-mode derivatives: the first-derivative directions and the pairs of second ones
        letters = {c for name in problem.derivatives for c in name}
        self._first_names = [c for c in problem.coords if c in letters]
        position = {c: k for k, c in enumerate(self._first_names)}
        self._pairs = [(position[n[0]], position[n[1]]) for n in problem.derivatives if len(n) == 2]
        self._pair_names = [self._first_names[i] + self._first_names[j] for i, j in self._pairs]
        scale = 1.0 / self._half_width if self.normalize_inputs else torch.ones_like(self._half_width)
        rows = [problem.coords.index(c) for c in self._first_names]
        self.register_buffer("_tangents", torch.diag(scale)[rows], persistent=False)
        self._parts = (None, -1, {})
        self._compiled = None
        affine = self.constraint == "soft" or _is_affine_in_output(problem, self.model_dtype)
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

    def _require_problem(self) -> PDEProblem:
        if self.problem is None:
            raise ConfigError(
                "PINN has no PDE problem: use the PDECollocation data module (data.class_path: "
                "PDECollocation), or pass problem= to PINN"
            )
        return self.problem

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            raise ConfigError(
                f"PINN trains on one device, and this Trainer has {self.trainer.world_size} processes: its "
                "(L-)BFGS phase evaluates the loss many times per step, which DDP's one gradient all-reduce "
                "per step does not follow, and every rank would fit the same collocation points. Use "
                "trainer.devices: 1 (these networks fit one GPU), and run several PINNs at once with "
                "tdl sweep --parallel K (one GPU each)"
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
            parts = self._constraint_parts(key, x) if self.constraint == "hard" else {}
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
        """The residual from ``u`` and its partial derivatives by :func:`mlp_derivatives` (plus the
        product rule through ``u = g + D n`` for a hard constraint, whose ``parts`` are given): pure
        tensor maths, what ``compile=True`` compiles."""
        problem = self._require_problem()
        u, d = self._taylor_derivatives(h, parts)
        return problem.residual(x, u, d)

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

    def _taylor_derivatives(self, h: Tensor, parts: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        problem = self._require_problem()
        assert self._taylor is not None
        n, firsts, seconds = mlp_derivatives(self._taylor, h, self._tangents, self._pairs)
        dn = dict(zip(self._first_names, firsts, strict=True))
        dn.update(zip(self._pair_names, seconds, strict=True))
        if self.constraint == "soft":
            return n, {name: dn[name] for name in problem.derivatives}
        g, D = parts["g"], parts["D"]
        du: dict[str, Tensor] = {}
        for name in problem.derivatives:
            if len(name) == 1:
                du[name] = parts["g" + name] + parts["D" + name] * n + D * dn[name]
            else:
                i, j = name[0], name[1]
                du[name] = (
                    parts["g" + name]
                    + parts["D" + name] * n
                    + parts["D" + i] * dn[j]
                    + parts["D" + j] * dn[i]
                    + D * dn[name]
                )
        return g + D * n, du

    def _constraint_parts(self, key: Tensor, x: Tensor) -> dict[str, Tensor]:
        """``g``, ``D`` of the hard constraint ``u = g + D n`` and their derivatives at ``x`` (no weights
        involved: computed once per point set and kept while the same batch tensor comes back)."""
        cached_key, version, parts = self._parts
        if cached_key is key and version == key._version:
            return parts
        problem = self._require_problem()
        names = self._first_names + self._pair_names
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            zero = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
            g = problem.hard_constraint(xg, zero)
            D = problem.hard_constraint(xg, zero + 1.0) - g
            parts = {"g": g, "D": D}
            for label, y in (("g", g), ("D", D)):
                for name, value in partial_derivatives(y, xg, names, problem.coords).items():
                    parts[label + name] = value
        parts = {k: v.detach() for k, v in parts.items()}
        self._parts = (key, key._version, parts)  # an in-place change of the points invalidates it
        return parts

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        eps_change = 1e-14 if self.model_dtype == torch.float64 else 1e-9
        adam = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        on_cpu = self.lbfgs_device == "cpu" or (self.lbfgs_device == "auto" and self.device.type != "cpu")
        self._shadow = (
            [p.detach().to("cpu", copy=True).requires_grad_(True) for p in self.model.parameters()]
            if on_cpu
            else []
        )
        common = _QuasiNewtonArgs(
            lr=1.0,
            max_iter=self.lbfgs_iters_per_step,
            max_eval=math.ceil(1.25 * self.lbfgs_iters_per_step),
            tolerance_grad=1e-12 if self.model_dtype == torch.float64 else 1e-7,
            tolerance_change=eps_change,
        )
        weights = self._shadow or list(self.model.parameters())
        if self.quasi_newton == "bfgs":
            size = sum(w.numel() for w in weights)
            if size > MAX_BFGS_WEIGHTS:
                raise ConfigError(
                    f"PINN quasi_newton='bfgs' keeps a dense {size} x {size} matrix, too large beyond "
                    f"{MAX_BFGS_WEIGHTS} weights: use quasi_newton: lbfgs for this network"
                )
            return [adam, BFGS(weights, **common)]
        lbfgs = torch.optim.LBFGS(
            weights, history_size=self.lbfgs_history, line_search_fn="strong_wolfe", **common
        )
        return [adam, lbfgs]

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

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        with self._optimiser_evaluations():
            return self._optimiser_step(batch)

    def _optimiser_step(self, batch: dict[str, Tensor]) -> Tensor:
        adam, lbfgs = self._optimizer_pair()
        if self.global_step < self.adam_steps:
            adam.zero_grad()
            loss = self.loss(batch)
            self.manual_backward(loss)
            adam.step()
        else:
            if self.global_step == self.adam_steps and self.freeze_points:
                stop = getattr(getattr(self.trainer, "datamodule", None), "stop_resampling", None)
                if callable(stop):
                    stop()

            params: list[Tensor] = list(self.model.parameters())
            shadow = self._shadow
            if shadow and self.global_step == self.adam_steps:  # the CPU copy starts from Adam's weights
                with torch.no_grad():
                    torch._foreach_copy_(shadow, [p.detach().cpu() for p in params])

            def closure() -> Tensor:
                lbfgs.zero_grad()
                if not shadow:
                    value = self.loss(batch)
                    self.manual_backward(value)
                    return value
                with torch.no_grad():  # one copy each way: weights to the network, gradient back
                    flat = torch.cat([w.reshape(-1) for w in shadow]).to(params[0].device)
                    torch._foreach_copy_(
                        params,
                        [
                            c.view_as(p)
                            for c, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
                        ],
                    )
                self.model.zero_grad(set_to_none=True)
                value = self.loss(batch)
                self.manual_backward(value)
                with torch.no_grad():
                    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
                    host = torch.cat([g.reshape(-1) for g in grads] + [value.detach().reshape(1)]).cpu()
                    for w, g in zip(shadow, host[:-1].split([w.numel() for w in shadow]), strict=True):
                        w.grad = g.view_as(w)
                return host[-1]

            state = lbfgs.optimizer.state[lbfgs.optimizer.param_groups[0]["params"][0]]
            before = state.get("n_iter", 0)
            lbfgs.step(closure=closure)
            done = state.get("n_iter", 0) - before
            self.lbfgs_iterations += done
            if shadow:  # the network keeps the accepted weights (the last evaluation may differ)
                with torch.no_grad():
                    torch._foreach_copy_(
                        params, [w.detach().to(p.device) for w, p in zip(shadow, params, strict=True)]
                    )
            if done == 0:  # converged to the tolerances: nothing left for the optimiser to do
                self.trainer.should_stop = True
        if self.global_step >= self.total_steps:
            self.trainer.should_stop = True
        total = self._weighted_sum(self._terms)
        # log only on the steps the loggers write (every log_every_n_steps, and the last): a logged
        # value costs hook work and, on a GPU, the progress bar's sync; an Adam step of a small PINN is
        # only a few hundred microseconds of work
        every = max(1, getattr(self.trainer, "log_every_n_steps", 1))
        if self.global_step % every == 0 or self.trainer.should_stop or self.global_step > self.adam_steps:
            self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True)
            for term, value in self._terms.items():
                self.log(f"train/loss_{term}", value, on_step=True, on_epoch=False)
            self.log("train/lbfgs_iterations", float(self.lbfgs_iterations), on_step=True, on_epoch=False)
        return total

    def _evaluation_step(self, batch: tuple[Tensor, Tensor]) -> None:
        points, reference = batch
        error = (self(points).double() - reference.double()).square().sum()
        self._eval_sums.append(torch.stack([error, reference.double().square().sum()]))

    def _log_relative_l2(self, stage: str) -> None:
        if not self._eval_sums:
            return
        sums = self.trainer.strategy.reduce(torch.stack(self._eval_sums).sum(0), reduce_op="sum")
        self._eval_sums = []
        self.log(f"{stage}/rel_l2", (sums[0] / sums[1]).sqrt(), prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_relative_l2("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_relative_l2("test")

    def on_train_epoch_end(self) -> None:
        every = self.plot_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0 and not self.trainer.should_stop:
            self.save_pictures(f"epoch_{self.current_epoch:04d}")

    def on_train_end(self) -> None:
        self.save_pictures("final")

    @torch.no_grad()
    def grid_prediction(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """The network and the reference on the problem's evaluation grid, as 2D arrays.

        Example:
            >>> from tdl_lightning.data.pde import Heat1D
            >>> axes, u, ref = PINN(nn.Linear(2, 1), problem=Heat1D()).grid_prediction()
            >>> u.shape == ref.shape == (len(axes[0]), len(axes[1]))
            True
        """
        problem = self._require_problem()
        axes = problem.grid_axes()
        points, reference = problem.reference_grid()
        shape = (len(axes[0]), len(axes[1]))
        u = self(points.to(self.device)).double().cpu().numpy().reshape(shape)
        return axes, u, reference.numpy().reshape(shape)

    def save_pictures(self, tag: str) -> Path | None:
        """Solution/reference/error heat maps and slices: PNG and ``.npz`` in ``<log_dir>/pinn/``, W&B image.

        Called by the trainer at the end of fit (and every ``plot_every_n_epochs``); returns the PNG's path
        on global rank zero.

        Example:
            >>> task = PINN(nn.Linear(2, 1))
            >>> task.save_pictures("final") is None  # no trainer attached: nothing to do
            True
        """
        if self._trainer is None or self.problem is None:
            return None
        log_dir = self.trainer.log_dir  # every rank asks: it may broadcast
        if not self.trainer.is_global_zero:
            return None
        axes, u, reference = self.grid_prediction()
        error = float(np.linalg.norm(u - reference) / np.linalg.norm(reference))
        folder = Path(log_dir or self.trainer.default_root_dir) / "pinn"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{tag}.npz", axis0=axes[0], axis1=axes[1], prediction=u, reference=reference)
        title = (
            f"{self.problem!r}, {self.constraint} constraint, step {self.global_step}: rel. L2 = {error:.2e}"
        )
        coords = self.problem.coords
        figure = solution_figure(axes, u, reference, (coords[0], coords[1]), title=title)
        path = folder / f"{tag}.png"
        figure.savefig(path, dpi=90)
        wandb_logger = find_wandb_logger(self.trainer.loggers)
        if wandb_logger is not None:
            key = f"pinn/{tag.split('_')[0]}"
            wandb_logger.log_image(key=key, images=[str(path)], caption=[title], step=self.global_step)
        return path
