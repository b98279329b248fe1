"""Pictures of the loss surface: interpolation between weights, filter-normalised planes.

Pure functions (they never change the model):

- :func:`linear_interpolation` -- the loss along ``(1 - a) theta_a + a theta_b`` (e.g. init to
  final weights; Goodfellow et al. 2015);
- :func:`random_directions` -- random directions, filter-normalised as in Li et al. 2018: each
  filter of the direction rescaled to the norm of the same filter of the weights, biases and
  BatchNorm parameters (all 1-D parameters) set to zero by default;
- :func:`loss_surface` -- the loss on a 1D line or 2D plane ``theta + a d_1 + b d_2`` around the
  current weights. Directions are lists of tensors shaped like the trainable parameters; the
  top Hessian eigenvectors from :func:`plugins.hessian.hessian_eigenvalues` (with
  ``return_eigenvectors=True``) fit as they are.

``loss_fn(model, batch) -> scalar`` and ``data`` (one batch or a re-iterable of batches, mean over
their union) as in :mod:`plugins.hessian`. The loss is evaluated in the model's current mode; random
layers (dropout) see the same random state at every point of a grid.

The callback :class:`LossLandscape` draws, at the end of training (and optionally every few
epochs), the init-to-current interpolation and a filter-normalised 2D contour around the current
weights, saving the raw grids.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> loss_fn = lambda m, b: m(b).pow(2).mean()
    >>> surface = loss_surface(model, loss_fn, torch.randn(16, 2), random_directions(model, 2), steps=5)
    >>> tuple(surface.losses.shape)
    (5, 5)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import (
    DiagnosticCallback,
    FigureMaker,
    LossFn,
    ProbeResult,
    check_loss_on_parameters,
    fixed_layout_figure,
    iterate_batches,
    preserved_training_state,
    require_loss,
    share_work,
)
from plugins.checks import PluginConfigError, check_whole_number, misuse
from plugins.grid_forward import GridForward

__all__ = [
    "LossLandscape",
    "LossSurface",
    "linear_interpolation",
    "loss_surface",
    "random_directions",
]

Direction = list[Tensor]
_NORMALIZATIONS = ("filter", "layer", "none")


def check_steps(steps: Any, owner: str = "", argument: str = "steps") -> None:
    """A grid or a path has a whole number >= 2 of points; else a :class:`~plugins.base.PluginConfigError`.

    Example:
        >>> check_steps(11)
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise misuse(owner, argument, steps, "use at least 2 points (per direction)")


def check_normalization(normalization: Any, owner: str = "") -> None:
    """The normalisation of random directions is one of ``"filter"``, ``"layer"``, ``"none"``.

    Example:
        >>> check_normalization("filter")
    """
    if normalization not in _NORMALIZATIONS:
        raise misuse(owner, "normalization", normalization, f"use one of {_NORMALIZATIONS}")


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PluginConfigError(f"{type(model).__name__} has no parameter with requires_grad=True")
    return params


