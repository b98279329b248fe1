"""Architectures: shapes, init statistics against their definitions, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DeepMLP, LeNet5


@pytest.mark.parametrize(
    ("in_channels", "size", "activation", "pooling"),
    [(1, 28, "tanh", "avg"), (1, 32, "relu", "max"), (3, 32, "tanh", "max")],
)
def test_lenet5_shapes(in_channels, size, activation, pooling):
    net = LeNet5(in_channels=in_channels, input_size=size, activation=activation, pooling=pooling)
    assert net(torch.randn(3, in_channels, size, size)).shape == (3, 10)
    assert net.fc1.in_features == 400  # 16 x 5 x 5, as in LeCun et al. (1998)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 3


def test_lenet5_wrong_input_says_what_to_do():
    with pytest.raises(ConfigError, match="in_channels and input_size"):
        LeNet5()(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="at least 28x28"):
        LeNet5(input_size=12)
    with pytest.raises(ConfigError, match="'tanh' or 'relu'"):
        LeNet5(activation="gelu")


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear", "hard_tanh", "sigmoid", "erf"])
def test_deep_mlp_shapes_and_records(activation):
    net = DeepMLP(
        input_dim=12, width=20, depth=3, output_dim=4, activation=activation, sigma_w=1.5, sigma_b=0.1
    )
    assert net(torch.randn(5, 3, 4)).shape == (5, 4)  # inputs are flattened
    assert (net.activation, net.sigma_w, net.sigma_b, net.depth, net.width) == (activation, 1.5, 0.1, 3, 20)
    assert [layer.out_features for layer in net.hidden_layers()] == [20, 20, 20]


def test_gaussian_init_variance_matches_poole():
    # 1000 x 1000 weights: the sample variance has relative std sqrt(2/1e6) ~ 0.14%; allow 2%.
    net = DeepMLP(input_dim=1000, width=1000, depth=2, output_dim=None, sigma_w=1.7, sigma_b=0.3)
    for layer in net.hidden_layers():
        assert layer.weight.var().item() == pytest.approx(1.7**2 / 1000, rel=0.02)
        assert abs(layer.weight.mean().item()) < 5 * 1.7 / 1000 / math.sqrt(1000)
        assert layer.bias.var().item() == pytest.approx(0.3**2, rel=0.2)  # 1000 samples: ~4.5% std


@pytest.mark.parametrize(("init", "variance"), [("he", 2.0 / 800), ("xavier", 2.0 / (800 + 800))])
def test_he_and_xavier_variances(init, variance):
    activation = "relu" if init == "he" else "tanh"
    net = DeepMLP(input_dim=800, width=800, depth=1, output_dim=None, activation=activation, init=init)
    assert net.fc1.weight.var().item() == pytest.approx(variance, rel=0.02)
    assert torch.count_nonzero(net.fc1.bias) == 0


def test_orthogonal_init_is_orthogonal_with_gain():
    net = DeepMLP(input_dim=64, width=64, depth=3, output_dim=None, init="orthogonal", sigma_w=1.3)
    eye = torch.eye(64)
    for layer in net.hidden_layers():
        w = layer.weight.double()
        assert torch.allclose(w @ w.T, 1.3**2 * eye.double(), atol=1e-5)


def test_orthogonal_deep_linear_net_scales_norms_by_gain_to_the_depth():
    net = DeepMLP(
        input_dim=32, width=32, depth=6, output_dim=None, activation="linear", init="orthogonal", sigma_w=1.1
    )
    x = torch.randn(7, 32)
    assert torch.allclose(net(x).norm(dim=1), 1.1**6 * x.norm(dim=1), rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": -1}, "depth must be a whole number >= 1"),
        ({"width": 0}, "width must be a whole number >= 1"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"init": "lecun"}, "unknown init 'lecun'"),
        ({"init": "he", "activation": "tanh"}, "derived for ReLU"),
        ({"init": "he", "activation": "relu", "sigma_w": 2.0}, "fixes the weight scale"),
        ({"sigma_b": -0.1}, "sigma_b is a standard deviation"),
        ({"sigma_w": 0.0}, "sigma_w must be > 0"),
    ],
)
def test_deep_mlp_bad_config_messages(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DeepMLP(**kwargs)


def test_deep_mlp_wrong_input_size_names_the_fix():
    with pytest.raises(ConfigError, match="set the model's input_dim to 784"):
        DeepMLP(input_dim=100)(torch.randn(2, 1, 28, 28))
