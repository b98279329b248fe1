"""Physics-informed neural networks: a network ``u(x, t)`` trained on a PDE residual.

The objective on a batch of collocation points is
``w_pde mean(N[u]^2) + w_ic mean((u - u_0)^2) + w_bc mean((u - g)^2)``, the residual ``N[u]`` taken
by autograd. With ``constraint="hard"`` the network output passes through the problem's output
transform, which meets the initial and boundary conditions exactly, and only the residual is trained.
Training runs Adam for ``adam_steps`` steps, then L-BFGS (strong Wolfe line search) for
``lbfgs_steps`` steps of ``lbfgs_iters_per_step`` iterations each, by manual optimisation; then the
task stops the trainer. ``val/rel_l2`` is the relative L2 error against the problem's solution on its
fixed grid; pictures of solution, reference, error and time slices go to the run directory and W&B.

Example:
    >>> from tdl_lightning.data.pde import Heat1D
    >>> from tdl_lightning.models import DeepMLP
    >>> net = DeepMLP(input_dim=2, width=8, depth=2, output_dim=1, activation="tanh", init="xavier")
    >>> task = PINN(net, problem=Heat1D(), constraint="hard")
    >>> batch = {"x": torch.rand(16, 2, dtype=torch.float64)}
    >>> float(task.loss(batch)) > 0
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from tdl_lightning.data.pde import PDEProblem, partial_derivatives, require_whole_numbers
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import find_wandb_logger
from tdl_lightning.tasks.base import Task

__all__ = ["PINN", "relative_l2", "solution_figure"]

CONSTRAINTS = ("soft", "hard")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TERMS = ("pde", "ic", "bc")


def relative_l2(prediction: Tensor, reference: Tensor) -> Tensor:
    """``||prediction - reference||_2 / ||reference||_2`` over all points (computed in float64).

    Example:
        >>> round(float(relative_l2(torch.tensor([1.0, 1.1]), torch.tensor([1.0, 1.0]))), 4)
        0.0707
    """
    p, r = prediction.double(), reference.double()
    return torch.linalg.vector_norm(p - r) / torch.linalg.vector_norm(r)


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


class PINN(Task):
    """A PINN for one :class:`~tdl_lightning.data.pde.PDEProblem`: residual loss, Adam then L-BFGS.

    The problem comes from the data module (``PDECollocation``) at ``setup``, or from ``problem=``.
    ``loss(batch)`` is the full PINN objective on a dict batch of collocation points (``x``, and for
    soft constraints ``x_initial``/``u_initial``, ``x_boundary``/``u_boundary``): what plugins such as
    ``HessianEigenvalues`` probe. ``forward(x)`` is the network's ``u`` (constraint transform included).

    Args:
        model: the network; ``len(problem.coords)`` inputs, one output (e.g. ``DeepMLP`` with tanh).
        constraint: ``soft`` (penalty terms) or ``hard`` (output transform).
        loss_weights: weights of the terms ``pde``, ``ic``, ``bc`` (default 1 each).
        lr: Adam's learning rate.
        adam_steps: Adam steps before the switch to L-BFGS.
        lbfgs_steps: L-BFGS steps (each one ``optimizer.step(closure)``) after Adam; 0 for Adam only.
        lbfgs_iters_per_step: L-BFGS iterations inside one step.
        lbfgs_history: L-BFGS history size.
        dtype: ``float32`` or ``float64`` (the network and all points; float32 floors the error
            near 1e-3..1e-4).
        normalize_inputs: map the domain box onto ``[-1, 1]^d`` before the network.
        plot_every_n_epochs: pictures every this many epochs besides the final one (0: final only).
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
        problem: PDEProblem | None = None,
    ) -> None:
        super().__init__(model)
        if constraint not in CONSTRAINTS:
            raise ConfigError(f"unknown PINN constraint {constraint!r}: choose one of {list(CONSTRAINTS)}")
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
        self.problem: PDEProblem | None = None
        self.lbfgs_iterations = 0
        self._terms: dict[str, Tensor] = {}
        self._eval_sums: list[Tensor] = []
        if problem is not None:
            self.attach_problem(problem)

    @property
    def total_steps(self) -> int:
        """Adam steps plus L-BFGS steps: the trainer is stopped after this many.

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

    def forward(self, x: Tensor) -> Tensor:
        problem = self._require_problem()
        x = x.to(self.model_dtype)
        h = (x - self._center) / self._half_width if self.normalize_inputs else x
        n = self.model(h)
        return problem.hard_constraint(x, n) if self.constraint == "hard" else n

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
        problem = self._require_problem()
        if not isinstance(batch, dict) or "x" not in batch:
            raise ConfigError(
                "PINN batches are dicts with collocation points under 'x' (see PDECollocation), got "
                f"{type(batch).__name__}"
            )
        x = batch["x"].detach().to(self.model_dtype).requires_grad_(True)
        u = self(x)
        d = partial_derivatives(u, x, problem.derivatives, problem.coords)
        terms = {"pde": problem.residual(x, u, d).square().mean()}
        if self.constraint == "soft":
            for term, key in (("ic", "initial"), ("bc", "boundary")):
                if f"x_{key}" in batch and len(batch[f"x_{key}"]):
                    target = batch[f"u_{key}"].to(self.model_dtype)
                    terms[term] = (self(batch[f"x_{key}"]) - target).square().mean()
        self._terms = {k: v.detach() for k, v in terms.items()}
        return sum(self.loss_weights[k] * v for k, v in terms.items())

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        eps_change = 1e-14 if self.model_dtype == torch.float64 else 1e-9
        adam = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        lbfgs = torch.optim.LBFGS(
            self.model.parameters(),
            lr=1.0,
            max_iter=self.lbfgs_iters_per_step,
            max_eval=math.ceil(1.25 * self.lbfgs_iters_per_step),
            history_size=self.lbfgs_history,
            tolerance_grad=1e-12 if self.model_dtype == torch.float64 else 1e-7,
            tolerance_change=eps_change,
            line_search_fn="strong_wolfe",
        )
        return [adam, lbfgs]

    def _optimizer_pair(self) -> tuple[Any, Any]:
        return self.optimizer_pair(
            "PINN chooses its optimisers itself, Adam then L-BFGS (set model.init_args.lr, adam_steps "
            "and lbfgs_steps)"
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        adam, lbfgs = self._optimizer_pair()
        if self.global_step < self.adam_steps:
            adam.zero_grad()
            loss = self.loss(batch)
            self.manual_backward(loss)
            adam.step()
        else:
            if self.global_step == self.adam_steps:
                stop = getattr(getattr(self.trainer, "datamodule", None), "stop_resampling", None)
                if callable(stop):
                    stop()

            def closure() -> Tensor:
                lbfgs.zero_grad()
                value = self.loss(batch)
                self.manual_backward(value)
                return value

            state = lbfgs.optimizer.state[next(iter(self.model.parameters()))]
            before = state.get("n_iter", 0)
            lbfgs.step(closure=closure)
            done = state.get("n_iter", 0) - before
            self.lbfgs_iterations += done
            self.log("train/lbfgs_iterations", float(self.lbfgs_iterations), on_step=True, on_epoch=False)
            if done == 0:  # converged to the tolerances: nothing left for L-BFGS to do
                self.trainer.should_stop = True
        total = sum(self.loss_weights[k] * v for k, v in self._terms.items())
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True)
        for term, value in self._terms.items():
            self.log(f"train/loss_{term}", value, on_step=True, on_epoch=False)
        if self.global_step >= self.total_steps:
            self.trainer.should_stop = True
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
        figure = solution_figure(axes, u, reference, tuple(self.problem.coords[:2]), title=title)
        path = folder / f"{tag}.png"
        figure.savefig(path, dpi=90)
        wandb_logger = find_wandb_logger(self.trainer.loggers)
        if wandb_logger is not None:
            key = f"pinn/{tag.split('_')[0]}"
            wandb_logger.log_image(key=key, images=[str(path)], caption=[title], step=self.global_step)
        return path
