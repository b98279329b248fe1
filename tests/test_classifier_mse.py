"""Classifier(objective="mse"): the square loss on one-hot targets of the edge-of-stability experiments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks import Classifier


def test_mse_objective_is_the_mean_squared_error_to_one_hot_targets():
    task = Classifier(nn.Identity(), num_classes=3, objective="mse")
    outputs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 2.0]])
    targets = torch.tensor([0, 2])
    expected = ((0.5**2) + (0.5**2) + (2.0 - 1.0) ** 2) / 6  # example 0 exact; example 1: 0.25+0.25+1
    assert float(task.loss((outputs, targets))) == pytest.approx(expected)
    assert float(Classifier(nn.Identity(), num_classes=3).loss((outputs, targets))) > 0  # cross-entropy


def test_unknown_objective_and_smoothing_with_mse_are_refused():
    with pytest.raises(ConfigError, match="'cross_entropy' or 'mse'"):
        Classifier(nn.Identity(), num_classes=3, objective="hinge")
    with pytest.raises(ConfigError, match="label_smoothing"):
        Classifier(nn.Identity(), num_classes=3, objective="mse", label_smoothing=0.1)
