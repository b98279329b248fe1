"""The information plane: ``I(X;T)`` and ``I(T;Y)`` of every layer over training (Shwartz-Ziv & Tishby 2017).

Each layer's representation ``T`` of the inputs ``X`` is a point in the plane (``I(X;T)``,
``I(T;Y)``); the information-bottleneck account of deep learning says the layers first *fit*
(both grow) and then *compress* (``I(X;T)`` falls late in training). Saxe et al. (2018) found the
compression with tanh and binning, and not with ReLU. Two estimators, both in bits:

- :func:`mutual_information_binned`: each unit's activation cut into ``bins`` equal bins over the
  layer's range; ``T`` is the tuple of bin indices, and ``I`` the plug-in value from counts.
  ``X`` is discrete (one id per distinct input pattern), so ``I(X;T) = H(T) - H(T|X)``.
- :func:`mutual_information_kde_upper`: ``T + N(0, sigma^2 I)``, whose ``I(X;T)`` is bounded
  above by the pairwise-distance estimate of Kolchinsky & Tracey (2017), as Saxe et al. use it.

:class:`InformationPlane` measures every layer on a fixed probe batch (the whole data set of the
12-bit task, ``IBTask``) and draws the plane.

Example:
    >>> t = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    >>> mutual_information_binned(t, torch.arange(4), torch.tensor([0, 0, 1, 1]), bins=2)
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from plugins.base import DiagnosticCallback, ProbeResult, fixed_layout_figure, probe_inputs, require_layers
from plugins.checks import PluginConfigError, check_whole_number, misuse
from plugins.forward import ForwardFn, probes_through_forward_fn, recorded_calls

__all__ = [
    "InformationPlane",
    "discrete_entropy",
    "discrete_mutual_information",
    "mutual_information_binned",
    "mutual_information_kde_upper",
    "pattern_ids",
]


def discrete_entropy(ids: Tensor) -> float:
    """The plug-in entropy ``-sum_k p_k log2 p_k`` of a discrete variable, in bits.

    ``ids``: ``(n,)`` labels, or ``(n, m)`` rows (each distinct row one value).

    Example:
        >>> discrete_entropy(torch.tensor([0, 1, 2, 3]))
        2.0
    """
    ids = ids.reshape(len(ids), -1)
    _, counts = torch.unique(ids, dim=0, return_counts=True)
    p = counts.double() / len(ids)
    return float(-(p * torch.log2(p)).sum())


def discrete_mutual_information(a: Tensor, b: Tensor) -> float:
    """``I(A;B) = H(A) + H(B) - H(A, B)`` of two discrete variables (plug-in, bits).

    Example:
        >>> a = torch.tensor([0, 0, 1, 1])
        >>> discrete_mutual_information(a, a), discrete_mutual_information(a, torch.tensor([0, 1, 0, 1]))
        (1.0, 0.0)
    """
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    joint = torch.cat([a2.to(torch.float64), b2.to(torch.float64)], dim=1)
    return max(0.0, discrete_entropy(a2) + discrete_entropy(b2) - discrete_entropy(joint))


def pattern_ids(x: Tensor) -> Tensor:
    """One integer per distinct input row: the discrete variable ``X`` (``(n,)`` int64).

    Example:
        >>> pattern_ids(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])).tolist()
        [1, 0, 1]
    """
    return torch.unique(x.reshape(len(x), -1), dim=0, return_inverse=True)[1]


def _binned(t: Tensor, bins: int) -> Tensor:
    t = t.detach().double().reshape(len(t), -1)
    lo, hi = float(t.min()), float(t.max())
    if hi <= lo:
        return torch.zeros_like(t, dtype=torch.int64)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=t.device)[1:-1]
    return torch.bucketize(t, edges)


def mutual_information_binned(t: Tensor, x_ids: Tensor, y: Tensor, *, bins: int = 30) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits with ``T`` binned: Shwartz-Ziv & Tishby's estimator.

    Each unit's value is cut into ``bins`` equal bins between the layer's minimum and maximum
    over the batch; the binned ``T`` is the row of bin indices. Both informations are plug-in
    values from counts (:func:`discrete_mutual_information`); with one sample per input pattern
    ``I(X;T) = H(T)``.

    Args:
        t: the layer's activations, ``(n, units)``.
        x_ids: ``(n,)`` the input pattern of each sample (:func:`pattern_ids`).
        y: ``(n,)`` class labels.
        bins: bins per unit.

    Example:
        >>> t = torch.tensor([[0.1], [0.2], [0.9], [1.0]])
        >>> mutual_information_binned(t, torch.arange(4), torch.tensor([0, 1, 0, 1]), bins=2)
        (1.0, 0.0)
    """
    if len(t) != len(x_ids) or len(t) != len(y):
        raise PluginConfigError(
            f"t, x_ids and y need one row per sample, got {len(t)}, {len(x_ids)}, {len(y)}"
        )
    check_whole_number("", "bins", bins)
    # each variable as one id per sample, in the sorted order of its values, so that a pair is the
    # 1-D key ``a * |B| + b`` in the order of the rows ``(a, b)``: the counts, and so every entropy,
    # are those of discrete_mutual_information on the rows, summed in the same order
    t_ids = _ids(_binned(t, bins))
    x, labels = _ids(x_ids), _ids(y)
    h_t = _entropy_of_ids(t_ids)
    i_xt = max(0.0, _entropy_of_ids(x) + h_t - _entropy_of_ids(x * (int(t_ids.max()) + 1) + t_ids))
    i_ty = max(0.0, h_t + _entropy_of_ids(labels) - _entropy_of_ids(t_ids * (int(labels.max()) + 1) + labels))
    return i_xt, i_ty


