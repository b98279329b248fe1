"""Deep fully connected networks with the initialisations of signal-propagation theory.

The network is ``h^l = W^l x^{l-1} + b^l``, ``x^l = phi(h^l)`` for ``l = 1..depth``, followed by
an optional linear read-out. With ``init="gaussian"`` the weights are ``N(0, sigma_w^2 / fan_in)``
and the biases ``N(0, sigma_b^2)``, as in Poole et al. (2016); ``activation="linear"`` is the
deep linear network.

The *parameterisation* decides what the trainable numbers are, not the function at
initialisation: ``"standard"`` trains the weights themselves; ``"ntk"`` (Jacot et al. 2018, the
convention of neural-tangents' ``stax.Dense``) trains ``N(0, 1)`` numbers that every layer,
read-out included, multiplies by ``sigma_w / sqrt(fan_in)`` (biases by ``sigma_b``) in the
forward; ``"mean_field"`` does the same in the hidden layers and gives the read-out the
multiplier ``sigma_w / width`` (the ``1/N`` of mean-field scaling, Mei, Montanari & Nguyen 2018).
``alpha`` multiplies the output (Chizat, Oyallon & Bach 2019: large ``alpha`` is lazy training).

Example:
    >>> import torch
    >>> net = DeepMLP(input_dim=8, width=16, depth=3, output_dim=2, activation="tanh")
    >>> net(torch.randn(5, 8)).shape
    torch.Size([5, 2])
    >>> (net.activation, net.sigma_w, net.sigma_b)
    ('tanh', 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import cast

import torch
from torch import nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.models.activations import ACTIVATIONS, activation_module

__all__ = ["INITS", "PARAMETERISATIONS", "DeepMLP", "ScaledLinear", "init_linear"]

INITS = ("gaussian", "orthogonal", "he", "xavier")
PARAMETERISATIONS = ("standard", "ntk", "mean_field")


class ScaledLinear(nn.Linear):
    """A linear layer whose trainable weight and bias are multiplied by fixed numbers in the forward:
    ``y = (weight_multiplier * W) x + bias_multiplier * b``.

    The layer of the NTK and mean-field parameterisations: gradient descent moves the raw ``W``
    and ``b``, so the multipliers set how fast each layer learns. ``effective_weight()`` and
    ``effective_bias()`` are the matrices the forward uses.

    Example:
        >>> layer = ScaledLinear(4, 2, weight_multiplier=0.5, bias_multiplier=0.0)
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(layer(x), x @ (0.5 * layer.weight).T)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_multiplier: float,
        bias_multiplier: float,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.weight_multiplier, self.bias_multiplier = float(weight_multiplier), float(bias_multiplier)

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses, ``weight_multiplier * weight``."""
        return self.weight_multiplier * self.weight

    def effective_bias(self) -> torch.Tensor | None:
        """The bias the forward uses, ``bias_multiplier * bias`` (``None`` without a bias)."""
        return None if self.bias is None else self.bias_multiplier * self.bias

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.effective_bias())

    @override
    def extra_repr(self) -> str:
        scales = f"weight_multiplier={self.weight_multiplier:.4g}, bias_multiplier={self.bias_multiplier:.4g}"
        return f"{super().extra_repr()}, {scales}"


def init_linear(layer: nn.Linear, init: str, sigma_w: float, sigma_b: float) -> None:
    """Initialise one linear layer in place.

    ``gaussian``: ``W ~ N(0, sigma_w^2/fan_in)``; ``orthogonal``: ``W = sigma_w * Q`` with ``Q``
    (semi-)orthogonal; ``he``: ``N(0, 2/fan_in)``; ``xavier``: ``N(0, 2/(fan_in + fan_out))``.
    Biases are ``N(0, sigma_b^2)`` (zero when ``sigma_b == 0``).

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> init_linear(layer, "orthogonal", sigma_w=2.0, sigma_b=0.0)
        >>> torch.allclose(layer.weight @ layer.weight.T, 4 * torch.eye(4), atol=1e-5)
        True
    """
    fan_out, fan_in = layer.weight.shape
    with torch.no_grad():
        if init == "gaussian":
            layer.weight.normal_(0.0, sigma_w / math.sqrt(fan_in))
        elif init == "orthogonal":
            nn.init.orthogonal_(layer.weight, gain=sigma_w)
        elif init == "he":
            layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        elif init == "xavier":
            layer.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        else:
            raise ConfigError(f"unknown init {init!r}: choose one of {list(INITS)}")
        if layer.bias is not None:
            if sigma_b > 0:
                layer.bias.normal_(0.0, sigma_b)
            else:
                layer.bias.zero_()


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"DeepMLP {name} must be a whole number >= 1, got {value!r}")


def _resolve_scales(
    init: str, activation: str, sigma_w: float | None, sigma_b: float | None
) -> tuple[float, float]:
    """The effective (sigma_w, sigma_b) of an init scheme, with the impossible pairs refused."""
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}: choose one of {list(INITS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}: choose one of {sorted(ACTIVATIONS)}")
    if init in ("he", "xavier") and sigma_w is not None:
        raise ConfigError(
            f"init {init!r} fixes the weight scale, so sigma_w={sigma_w} cannot apply: "
            "drop sigma_w, or use init: gaussian (or orthogonal) to choose it"
        )
    if init == "he" and activation != "relu":
        raise ConfigError(
            f"init 'he' (sigma_w^2 = 2) is derived for ReLU, not {activation!r}: use "
            "activation: relu, or init: gaussian with the sigma_w you want "
            "(sigma_w: 1.4142 reproduces He's variance)"
        )
    effective_w = {"he": math.sqrt(2.0), "xavier": 1.0}.get(init, 1.0 if sigma_w is None else sigma_w)
    effective_b = 0.0 if sigma_b is None else float(sigma_b)
    if effective_w <= 0:
        raise ConfigError(f"sigma_w must be > 0, got {effective_w}")
    if effective_b < 0:
        raise ConfigError(f"sigma_b is a standard deviation and must be >= 0, got {effective_b}")
    return float(effective_w), effective_b


class DeepMLP(nn.Sequential):
    """A deep MLP (or deep linear network) that records the scales theory needs.

    Args:
        input_dim: features per input (images are flattened first).
        width: units per hidden layer.
        depth: number of hidden layers ``L`` (each a linear map followed by the activation).
        output_dim: size of the linear read-out, or ``None`` to return ``x^L`` itself.
        activation: one of ``tanh, relu, linear, hard_tanh, sigmoid, erf``.
        init: ``gaussian`` (``sigma_w``, ``sigma_b``), ``orthogonal`` (``sigma_w`` is the gain),
            ``he`` (ReLU only) or ``xavier``.
        sigma_w: weight scale (default 1); not allowed with ``he``/``xavier``, which fix it.
        sigma_b: bias standard deviation (default 0).
        bias: whether the linear layers have biases.
        parameterisation: ``standard`` (train the weights), ``ntk`` (train ``N(0, 1)`` numbers scaled
            by ``sigma_w / sqrt(fan_in)`` in every layer) or ``mean_field`` (as ``ntk``, with the
            read-out scaled by ``sigma_w / width``); the function at init is the same for
            ``standard`` and ``ntk``, and only the read-out's scale differs for ``mean_field``.
            The non-standard ones use :class:`ScaledLinear` layers.
        alpha: output scale: the network computes ``alpha * f(x)`` (default 1: no scaling).
        widths: hidden widths layer by layer (e.g. ``[10, 7, 5, 4, 3]`` for the information
            bottleneck's 12-10-7-5-4-3-2 net); given, it replaces ``width`` and ``depth``
            (``width`` then holds the last hidden width, ``depth`` the number of layers).

    The attributes ``activation``, ``sigma_w``, ``sigma_b``, ``init``, ``depth`` and ``width``
    hold the effective values, so that plugins can put mean-field predictions beside measurements.

    Example:
        >>> net = DeepMLP(input_dim=32, width=32, depth=4, output_dim=None,
        ...               activation="linear", init="orthogonal", sigma_w=1.0)
        >>> x = torch.randn(3, 32)
        >>> torch.allclose(net(x).norm(dim=1), x.norm(dim=1), atol=1e-4)
        True
    """

    def __init__(
        self,
        input_dim: int = 784,
        width: int = 256,
        depth: int = 4,
        output_dim: int | None = 10,
        activation: str = "tanh",
        init: str = "gaussian",
        sigma_w: float | None = None,
        sigma_b: float | None = None,
        bias: bool = True,
        parameterisation: str = "standard",
        alpha: float = 1.0,
        widths: list[int] | None = None,
    ) -> None:
        if widths is not None:
            if not widths:
                raise ConfigError("DeepMLP widths must list at least one hidden width, or be left out")
            width, depth = widths[-1], len(widths)
        if parameterisation not in PARAMETERISATIONS:
            raise ConfigError(
                f"unknown parameterisation {parameterisation!r}: choose one of {list(PARAMETERISATIONS)}"
            )
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"DeepMLP alpha (the output scale) must be a number > 0, got {alpha!r}")
        if parameterisation == "mean_field" and output_dim is None:
            raise ConfigError(
                "parameterisation 'mean_field' scales the read-out by 1/width: give the model an "
                "output_dim (a read-out), or use parameterisation: ntk"
            )
        for name, value in (("input_dim", input_dim), ("width", width), ("depth", depth)):
            _check_positive_int(name, value)
        if output_dim is not None:
            _check_positive_int("output_dim", output_dim)
        sw, sb = _resolve_scales(init, activation, sigma_w, sigma_b)

        self.parameterisation, self.alpha = parameterisation, float(alpha)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = input_dim
        for l, hidden in enumerate(widths or [width] * depth, start=1):
            _check_positive_int("widths entry", hidden)
            layers[f"fc{l}"] = self._linear(fan_in, hidden, bias, sw, sb, readout=False)
            layers[f"act{l}"] = activation_module(activation)
            fan_in = hidden
        if output_dim is not None:
            layers["readout"] = self._linear(width, output_dim, bias, sw, sb, readout=True)
        super().__init__(layers)

        self.input_dim, self.width, self.depth, self.output_dim = (
            input_dim,
            width,
            depth,
            output_dim,
        )
        self.activation, self.init = activation, init
        self.sigma_w, self.sigma_b = sw, sb
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw fresh weights from the init scheme (uses the global torch RNG).

        Under the ``ntk`` and ``mean_field`` parameterisations the trainable numbers are the drawn
        weights divided by ``sigma_w / sqrt(fan_in)`` (``N(0, 1)`` for a gaussian init) and the
        biases divided by ``sigma_b`` (zero, and inert, when ``sigma_b = 0``).

        Example:
            >>> net = DeepMLP(input_dim=4, width=4, depth=1, output_dim=None)
            >>> net.reset_parameters()
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear(module, self.init, self.sigma_w, self.sigma_b)
            if isinstance(module, ScaledLinear):  # the raw numbers: N(0, 1) for a gaussian init
                with torch.no_grad():
                    module.weight.mul_(math.sqrt(module.in_features) / self.sigma_w)
                    if module.bias is not None:
                        if module.bias_multiplier > 0:
                            module.bias.div_(module.bias_multiplier)
                        else:
                            module.bias.zero_()

    def _linear(
        self, fan_in: int, fan_out: int, bias: bool, sw: float, sb: float, readout: bool
    ) -> nn.Linear:
        if self.parameterisation == "standard":
            return nn.Linear(fan_in, fan_out, bias=bias)
        scale = fan_in if readout and self.parameterisation == "mean_field" else math.sqrt(fan_in)
        return ScaledLinear(fan_in, fan_out, bias, weight_multiplier=sw / scale, bias_multiplier=sb)

    def hidden_layers(self) -> list[nn.Linear]:
        """The ``depth`` hidden linear maps ``W^1..W^L`` (the read-out excluded).

        Example:
            >>> len(DeepMLP(input_dim=4, width=4, depth=3).hidden_layers())
            3
        """
        return [cast(nn.Linear, self.get_submodule(f"fc{l}")) for l in range(1, self.depth + 1)]

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x[0].numel() if x.dim() > 1 else -1
        if features != self.input_dim:
            raise ConfigError(
                f"DeepMLP expects inputs of {self.input_dim} features per sample, got shape "
                f"{tuple(x.shape)}: set the model's input_dim to {features} "
                "(the product of the per-sample dimensions)"
            )
        out = super().forward(x)
        return out if self.alpha == 1.0 else self.alpha * out
