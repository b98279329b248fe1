r"""Curvature products through a convolution that reads the data: no gradient for the data itself.

A Hessian-vector product differentiates the graph of the gradient once more. For a convolution
``y = conv(x, W)`` the gradient's graph holds ``dL/dW = conv_backward(dL/dy, x)``, and PyTorch's
double backward of it computes ``dL/dx``-like terms for ``x`` *whether or not* ``x`` needs them (its
``_convolution_double_backward`` tests only that the incoming ``ggW`` is defined). When ``x`` is
the data (the first layer of a CNN) that term is a transposed convolution of the layer's whole
output, thrown away at once: on LeNet-5 it was two thirds of every product's CPU time (one
output channel falls off the fast convolution path).

:func:`weight_only_convolutions` is a :class:`~torch.overrides.TorchFunctionMode`: inside it, a
convolution (``conv1d``/``conv2d``/``conv3d``) whose input needs no gradient and whose weight does
runs as the same convolution (the same kernel: the same output bit for bit), and its backward as
the same ``convolution_backward`` for the weight and bias (the same gradient bit for bit), recorded
as an operation whose own backward is ``conv(x, ggW) + ggb`` -- exactly the part of PyTorch's
double backward that the product needs. Every other call passes through untouched. The operators
build their graphs inside it (:meth:`plugins.curvature.model.ModelOperator._build`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(1, 2, 3, padding=1)
    >>> x = torch.randn(4, 1, 6, 6)
    >>> with weight_only_convolutions():
    ...     loss = conv(x).tanh().pow(2).mean()
    ...     fast = torch.autograd.grad(loss, conv.weight, create_graph=True)[0]
    >>> plain = torch.autograd.grad(conv(x).tanh().pow(2).mean(), conv.weight)[0]
    >>> torch.equal(fast, plain)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["weight_only_convolutions"]

_CONVOLUTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}  # F.convNd is torch.convNd
_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
Geometry = tuple[list[int], list[int], list[int], int]  # stride, padding, dilation, groups


def _spatial(value: int | Sequence[int], dims: int) -> list[int]:
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


class _WeightGradient(torch.autograd.Function):
    """``(dL/dW, dL/db)`` of a convolution from ``dL/dy`` (PyTorch's kernel), differentiable in ``dL/dy``."""

    @staticmethod
    def forward(
        grad_output: Tensor, x: Tensor, weight: Tensor, has_bias: bool, geometry: Geometry
    ) -> tuple[Tensor, Tensor | None]:
        stride, padding, dilation, groups = geometry
        bias_sizes = [weight.shape[0]] if has_bias else None
        mask = [False, True, has_bias]
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            x,
            weight,
            bias_sizes,
            stride,
            padding,
            dilation,
            False,
            [0] * (x.dim() - 2),
            groups,
            mask,
        )
        return grad_weight, grad_bias

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, x, _, _, geometry = inputs
        ctx.save_for_backward(x)
        ctx.geometry = geometry

    @staticmethod
    def backward(ctx: Any, gg_weight: Tensor | None, gg_bias: Tensor | None) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        dims = x.dim() - 2
        grad: Tensor | None = None
        if gg_weight is not None:  # as PyTorch's double backward: ggO = conv(x, ggW) (+ ggb)
            grad = torch.ops.aten.convolution(
                x, gg_weight, None, stride, padding, dilation, False, [0] * dims, groups
            )
        if gg_bias is not None:
            term = gg_bias.reshape([1, -1] + [1] * dims)
            grad = term if grad is None else grad + term
        return grad, None, None, None, None


class _DataConvolution(torch.autograd.Function):
    """A convolution whose input needs no gradient: its backward is :class:`_WeightGradient`."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:
        stride, padding, dilation, groups = geometry
        return torch.ops.aten.convolution(
            x, weight, bias, stride, padding, dilation, False, [0] * (x.dim() - 2), groups
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, geometry = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.has_bias = geometry, bias is not None

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        has_bias = ctx.has_bias and ctx.needs_input_grad[2]
        grad_weight, grad_bias = _WeightGradient.apply(grad_output, x, weight, has_bias, ctx.geometry)
        return None, grad_weight, grad_bias, None


def _transformed() -> bool:
    """Inside ``torch.func`` transforms or autocast: PyTorch's own path (its casts, its batching rules)."""
    return (
        torch._C._are_functorch_transforms_active()
        or torch.is_autocast_enabled("cpu")
        or torch.is_autocast_enabled("cuda")
    )


def _fast_path(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The call as a :class:`_DataConvolution`, or None where it does not apply."""
    dims = _CONVOLUTIONS.get(func)
    if dims is None or not torch.is_grad_enabled() or _transformed():
        return None
    given = {**dict(zip(_ARGUMENTS, args, strict=False)), **kwargs}
    x, weight, bias = given.get("input"), given.get("weight"), given.get("bias")
    padding = given.get("padding", 0)
    if (
        not isinstance(x, Tensor)
        or not isinstance(weight, Tensor)
        or x.requires_grad
        or not weight.requires_grad
        or isinstance(padding, str)
        or x.dim() != dims + 2  # an unbatched input: PyTorch's own path
    ):
        return None
    geometry = (
        _spatial(given.get("stride", 1), dims),
        _spatial(padding, dims),
        _spatial(given.get("dilation", 1), dims),
        int(given.get("groups", 1)),
    )
    return _DataConvolution.apply(x, weight, bias, geometry)


class weight_only_convolutions(TorchFunctionMode):  # noqa: N801 (used as a context manager, like no_grad)
    """Inside: a convolution of data that needs no gradient builds a graph without its input's
    gradient (see the module). The same values and first derivatives bit for bit; a curvature
    product through it skips the wasted transposed convolution.

    Example:
        >>> conv = torch.nn.Conv1d(2, 3, 3)
        >>> with weight_only_convolutions():
        ...     y = conv(torch.randn(5, 2, 8))
        >>> type(y.grad_fn).__name__
        '_DataConvolutionBackward'
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        fast = _fast_path(func, args, kwargs)
        return func(*args, **kwargs) if fast is None else fast