def _ids(values: Tensor) -> Tensor:
    """``(n,)`` ids ``0, 1, ...`` of the distinct values (rows) of ``values``, in their sorted order."""
    flat = values.reshape(len(values), -1)
    if flat.shape[1] > 1 and not flat.is_floating_point() and len(flat) and int(flat.min()) >= 0:
        # rows of small whole numbers (bin indices): each row as one number in a mixed radix, whose
        # order is the rows' lexicographic one, and a 1-D unique (10x faster than unique(dim=0))
        radices = [int(r) + 1 for r in flat.max(0).values.tolist()]
        if math.prod(radices) < 2**62:
            weights = [math.prod(radices[u + 1 :]) for u in range(len(radices))]
            flat = flat.long() @ torch.tensor(weights, dtype=torch.int64, device=flat.device)[:, None]
    if flat.shape[1] == 1:
        return torch.unique(flat[:, 0], return_inverse=True)[1]
    return torch.unique(flat, dim=0, return_inverse=True)[1]


def _entropy_of_ids(ids: Tensor) -> float:
    """:func:`discrete_entropy` of ``(n,)`` integer ids (the counts in the ids' order)."""
    counts = torch.unique(ids, return_counts=True)[1]
    p = counts.double() / len(ids)
    return float(-(p * torch.log2(p)).sum())


def _kde_entropy_term(t: Tensor, noise_variance: float) -> Tensor:
    """``-mean_i log mean_j exp(-|t_i - t_j|^2 / (2 sigma^2))`` (nats): entropy above the noise's."""
    distances = torch.cdist(t, t).pow(2)
    return -(torch.logsumexp(-distances / (2 * noise_variance), dim=1) - math.log(len(t))).mean()


def check_noise_variance(variance: Any, owner: str = "", argument: str = "noise_variance") -> None:
    """The noise variance of the KDE bound is a number > 0; else a :class:`~plugins.base.PluginConfigError`.

    Example:
        >>> check_noise_variance(0.1)
    """
    if not isinstance(variance, (int, float)) or isinstance(variance, bool) or not variance > 0:
        raise misuse(owner, argument, variance, "use a variance > 0")


def mutual_information_kde_upper(t: Tensor, y: Tensor, noise_variance: float) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits for ``T = h(X) + N(0, noise_variance I)``, bounded above.

    The bound is Kolchinsky & Tracey's (2017).

    The entropy of the Gaussian mixture is bounded by its pairwise-distance (KL) estimate, so, one
    sample per input pattern, ``I(X;T) <= -mean_i log mean_j exp(-|h_i - h_j|^2 / (2 sigma^2))``
    (the noise's entropy cancels) and ``I(T;Y) = H(T) - sum_c p_c H(T | Y=c)`` with each term so
    bounded, as Saxe et al. (2018) compute them. ``I(X;T)`` lies between 0 (all ``h`` equal) and
    ``log2 n`` (all far apart).

    Example:
        >>> h = torch.tensor([[0.0], [0.0], [100.0], [100.0]])
        >>> [round(v, 6) for v in mutual_information_kde_upper(h, torch.tensor([0, 0, 1, 1]), 1.0)]
        [1.0, 1.0]
    """
    check_noise_variance(noise_variance)
    h = t.detach().double().reshape(len(t), -1)
    total = _kde_entropy_term(h, noise_variance)
    conditional = torch.zeros((), dtype=torch.float64)
    for label in torch.unique(y):
        members = h[y == label]
        conditional = conditional + len(members) / len(h) * _kde_entropy_term(members, noise_variance)
    return float(total) / math.log(2), max(0.0, float(total - conditional) / math.log(2))


def _representations(module: nn.Module, x: Tensor) -> tuple[list[str], list[Tensor]]:
    """Each ``nn.Linear``'s representation: the output of the module called right after it (its
    activation), or the layer's own output when none follows (the read-out)."""
    leaves = [(name, m) for name, m in module.named_modules() if not list(m.children())]
    calls = recorded_calls(module, x, leaves)
    layers, outputs = [], []
    for k, (name, m, out) in enumerate(calls):
        if isinstance(m, nn.Linear):
            following = (
                calls[k + 1] if k + 1 < len(calls) and not isinstance(calls[k + 1][1], nn.Linear) else None
            )
            layers.append(following[0] if following else name)
            outputs.append((following[2] if following else out).reshape(len(x), -1))
    return layers, outputs