def _weights(model: nn.Module, theta: Mapping[str, Tensor] | Sequence[Tensor], name: str) -> list[Tensor]:
    """``theta`` as a list aligned with the trainable parameters (from a list or a name->tensor map)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(theta, Mapping):
        missing = [n for n, _ in named if n not in theta]
        if missing:
            raise PluginConfigError(
                f"{name} lacks the trainable parameters {missing[:3]}: pass model.state_dict()-like weights"
            )
        values = [theta[n] for n, _ in named]
    else:
        values = list(theta)
    if len(values) != len(named) or any(v.shape != p.shape for v, (_, p) in zip(values, named, strict=False)):
        raise PluginConfigError(
            f"{name} must hold one tensor per trainable parameter of the model, shaped like it "
            f"({len(named)} tensors), got {len(values)}"
        )
    return [v.detach().to(p, copy=True) for v, (_, p) in zip(values, named, strict=True)]


@torch.no_grad()
def _mean_loss(model: nn.Module, loss_fn: LossFn, data: Any) -> float:
    """The loss over the union of ``data`` (batches weighted by their size), same RNG at each call."""
    total, count = 0.0, 0
    for index, (batch, n) in enumerate(iterate_batches(data)):
        torch.manual_seed(index)  # callers fork the RNG: dropout is the same at every grid point
        loss = loss_fn(model, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise PluginConfigError(
                "loss_fn(model, batch) must return a scalar tensor: reduce it with .mean()"
            )
        total, count = total + float(loss) * n, count + n
    return total / count


def _set(params: list[nn.Parameter], values: list[Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def _losses_at(
    model: nn.Module, loss_fn: LossFn, data: Any, basis: list[Direction], points: Sequence[Sequence[float]]
) -> list[float]:
    """The loss at each point ``sum_k point[k] basis[k]`` of weight space (model restored after).

    Each point's arithmetic is the same whichever other points are evaluated beside it, so a grid
    shared across ranks equals the grid of one process. Layers that read the data are combined from
    their outputs at the basis weights, and average pools are strided sums
    (:class:`~plugins.grid_forward.GridForward`).
    """
    params = _trainable(model)
    losses = []
    with preserved_training_state(model), GridForward(params, basis, data) as grid:
        for point in points:
            terms = [(c, weights) for c, weights in zip(point, basis, strict=True) if c != 0]
            zeros = [torch.zeros_like(p) for p in params]  # 0 + x is x: the same arithmetic as an int 0
            _set(params, [sum((c * w[j] for c, w in terms), zeros[j]) for j in range(len(params))])
            grid.point = tuple(point)  # layers that read the data: combined from the basis
            losses.append(_mean_loss(model, loss_fn, data))
    return losses


def _plane_points(coords: list[np.ndarray]) -> list[tuple[float, ...]]:
    """The centre, then every grid point in ``np.ndindex`` order, on the basis ``[centre, *dirs]``."""
    grid = [
        (1.0, *(float(c[i]) for c, i in zip(coords, index, strict=True)))
        for index in np.ndindex(*(len(c) for c in coords))
    ]
    return [(1.0,) + (0.0,) * len(coords), *grid]


def linear_interpolation(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    theta_a: Mapping[str, Tensor] | Sequence[Tensor],
    theta_b: Mapping[str, Tensor] | Sequence[Tensor],
    steps: int = 25,
    alpha_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """The loss along the segment ``(1 - alpha) theta_a + alpha theta_b``.

    Args:
        model: the network; its trainable parameters are set along the path, then restored.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        data: one batch or a re-iterable of batches.
        theta_a, theta_b: weights as ``{name: tensor}`` (a ``state_dict``) or a list aligned with
            the trainable parameters.
        steps: points on the path.
        alpha_range: the range of ``alpha`` (``(-0.5, 1.5)`` looks beyond both ends).

    Returns:
        ``(alphas, losses)`` as NumPy arrays.

    Example:
        >>> model = nn.Linear(1, 1, bias=False)
        >>> a, b = [torch.zeros(1, 1)], [torch.ones(1, 1)]
        >>> square = lambda m, x: m(x).pow(2).mean()
        >>> alphas, losses = linear_interpolation(model, square, torch.ones(4, 1), a, b, steps=3)
        >>> losses.round(3).tolist()
        [0.0, 0.25, 1.0]
    """
    check_steps(steps)
    a, b = _weights(model, theta_a, "theta_a"), _weights(model, theta_b, "theta_b")
    alphas = np.linspace(alpha_range[0], alpha_range[1], steps)
    points = [(1 - float(alpha), float(alpha)) for alpha in alphas]
    return alphas, np.asarray(_losses_at(model, loss_fn, data, [a, b], points))


def random_directions(
    model: nn.Module,
    n: int = 2,
    normalization: str = "filter",
    ignore_bias_and_bn: bool = True,
    seed: int = 0,
) -> list[Direction]:
    """``n`` random Gaussian directions in weight space, normalised as Li et al. (2018).

    Args:
        model: the network whose trainable parameters give the shapes and norms.
        n: how many directions.
        normalization: ``"filter"``: each filter (slice along the first dimension: an output
            channel of a convolution, a row of a linear layer) gets the norm of the same filter of
            the weights; ``"layer"``: each parameter tensor gets the parameter's norm; ``"none"``.
        ignore_bias_and_bn: set the direction to zero on 1-D parameters (biases, BatchNorm
            scales and shifts), as Li et al. do; otherwise they are normalised as a whole.
        seed: seed of the draw (its own generator; the global RNG is untouched).

    Example:
        >>> model = nn.Linear(3, 2)
        >>> (d,) = random_directions(model, 1)
        >>> torch.allclose(d[0].norm(dim=1), model.weight.norm(dim=1)), float(d[1].abs().sum())
        (True, 0.0)
    """
    check_normalization(normalization)
    check_whole_number("", "n", n)
    generator = torch.Generator().manual_seed(seed)
    params = _trainable(model)
    directions = []
    for _ in range(n):
        direction = []
        for p in params:
            d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            w = p.detach()
            if p.dim() <= 1 and ignore_bias_and_bn:
                d.zero_()
            elif normalization == "filter" and p.dim() > 1:
                dims = tuple(range(1, p.dim()))
                norm = torch.linalg.vector_norm
                d *= norm(w, dim=dims, keepdim=True) / norm(d, dim=dims, keepdim=True).clamp_min(1e-12)
            elif normalization != "none":
                d *= w.norm() / d.norm().clamp_min(1e-12)
            direction.append(d)
        directions.append(direction)
    return directions


@dataclass
class LossSurface:
    """The loss on a line (one direction) or a plane (two directions) around the weights.

    Attributes:
        coords: one coordinate array per direction.
        losses: shape ``(steps,)`` or ``(steps, steps)``; ``losses[i, j]`` is at
            ``theta + coords[0][i] d_1 + coords[1][j] d_2``.
        center_loss: the loss at the weights themselves.

    Example:
        >>> LossSurface([np.zeros(3)], np.zeros(3), 0.0).losses.shape
        (3,)
    """

    coords: list[np.ndarray]
    losses: np.ndarray
    center_loss: float


def loss_surface(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    directions: Sequence[Direction],
    extent: float | tuple[float, float] = 1.0,
    steps: int = 21,
) -> LossSurface:
    """The loss on the line or plane spanned by one or two directions around the current weights.

    Args:
        model: the network (restored afterwards).
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        data: one batch or a re-iterable of batches.
        directions: one or two directions (lists of tensors shaped like the trainable parameters),
            e.g. from :func:`random_directions`.
        extent: coordinates run over ``[-extent, extent]``, or over ``(low, high)``.
        steps: points per direction (odd numbers include the centre).

    Example:
        >>> model = nn.Linear(1, 1, bias=False)
        >>> line = loss_surface(model, lambda m, x: m(x).pow(2).mean(), torch.ones(2, 1),
        ...                     [[torch.ones(1, 1)]], extent=1.0, steps=3)
        >>> line.coords[0].tolist(), bool(line.losses[0] + line.losses[2] > 2 * line.losses[1])
        ([-1.0, 0.0, 1.0], True)
    """
    if len(directions) not in (1, 2):
        raise PluginConfigError(
            f"loss_surface takes one or two directions (a line or a plane), got {len(directions)}"
        )
    check_steps(steps)
    dirs = [_weights(model, d, f"directions[{i}]") for i, d in enumerate(directions)]
    coords = _plane_coords(extent, steps, len(dirs))
    center = [p.detach().clone() for p in _trainable(model)]
    losses = _losses_at(model, loss_fn, data, [center, *dirs], _plane_points(coords))
    return _surface(coords, losses)


def _plane_coords(extent: float | tuple[float, float], steps: int, n: int) -> list[np.ndarray]:
    low, high = (-extent, extent) if isinstance(extent, (int, float)) else extent
    return [np.linspace(low, high, steps) for _ in range(n)]


def _surface(coords: list[np.ndarray], losses: Sequence[float]) -> LossSurface:
    """The surface from the losses at :func:`_plane_points` (centre first)."""
    grid = np.asarray(losses[1:], dtype=float).reshape(tuple(len(c) for c in coords))
    return LossSurface(coords=coords, losses=grid, center_loss=float(losses[0]))


# --------------------------------------------------------------------------- figures
def interpolation_figure(alphas: np.ndarray, losses: np.ndarray, title: str = "init -> current") -> Figure:
    """The loss along an interpolation path (``alpha = 0``: start, ``1``: end).

    Example:
        >>> len(interpolation_figure(np.linspace(0, 1, 3), np.ones(3)).axes)
        1
    """
    figure, (ax,) = fixed_layout_figure(5, 3.5)
    ax.plot(alphas, losses, "o-", markersize=3)
    ax.set_xlabel("alpha")
    ax.set_ylabel("loss")
    ax.set_title(title)
    return figure


def contour_figure(surface: LossSurface, title: str = "filter-normalised plane") -> Figure:
    """Contours of a 2D loss surface, with the current weights marked at the centre.

    Example:
        >>> s = LossSurface([np.linspace(-1, 1, 3)] * 2, np.arange(9.0).reshape(3, 3) + 1, 5.0)
        >>> len(contour_figure(s).axes)
        2
    """
    if surface.losses.ndim != 2:
        raise PluginConfigError("contour_figure needs a 2D surface (two directions)")
    figure, (ax,) = fixed_layout_figure(5, 4.2, right=0.9)  # room for the colour bar's labels
    x, y = surface.coords
    levels = np.geomspace(max(surface.losses.min(), 1e-8), surface.losses.max(), 25)
    filled = ax.contourf(x, y, surface.losses.T, levels=np.unique(levels), cmap="viridis")
    ax.contour(x, y, surface.losses.T, levels=np.unique(levels), colors="k", linewidths=0.3)
    ax.plot([0], [0], "r*", markersize=10)
    figure.colorbar(filled, ax=ax, label="loss")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title)
    return figure


# --------------------------------------------------------------------------- the callback
class LossLandscape(DiagnosticCallback):
    """Draws the init-to-current interpolation and a filter-normalised 2D loss contour.

    At each probe (by default only at the end of training): the loss along the segment from the
    weights at the start of training to the current ones (``interpolation`` figure,
    ``alpha_range`` beyond both ends if wished) and on the plane of two random filter-normalised
    directions around the current weights (``contour`` figure). Raw grids go to ``step_<N>.npz``;
    logged scalars: ``center_loss``, ``init_loss`` and ``max_interpolation_barrier`` (the highest
    loss on the path above the straight line between its two ends: 0 for a convex path) and
    ``probe_seconds``.

    Under DDP every rank evaluates a contiguous share of the points (the plane's and the path's
    together) on the whole probe batch, and global rank zero gathers them, draws and logs: the
    same numbers as one process, in about ``1 / world_size`` of its time.

    The starting weights are kept (on the CPU) in the callback's checkpoint state, so a resumed
    run still interpolates from its real init. Needs ``pl_module.loss(batch)`` (or ``loss_fn``).

    Args:
        steps: grid points per direction of the plane. The defaults (an 11 x 11 plane, 21 points on
            the path: 143 loss evaluations of 128 probe inputs) keep the probe at the end of the
            LeNet-5 demo under 10% of its training on a CPU; ask for ``steps=21`` and a larger
            ``probe_size`` for a finer picture (the cost grows as ``steps**2 * probe_size``).
        extent: the plane spans ``[-extent, extent]`` in units of the normalised directions.
        interpolation_steps: points on the init-to-current path.
        alpha_range: range of the interpolation coefficient.
        normalization: of the random directions (``"filter"``, ``"layer"``, ``"none"``).
        direction_seed: seed of the random directions (the same plane at every probe).
        loss_fn: ``loss_fn(model, batch)``; default ``pl_module.loss``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: at the end only, 128
            inputs).

    Example:
        >>> cb = LossLandscape(steps=11, every_n_epochs=5)
        >>> cb.name, cb.at_end, cb.at_init
        ('loss_landscape', True, False)
    """

    name = "loss_landscape"
    state_key_args = ("normalization", "direction_seed")
    distributed = True  # under DDP the grid's points are shared across ranks (runs_train_mode stays)

    def __init__(
        self,
        steps: int = 11,
        extent: float = 1.0,
        interpolation_steps: int = 21,
        alpha_range: tuple[float, float] = (-0.25, 1.25),
        normalization: str = "filter",
        direction_seed: int = 0,
        loss_fn: LossFn | None = None,
        *,
        at_init: bool = False,
        at_end: bool = True,
        probe_size: int = 128,
        **schedule: Any,
    ) -> None:
        super().__init__(at_init=at_init, at_end=at_end, probe_size=probe_size, **schedule)
        check_steps(steps, "LossLandscape")
        check_steps(interpolation_steps, "LossLandscape", "interpolation_steps")
        if not isinstance(extent, (int, float)) or not extent > 0:
            raise misuse(
                "LossLandscape", "extent", extent, "use a positive extent (of the normalised directions)"
            )
        check_normalization(normalization, "LossLandscape")
        self.steps, self.extent, self.interpolation_steps = steps, extent, interpolation_steps
        self.alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
        self.normalization, self.direction_seed, self.loss_fn = normalization, direction_seed, loss_fn
        self.theta_init: list[Tensor] | None = None

    def check_module(self, pl_module: L.LightningModule) -> None:
        require_loss("LossLandscape", pl_module, self.loss_fn)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.theta_init is None and trainer.global_step == 0:
            self.theta_init = [p.detach().cpu().clone() for p in _trainable(pl_module)]
        super().on_train_start(trainer, pl_module)

    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """The interpolation from the initial weights and the 2D contour; see the class docstring."""
        start = time.perf_counter()
        loss_fn = require_loss("LossLandscape", pl_module, self.loss_fn)
        if not self.history:  # the first probe of the fit (or of a notebook's calls)
            check_loss_on_parameters("LossLandscape", pl_module, loss_fn, batch)
        directions = random_directions(pl_module, 2, self.normalization, seed=self.direction_seed)
        current = [p.detach().clone() for p in _trainable(pl_module)]
        coords = _plane_coords(self.extent, self.steps, 2)
        basis, points = [current, *directions], _plane_points(coords)
        alphas = np.linspace(*self.alpha_range, self.interpolation_steps)
        interpolate = self.theta_init is not None and any(
            not torch.equal(a.to(b), b) for a, b in zip(self.theta_init, current, strict=True)
        )
        if interpolate and self.theta_init is not None:  # (1 - a) init + a theta on [theta, d_1, d_2, init]
            basis.append(_weights(pl_module, self.theta_init, "theta_init"))
            points = [(*point, 0.0) for point in points]
            points += [(float(alpha), 0.0, 0.0, 1 - float(alpha)) for alpha in alphas]
        losses = share_work(
            points, lambda share: _losses_at(pl_module, loss_fn, batch, basis, share), "LossLandscape's probe"
        )
        if losses is None:  # another rank than zero: its share is done, rank zero draws and logs
            return ProbeResult()
        surface = _surface(coords, losses[: len(coords[0]) ** 2 + 1])
        figures: dict[str, FigureMaker] = {"contour": lambda: contour_figure(surface)}  # drawn at the end
        result = ProbeResult(
            scalars={"center_loss": surface.center_loss},
            arrays={"plane_x": surface.coords[0], "plane_y": surface.coords[1], "plane_loss": surface.losses},
            figures=figures,
        )
        if interpolate:
            path = np.asarray(losses[len(coords[0]) ** 2 + 1 :])
            ends = np.interp([0.0, 1.0], alphas, path)
            chord = ends[0] + (ends[1] - ends[0]) * alphas
            inside = (alphas >= 0) & (alphas <= 1)
            result.scalars["init_loss"] = float(ends[0])
            result.scalars["max_interpolation_barrier"] = float(np.max(path[inside] - chord[inside]))
            result.arrays.update(interpolation_alpha=alphas, interpolation_loss=path)
            figures["interpolation"] = lambda: interpolation_figure(alphas, path)
        result.scalars["probe_seconds"] = time.perf_counter() - start
        return result

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "theta_init": self.theta_init}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.theta_init = state_dict.get("theta_init", self.theta_init)
