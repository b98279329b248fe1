"""Linear regions of piecewise-linear networks: expressivity with depth (Telgarsky; Hanin & Rolnick).

A ReLU network is affine on each *activation region*, the set of inputs that share one pattern
of active units (and, after a max-pool, one winner per window). Along a segment ``start -> end``
every unit's pre-activation is affine between the breakpoints of the layers before it, so the
exact breakpoints follow layer by layer: where a pre-activation crosses a kink of its activation
(0 for ReLU and leaky ReLU, -1 and 1 for hard tanh) or where a max-pool's winner changes, a new
breakpoint is inserted. :func:`linear_regions_along_line` does this search (no grid),
:func:`linear_regions_in_plane` maps the regions of a 2-D slice, and :class:`LinearRegions` logs
the counts during a fit.

Depth can buy pieces exponentially (Telgarsky's sawtooth has ``2**k`` with ``k`` layers of two
units), yet random and trained networks use this little: Hanin & Rolnick (2019) show the number of
regions crossed per unit length stays of the order of the number of neurons, at init and during
training, whatever the depth.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(1.0)
    ...     _ = net[0].bias.copy_(torch.tensor([-0.25, -0.5, -0.75]))
    >>> regions = linear_regions_along_line(net, torch.zeros(1), torch.ones(1))
    >>> regions.count, regions.breakpoints.tolist()
    (4, [0.25, 0.5, 0.75])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from plugins.base import DiagnosticCallback, ProbeResult, probe_inputs
from plugins.checks import PluginConfigError
from plugins.forward import ForwardFn, probes_through_forward_fn

__all__ = [
    "LineRegions",
    "LinearRegions",
    "activation_pattern_ids",
    "count_neurons",
    "linear_regions_along_line",
    "linear_regions_in_plane",
    "region_picture",
]

MAX_PASS_BYTES = 2 * 2**30
"""The most memory a pass along a segment may hold for one layer's float64 activations at every position."""
PASS_COPIES = 4  # a layer's input, output, the interpolation and a branch held beside them
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)
"""Activations with kinks the search follows (``nn.ReLU6`` is a ``Hardtanh``)."""
AFFINE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    _BatchNorm,
)
"""Layers that are affine maps of their input (dropout and batch norm in ``eval()`` mode)."""
SMOOTH = (
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Hardswish,
)


@dataclass(frozen=True)
class LineRegions:
    """The linear regions of a network on a segment.

    Attributes:
        count: number of activation regions (linear pieces) on the segment.
        breakpoints: the ``count - 1`` positions in ``(0, 1)`` along ``start -> end`` (float64,
            sorted) where the activation pattern changes.

    Example:
        >>> LineRegions(2, torch.tensor([0.5], dtype=torch.float64)).count
        2
    """

    count: int
    breakpoints: Tensor


def _kinks(module: nn.Module) -> tuple[float, ...]:
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return (0.0,)


def _refusal(name: str, module: nn.Module) -> str | None:
    """Why ``module`` (a leaf called in the forward) breaks the search, or ``None`` if it does not."""
    kind = type(module).__name__
    if isinstance(module, (nn.Dropout, _BatchNorm)) and module.training:
        return f"{kind} at {name!r} is in training mode (random or batch-coupled): call model.eval() first"
    if isinstance(module, nn.MaxPool2d) and module.ceil_mode:
        return f"MaxPool2d at {name!r} uses ceil_mode=True, the search does not follow: use False"
    if isinstance(module, (*PIECEWISE_LINEAR, *AFFINE, nn.MaxPool2d)):
        return None
    what = "smooth" if isinstance(module, SMOOTH) else "not a layer the search knows"
    return (
        f"{kind} at {name!r} is {what}: linear regions exist for piecewise-linear networks only "
        "(ReLU, LeakyReLU, Hardtanh, Identity activations; Linear, Conv2d, average/max pooling, Flatten)"
    )


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or type(model).__name__, m) for name, m in model.named_modules() if not list(m.children())]