class InformationPlane(DiagnosticCallback):
    """``I(X;T)`` and ``I(T;Y)`` of every layer on a fixed probe batch over training: the information plane.

    The layers are the representations after each ``nn.Linear`` (its activation's output; the
    read-out's own output). Logged per probe: ``information_plane/i_xt_layer_<l>`` and
    ``i_ty_layer_<l>`` (binned, :func:`mutual_information_binned`), with ``kde_i_xt_layer_<l>``
    and ``kde_i_ty_layer_<l>`` (:func:`mutual_information_kde_upper`) when ``kde_noise_variance``
    is given; the figure draws each layer's path through the plane, coloured by training step.

    Needs: ``pl_module(x)`` (or ``forward_fn``), ``nn.Linear`` layers, and class labels as the batch's second
        item.
    The probe batch should be the whole data set (default 4,096 samples: all of ``IBTask``).

    Args:
        bins: bins per unit of the binned estimator (Shwartz-Ziv & Tishby: 30).
        kde_noise_variance: the noise variance of the KDE bound (``None``: not computed).
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback`.

    Example:
        >>> cb = InformationPlane(bins=4)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> x = torch.tensor([[a, b, c] for a in (0.0, 1.0) for b in (0.0, 1.0) for c in (0.0, 1.0)])
        >>> sorted(cb.probe(net, (x, x[:, 0].long())).scalars)
        ['i_ty_layer_1', 'i_ty_layer_2', 'i_xt_layer_1', 'i_xt_layer_2']
    """

    name = "information_plane"
    needs_forward = True

    def __init__(
        self,
        bins: int = 30,
        kde_noise_variance: float | None = None,
        forward_fn: ForwardFn | None = None,
        *,
        every_n_epochs: int | None = 10,
        at_end: bool = True,
        probe_size: int = 4096,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, at_end=at_end, probe_size=probe_size, **schedule)
        self.forward_fn = forward_fn
        check_whole_number("InformationPlane", "bins", bins)
        if kde_noise_variance is not None:
            check_noise_variance(kde_noise_variance, "InformationPlane", "kde_noise_variance")
        self.bins, self.kde_noise_variance = bins, kde_noise_variance

    def check_module(self, pl_module: L.LightningModule) -> None:
        require_layers("InformationPlane", pl_module, nn.Linear)

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise PluginConfigError("InformationPlane needs (inputs, labels) batches for I(T;Y)")
        pl_module.eval()
        x, y = probe_inputs(batch), batch[1].reshape(-1)
        ids = pattern_ids(x)
        _, outputs = _representations(pl_module, x)
        scalars: dict[str, float] = {}
        for l, t in enumerate(outputs, start=1):
            scalars[f"i_xt_layer_{l}"], scalars[f"i_ty_layer_{l}"] = mutual_information_binned(
                t, ids, y, bins=self.bins
            )
            if self.kde_noise_variance is not None:
                kde = mutual_information_kde_upper(t, y, self.kde_noise_variance)
                scalars[f"kde_i_xt_layer_{l}"], scalars[f"kde_i_ty_layer_{l}"] = kde
        figures = (
            {} if self.probe_when == "step" else {"information_plane": self._figure(scalars, len(outputs))}
        )
        return ProbeResult(scalars=scalars, figures=figures)

    def _figure(self, latest: dict[str, float], layers: int) -> Figure:
        fig, (ax,) = fixed_layout_figure(5.5, 4)
        points = [{k.split("/", 1)[-1]: v for k, v in h.items()} for h in self.history] + [latest]
        colours = np.linspace(0, 1, len(points))
        for l in range(1, layers + 1):
            xs = [p.get(f"i_xt_layer_{l}", math.nan) for p in points]
            ys = [p.get(f"i_ty_layer_{l}", math.nan) for p in points]
            ax.plot(xs, ys, "-", color="0.7", lw=0.8, zorder=1)
            scatter = ax.scatter(xs, ys, c=colours, cmap="viridis", s=12, zorder=2)
            ax.annotate(f"{l}", (xs[-1], ys[-1]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        if points:
            fig.colorbar(scatter, ax=ax, label="training (first to last probe)")
        ax.set_xlabel(r"$I(X;T)$ (bits)")
        ax.set_ylabel(r"$I(T;Y)$ (bits)")
        return fig
