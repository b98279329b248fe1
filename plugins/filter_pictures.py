"""The pictures of :class:`~plugins.filters.FilterVisualisation`, drawn straight from pixels.

Filter grids, activation maps and activation-maximisation images become RGB images (grey
repeated, or a matplotlib colormap looked up once), tiled with :func:`plugins.pictures.image_grid`
and drawn enlarged under a title by PIL: a few milliseconds each, where a matplotlib figure of the
same picture took tens.

Example:
    >>> _picture(torch.rand(3, 5, 7), "a title").shape  # 12x enlarged under a 16-pixel title
    (76, 84, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import ImageDraw, ImageFont
from torch import Tensor

from plugins.filter_grids import _normalise
from plugins.pictures import image_grid


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
        (w * factor, h * factor), PIL.Image.Resampling.NEAREST
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
    inputs = image_grid(_rgb(_display(x)), columns=1)
    return _join(inputs, image_grid(_rgb(scaled, "RdBu_r"), columns=c), dim=2)


def _strip_picture(grids: list[Tensor], steps: list[int], title: str) -> np.ndarray:
    """The filter grids of successive probes side by side, labelled by training step (at most 16)."""
    if len(grids) > 16:
        keep = sorted({round(i * (len(grids) - 1) / 15) for i in range(16)})
        grids, steps = [grids[i] for i in keep], [steps[i] for i in keep]
    c, h, w = grids[0].shape
    strip = torch.cat([torch.cat([g, torch.ones(c, h, 2)], dim=2) for g in grids], dim=2)[:, :, :-2]
    labels = [((w + 2) * i + w / 2, str(s)) for i, s in enumerate(steps)]
    return _picture(_rgb(strip[None])[0], title, labels, note="training step")
