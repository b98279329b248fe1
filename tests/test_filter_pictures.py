"""The pictures FilterVisualisation draws (plugins.filter_pictures): exact pixels and colormaps."""

from __future__ import annotations

import numpy as np
import torch

from plugins import filter_pictures


def test_pictures_are_the_pixels_enlarged_under_a_title():
    image = torch.rand(3, 5, 7)
    pixels = filter_pictures._picture(image, "a title")
    factor = 12  # min(12, 640 // 7, 480 // 5)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[0] == 16 + 5 * factor  # one title line above
    body = torch.from_numpy(pixels[16:, : 7 * factor].copy()).permute(2, 0, 1)
    expected = (image * 255).round().to(torch.uint8).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    assert torch.equal(body, expected)
    title = pixels[:16]
    assert title.min() < 100 and title.max() == 255  # dark text on white
    labelled = filter_pictures._strip_picture([torch.rand(1, 4, 4)] * 3, [0, 5, 10], "strip")
    assert labelled.shape[0] == 16 + 4 * 12 + 2 * 16  # title, strip, step labels and "training step"
    # the colormaps are matplotlib's own
    from matplotlib import colormaps

    values = torch.rand(2, 1, 3, 4)
    values[0, 0, 0, :2] = torch.tensor([0.0, 1.0])
    for cmap in ("RdBu_r", "hot"):
        mapped = torch.from_numpy(colormaps[cmap](values[:, 0].numpy())[..., :3]).permute(0, 3, 1, 2)
        torch.testing.assert_close(filter_pictures._rgb(values, cmap), mapped.float(), rtol=0, atol=0)
