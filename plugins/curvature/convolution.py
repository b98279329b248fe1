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

With ``columns=True`` (the operators' setting), a CPU 2-D convolution of the data (``groups=1``)
also keeps the data unfolded (im2col, with a row of ones for the bias; at most
:data:`COLUMNS_BYTES`), made at the first product: the products, the backward passes run without a
graph, then get ``conv(x, ggW) + ggb`` and ``(dL/dW, dL/db)`` as one batched matrix product each
instead of a convolution and its backward. oneDNN's kernels are slow for few input channels: on
LeNet-5's first layer (1 channel, 256 digits) the two take 7 ms in place of 12 of a 57 ms product.
The graph's own values (the output, the gradient) stay PyTorch's bit for bit; a product differs by
float rounding (tests: 1e-5 relative in float32, 1e-12 in float64).

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
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["COLUMNS_BYTES", "weight_only_convolutions"]

COLUMNS_BYTES = 2**26
"""The most memory one convolution's unfolded data may take (64 MiB); beyond it products convolve."""

_CONVOLUTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}  # F.convNd is torch.convNd
_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
Geometry = tuple[list[int], list[int], list[int], int]  # stride, padding, dilation, groups


def _spatial(value: int | Sequence[int], dims: int) -> list[int]:
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


class _Columns:
    """A 2-D convolution's data unfolded (im2col) as ``(N, C kh kw [+ 1], L)``, the last row ones
    where there is a bias; made when first asked for (a product), then kept with the graph."""

    def __init__(self, x: Tensor, weight: Tensor, has_bias: bool, geometry: Geometry) -> None:
        self.x, self.kernel, self.has_bias, self.geometry = x, tuple(weight.shape[2:]), has_bias, geometry
        self.out_channels = weight.shape[0]
        self.matrix: Tensor | None = None

    @staticmethod
    def fit(x: Tensor, weight: Tensor, has_bias: bool, geometry: Geometry) -> bool:
        """Whether the unfolded data of this call pays and fits: CPU, 2-D, ``groups=1``, float."""
        stride, padding, dilation, groups = geometry
        if x.device.type != "cpu" or x.dim() != 4 or groups != 1 or not x.dtype.is_floating_point:
            return False
        sizes = [
            (x.shape[2 + d] + 2 * padding[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1) // stride[d] + 1
            for d in range(2)
        ]
        rows = weight[0].numel() + int(has_bias)
        return min(sizes) > 0 and x.shape[0] * rows * sizes[0] * sizes[1] * x.element_size() <= COLUMNS_BYTES

    def get(self) -> Tensor:
        if self.matrix is None:
            stride, padding, dilation, _ = self.geometry
            with torch.no_grad():
                cols = F.unfold(
                    self.x,
                    self.kernel,
                    dilation=tuple(dilation),
                    padding=tuple(padding),
                    stride=tuple(stride),
                )
                if self.has_bias:
                    cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1, cols.shape[2])], 1)
            self.matrix = cols
        return self.matrix

    def convolve(self, gg_weight: Tensor | None, gg_bias: Tensor | None, out_shape: Sequence[int]) -> Tensor:
        """``conv(x, ggW) + ggb`` (either may be None: zeros) as one batched matrix product."""
        cols = self.get()
        parts = [
            gg_weight.reshape(self.out_channels, -1)
            if gg_weight is not None
            else cols.new_zeros(self.out_channels, cols.shape[1] - int(self.has_bias))
        ]
        if self.has_bias:
            parts.append((gg_bias if gg_bias is not None else cols.new_zeros(self.out_channels))[:, None])
        return torch.matmul(torch.cat(parts, 1).to(cols.dtype), cols).view(out_shape)

    def gradients(self, grad_output: Tensor, weight_shape: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """``(dL/dW, dL/db)`` from ``dL/dy`` as one batched matrix product (summed over the batch)."""
        cols = self.get()
        g = grad_output.reshape(grad_output.shape[0], self.out_channels, -1)
        both = torch.bmm(g, cols.transpose(1, 2)).sum(0)
        if not self.has_bias:
            return both.view(weight_shape), None
        return both[:, :-1].reshape(weight_shape), both[:, -1].contiguous()


class _WeightGradient(torch.autograd.Function):
    """``(dL/dW, dL/db)`` of a convolution from ``dL/dy`` (PyTorch's kernel), differentiable in ``dL/dy``."""

    @staticmethod
    def forward(
        grad_output: Tensor,
        x: Tensor,
        weight: Tensor,
        has_bias: bool,
        geometry: Geometry,
        columns: _Columns | None = None,
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
        grad_output, x, _, _, geometry, columns = (*inputs, None)[:6]
        ctx.save_for_backward(x)
        ctx.geometry, ctx.columns, ctx.out_shape = geometry, columns, grad_output.shape

    @staticmethod
    def backward(ctx: Any, gg_weight: Tensor | None, gg_bias: Tensor | None) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        dims = x.dim() - 2
        nothing = (None,) * 5
        if (
            ctx.columns is not None
            and not torch.is_grad_enabled()
            and (gg_weight is not None or gg_bias is not None)
        ):
            return ctx.columns.convolve(gg_weight, gg_bias, ctx.out_shape), *nothing
        grad: Tensor | None = None
        if gg_weight is not None:  # as PyTorch's double backward: ggO = conv(x, ggW) (+ ggb)
            grad = torch.ops.aten.convolution(
                x, gg_weight, None, stride, padding, dilation, False, [0] * dims, groups
            )
        if gg_bias is not None:
            term = gg_bias.reshape([1, -1] + [1] * dims)
            grad = term if grad is None else grad + term
        return grad, *nothing


class _DataConvolution(torch.autograd.Function):
    """A convolution whose input needs no gradient: its backward is :class:`_WeightGradient`."""

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry, columns: bool = False
    ) -> Tensor:
        stride, padding, dilation, groups = geometry
        return torch.ops.aten.convolution(
            x, weight, bias, stride, padding, dilation, False, [0] * (x.dim() - 2), groups
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias, geometry, columns = (*inputs, False)[:5]
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.has_bias = geometry, bias is not None
        has_bias = bias is not None and bias.requires_grad
        fits = columns and _Columns.fit(x, weight, has_bias, geometry)
        ctx.columns = _Columns(x, weight, has_bias, geometry) if fits else None

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        has_bias = ctx.has_bias and ctx.needs_input_grad[2]
        columns = ctx.columns if ctx.columns is not None and ctx.columns.has_bias == has_bias else None
        if columns is not None and not torch.is_grad_enabled():  # a product: no graph of it is kept
            grad_weight, grad_bias = columns.gradients(grad_output, weight.shape)
        else:  # the gradient whose graph the products differentiate: PyTorch's kernel, bit for bit
            grad_weight, grad_bias = _WeightGradient.apply(
                grad_output, x, weight, has_bias, ctx.geometry, columns
            )
        return None, grad_weight, grad_bias, None, None


def _transformed() -> bool:
    """Inside ``torch.func`` transforms or autocast: PyTorch's own path (its casts, its batching rules)."""
    return (
        torch._C._are_functorch_transforms_active()
        or torch.is_autocast_enabled("cpu")
        or torch.is_autocast_enabled("cuda")
    )


def _fast_path(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], columns: bool = False
) -> Tensor | None:
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
    return _DataConvolution.apply(x, weight, bias, geometry, columns)


class weight_only_convolutions(TorchFunctionMode):  # noqa: N801 (used as a context manager, like no_grad)
    """Inside: a convolution of data that needs no gradient builds a graph without its input's
    gradient (see the module). The same values and first derivatives bit for bit; a curvature
    product through it skips the wasted transposed convolution.

    Args:
        columns: on a CPU, products (backward passes run without a graph) multiply the unfolded
            data of a 2-D convolution instead of convolving it (see the module): float rounding
            apart, the same products.

    Example:
        >>> conv = torch.nn.Conv1d(2, 3, 3)
        >>> with weight_only_convolutions():
        ...     y = conv(torch.randn(5, 2, 8))
        >>> type(y.grad_fn).__name__
        '_DataConvolutionBackward'
    """

    def __init__(self, columns: bool = False) -> None:
        super().__init__()
        self.columns = columns

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        fast = _fast_path(func, args, kwargs, self.columns)
        return func(*args, **kwargs) if fast is None else fast
