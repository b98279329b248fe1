"""The intrinsic dimension of data and of representations (lecture 4: beating the curse of dimensionality).

Natural images fill a tiny part of pixel space: each MNIST digit class lies near a manifold of a
dimension far below 784, and deep networks learn representations whose dimension first rises and
then falls towards the output (Ansuini et al. 2019). Two estimators from nearest-neighbour
distances, both invariant to rotations and to the scale of the data:

- :func:`twonn_dimension` (Facco et al. 2017): the ratio ``mu = r_2 / r_1`` of the second to the
  first neighbour distance is Pareto distributed, ``P(mu > m) = m^(-d)``, for data locally uniform
  on a ``d``-manifold; ``d`` is the slope of ``-log(1 - F(mu))`` against ``log mu`` (a line through
  the origin) over the empirical ``F``, the largest 10% of ratios discarded.
- :func:`mle_dimension` (Levina & Bickel 2005): per point the maximum-likelihood inverse dimension
  ``1/(k-1) sum_{j<k} log(T_k / T_j)`` from the ``k`` nearest distances; averaged over points and
  inverted (MacKay & Ghahramani's correction: average the inverses, which are unbiased).

Duplicates: exact duplicate samples are counted once (a zero distance leaves ``r_2 / r_1`` and
``log(T_k / T_j)`` undefined). Distances are computed in float64 on the data's device, a chunk of
rows at a time (at most ``2**24`` distances in memory).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> plane = torch.rand(2000, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 100, generator=g,
    ...                                                                         dtype=torch.float64)
    >>> round(twonn_dimension(plane)), round(mle_dimension(plane))
    (2, 2)
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from plugins.base import DiagnosticCallback, ProbeResult, find_layers, fixed_layout_figure, probe_inputs
from plugins.checks import PluginConfigError, misuse
from plugins.forward import ForwardFn, probes_through_forward_fn, recorded_calls
from plugins.neighbour_search import squared_neighbour_distances

__all__ = [
    "IntrinsicDimension",
    "mle_dimension",
    "nearest_neighbour_distances",
    "twonn_dimension",
]

CHUNK_ELEMENTS = 2**24
"""Distances held at once by :func:`nearest_neighbour_distances` (128 MiB of float64)."""


def nearest_neighbour_distances(x: Tensor, k: int) -> Tensor:
    """``(m, k)`` distances of each distinct sample to its ``k`` nearest other samples, ascending.

    ``x`` is ``(n, ...)``, flattened per sample; exact duplicates are counted once, so ``m <= n`` and
    every distance is positive; the rows come in the order of ``torch.unique(x, dim=0)``. Computed
    in float64 from the centred data, ``CHUNK_ELEMENTS`` distances at a time (on the CPU with a float32
    screen: see :mod:`plugins.neighbour_search`).

    Example:
        >>> nearest_neighbour_distances(torch.tensor([[0.0], [1.0], [3.0], [3.0]]), k=1).flatten().tolist()
        [1.0, 1.0, 2.0]
    """
    return _distances_of(torch.unique(x.detach().reshape(len(x), -1).double(), dim=0), k)


def _neighbour_distances(x: Tensor, k: int) -> Tensor:
    """:func:`nearest_neighbour_distances`, its rows in the order of the samples' projections on a fixed
    random direction and the data taken relative to a point chosen in that order: the estimators'
    input, bitwise the same for any order of the same samples (as ``torch.unique``'s sorted rows
    made it), at less cost."""
    flat = x.detach().reshape(len(x), -1).to(torch.float64, copy=True)  # a copy: it is shifted in place
    order = _projection_order(flat)
    if order is None:  # two rows may be equal: the distinct ones (torch.unique's order)
        flat = torch.unique(flat, dim=0)
        order = _projection_order(flat)
        if order is None:
            return _distances_of(flat, k)
    # the mean of up to 128 rows spread over that order: near the centre, and the same for any order
    centre = flat[order[:: max(1, len(order) // 128)]].mean(0)
    return _distances_of(flat, k, centre)[order]


def _projection_order(flat: Tensor) -> Tensor | None:
    """The rows' order by their projections on a fixed random direction, or ``None`` where two
    projections differ by less than four times their float64 rounding bound (equal rows project
    alike up to it; rows ordered this way come in this order from any of their orders)."""
    v = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projected, order = (flat @ v.to(flat.device)).sort()
    largest = float(torch.linalg.vector_norm(flat, dim=1).max()) if len(flat) else 0.0
    bound = 1.01 * (flat.shape[1] + 2) * 2.0**-53 * largest * float(v.norm())
    return order if bool((projected.diff() > 4 * bound).all()) else None


def _distances_of(flat: Tensor, k: int, centre: Tensor | None = None) -> Tensor:
    """The neighbour distances of distinct float64 rows, taken relative to ``centre`` (in place;
    default: a copy less the rows' mean)."""
    n = len(flat)
    if n <= k:
        raise PluginConfigError(
            f"{n} distinct samples cannot give {k} nearest neighbours each: use more samples"
        )
    flat = flat - flat.mean(0) if centre is None else flat.sub_(centre)
    sq = torch.linalg.vector_norm(flat, dim=1).square_()
    distances = squared_neighbour_distances(flat, k, sq, CHUNK_ELEMENTS).clamp_min_(0).sqrt_()
    if not bool((distances > 0).all()):  # distinct points closer than float64 resolves (~1e-8 of their norm)
        raise PluginConfigError(
            "some distinct samples are too close to tell apart in float64: rescale or deduplicate"
        )
    return distances


def _twonn(distances: Tensor, discard_fraction: float) -> float:
    mu = (distances[:, 1] / distances[:, 0]).sort().values
    n = len(mu)
    keep = max(1, int(math.floor(n * (1 - discard_fraction))))
    empirical = torch.arange(1, n + 1, dtype=torch.float64, device=mu.device) / n
    x, y = mu[:keep].log(), -torch.log1p(-empirical[:keep])
    return float((x * y).sum() / (x * x).sum())


def _mle(distances: Tensor, k: int) -> float:
    t = distances[:, :k]
    inverse = torch.log(t[:, -1:] / t[:, :-1]).sum(1) / (k - 1)
    return float(1.0 / inverse.mean())


def check_discard_fraction(discard_fraction: Any, owner: str = "") -> None:
    """TwoNN's discarded share lies in ``[0, 1)``; else a :class:`~plugins.base.PluginConfigError`.

    Example:
        >>> check_discard_fraction(0.1)
    """
    if not isinstance(discard_fraction, (int, float)) or not 0 <= discard_fraction < 1:
        raise misuse(owner, "discard_fraction", discard_fraction, "use a share in [0, 1)")


def check_neighbours(k: Any, owner: str = "") -> None:
    """The MLE's ``k`` is a whole number >= 2; else a :class:`~plugins.base.PluginConfigError`.

    Example:
        >>> check_neighbours(20)
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise PluginConfigError(
            f"{owner + ': ' if owner else ''}k must be a whole number >= 2 (the k-th distance over the "
            f"closer ones), got {k!r}"
        )


def twonn_dimension(x: Tensor, *, discard_fraction: float = 0.1) -> float:
    """The TwoNN estimate of the intrinsic dimension of the samples ``x`` (``(n, ...)``).

    Args:
        x: samples, flattened per sample; exact duplicates count once.
        discard_fraction: share of the largest ratios ``r_2 / r_1`` left out of the fit (noise and
            sparse regions put them in the tail).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> cube = torch.rand(4000, 5, generator=g, dtype=torch.float64)
        >>> 4.5 < twonn_dimension(cube) < 5.5
        True
    """
    check_discard_fraction(discard_fraction)
    return _twonn(_neighbour_distances(x, 2), discard_fraction)


def mle_dimension(x: Tensor, *, k: int = 20) -> float:
    """Levina & Bickel's maximum-likelihood dimension from ``k`` neighbours (MacKay-Ghahramani averaged).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> cube = torch.rand(4000, 5, generator=g, dtype=torch.float64)
        >>> 4.5 < mle_dimension(cube, k=20) < 5.5
        True
    """
    check_neighbours(k)
    return _mle(_neighbour_distances(x, k), k)


class IntrinsicDimension(DiagnosticCallback):
    """TwoNN and MLE intrinsic dimensions of the probe inputs (in all and per class) and of the
    representations at chosen layers, during a fit.

    Logged per probe (key ``intrinsic_dimension/<name>``): ``twonn_input`` and ``mle_input``;
    ``twonn_input_class_<c>`` and ``mle_input_class_<c>`` for each class ``c`` of the batch's labels
    with at least ``k + 1`` samples; ``twonn_layer_<NN>`` and ``mle_layer_<NN>`` for the ``NN``-th
    chosen layer's output (in call order; the names are in ``layer_names`` of the ``.npz``), and a
    figure of the profile over depth.

    Needs: ``pl_module(x)`` (or ``forward_fn``); for the per-class numbers, labels as the batch's
    second item. The module is probed in ``eval()`` mode. The inputs' numbers depend on the probe
    batch alone: they are measured at the first probe and reused while the batch is the same.

    Args:
        layers: names of submodules (as in ``pl_module.named_modules()``) whose outputs are measured;
            default: every ``nn.Linear`` and ``nn.Conv2d``.
        k: neighbours of the MLE estimate.
        discard_fraction: TwoNN's discarded share of the largest ratios.
        per_class: also measure the inputs of each class.
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: at init and at the end,
            1,000 inputs).

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        >>> x, y = torch.randn(200, 10), torch.arange(200) % 2
        >>> scalars = IntrinsicDimension(k=10).probe(net, (x, y)).scalars
        >>> sorted(k for k in scalars if k.startswith("twonn"))
        ['twonn_input', 'twonn_input_class_0', 'twonn_input_class_1', 'twonn_layer_01', 'twonn_layer_02']
    """

    name = "intrinsic_dimension"
    needs_forward = True
    state_key_args = ("layers",)

    def __init__(
        self,
        layers: list[str] | None = None,
        k: int = 20,
        discard_fraction: float = 0.1,
        per_class: bool = True,
        forward_fn: ForwardFn | None = None,
        *,
        at_end: bool = True,
        probe_size: int = 1000,
        **schedule: Any,
    ) -> None:
        super().__init__(at_end=at_end, probe_size=probe_size, **schedule)
        self.forward_fn = forward_fn
        check_neighbours(k, "IntrinsicDimension")
        if probe_size <= k:
            raise PluginConfigError(
                f"IntrinsicDimension(k={k!r}, probe_size={probe_size}): use k >= 2 and probe_size > k"
            )
        check_discard_fraction(discard_fraction, "IntrinsicDimension")
        self.layers, self.k, self.discard_fraction, self.per_class = layers, k, discard_fraction, per_class
        self._input_cache: tuple[Tensor, Tensor | None, dict[str, float]] | None = None

    def check_module(self, pl_module: L.LightningModule) -> None:
        self._chosen(pl_module)

    def _chosen(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        if self.layers is None:
            found = find_layers(module, (nn.Linear, nn.Conv2d))
            if not found:
                raise PluginConfigError(
                    f"IntrinsicDimension: {type(module).__name__} has no nn.Linear/nn.Conv2d layer: "
                    "name the layers to measure with layers=[...]"
                )
            return found
        names = dict(module.named_modules())
        missing = [n for n in self.layers if n not in names]
        if missing:
            raise PluginConfigError(
                f"IntrinsicDimension(layers=...): {type(module).__name__} has no submodule {missing[0]!r}; "
                f"choose from {[n for n in names if n][:40]}"
            )
        return [(n, names[n]) for n in self.layers]

    def _dimensions(self, x: Tensor) -> dict[str, float]:
        distances = _neighbour_distances(x, max(self.k, 2))
        return {"twonn": _twonn(distances, self.discard_fraction), "mle": _mle(distances, self.k)}

    def _input_dimensions(self, x: Tensor, labels: Any) -> dict[str, float]:
        """The dimensions of the inputs, in all and per class: they depend on the probe batch alone,
        so a probe on the same batch (every probe of a fit) reuses the first one's."""
        cached = self._input_cache
        if (
            cached is not None
            and _same(cached[0], x)
            and (
                (labels is None and cached[1] is None)
                or (labels is not None and cached[1] is not None and _same(cached[1], labels))
            )
        ):
            return dict(cached[2])
        scalars: dict[str, float] = {}
        for estimator, value in self._dimensions(x).items():
            scalars[f"{estimator}_input"] = value
        if (
            self.per_class
            and isinstance(labels, Tensor)
            and labels.shape == (len(x),)
            and not labels.is_floating_point()
        ):
            for c in labels.unique().tolist():
                members = x[labels == c]
                if len(members) > self.k:
                    for estimator, value in self._dimensions(members).items():
                        scalars[f"{estimator}_input_class_{c}"] = value
        key_labels = labels.detach().clone() if isinstance(labels, Tensor) else None
        self._input_cache = (x.detach().clone(), key_labels, dict(scalars))
        return scalars

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        began = time.perf_counter()
        pl_module.eval()
        x = probe_inputs(batch)
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        scalars = self._input_dimensions(x, labels if isinstance(labels, Tensor) else None)
        names, outputs = self._representations(pl_module, x)
        profile = {"twonn": [scalars["twonn_input"]], "mle": [scalars["mle_input"]]}
        for l, h in enumerate(outputs, start=1):
            for estimator, value in self._dimensions(h).items():
                scalars[f"{estimator}_layer_{l:02d}"] = value
                profile[estimator].append(value)
        scalars["probe_seconds"] = time.perf_counter() - began
        arrays = {
            "layer_names": np.asarray(["input", *names]),
            **{k: np.asarray(v) for k, v in profile.items()},
        }
        return ProbeResult(
            scalars=scalars, arrays=arrays, figures={"profile": _profile_figure(names, profile)}
        )

    def _representations(self, module: nn.Module, x: Tensor) -> tuple[list[str], list[Tensor]]:
        seen = [(name, out.detach()) for name, _, out in recorded_calls(module, x, self._chosen(module))]
        return [n for n, _ in seen], [h.reshape(len(x), -1) for _, h in seen]


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors hold the same values (shape, dtype and device included)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _profile_figure(names: list[str], profile: dict[str, list[float]]) -> Figure:
    fig, (ax,) = fixed_layout_figure(max(5.0, 0.6 * len(names) + 2), 3.4, bottom=1.1)
    positions = np.arange(len(names) + 1)
    for estimator, values in profile.items():
        ax.plot(positions, values, "o-", label={"twonn": "TwoNN", "mle": "MLE (Levina-Bickel)"}[estimator])
    ax.set_xticks(positions, ["input", *names], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("intrinsic dimension")
    ax.legend(fontsize=8)
    return fig
