"""filter_grid, activation_maps and layer names (plugins.filter_grids).

Tolerances: grids and maps are compared exactly (same float32 operations).
"""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.filter_grids import activation_maps, filter_grid
from plugins.filters import activation_maximisation
from tdl_lightning.tasks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- filter_grid


@pytest.mark.parametrize(
    ("in_c", "out_c", "k", "shape"),
    [
        (1, 6, 5, (1, 13, 19)),  # 6 grey tiles, 3 a row, 2 rows
        (3, 8, 3, (3, 13, 13)),  # 8 RGB tiles, 3 a row, 3 rows
        (6, 16, 5, (1, 97, 37)),  # 16 rows (filters) of 6 tiles (input channels)
    ],
)
def test_filter_grid_shapes_and_values(in_c, out_c, k, shape):
    conv = nn.Conv2d(in_c, out_c, k)
    grid = filter_grid(conv)
    assert tuple(grid.shape) == shape
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
    # the first tile is the first filter, stretched to [0, 1] on its own
    w = conv.weight.detach()[0]
    expected = (w - w.min()) / (w.max() - w.min())
    tile = grid[:, 1 : 1 + k, 1 : 1 + k]
    if in_c in (1, 3):
        torch.testing.assert_close(tile, expected, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(tile[0], expected[0], rtol=0, atol=1e-6)
    # every filter spans [0, 1]; padding is white
    assert torch.all(grid[:, 0, :] == 1.0) and torch.all(grid[:, :, 0] == 1.0)
    tiles = [
        grid[:, 1 + r * (k + 1) : 1 + r * (k + 1) + k] for r in range(out_c if in_c not in (1, 3) else 1)
    ]
    for row in tiles:
        assert float(row.min()) == 0.0 and float(row.max()) == 1.0


def test_filter_grid_layer_scale_keeps_filters_comparable():
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight[1] *= 0.01  # a weak filter
    grid = filter_grid(conv, scale="layer", padding=0, ncols=2)
    assert tuple(grid.shape) == (1, 3, 6)
    assert float(grid[:, :, 3:].max() - grid[:, :, 3:].min()) < 0.05  # weak filter stays flat
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0


def test_filter_grid_refuses_what_is_not_a_conv_weight():
    with pytest.raises(MisconfigurationException, match="nn.Conv2d or a weight"):
        filter_grid(torch.zeros(3, 3))
    with pytest.raises(MisconfigurationException, match="'filter' or 'layer'"):
        filter_grid(nn.Conv2d(1, 1, 3), scale="global")


# --------------------------------------------------------------------------- activation maps, layer names


def test_activation_maps_are_the_layer_responses(trained_lenet, mnist):
    x = mnist[0][:5]
    net = trained_lenet
    with torch.no_grad():
        expected = net.conv2(net.pool1(net.act1(net.conv1(x))))
    torch.testing.assert_close(activation_maps(net, x, "conv2"), expected, rtol=0, atol=0)
    task = Classifier(net)
    torch.testing.assert_close(activation_maps(task, x, "model.conv2"), expected, rtol=0, atol=0)
    torch.testing.assert_close(activation_maps(task, x, "conv2"), expected, rtol=0, atol=0)  # unique suffix


def test_wrong_layer_name_lists_the_conv_layers(trained_lenet):
    task = Classifier(trained_lenet)
    with pytest.raises(
        MisconfigurationException, match=r"no layer is named 'conv3'.*'model.conv1', 'model.conv2'"
    ):
        activation_maps(task, torch.zeros(1, 1, 28, 28), "conv3")
    with pytest.raises(MisconfigurationException, match="'model.conv1', 'model.conv2'"):
        activation_maximisation(task, "features.0", 0, 1, input_shape=(1, 28, 28))
