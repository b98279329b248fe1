"""Filter grids and activation maps: what a conv layer's filters look like and how they respond.

Lecture 11 (Zeiler and Fergus) looks at the filters of a convolutional network and at its
responses. :func:`filter_grid` tiles a conv layer's filters into one image, and
:func:`activation_maps` gives a named layer's responses to probe images. Both are pure: the
model's parameters, gradients, train/eval mode and the global random number generators are as they
were. :func:`resolve_layer` finds a layer by name, as all the filter pictures do.

Layers are named as in ``model.named_modules()`` (``"model.conv1"`` inside a task); a name that
is the unique last part of one (``"conv1"``) is accepted too. A wrong name gets an error that
lists the conv layers.

Example:
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    >>> filter_grid(net[0]).shape
    torch.Size([1, 9, 9])
    >>> activation_maps(net, torch.randn(2, 1, 8, 8), "0").shape
    torch.Size([2, 4, 6, 6])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import Tensor, nn

from plugins.base import find_layers
from plugins.checks import PluginConfigError
from plugins.pictures import image_grid

__all__ = ["activation_maps", "filter_grid", "resolve_layer"]


# --------------------------------------------------------------------------- layers by name


def resolve_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """``(full name, module)`` of the layer called ``layer`` in ``model.named_modules()``.

    An exact name wins; otherwise a name that is the unique last part of one is accepted
    (``"conv1"`` finds ``"model.conv1"``). Anything else raises an error that lists the conv layers.

    Example:
        >>> net = nn.Sequential()
        >>> net.add_module("body", nn.Sequential(nn.Conv2d(1, 2, 3)))
        >>> resolve_layer(net, "body.0")[0], resolve_layer(net, "0")[0]
        ('body.0', 'body.0')
    """
    modules = dict(model.named_modules())
    if layer and layer in modules:
        return layer, modules[layer]
    matches = [name for name in modules if layer and name.endswith("." + layer)]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    convs = [name for name, _ in find_layers(model, nn.Conv2d)]
    why = (
        f"the name {layer!r} matches several layers {matches}" if matches else f"no layer is named {layer!r}"
    )
    raise PluginConfigError(
        f"{type(model).__name__}: {why}. Its conv layers are {convs or 'none'}; name a layer as "
        f"model.named_modules() does{f', e.g. {convs[0]!r}' if convs else ''}"
    )


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the layer has answered."""


@contextmanager
def _tapped(model: nn.Module, layer: str) -> Iterator[Callable[[Tensor], Tensor]]:
    """Inside: a function ``x -> output of layer`` that runs ``model`` only as far as ``layer``.

    The hook is registered once for the whole block (an ascent of many steps pays for it once) and
    removed on exit.
    """
    name, module = resolve_layer(model, layer)
    captured: list[Any] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output)
        raise _Captured

    def output_of(x: Tensor) -> Tensor:
        captured.clear()
        with suppress(_Captured):
            model(x)
        if not captured:
            raise PluginConfigError(
                f"layer {name!r} was not called when {type(model).__name__} ran on inputs of shape "
                f"{tuple(x.shape)}: choose a layer that the model's forward uses"
            )
        if not isinstance(captured[0], Tensor) or captured[0].dim() < 2:
            raise PluginConfigError(
                f"layer {name!r} returns {type(captured[0]).__name__}, not a (batch, channels, ...) "
                "tensor: choose a conv or linear layer"
            )
        return captured[0]

    handle = module.register_forward_hook(hook)
    try:
        yield output_of
    finally:
        handle.remove()


def _layer_output(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of ``layer`` when ``model`` runs on ``x``; the rest of the forward pass is skipped."""
    with _tapped(model, layer) as output_of:
        return output_of(x)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, every submodule's own mode restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _normalise(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Min-max scale ``t`` to ``[0, 1]`` over ``dims`` (a constant slice becomes 0.5)."""
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (t - lo) / span.clamp_min(1e-12), torch.full_like(t, 0.5))


# --------------------------------------------------------------------------- filter grids, activation maps


def filter_grid(
    conv: nn.Conv2d | Tensor,
    ncols: int | None = None,
    padding: int = 1,
    pad_value: float = 1.0,
    scale: str = "filter",
) -> Tensor:
    """One image ``(C, H, W)`` with values in ``[0, 1]`` tiling the filters of a conv layer.

    With 3 input channels each filter is one RGB tile (``C = 3``); with 1 input channel each filter
    is one grey tile (``C = 1``); both are laid out ``ncols`` tiles a row (default: a near square).
    With any other number of input channels each filter is one row of grey tiles, one tile per
    input channel (``C = 1``, ``out_channels`` rows, ``in_channels`` columns).

    Args:
        conv: an ``nn.Conv2d`` or its weight tensor ``(out_channels, in_channels, kh, kw)``.
        ncols: tiles a row when each filter is one tile (ignored otherwise).
        padding: pixels of ``pad_value`` between tiles and around the grid.
        pad_value: the value of the padding pixels (1.0: white).
        scale: ``"filter"`` stretches each filter (all its input channels together) to ``[0, 1]``
            for display; ``"layer"`` stretches the whole layer at once, keeping filters comparable.

    Example:
        >>> grid = filter_grid(nn.Conv2d(3, 8, kernel_size=5))  # 8 RGB tiles, 3 a row
        >>> grid.shape, float(grid.min()), float(grid.max())
        (torch.Size([3, 19, 19]), 0.0, 1.0)
        >>> filter_grid(nn.Conv2d(6, 16, kernel_size=5)).shape  # 16 rows of 6 tiles
        torch.Size([1, 97, 37])
    """
    weight = conv.weight if isinstance(conv, nn.Conv2d) else conv
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise PluginConfigError(
            f"filter_grid needs an nn.Conv2d or a weight of shape (out, in, kh, kw), got {shape}"
        )
    if scale not in ("filter", "layer"):
        raise PluginConfigError(f"filter_grid(scale={scale!r}): use 'filter' or 'layer'")
    if padding < 0:
        raise PluginConfigError(f"filter_grid(padding={padding}): use 0 or more pixels")
    w = weight.detach().to("cpu", torch.float32)
    out_c, in_c, kh, kw = w.shape
    w = _normalise(w, (1, 2, 3) if scale == "filter" else (0, 1, 2, 3))
    if in_c in (1, 3):
        cols = ncols or math.ceil(math.sqrt(out_c))
        return image_grid(w, max(1, cols), padding, pad_value)
    return image_grid(w.reshape(out_c * in_c, 1, kh, kw), in_c, padding, pad_value)


def activation_maps(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The responses of ``layer`` to the images ``x``: its output, e.g. ``(N, C, H, W)`` for a conv.

    The model runs in eval mode (BatchNorm uses its running statistics, dropout is off) without
    gradients, and stops once ``layer`` has answered; its modes are restored afterwards.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2))
        >>> activation_maps(net, torch.randn(4, 1, 28, 28), "0").shape
        torch.Size([4, 6, 28, 28])
    """
    with _evaluating(model), torch.no_grad():
        return _layer_output(model, x, layer).detach()