@contextmanager
def _hooks(model: nn.Module, pre_hook: Callable[[str, nn.Module, Tensor], Tensor | None]) -> Iterator[None]:
    """Every leaf module's input goes through ``pre_hook(name, module, input)`` (its return replaces it)."""

    def make(name: str) -> Callable[[nn.Module, tuple[Any, ...]], Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            reason = _refusal(name, module)
            if reason is not None:
                raise PluginConfigError(reason)
            new = pre_hook(name, module, args[0])
            return None if new is None else (new, *args[1:])

        return hook

    handles = [m.register_forward_pre_hook(make(name)) for name, m in _leaves(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _double_call(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` with every floating parameter and buffer in float64; the model is not changed."""
    tensors = {
        k: (v.detach().double() if v.is_floating_point() else v)
        for k, v in [*model.named_parameters(), *model.named_buffers()]
    }
    with torch.no_grad():
        return torch.func.functional_call(model, tensors, (x,))


def _interpolate(t: Tensor, values: Tensor, new_t: Tensor) -> Tensor:
    """Values at ``new_t`` of the function that is affine between the positions ``t`` (exact at ``t``)."""
    idx = (torch.searchsorted(t, new_t, right=True) - 1).clamp(0, len(t) - 2)
    w = ((new_t - t[idx]) / (t[idx + 1] - t[idx])).reshape(-1, *([1] * (values.dim() - 1)))
    return (1 - w) * values[idx] + w * values[idx + 1]


def _noise(values: Tensor) -> float:
    """Rounding noise of values made by interpolation: differences below this are ties (float64)."""
    return 1e-10 * (1.0 + float(values.abs().max())) if values.numel() else 0.0


def _crossings(t: Tensor, flat: Tensor, level: float) -> Tensor:
    """Positions where the piecewise-affine columns of ``flat`` (values at ``t``) cross ``level``.

    Both ends must lie beyond the rounding noise on opposite sides: a pre-activation that is ``level``
    at a breakpoint (up to rounding) does not cross again there.
    """
    tol = _noise(flat)
    a, b = flat[:-1] - level, flat[1:] - level
    cross = ((a > tol) & (b < -tol)) | ((a < -tol) & (b > tol))
    i, _ = cross.nonzero(as_tuple=True)
    a, b = a[cross], b[cross]
    return t[i] + a / (a - b) * (t[i + 1] - t[i])


def _winner_changes(t: Tensor, h: Tensor, pool: nn.MaxPool2d) -> Tensor:
    """Positions where a max-pool window's largest element changes (its upper envelope's kinks)."""
    n, c = h.shape[:2]
    padding = _pair(pool.padding)
    if any(padding):
        h = F.pad(h, (padding[1], padding[1], padding[0], padding[0]), value=-1e300)
    windows = F.unfold(
        h.reshape(n * c, 1, *h.shape[2:]),
        _pair(pool.kernel_size),
        dilation=_pair(pool.dilation),
        stride=_pair(pool.stride or pool.kernel_size),
    )
    u = windows.reshape(n, c, windows.shape[1], -1).permute(0, 1, 3, 2).reshape(n, -1, windows.shape[1])
    tol = _noise(u[u > -1e299])
    lo, hi = u[:-1], u[1:]  # (intervals, windows, elements): value = lo + s (hi - lo), s in [0, 1]
    slope = hi - lo
    # the winner at s = 0; elements tied there (up to rounding) are told apart by their slopes
    top = torch.where(lo >= lo.amax(-1, keepdim=True) - tol, slope, -math.inf).argmax(-1)
    where = torch.zeros(lo.shape[:2], dtype=t.dtype, device=t.device)
    found = []
    for _ in range(lo.shape[-1] - 1):  # the envelope of K lines has at most K pieces
        lo_a, slope_a = lo.gather(-1, top[..., None]), slope.gather(-1, top[..., None])
        gain = slope - slope_a
        overtakes = (gain > 0) & (hi > hi.gather(-1, top[..., None]) + tol)  # ends above by more than noise
        s = torch.where(overtakes, (lo_a - lo) / gain.clamp_min(1e-300), math.inf)
        s = torch.where(s > where[..., None], s, math.inf)
        s_next = s.amin(-1)
        valid = s_next < 1
        if not bool(valid.any()):
            break
        i, _ = valid.nonzero(as_tuple=True)
        found.append(t[i] + s_next[valid] * (t[i + 1] - t[i]))
        tie = s == s_next[..., None]
        top = torch.where(valid, torch.where(tie, slope, -math.inf).argmax(-1), top)
        where = torch.where(valid, s_next, math.inf)
    return torch.cat(found) if found else t.new_zeros(0)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def linear_regions_along_line(
    model: nn.Module, start: Tensor, end: Tensor, *, max_regions: int = 100_000
) -> LineRegions:
    """The exact activation regions of a piecewise-linear network on the segment ``start -> end``.

    The positions ``t in [0, 1]`` of ``x(t) = start + t (end - start)`` start as ``{0, 1}``. One
    forward pass of all current positions (float64) reaches each activation; its pre-activations are
    affine between the positions, so every crossing of a kink is found exactly, inserted, and the
    pre-activations interpolated there before the activation applies; a max-pool inserts the points
    where a window's winner changes. Where branches meet (a residual connection), one of them may
    still hold the positions from before an insertion in the other: the pass then starts again from
    every position found so far, until one pass goes through. At the end the output is checked to be
    affine between the breakpoints (an unseen nonlinearity, e.g. ``torch.relu`` called inside
    ``forward``, is refused). For generic weights each region is one linear piece of the function.

    Args:
        model: a network of ``ReLU``/``LeakyReLU``/``Hardtanh``/``Identity`` activations and
            ``Linear``/``Conv2d``/average- and max-pooling/``Flatten`` layers (dropout and batch
            norm in ``eval()`` mode), called as ``model(x)`` on a batch. Its parameters are untouched.
        start, end: two inputs, shaped as one sample (no batch dimension).
        max_regions: refuse segments with more regions than this (memory grows with the count).

    Raises:
        ValueError: a smooth or unknown layer, a segment of zero length, more than
            ``max_regions`` regions, or more than one layer's activations at every position can
            hold in :data:`MAX_PASS_BYTES` (a ResNet on a segment between two images).

    Example:
        >>> from tdl_lightning.models import Sawtooth
        >>> linear_regions_along_line(Sawtooth(5), torch.zeros(1), torch.ones(1)).count
        32
    """
    if start.shape != end.shape:
        raise PluginConfigError(
            f"start and end must have one shape, got {tuple(start.shape)} and {tuple(end.shape)}"
        )
    start, end = start.detach().double(), end.detach().double()
    if torch.equal(start, end):
        raise PluginConfigError("start and end are the same point: give a segment of non-zero length")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, device=start.device)
    state = {"t": t}

    def insert(name: str, module: nn.Module, h: Tensor) -> Tensor | None:
        t = state["t"]
        if isinstance(module, nn.MaxPool2d):
            new = _winner_changes(t, h, module)
        elif isinstance(module, PIECEWISE_LINEAR):
            flat = h.reshape(len(t), -1)
            new = torch.cat([_crossings(t, flat, level) for level in _kinks(module)])
        else:
            return None
        if len(new) == 0:
            return None
        merged = torch.unique(torch.cat([t, new]))
        if len(merged) - 1 > max_regions:
            raise PluginConfigError(
                f"more than max_regions={max_regions} linear regions on the segment (by {name!r}): "
                "pass a larger max_regions, or a shorter segment"
            )
        held = len(merged) * h[0].numel() * h.element_size() * PASS_COPIES
        if held > MAX_PASS_BYTES:
            raise PluginConfigError(
                f"{len(merged) - 1} linear regions on the segment by {name!r} already, and this layer's "
                f"activations at their {len(merged)} positions need {held / 2**30:.1f} GiB (more than "
                f"{MAX_PASS_BYTES / 2**30:.0f} GiB): the exact count is for small networks and short "
                "segments; use a shorter segment or a smaller network"
            )
        state["t"] = merged
        return _interpolate(t, h, merged)

    def points(t: Tensor) -> Tensor:
        return start + t.reshape(-1, *([1] * start.dim())) * (end - start)

    while True:
        known = len(state["t"])
        try:
            with _hooks(model, insert):
                out = _double_call(model, points(state["t"]))
            break
        except RuntimeError:
            if len(state["t"]) == known:  # nothing was inserted: not a branch left behind
                raise
            # a branch (a residual connection, a concatenation) met one that still holds the positions
            # from before this pass's insertions: pass again from every position found so far
    t = state["t"]
    _check_affine_between(model, points, t, out)
    return LineRegions(len(t) - 1, t[1:-1])


def _check_affine_between(
    model: nn.Module, points: Callable[[Tensor], Tensor], t: Tensor, out: Tensor
) -> None:
    mid = _double_call(model, points((t[:-1] + t[1:]) / 2)).reshape(len(t) - 1, -1)
    flat = out.reshape(len(t), -1)
    error = (mid - (flat[:-1] + flat[1:]) / 2).abs().max()
    if error > 1e-7 * (1 + flat.abs().max()):
        raise PluginConfigError(
            f"{type(model).__name__}'s output is not affine between the breakpoints found (off by "
            f"{float(error):.2e}): its forward applies a nonlinearity outside modules (e.g. torch.relu): "
            "use activation modules (nn.ReLU, ...)"
        )


def activation_pattern_ids(model: nn.Module, x: Tensor, *, chunk_size: int = 4096) -> Tensor:
    """One integer per input of ``x``, equal for two inputs iff they share the activation pattern.

    The pattern is, per unit, which side of each kink its pre-activation lies on (``h > 0`` for
    ReLU), and, per max-pool window, which element wins. Patterns are compared through two random
    float64 projections (a collision needs two sums of random numbers to agree exactly).

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0), net[0].bias.fill_(0.0)
        >>> activation_pattern_ids(net, torch.tensor([[-2.0], [-1.0], [1.0]])).tolist()
        [0, 0, 1]
    """
    codes = []
    generators: dict[str, torch.Generator] = {}
    for chunk in torch.split(x.detach().double(), chunk_size):
        code = torch.zeros(len(chunk), 2, dtype=torch.float64, device=x.device)

        def record(name: str, module: nn.Module, h: Tensor, code: Tensor = code) -> None:
            if isinstance(module, nn.MaxPool2d):
                pattern = F.max_pool2d(
                    h, module.kernel_size, module.stride, module.padding, module.dilation, return_indices=True
                )[1]
            elif isinstance(module, PIECEWISE_LINEAR):
                pattern = torch.stack([h > level for level in _kinks(module)]).sum(0)
            else:
                return
            pattern = pattern.reshape(len(h), -1).double()
            g = generators.setdefault(name, torch.Generator().manual_seed(len(generators) + 1))
            g.manual_seed(g.initial_seed())
            weights = torch.randn(pattern.shape[1], 2, generator=g, dtype=torch.float64).to(h.device)
            code += pattern @ weights

        with _hooks(model, record):
            _double_call(model, chunk)
        codes.append(code)
    return torch.unique(torch.cat(codes), dim=0, return_inverse=True)[1]


def linear_regions_in_plane(
    model: nn.Module, origin: Tensor, u: Tensor, v: Tensor, *, resolution: int = 256
) -> Tensor:
    """A ``(resolution, resolution)`` map of activation-pattern ids over ``origin + a u + b v``.

    ``a`` runs along the columns and ``b`` along the rows (``b = 1`` at the top row), both over
    ``[-1, 1]``; equal ids mean one region (Hanin & Rolnick 2019, Fig. 1). Ids are numbered
    ``0 .. regions - 1``; the number of distinct ids is the number of regions the grid sees.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> ids = linear_regions_in_plane(net, torch.zeros(2), torch.tensor([1.0, 0]), torch.tensor([0, 1.0]),
        ...                               resolution=32)
        >>> ids.shape, 1 <= int(ids.max()) + 1 <= 11  # 4 lines cut a plane into at most 11 regions
        (torch.Size([32, 32]), True)
    """
    if origin.shape != u.shape or origin.shape != v.shape:
        raise PluginConfigError("origin, u and v must have one shape (one sample, no batch dimension)")
    grid = torch.linspace(-1, 1, resolution, dtype=torch.float64, device=origin.device)
    b, a = torch.meshgrid(grid.flip(0), grid, indexing="ij")
    shape = (-1, *([1] * origin.dim()))
    x = origin.double() + a.reshape(shape) * u.double() + b.reshape(shape) * v.double()
    return activation_pattern_ids(model, x).reshape(resolution, resolution)


def region_picture(ids: Tensor, marks: list[tuple[int, int]] = ()) -> np.ndarray:  # type: ignore[assignment]
    """An ``(H, W, 3)`` ``uint8`` picture of a region map: one random colour per region, black marks.

    Example:
        >>> region_picture(torch.tensor([[0, 1], [1, 1]])).shape
        (2, 2, 3)
    """
    palette = np.random.default_rng(0).integers(40, 256, size=(int(ids.max()) + 1, 3), dtype=np.uint8)
    picture = palette[ids.cpu().numpy()]
    for row, col in marks:
        picture[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = 0
    return picture


def count_neurons(model: nn.Module, x: Tensor) -> int:
    """Units of the piecewise-linear activations that one input passes through.

    Example:
        >>> count_neurons(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), torch.zeros(3))
        5
    """
    sizes: list[int] = []

    def record(name: str, module: nn.Module, h: Tensor) -> None:
        if isinstance(module, PIECEWISE_LINEAR):
            sizes.append(h[0].numel())

    with _hooks(model, record):
        _double_call(model, x.detach().double().unsqueeze(0))
    return sum(sizes)


class LinearRegions(DiagnosticCallback):
    """Activation regions along fixed segments through probe inputs, and in a plane, during a fit.

    Segments: ``probe[2j] -> probe[2j + 1]`` for ``j < num_lines`` (pairs of training inputs), or
    the ``segments`` given. Logged per probe (key ``linear_regions/<name>``): ``regions_mean`` and
    ``regions_std`` (over segments), ``regions_per_unit_length_mean`` and ``_std`` (the count over
    the segment's Euclidean length), ``neurons`` (piecewise-linear units) and ``regions_per_neuron``
    (the mean count over ``neurons``: of order one at init and in training, Hanin & Rolnick 2019);
    with ``plane_resolution > 0``, ``plane_regions`` and a picture of the regions in the plane
    through the first three probe inputs (``origin = x0``, ``u = x1 - x0``, ``v = x2 - x0``;
    the inputs are marked black at the centre, the right edge and the top edge).

    The module is probed in ``eval()`` mode. Needs: ``pl_module(x)`` (or ``forward_fn``) and
    piecewise-linear layers.

    Args:
        num_lines: segments between pairs of probe inputs.
        segments: explicit ``[start, end]`` pairs of inputs (nested lists, one sample each)
            instead, e.g. ``[[[0.0], [1.0]]]`` for the interval ``[0, 1]`` of a 1-D input.
        plane_resolution: side of the region picture in pixels (``0``: no picture).
        max_regions: per segment, see :func:`linear_regions_along_line`.
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: at init and at the end, 32
            inputs).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> result = LinearRegions(num_lines=2, plane_resolution=16).probe(net, torch.randn(4, 2))
        >>> result.scalars["neurons"], result.images["plane"].shape
        (8.0, (16, 16, 3))
    """

    name = "linear_regions"
    needs_forward = True

    def __init__(
        self,
        num_lines: int = 16,
        segments: list[list[Any]] | None = None,
        plane_resolution: int = 128,
        max_regions: int = 100_000,
        forward_fn: ForwardFn | None = None,
        *,
        at_end: bool = True,
        probe_size: int = 32,
        **schedule: Any,
    ) -> None:
        super().__init__(at_end=at_end, probe_size=probe_size, **schedule)
        self.forward_fn = forward_fn
        if segments is None and (num_lines < 1 or probe_size < 2 * num_lines):
            raise PluginConfigError(
                f"LinearRegions(num_lines={num_lines}, probe_size={probe_size}): each segment joins two "
                "probe inputs, so use num_lines >= 1 and probe_size >= 2 * num_lines"
            )
        if segments is not None and (not segments or any(len(s) != 2 for s in segments)):
            raise PluginConfigError(
                "LinearRegions(segments=...): give a non-empty list of [start, end] pairs of inputs"
            )
        if plane_resolution < 0:
            raise PluginConfigError(f"LinearRegions(plane_resolution={plane_resolution}): use 0 or more")
        self.num_lines, self.segments = num_lines, segments
        self.plane_resolution, self.max_regions = plane_resolution, max_regions

    def check_module(self, pl_module: L.LightningModule) -> None:
        for name, module in _leaves(pl_module):
            if isinstance(module, SMOOTH):
                raise PluginConfigError(f"LinearRegions: {_refusal(name, module)}")

    def _segments(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        if self.segments is None:
            pairs = min(self.num_lines, len(x) // 2)
            return [(x[2 * j], x[2 * j + 1]) for j in range(pairs)]
        shape = x.shape[1:]
        return [
            tuple(torch.as_tensor(p, dtype=torch.float64, device=x.device).reshape(shape) for p in pair)  # type: ignore[misc]
            for pair in self.segments
        ]

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        began = time.perf_counter()
        pl_module.eval()
        x = probe_inputs(batch)
        counts, lengths = [], []
        try:
            for start, end in self._segments(x):
                counts.append(
                    linear_regions_along_line(pl_module, start, end, max_regions=self.max_regions).count
                )
                lengths.append(float((end.double() - start.double()).norm()))
            neurons = count_neurons(pl_module, x[0])
        except ValueError as err:
            raise PluginConfigError(f"LinearRegions: {err}") from None
        c, length = np.asarray(counts, dtype=float), np.asarray(lengths)
        density = c / length
        scalars = {
            "regions_mean": float(c.mean()),
            "regions_std": float(c.std()),
            "regions_per_unit_length_mean": float(density.mean()),
            "regions_per_unit_length_std": float(density.std()),
            "neurons": float(neurons),
            "regions_per_neuron": float(c.mean() / max(neurons, 1)),
        }
        arrays: dict[str, Any] = {"counts": c, "lengths": length}
        images = {}
        if self.plane_resolution and len(x) >= 3:
            ids = linear_regions_in_plane(
                pl_module, x[0], x[1] - x[0], x[2] - x[0], resolution=self.plane_resolution
            )
            scalars["plane_regions"] = float(int(ids.max()) + 1)
            side = self.plane_resolution - 1
            marks = [(side // 2, side // 2), (side // 2, side), (0, side // 2)]
            images["plane"] = region_picture(ids, marks)
            arrays["plane_ids"] = ids.cpu().numpy().astype(np.int32)
        scalars["probe_seconds"] = time.perf_counter() - began
        return ProbeResult(scalars=scalars, arrays=arrays, images=images)
