r"""Tanh in the Hessian's graphs: the half of its double backward that every product repeats, made once.

A Hessian-vector product differentiates the graph of the gradient. There, a layer ``y = tanh(z)``
contributes ``dL/dz = tanh_backward(dL/dy, y)``, and PyTorch's backward of that node computes, at
every product, ``tanh_backward(gg, y)`` for ``dL/dy`` and ``gg * (-2 * y * dL/dy)`` for ``y``:
the factor ``-2 * y * dL/dy`` is the same at every product (two of the three passes over the
layer's output). Inside :func:`tanh_factors` (a :class:`~torch.overrides.TorchFunctionMode`) a
``torch.tanh`` (``nn.Tanh``, ``Tensor.tanh``, ``F.tanh``) of a tensor that needs a gradient runs as
the same kernel, its backward as the same ``tanh_backward``, and the backward of that as PyTorch's
formula with the factor made at the first product and kept: the same numbers bit for bit (tested),
one pass over the layer's output fewer per product (LeNet-5's first tanh: 1.2M values at 256 digits).

The factor is kept only for products (backward passes run without a graph); a graph built through
the second backward (third derivatives) gets PyTorch's formula as it is. The Hessian operator builds
its graphs inside it (:class:`~plugins.curvature.hessian.HessianOperator`); the GGN does not (its
products never differentiate the gradient in ``y``).

Example:
    >>> import torch
    >>> z = torch.randn(3, 4, requires_grad=True)
    >>> with tanh_factors():
    ...     y = torch.tanh(z)
    ...     (g,) = torch.autograd.grad(y.pow(2).sum(), z, create_graph=True)
    >>> torch.equal(y, z.tanh()), type(g.grad_fn).__name__
    (True, '_TanhGradientBackward')
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from plugins.curvature.convolution import _transformed

__all__ = ["tanh_factors"]

_TANH = {torch.tanh, Tensor.tanh, torch.nn.functional.tanh}


class _TanhGradient(torch.autograd.Function):
    """``dL/dz = tanh_backward(dL/dy, y)``, whose backward keeps its constant factor for products."""

    @staticmethod
    def forward(grad_output: Tensor, y: Tensor) -> Tensor:
        return torch.ops.aten.tanh_backward(grad_output, y)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)
        ctx.factor = None

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> tuple[Tensor | None, Tensor | None]:
        grad_output, y = ctx.saved_tensors
        for_grad = torch.ops.aten.tanh_backward(gg, y) if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[1]:
            return for_grad, None
        if torch.is_grad_enabled():  # a graph of this backward: PyTorch's formula, differentiable
            return for_grad, gg * (-2 * y * grad_output)
        if ctx.factor is None:  # a product: the factor once, then kept with the graph
            ctx.factor = -2 * y * grad_output
        return for_grad, gg * ctx.factor


class _Tanh(torch.autograd.Function):
    """``tanh(z)`` whose backward is :class:`_TanhGradient`."""

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.tanh(z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _TanhGradient.apply(grad_output, y)


class tanh_factors(TorchFunctionMode):  # noqa: N801 (used as a context manager, like no_grad)
    """Inside: ``tanh`` of a tensor that needs a gradient keeps its double backward's constant
    factor for curvature products (see the module); values and derivatives are PyTorch's bit for bit.

    Example:
        >>> z = torch.randn(5, requires_grad=True)
        >>> with tanh_factors():
        ...     y = torch.nn.Tanh()(z)
        >>> type(y.grad_fn).__name__
        '_TanhBackward'
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if (
            func in _TANH
            and len(args) == 1
            and not kwargs
            and isinstance(args[0], Tensor)
            and args[0].requires_grad
            and args[0].dtype.is_floating_point
            and torch.is_grad_enabled()
            and not _transformed()
        ):
            return _Tanh.apply(args[0])
        return func(*args, **kwargs)
