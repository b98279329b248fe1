"""Pictures of a PINN against its reference solution, as a diagnostic callback.

:class:`SolutionPictures` draws :func:`solution_figure` (heat maps of the network's ``u``, the
reference and the absolute error, and slices at a few times) at the end of every
``every_n_epochs``-th training epoch and when training ends. Like every plugin it writes through
:class:`~plugins.base.DiagnosticCallback`: ``solution_step<N>.png`` and the arrays (``axis0``,
``axis1``, ``prediction``, ``reference``) in ``step<N>.npz``, in ``<run dir>/plugins/pinn/``, and
the PNG to W&B under ``pinn/solution``. The PINN task attaches it itself
(``PINN.configure_callbacks``, ``plot_every_n_epochs``), so every PINN run has its pictures.

The protocol (checked at setup): ``grid_prediction() -> ((axis0, axis1), prediction, reference)``,
the network and the reference on a 2D grid as arrays of shape ``(len(axis0), len(axis1))``; and,
if the module has it, ``grid_labels() -> ((name0, name1), description)``: the coordinates' names
and what the title says of the run (default ``("x", "t")`` and the module's class name).

Example:
    >>> a0, a1 = np.linspace(-1, 1, 5), np.linspace(0, 1, 4)
    >>> u = np.outer(a0, a1)
    >>> len(solution_figure((a0, a1), u, u + 0.01).axes) >= 6
    True
"""

from __future__ import annotations

import functools
from typing import Any

import lightning as L
import numpy as np
from matplotlib.figure import Figure
from typing_extensions import override

from plugins.base import DiagnosticCallback, ProbeResult
from plugins.checks import PluginConfigError

__all__ = ["SolutionPictures", "solution_figure"]


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


class SolutionPictures(DiagnosticCallback):
    """The network against its reference on the problem's grid: the figure ``solution``.

    Args:
        every_n_epochs: draw at the end of every n-th training epoch too (``None``: only at the end).

    The title says the run (``grid_labels``), the step and the relative L2 error on the grid.

    Example:
        >>> cb = SolutionPictures(every_n_epochs=5)
        >>> cb.name, cb.every_n_epochs, cb.at_init, cb.at_end
        ('pinn', 5, False, True)
    """

    name = "pinn"
    runs_train_mode = False  # grid_prediction runs with no gradients; the state is restored anyway

    def __init__(self, every_n_epochs: int | None = None) -> None:
        super().__init__(at_init=False, every_n_epochs=every_n_epochs, at_end=True)

    @override
    def check_module(self, pl_module: L.LightningModule) -> None:
        if not callable(getattr(pl_module, "grid_prediction", None)):
            raise PluginConfigError(
                f"SolutionPictures needs {type(pl_module).__name__} to have grid_prediction() "
                "(the network and the reference on a grid): attach it to a PINN"
            )

    @override
    def take_batch(self, trainer: L.Trainer) -> Any:
        return ()  # the module evaluates itself on its own grid: no data is drawn

    @override
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        axes, u, reference = pl_module.grid_prediction()  # type: ignore[operator]
        labels = getattr(pl_module, "grid_labels", None)
        coords, run = labels() if callable(labels) else (("x", "t"), type(pl_module).__name__)
        error = float(np.linalg.norm(u - reference) / np.linalg.norm(reference))
        title = f"{run}, step {self.probe_step or 0}: rel. L2 = {error:.2e}"
        draw = functools.partial(solution_figure, axes, u, reference, (coords[0], coords[1]), title)
        arrays = {"axis0": axes[0], "axis1": axes[1], "prediction": u, "reference": reference}
        return ProbeResult(figures={"solution": draw}, arrays=arrays)
