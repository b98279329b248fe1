"""The PINN against its reference: relative L2 error, and pictures of solution, reference and error.

:class:`ReferenceComparison`, the PINN task's base, logs ``val/rel_l2`` and ``test/rel_l2`` on the
problem's grid, and attaches :class:`~plugins.pinn_pictures.SolutionPictures`, the plugin that draws
:func:`solution_figure` (heat maps of the network's ``u``, the reference and the absolute error, with
slices at a few times) into ``<run dir>/plugins/pinn/`` and W&B, like every plugin's figures.

Example:
    >>> a0, a1 = np.linspace(-1, 1, 5), np.linspace(0, 1, 4)
    >>> u = np.outer(a0, a1)
    >>> round(float(relative_l2(torch.from_numpy(u + 0.1), torch.from_numpy(u))), 3)
    0.227
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from plugins.pinn_pictures import SolutionPictures, solution_figure
from tdl_lightning.data.pde import PDEProblem
from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.base import Task

__all__ = ["ReferenceComparison", "relative_l2", "solution_figure"]


def relative_l2(prediction: Tensor, reference: Tensor) -> Tensor:
    """``||prediction - reference||_2 / ||reference||_2`` over all points (computed in float64).

    Example:
        >>> round(float(relative_l2(torch.tensor([1.0, 1.1]), torch.tensor([1.0, 1.0]))), 4)
        0.0707
    """
    p, r = prediction.double(), reference.double()
    return torch.linalg.vector_norm(p - r) / torch.linalg.vector_norm(r)


class ReferenceComparison(Task):
    """The part of the PINN task that compares the network with the problem's reference solution.

    Validation and test batches are ``(grid points, reference values)`` (``PDECollocation``'s grid);
    their squared errors and norms are summed over the batches and the processes, and
    ``<stage>/rel_l2`` is logged at the epoch's end. At the end of fit (and every
    ``plot_every_n_epochs`` epochs) the plugin that :meth:`configure_callbacks` attaches draws the
    network against the reference (:meth:`grid_prediction`, :meth:`grid_labels`). Subclasses set
    :attr:`problem`, :attr:`constraint` and :attr:`plot_every_n_epochs` and provide ``forward(points)``.

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
    def configure_callbacks(self) -> list[L.Callback]:
        """The pictures of the network against the reference, every ``plot_every_n_epochs`` epochs
        and at the end (:class:`~plugins.pinn_pictures.SolutionPictures`), unless the trainer has
        them already.

        Example:
            >>> from tdl_lightning.tasks import PINN
            >>> [type(cb).__name__ for cb in PINN(torch.nn.Linear(2, 1)).configure_callbacks()]
            ['SolutionPictures']
        """
        attached = self._trainer.callbacks if self._trainer is not None else []  # type: ignore[attr-defined]
        if any(isinstance(cb, SolutionPictures) for cb in attached):
            return []
        return [SolutionPictures(every_n_epochs=self.plot_every_n_epochs or None)]

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

    def grid_labels(self) -> tuple[tuple[str, str], str]:
        """The names of the grid's two coordinates, and what the pictures' titles say of the run.

        Example:
            >>> from tdl_lightning.data.pde import Heat1D
            >>> from tdl_lightning.tasks import PINN
            >>> PINN(torch.nn.Linear(2, 1), problem=Heat1D()).grid_labels()[0]
            ('x', 't')
        """
        problem = self._require_problem()
        return (problem.coords[0], problem.coords[1]), f"{problem!r}, {self.constraint} constraint"
