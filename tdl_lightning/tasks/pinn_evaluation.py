"""The PINN against its reference: relative L2 error, and pictures of solution, reference and error.

:class:`ReferenceComparison`, the PINN task's base, logs ``val/rel_l2`` and ``test/rel_l2`` on the
problem's grid and saves the pictures at the end of fit.

:func:`solution_figure` draws heat maps of the network's ``u``, the reference and the absolute error,
with slices at a few times; :func:`save_solution_pictures` writes it (PNG, and the arrays as ``.npz``)
into the run directory and hands it to W&B when a W&B logger is attached.

Example:
    >>> a0, a1 = np.linspace(-1, 1, 5), np.linspace(0, 1, 4)
    >>> u = np.outer(a0, a1)
    >>> round(float(relative_l2(torch.from_numpy(u + 0.1), torch.from_numpy(u))), 3)
    0.227
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from typing_extensions import override

from tdl_lightning.data.pde import PDEProblem
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import find_wandb_logger
from tdl_lightning.tasks.base import Task

__all__ = ["ReferenceComparison", "relative_l2", "save_solution_pictures", "solution_figure"]


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


def save_solution_pictures(
    folder: Path,
    tag: str,
    axes: tuple[np.ndarray, np.ndarray],
    prediction: np.ndarray,
    reference: np.ndarray,
    coords: tuple[str, str],
    title: str,
    wandb_logger: Any = None,
    step: int = 0,
) -> Path:
    """``<folder>/<tag>.png`` (:func:`solution_figure`) and ``<folder>/<tag>.npz`` (the arrays); the PNG
    goes to ``wandb_logger`` (a Lightning ``WandbLogger``) under ``pinn/<tag before its first _>``.

    Returns the PNG's path.

    Example:
        >>> import tempfile
        >>> a0, a1 = np.linspace(-1, 1, 5), np.linspace(0, 1, 4)
        >>> u = np.outer(a0, a1)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_solution_pictures(Path(folder), "final", (a0, a1), u, u, ("x", "t"), "u")
        ...     sorted(p.name for p in path.parent.iterdir())
        ['final.npz', 'final.png']
    """
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{tag}.npz", axis0=axes[0], axis1=axes[1], prediction=prediction, reference=reference)
    figure = solution_figure(axes, prediction, reference, coords, title=title)
    path = folder / f"{tag}.png"
    figure.savefig(path, dpi=90)
    if wandb_logger is not None:
        key = f"pinn/{tag.split('_')[0]}"
        wandb_logger.log_image(key=key, images=[str(path)], caption=[title], step=step)
    return path


class ReferenceComparison(Task):
    """The part of the PINN task that compares the network with the problem's reference solution.

    Validation and test batches are ``(grid points, reference values)`` (``PDECollocation``'s grid);
    their squared errors and norms are summed over the batches and the processes, and
    ``<stage>/rel_l2`` is logged at the epoch's end. At the end of fit (and every
    ``plot_every_n_epochs`` epochs) :meth:`save_pictures` draws the network against the reference.
    Subclasses set :attr:`problem`, :attr:`constraint` and :attr:`plot_every_n_epochs` and provide
    ``forward(points)``.

    Example:
        >>> from tdl_lightning.tasks import PINN
        >>> issubclass(PINN, ReferenceComparison)
        True
    """

    problem: PDEProblem | None
    constraint: str
    plot_every_n_epochs: int
    _eval_sums: list[Tensor]

    def _require_problem(self) -> PDEProblem:
        if self.problem is None:
            raise ConfigError(
                "PINN has no PDE problem: use the PDECollocation data module (data.class_path: "
                "PDECollocation), or pass problem= to PINN"
            )
        return self.problem

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

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_relative_l2("val")

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_relative_l2("test")

    @override
    def on_train_epoch_end(self) -> None:
        every = self.plot_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0 and not self.trainer.should_stop:
            self.save_pictures(f"epoch_{self.current_epoch:04d}")

    @override
    def on_train_end(self) -> None:
        self.save_pictures("final")

    @torch.no_grad()
    def grid_prediction(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """The network and the reference on the problem's evaluation grid, as 2D arrays.

        Example:
            >>> from tdl_lightning.data.pde import Heat1D
            >>> from tdl_lightning.tasks import PINN
            >>> axes, u, ref = PINN(torch.nn.Linear(2, 1), problem=Heat1D()).grid_prediction()
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
            >>> from tdl_lightning.tasks import PINN
            >>> task = PINN(torch.nn.Linear(2, 1))
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
        title = (
            f"{self.problem!r}, {self.constraint} constraint, step {self.global_step}: rel. L2 = {error:.2e}"
        )
        coords = self.problem.coords
        return save_solution_pictures(
            Path(log_dir or self.trainer.default_root_dir) / "pinn",
            tag,
            axes,
            u,
            reference,
            (coords[0], coords[1]),
            title,
            wandb_logger=find_wandb_logger(self.trainer.loggers),
            step=self.global_step,
        )
