"""The pictures of the plugins: figures with fixed margins, figure makers, pixels as PNG-ready arrays.

A plugin draws its matplotlib figures with :func:`fixed_layout_figure` (margins fixed in inches,
so a figure is saved in one draw; one Agg renderer per size, so matplotlib's text caches serve every
figure; a figure of a ``reuse`` name is recycled once saved) and hands them to the base as figure makers
(:data:`FigureMaker`: functions of no argument that draw the figure when called, so that drawing
can go on beside training, in a child process: :mod:`plugins.drawing`); pictures without axes are
pixels (:func:`_pixels`), saved straight to PNG.

Example:
    >>> figure = draw_figure(lambda: fixed_layout_figure(4, 3)[0])
    >>> figure.get_size_inches().tolist()
    [4.0, 3.0]
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from torch import Tensor

from plugins.checks import PluginConfigError

__all__ = [
    "PNG_COMPRESS_LEVEL",
    "TICKS",
    "FigureMaker",
    "FixedLayoutFigure",
    "SharedRendererCanvas",
    "draw_figure",
    "fixed_layout_figure",
]

FigureMaker = Callable[[], Figure]  # draws a figure when called: see plugins.base.ProbeResult.figures
TICKS = 4  # intervals of a fixed-layout figure's linear axes (MaxNLocator's nbins; the default is ~9)
PNG_COMPRESS_LEVEL = 1  # zlib level of the PNGs: a third of the default's encoding time, files ~20% larger


def draw_figure(figure: Figure | FigureMaker) -> Figure:
    """The figure itself, or the one a figure maker draws (see :attr:`plugins.base.ProbeResult.figures`).

    Example:
        >>> figure = Figure()
        >>> draw_figure(figure) is figure, draw_figure(lambda: figure) is figure
        (True, True)
    """
    if isinstance(figure, Figure):
        return figure
    drawn = figure()
    if not isinstance(drawn, Figure):
        raise TypeError(
            f"a figure maker returned {type(drawn).__name__}: it must return a matplotlib Figure "
            "(e.g. functools.partial(draw, values) where draw returns fixed_layout_figure(...)[0])"
        )
    return drawn


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _pixels(image: Any) -> np.ndarray:
    """An image of :attr:`ProbeResult.images` as ``(H, W)`` or ``(H, W, 3)`` ``uint8`` pixels."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        pixels = image
    else:
        values = torch.as_tensor(_to_numpy(image), dtype=torch.float32)
        if values.dim() != 3 or values.shape[0] not in (1, 3):
            raise PluginConfigError(
                f"an image is (3, H, W) or (1, H, W) floats in [0, 1]; got shape {tuple(values.shape)}"
            )
        pixels = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise PluginConfigError(f"a uint8 image is (H, W, 3) or (H, W); got shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


_RENDERERS: dict[tuple[float, float, float, int], RendererAgg] = {}  # by pixel size, dpi and thread


class SharedRendererCanvas(FigureCanvasAgg):
    """An Agg canvas that draws with one renderer per pixel size, dpi and thread, shared by every figure
    of that size: matplotlib keeps its caches of text extents and parsed mathtext per renderer, so a
    fresh renderer per figure (a plain canvas) measures and parses every tick label and axis label
    anew; shared, the figures of a run (alike but for their data) find most of them measured.

    The pixels are the same: every draw clears the renderer first, as a plain canvas does.

    Example:
        >>> figure, _ = fixed_layout_figure(4, 3)
        >>> other, _ = fixed_layout_figure(4, 3)
        >>> figure.canvas.get_renderer() is other.canvas.get_renderer()
        True
    """

    def get_renderer(self) -> RendererAgg:
        """The shared renderer for this figure's pixel size and dpi, on this thread."""
        w, h = self.get_width_height(physical=True)
        key = (w, h, self.figure.dpi, threading.get_ident())
        renderer = _RENDERERS.get(key)
        if renderer is None:
            renderer = _RENDERERS[key] = RendererAgg(w, h, self.figure.dpi)
        self.renderer = renderer
        return renderer


class FixedLayoutFigure(Figure):
    """The figure :func:`fixed_layout_figure` makes: a matplotlib ``Figure`` whose :meth:`clear`, which
    the plugins call to free a figure once it is saved, detaches the axes without resetting each one
    first (``Figure.clear`` does: a tenth of the cost of drawing the figure, spent on axes that are
    thrown away), or, for a figure made with a ``reuse`` name, hands it back for the next figure of
    that name.

    Example:
        >>> figure, _ = fixed_layout_figure(4, 3)
        >>> figure.clear()
        >>> figure.axes
        []
    """

    _reuse_key: tuple[Any, ...] | None = None

    def clear(self, keep_observers: bool = False) -> None:
        """Remove every axes and artist, as ``Figure.clear`` does, without resetting the axes; a figure
        of a ``reuse`` name keeps its axes, emptied, for the next figure of that name instead."""
        key, self._reuse_key = self._reuse_key, None
        if key is not None and len(_POOL.get(key, [])) < _MAX_POOLED and _empty_for_reuse(self, key[2]):
            _POOL.setdefault(key, []).append(self)
            return
        for ax in tuple(self.axes):
            self.delaxes(ax)
        super().clear(keep_observers=keep_observers)


_POOL: dict[tuple[Any, ...], list[FixedLayoutFigure]] = {}  # cleared figures by reuse key (and thread)
_MAX_POOLED = 4  # per key: a run draws its figures one after another, so one is the rule


def _set_up_axes(ax: Axes) -> None:
    """The state :func:`fixed_layout_figure` gives a new axes beyond matplotlib's defaults."""
    ax.ticklabel_format(style="sci", scilimits=(-3, 4))  # 120000 -> 1.2 and "1e5" above: narrow labels
    ax.locator_params(nbins=TICKS)  # each tick is a dear artist: 5 or so per axis, not up to 10


def _empty_for_reuse(figure: FixedLayoutFigure, ncols: int) -> bool:
    """Empty ``figure``'s axes back to the state of a new :func:`fixed_layout_figure` (no artists,
    linear scales, no labels, autoscaled limits, the colour cycle from its start), keeping the axes
    and their tick artists, which are most of what a new figure costs; ``False`` (nothing changed)
    for a figure that holds more than its axes' artists (a colour bar's axes, a figure legend)."""
    if (
        len(figure.axes) != ncols
        or any((figure.texts, figure.legends, figure.lines, figure.patches, figure.images, figure.artists))
        or any(ax.child_axes or ax.images or ax.tables or ax.texts for ax in figure.axes)
    ):
        return False
    for ax in figure.axes:
        for artist in (*ax.lines, *ax.patches, *ax.collections):
            artist.remove()
        if ax.legend_ is not None:
            ax.legend_.remove()
        ax.containers.clear()
        ax.set_prop_cycle(None)
        ax.set_xscale("linear")
        ax.set_yscale("linear")
        ax.set(xlabel="", ylabel="")
        for loc in ("center", "left", "right"):
            ax.set_title("", loc=loc)
        _set_up_axes(ax)
        ax.margins(x=matplotlib.rcParams["axes.xmargin"], y=matplotlib.rcParams["axes.ymargin"])
        ax.relim()
        ax.autoscale(True)
    return True


def fixed_layout_figure(
    width: float,
    height: float,
    ncols: int = 1,
    *,
    left: float = 0.8,
    right: float = 0.2,
    bottom: float = 0.55,
    top: float = 0.35,
    gap: float = 0.8,
    reuse: str | None = None,
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` axes side by side, its margins fixed in inches (tick labels, axis labels,
    a title fit in the defaults), and the axes.

    Such a figure is saved as it is, in one draw (by a :class:`SharedRendererCanvas`, and freed
    cheaply: :class:`FixedLayoutFigure`); a figure without a layout engine gets
    matplotlib's "tight" layout, and any layout engine makes ``savefig`` draw the figure twice
    (once to lay it out): 0.33 s instead of 0.22 s for a two-panel figure here. Its placeholder
    layout engine marks it for the plugins' base, which saves it without one.

    ``reuse`` names a kind of figure (e.g. ``"init_statistics/q_c"``) drawn again and again: once the
    base has saved one and cleared it, the next figure of that name is the same figure, its axes
    emptied and reset (:class:`FixedLayoutFigure`), which draws the same pixels as a new one
    (``tests/test_figures.py``) for about 30% less CPU. The figure maker draws on it as on a new one
    (artists, labels, titles, scales, limits, legend: all reset); one that changes other state of
    its axes (grid, tick parameters, spines) must not ask for reuse.

    Example:
        >>> figure, (ax_q, ax_c) = fixed_layout_figure(8, 3.2, ncols=2)
        >>> round(figure.subplotpars.left * 8, 6), len(figure.axes)
        (0.8, 2)
    """
    if width <= left + right + gap * (ncols - 1) or height <= bottom + top:
        raise PluginConfigError(
            f"a {width} x {height} inch figure leaves no room for axes inside its margins"
        )
    key = (reuse, (width, height), ncols, (left, right, bottom, top, gap), threading.get_ident())
    if reuse is not None and _POOL.get(key):
        figure = _POOL[key].pop()
        figure._reuse_key = key
        return figure, list(figure.axes)
    figure = FixedLayoutFigure(figsize=(width, height), layout=PlaceHolderLayoutEngine(True, True))
    figure._reuse_key = key if reuse is not None else None
    SharedRendererCanvas(figure)  # attaches itself as figure.canvas
    axes_width = (width - left - right - gap * (ncols - 1)) / ncols
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap / axes_width,
    )
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        _set_up_axes(ax)
    return figure, list(axes)
