"""What a CNN has learned: filter grids, activation maps, activation maximisation and saliency.

Lecture 11 (Zeiler and Fergus; Erhan et al.; Simonyan et al.) and lecture 12 (the scattering
transform as a fixed CNN) look at the filters of a convolutional network and at its responses.
This module gives the pictures, as pure functions a notebook can call and as one callback,
:class:`FilterVisualisation`, that draws them during training so that runs can be compared.

Pure functions (they know nothing of Trainers and never change the model: its parameters,
gradients, train/eval mode and the global random number generators are as they were):

- :func:`filter_grid` -- one image ``(C, H, W)`` in ``[0, 1]`` tiling a conv layer's filters;
- :func:`activation_maps` -- the responses of a named layer to probe images;
- :func:`activation_maximisation` -- inputs that maximise chosen channels (gradient ascent from
  noise with L2 decay, jitter and blur), batched over channels;
- :func:`saliency` -- input-gradient maps of a class score (Simonyan et al. 2014).

Layers are named as in ``model.named_modules()`` (``"model.conv1"`` inside a task); a name that
is the unique last part of one (``"conv1"``) is accepted too. A wrong name gets an error that
lists the conv layers.

The protocol a probed module must offer: ``pl_module(x)`` maps a batch of images to outputs
(class scores, for :func:`saliency`), and its ``nn.Conv2d`` layers are found through
``named_modules()``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    >>> filter_grid(net[0]).shape
    torch.Size([1, 9, 9])
    >>> activation_maps(net, torch.randn(2, 1, 8, 8), "0").shape
    torch.Size([2, 4, 6, 6])
    >>> saliency(net, torch.randn(2, 1, 8, 8), target=3).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from matplotlib import colormaps
from PIL import ImageDraw, ImageFont
from torch import Tensor, nn

from plugins.base import (
    DiagnosticCallback,
    ProbeResult,
    find_layers,
    probe_inputs,
    require_layers,
    share_work,
)

__all__ = [
    "ActivationMaximisation",
    "FilterVisualisation",
    "activation_maps",
    "activation_maximisation",
    "filter_grid",
    "resolve_layer",
    "saliency",
]


# --------------------------------------------------------------------------- helpers


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
    raise MisconfigurationException(
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
            raise MisconfigurationException(
                f"layer {name!r} was not called when {type(model).__name__} ran on inputs of shape "
                f"{tuple(x.shape)}: choose a layer that the model's forward uses"
            )
        if not isinstance(captured[0], Tensor) or captured[0].dim() < 2:
            raise MisconfigurationException(
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


def _tile(tiles: Tensor, ncols: int, padding: int, pad_value: float) -> Tensor:
    """Tile ``(n, C, h, w)`` images row by row into one ``(C, H, W)`` image."""
    n, c, h, w = tiles.shape
    nrows = math.ceil(n / ncols)
    cells = torch.full((nrows * ncols, c, h + padding, w + padding), pad_value, dtype=tiles.dtype)
    cells[:n, :, padding:, padding:] = tiles  # each cell: padding above and left of its tile
    grid = cells.reshape(nrows, ncols, c, h + padding, w + padding).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, nrows * (h + padding), ncols * (w + padding))
    return F.pad(grid, (0, padding, 0, padding), value=pad_value)


# --------------------------------------------------------------------------- pure functions


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
        raise MisconfigurationException(
            f"filter_grid needs an nn.Conv2d or a weight of shape (out, in, kh, kw), got {shape}"
        )
    if scale not in ("filter", "layer"):
        raise MisconfigurationException(f"filter_grid(scale={scale!r}): use 'filter' or 'layer'")
    if padding < 0:
        raise MisconfigurationException(f"filter_grid(padding={padding}): use 0 or more pixels")
    w = weight.detach().to("cpu", torch.float32)
    out_c, in_c, kh, kw = w.shape
    w = _normalise(w, (1, 2, 3) if scale == "filter" else (0, 1, 2, 3))
    if in_c in (1, 3):
        cols = ncols or math.ceil(math.sqrt(out_c))
        return _tile(w, max(1, cols), padding, pad_value)
    return _tile(w.reshape(out_c * in_c, 1, kh, kw), in_c, padding, pad_value)


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


def _unit_activation(out: Tensor, channels: Tensor, objective: str) -> Tensor:
    """Image ``k``'s response in channel ``channels[k]``: averaged over space, or at the centre unit."""
    picked = out[torch.arange(len(out), device=out.device), channels]
    if objective == "neuron" and picked.dim() > 1:
        return picked[(slice(None), *(s // 2 for s in picked.shape[1:]))]
    return picked.reshape(len(out), -1).mean(dim=1)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, -1, -1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, kernel, groups=x.shape[1])


@dataclass
class ActivationMaximisation:
    """What :func:`activation_maximisation` found, one row per channel.

    Attributes:
        layer: the layer's full name.
        channels: the channels maximised, ``channels[k]`` by ``images[k]``.
        images: the inputs found, ``(K, *input_shape)``.
        activation: the response of channel ``channels[k]`` to ``images[k]`` (averaged over space, or at
            the centre unit, as the ``objective`` said), ``(K,)``.
        random_activation: the root mean square of the same channel's response to random inputs of
            the same size (Gaussian noise scaled to the L2 norm of ``images[k]``), ``(K,)``: the
            response to an image of that energy that was not chosen for the channel.

    Example:
        >>> r = ActivationMaximisation("conv1", [0], torch.zeros(1, 1, 4, 4), torch.tensor([5.0]),
        ...                            torch.tensor([0.5]))
        >>> r.gain
        tensor([10.])
    """

    layer: str
    channels: list[int]
    images: Tensor
    activation: Tensor
    random_activation: Tensor

    @property
    def gain(self) -> Tensor:
        """``activation / random_activation``: how far above a random input's response each image is."""
        return self.activation / self.random_activation.clamp_min(1e-12)


def activation_maximisation(
    model: nn.Module,
    layer: str,
    channels: int | Sequence[int],
    steps: int = 128,
    *,
    input_shape: Sequence[int],
    objective: str = "neuron",
    lr: float = 0.05,
    l2: float = 1e-2,
    jitter: int = 1,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    init_std: float = 0.1,
    pixel_range: tuple[float, float] | None = None,
    n_random: int = 32,
    seed: int = 0,
) -> ActivationMaximisation:
    """Inputs that maximise the response of chosen channels of ``layer`` (Erhan et al. 2009).

    Gradient ascent (Adam) from small Gaussian noise on ``response - l2 * mean(x**2)``, with the
    usual regularisers: L2 decay, a random shift of up to ``jitter`` pixels at each step, a Gaussian
    blur every ``blur_every`` steps, and optionally clipping to ``pixel_range``. All channels are
    optimised together as one batch, one image per channel. The model runs in eval mode; only the
    input receives gradients (the parameters' ``.grad`` are untouched), and the noise comes from a
    private generator seeded with ``seed`` (the global RNG is untouched).

    Args:
        model: maps a batch of images to outputs; ``layer`` must be called by its forward.
        layer: the layer's name in ``model.named_modules()`` (conv or linear).
        channels: one channel or a list of channels of ``layer``'s output.
        steps: gradient-ascent steps.
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
        objective: ``"neuron"`` maximises the response of the channel's unit at the centre of its map
            (a localised pattern; for a first, linear layer the filter's own pattern); ``"channel"``
            its response averaged over all positions (a texture; for a first, linear layer this
            degenerates to a uniform image).
        lr: Adam's learning rate on the pixels.
        l2: weight of the L2 penalty on the pixels.
        jitter: largest random shift per step, in pixels (0: none).
        blur_every: blur the image every this many steps (0: never).
        blur_sigma: the blur's standard deviation in pixels.
        init_std: standard deviation of the starting noise.
        pixel_range: ``(low, high)`` to clip the pixels to, e.g. the data's range; ``None``: no clip.
        n_random: how many random inputs of the same norm give
            :attr:`ActivationMaximisation.random_activation`, per channel.
        seed: seed of the starting noise, the jitter and the random inputs.

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Tanh(), nn.Conv2d(4, 8, 5))
        >>> r = activation_maximisation(net, "2", [0, 3], steps=30, input_shape=(1, 16, 16))
        >>> r.images.shape, r.activation.shape, bool((r.gain > 1).all())
        (torch.Size([2, 1, 16, 16]), torch.Size([2]), True)
    """
    chosen = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if not chosen:
        raise MisconfigurationException("activation_maximisation needs at least one channel")
    if objective not in ("neuron", "channel"):
        raise MisconfigurationException(
            f"activation_maximisation(objective={objective!r}): use 'neuron' (the centre unit) or "
            "'channel' (the mean over space)"
        )
    if steps < 0 or n_random < 1:
        raise MisconfigurationException(
            f"activation_maximisation(steps={steps}, n_random={n_random}): use steps >= 0 and n_random >= 1"
        )
    name, _ = resolve_layer(model, layer)
    device, dtype = _model_device_dtype(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (len(chosen), *[int(s) for s in input_shape])
    idx = torch.tensor(chosen, device=device)
    with (
        _evaluating(model),
        _tapped(model, name) as output_of,
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        with torch.no_grad():
            width = output_of(torch.zeros(shape, device=device, dtype=dtype)).shape[1]
        if min(chosen) < 0 or max(chosen) >= width:
            raise MisconfigurationException(
                f"layer {name!r} has {width} channels (0 to {width - 1}); got channels {chosen}"
            )
        x = (torch.randn(shape, generator=gen) * init_std).to(device, dtype).requires_grad_(True)
        spatial = len(shape) >= 4
        # Adam (the update of torch.optim.Adam with its default betas and eps), written out: on
        # one small tensor the optimizer object's bookkeeping cost as much as the update itself
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        mean, square = torch.zeros_like(x), torch.zeros_like(x)
        for step in range(steps):
            shifted = x
            if jitter > 0 and spatial:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                shifted = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            response = _unit_activation(output_of(shifted), idx, objective)
            score = response.sum() - l2 * x.pow(2).flatten(1).mean(dim=1).sum()
            (grad,) = torch.autograd.grad(-score, x)
            with torch.no_grad():
                mean.lerp_(grad, 1 - beta1)
                square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = step + 1
                denom = (square.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                x.addcdiv_(mean, denom, value=-lr / (1 - beta1**t))
                if blur_every > 0 and spatial and (step + 1) % blur_every == 0:
                    x.copy_(_gaussian_blur(x, blur_sigma))
                if pixel_range is not None:
                    x.clamp_(*pixel_range)
        images = x.detach()
        with torch.no_grad():
            reached = _unit_activation(output_of(images), idx, objective)
            noise = torch.randn((len(chosen), n_random, *shape[1:]), generator=gen).to(device, dtype)
            norms = images.flatten(1).norm(dim=1).reshape(-1, 1, *[1] * (len(shape) - 1))
            noise = noise / noise.flatten(2).norm(dim=2).reshape(norms.shape[0], n_random, *norms.shape[2:])
            out = output_of((noise * norms).reshape(-1, *shape[1:]))
            random = _unit_activation(out, idx.repeat_interleave(n_random), objective).reshape(-1, n_random)
            random_rms = random.pow(2).mean(dim=1).sqrt()
    return ActivationMaximisation(name, chosen, images, reached.detach(), random_rms.detach())


def saliency(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """Input-gradient maps (Simonyan et al. 2014): ``d score[i, target_i] / d x[i]``, shaped like ``x``.

    The score is the model's raw output (the logit, before any softmax), in eval mode. The paper's
    saliency map of image ``i`` is ``saliency(...)[i].abs().amax(dim=0)`` (largest over colour channels).

    Args:
        model: maps ``x`` to scores of shape ``(N, classes)``.
        x: a batch of inputs.
        target: one class for all images, a tensor of ``N`` classes, or ``None`` for each image's
            predicted class.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.randn(2, 1, 2, 2)
        >>> torch.allclose(saliency(net, x, target=1), net[1].weight[1].reshape(1, 2, 2).expand(2, 1, 2, 2))
        True
    """
    with _evaluating(model), torch.inference_mode(False), torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        scores = model(inputs)
        if scores.dim() != 2:
            raise MisconfigurationException(
                f"saliency needs scores of shape (batch, classes), got {tuple(scores.shape)}"
            )
        if target is None:
            classes = scores.detach().argmax(dim=1)
        else:
            classes = torch.as_tensor(target, device=scores.device).long().expand(len(scores))
        if int(classes.min()) < 0 or int(classes.max()) >= scores.shape[1]:
            raise MisconfigurationException(
                f"saliency target must lie in [0, {scores.shape[1]}), got {classes.tolist()}"
            )
        picked = scores.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, inputs)
    return grad.detach()


# --------------------------------------------------------------------------- figures


@functools.cache
def _colour_table(cmap: str) -> Tensor:
    """The 256 RGB colours of a matplotlib colormap (looked up once: building it costs milliseconds)."""
    return torch.from_numpy(colormaps[cmap](np.arange(256))[:, :3]).float()


def _rgb(tiles: Tensor, cmap: str | None = None) -> Tensor:
    """``(n, C, h, w)`` images in [0, 1] as ``(n, 3, h, w)`` RGB: colour kept, grey repeated, or mapped."""
    if cmap is not None:  # the colormap's own lookup: value v in [0, 1] takes colour floor(256 v), 1 the last
        index = (tiles[:, 0] * 256).long().clamp(0, 255)
        return _colour_table(cmap)[index].permute(0, 3, 1, 2)
    if tiles.shape[1] == 3:
        return tiles
    return tiles.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def _display(images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Images ``(n, C, h, w)`` each stretched to [0, 1] (and resized to ``size``, nearest) for display."""
    images = _normalise(images.detach().to("cpu", torch.float32), (1, 2, 3))
    if size is not None and tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="nearest")
    return images


def _join(first: Tensor, second: Tensor, dim: int, gap: int = 4) -> Tensor:
    """Two ``(3, H, W)`` images side by side (``dim=2``) or stacked (``dim=1``), white-padded to fit."""
    other = 3 - dim
    size = max(first.shape[other], second.shape[other])
    pads = [
        (0, size - t.shape[other], 0, 0) if other == 2 else (0, 0, 0, size - t.shape[other])
        for t in (first, second)
    ]
    first, second = (F.pad(t, pad, value=1.0) for t, pad in zip((first, second), pads, strict=True))
    blank_shape = list(first.shape)
    blank_shape[dim] = gap
    return torch.cat([first, torch.ones(blank_shape), second], dim=dim)


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=12)


def _picture(
    image: Tensor, title: str, labels: Sequence[tuple[float, str]] = (), note: str = ""
) -> np.ndarray:
    """An RGB image ``(3, H, W)`` in [0, 1] as PNG-ready ``(H', W', 3)`` ``uint8`` pixels, drawn by PIL.

    The image is enlarged by a whole factor (each pixel a sharp square, up to about 640 x 480),
    with ``title`` above it and, below it, each ``(x, text)`` of ``labels`` centred at column ``x``
    of the original image and then ``note``. A few milliseconds, where a matplotlib figure of the
    same picture took tens.
    """
    h, w = image.shape[-2:]
    factor = max(1, min(12, 640 // w, 480 // h))
    pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = PIL.Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (w * factor, h * factor), PIL.Image.NEAREST
    )
    font, line, margin = _font(), 16, 4
    below = line * (bool(labels) + bool(note))
    title_width = int(font.getlength(title)) + 2 * margin
    canvas = PIL.Image.new("RGB", (max(picture.width, title_width), line + picture.height + below), "white")
    canvas.paste(picture, (0, line))
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 1), title, fill="black", font=font)
    for x, text in labels:
        draw.text((x * factor, line + picture.height + 1), text, fill="black", font=font, anchor="ma")
    if note:
        draw.text((canvas.width // 2, canvas.height - line + 1), note, fill="black", font=font, anchor="ma")
    return np.asarray(canvas)


def _maps_image(x: Tensor, maps: Tensor) -> Tensor:
    """Rows: the probe images, then their maps in every channel on one symmetric scale (red +, blue -)."""
    maps = maps.detach().to("cpu", torch.float32)
    if maps.dim() != 4:
        maps = maps.reshape(len(maps), -1, 1, 1)
    n, c = maps.shape[:2]
    size = tuple(x.shape[-2:])
    limit = float(maps.abs().max()) or 1.0
    scaled = F.interpolate(maps / (2 * limit) + 0.5, size=size, mode="nearest").reshape(n * c, 1, *size)
    inputs = _tile(_rgb(_display(x)), 1, 1, 1.0)
    return _join(inputs, _tile(_rgb(scaled, "RdBu_r"), c, 1, 1.0), dim=2)


def _strip_picture(grids: list[Tensor], steps: list[int], title: str) -> np.ndarray:
    """The filter grids of successive probes side by side, labelled by training step (at most 16)."""
    if len(grids) > 16:
        keep = sorted({round(i * (len(grids) - 1) / 15) for i in range(16)})
        grids, steps = [grids[i] for i in keep], [steps[i] for i in keep]
    c, h, w = grids[0].shape
    strip = torch.cat([torch.cat([g, torch.ones(c, h, 2)], dim=2) for g in grids], dim=2)[:, :, :-2]
    labels = [((w + 2) * i + w / 2, str(s)) for i, s in enumerate(steps)]
    return _picture(_rgb(strip[None])[0], title, labels, note="training step")


# --------------------------------------------------------------------------- callback


class FilterVisualisation(DiagnosticCallback):
    """Filter grids, activation maps and (optionally) activation-maximisation images during training.

    At every probe (by default at init, after every epoch and at the end), for each chosen conv
    layer: the :func:`filter_grid`, the :func:`activation_maps` of the first ``num_images`` probe
    images, and with ``maximise=True`` the :func:`activation_maximisation` images of its channels
    (at the probes named by ``maximise_on``); with ``saliency=True`` also the :func:`saliency` maps
    of the probe images. A strip of the first layer's filter grids at every probe so far shows how
    the filters evolved. The pictures are
    drawn straight from their pixels (PIL, no matplotlib figure: a few milliseconds each) and go to
    W&B (``filters/<picture>_<layer>`` images, captioned with when and at which step) and as PNGs
    into ``<run dir>/plugins/filters/``, the raw grids, weights and maps into ``step_<N>.npz``, and
    scalars (``filters/<layer>/filter_norm``, ``.../activation_rms``, ``.../act_max_gain``) to
    every logger. The strip's grids are part of the checkpoint, so a resumed run continues it.

    Needs: ``pl_module(x)`` on a batch of images, and at least one ``nn.Conv2d`` layer. Under DDP
    the chosen layers' activation maximisations (the dear part) are shared across ranks, one
    contiguous share of layers each; global rank zero draws the pictures and logs.

    Args:
        layers: conv layers to show, named as in ``pl_module.named_modules()`` (``None``: the first).
        num_images: probe images whose activation maps (and saliency) are shown.
        maximise: also compute activation-maximisation images (costs ``maximise_steps`` forward
            and backward passes of one small batch per layer and maximising probe: the dearest part
            of a probe by far; ``experiments/cnn_filters.yaml`` maximises at the end only, 64 steps).
        maximise_channels: how many channels to maximise (the first ones), or a list of channels.
        maximise_steps: gradient-ascent steps of each activation maximisation (on a trained
            LeNet-5, 64 steps give images of cosine 0.97 (conv1) and 0.99 (conv2) to those of 128
            steps, at half the cost).
        maximise_on: at which probes to maximise: any of ``"init"``, ``"step"``, ``"epoch"``, ``"end"``
            (default: at init and at the end, the before/after picture; ``["end"]`` alone halves
            the cost; the last epoch's probe counts as the end). A probe called outside a Trainer
            always maximises.
        maximise_objective: ``"neuron"`` (the centre unit: a localised pattern, for a first layer the
            filter itself) or ``"channel"`` (the mean over all positions: a texture); pixels are kept
            in the probe images' range, so the images look like data.
        saliency: also show the input-gradient maps of the predicted class.
        at_init, every_n_steps, every_n_epochs, at_end, probe_seed: as in
            :class:`~plugins.base.DiagnosticCallback`.
        probe_size: images in the fixed probe batch (default: ``num_images``).

    Example:
        >>> cb = FilterVisualisation(layers=["conv1"], maximise=True, every_n_epochs=2)
        >>> net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 24 * 24, 10))
        >>> try:
        ...     cb.check_module(net)
        ... except MisconfigurationException as err:
        ...     print(err)  # doctest: +ELLIPSIS
        Sequential: no layer is named 'conv1'. Its conv layers are ['0']; ...
        >>> cb = FilterVisualisation(maximise=True, maximise_steps=5)
        >>> result = cb.probe(net, torch.randn(4, 1, 28, 28))
        >>> sorted(result.images)
        ['activation_maps_0', 'activation_maximisation_0', 'filter_grid_0', 'filter_strip_0']
    """

    name = "filters"
    distributed = True  # under DDP the layers' activation maximisations are shared across ranks
    runs_train_mode = False

    def __init__(
        self,
        layers: list[str] | None = None,
        num_images: int = 4,
        maximise: bool = False,
        maximise_channels: int | list[int] = 16,
        maximise_steps: int = 128,
        maximise_objective: str = "neuron",
        maximise_on: list[str] | None = None,
        saliency: bool = False,
        at_init: bool = True,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        at_end: bool = True,
        probe_size: int | None = None,
        probe_seed: int = 0,
    ) -> None:
        if num_images < 1:
            raise MisconfigurationException(f"FilterVisualisation(num_images={num_images}): show at least 1")
        if maximise_objective not in ("neuron", "channel"):
            raise MisconfigurationException(
                f"FilterVisualisation(maximise_objective={maximise_objective!r}): use 'neuron' or 'channel'"
            )
        maximise_on = ["init", "end"] if maximise_on is None else list(maximise_on)
        if not set(maximise_on) <= {"init", "step", "epoch", "end"}:
            raise MisconfigurationException(
                f"FilterVisualisation(maximise_on={maximise_on!r}): use any of 'init', 'step', 'epoch', 'end'"
            )
        if isinstance(maximise_channels, int) and maximise_channels < 1:
            raise MisconfigurationException(
                f"FilterVisualisation(maximise_channels={maximise_channels}): give a count >= 1 or a list"
            )
        super().__init__(
            at_init=at_init,
            every_n_steps=every_n_steps,
            every_n_epochs=every_n_epochs,
            at_end=at_end,
            probe_size=probe_size or num_images,
            probe_seed=probe_seed,
        )
        self.layers = list(layers) if layers else None
        self.num_images, self.show_saliency = num_images, saliency
        self.maximise, self.maximise_channels = maximise, maximise_channels
        self.maximise_steps, self.maximise_objective = maximise_steps, maximise_objective
        self.maximise_on = maximise_on
        self.strip: list[tuple[int, Tensor]] = []
        self._step: int | None = None
        self._when: str | None = None

    def _conv_layers(self, pl_module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
        convs = require_layers(type(self).__name__, pl_module, nn.Conv2d)
        if self.layers is None:
            return convs[:1]
        chosen = []
        for layer in self.layers:
            name, module = resolve_layer(pl_module, layer)
            if not isinstance(module, nn.Conv2d):
                raise MisconfigurationException(
                    f"FilterVisualisation shows conv filters, and {name!r} is a {type(module).__name__}: "
                    f"choose among the conv layers {[n for n, _ in convs]}"
                )
            chosen.append((name, module))
        return chosen

    def check_module(self, pl_module: L.LightningModule) -> None:
        """Refuse, at setup, a module with no conv layer or a chosen layer that is not a conv layer."""
        self._conv_layers(pl_module)

    def _channels(self, conv: nn.Conv2d) -> list[int]:
        if isinstance(self.maximise_channels, int):
            return list(range(min(self.maximise_channels, conv.out_channels)))
        return list(self.maximise_channels)

    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Filter grids, activation maps and the optional images of the chosen conv layers on ``batch``."""
        x = probe_inputs(batch)[: self.num_images]
        convs = self._conv_layers(pl_module)
        # the fit's last probe stands for the end probe, which the base skips at the same step
        when = "end" if self.probe_is_last else self.probe_when
        maximise = self.maximise and (self.probe_step is None or when in self.maximise_on)
        maximised = share_work(
            convs if maximise else [],
            lambda share: [self._maximise(pl_module, name, conv, x) for name, conv in share],
            "FilterVisualisation's probe",
        )
        if maximised is None:  # another rank than zero: its layers are maximised, rank zero draws
            return ProbeResult()
        result = ProbeResult()
        for index, (name, conv) in enumerate(convs):
            grid = filter_grid(conv)
            maps = activation_maps(pl_module, x, name)
            title = f"{name}: {conv.out_channels} filters, each stretched to [0, 1]"
            result.images[f"filter_grid_{name}"] = _picture(_rgb(grid[None])[0], title)
            title = f"{name}: activation maps of channels 0-{maps.shape[1] - 1} (red +, blue -)"
            result.images[f"activation_maps_{name}"] = _picture(_maps_image(x, maps), title)
            result.arrays.update({f"filter_grid_{name}": grid, f"weight_{name}": conv.weight})
            result.arrays[f"activation_maps_{name}"] = maps
            result.scalars[f"{name}/filter_norm"] = float(conv.weight.detach().flatten(1).norm(dim=1).mean())
            result.scalars[f"{name}/activation_rms"] = float(maps.pow(2).mean().sqrt())
            if index == 0:
                step = self.probe_step if self.probe_step is not None else len(self.strip)
                self.strip.append((step, grid))
                steps, grids = [s for s, _ in self.strip], [g for _, g in self.strip]
                title = f"{name} filters during training"
                result.images[f"filter_strip_{name}"] = _strip_picture(grids, steps, title)
            if maximise:
                found = maximised[index]
                tiles = _tile(_rgb(_display(found.images)), min(8, len(found.channels)), 1, 1.0)
                title = f"{name}: inputs maximising channels {found.channels[0]}-{found.channels[-1]}"
                result.images[f"activation_maximisation_{name}"] = _picture(tiles, title)
                result.arrays[f"act_max_images_{name}"] = found.images
                result.arrays[f"act_max_activation_{name}"] = found.activation
                result.arrays[f"act_max_random_{name}"] = found.random_activation
                result.scalars[f"{name}/act_max_gain"] = float(found.gain.mean())
        if self.show_saliency:
            grads = saliency(pl_module, x)
            inputs = _tile(_rgb(_display(x)), len(x), 1, 1.0)
            maps = _tile(_rgb(_display(grads.abs().amax(dim=1, keepdim=True)), "hot"), len(x), 1, 1.0)
            title = "saliency |d score / d pixel| of the predicted class"
            result.images["saliency"] = _picture(_join(inputs, maps, dim=1), title)
            result.arrays["saliency"] = grads
        return result

    def _maximise(
        self, pl_module: nn.Module, name: str, conv: nn.Conv2d, x: Tensor
    ) -> ActivationMaximisation:
        return activation_maximisation(
            pl_module,
            name,
            self._channels(conv),
            self.maximise_steps,
            input_shape=tuple(x.shape[1:]),
            objective=self.maximise_objective,
            pixel_range=(float(x.min()), float(x.max())),
            seed=self.probe_seed,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "strip": [(s, g.clone()) for s, g in self.strip]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.strip = [(int(s), g) for s, g in state_dict.get("strip", [])]
