r"""Average pools in the curvature graphs as strided sums: the same numbers, in less CPU time.

PyTorch's CPU ``avg_pool2d`` and its backward (NCHW) are not vectorised over the window: on
LeNet-5 the first pool, its backward and its double backward took about a fifth of a
Hessian-vector product. Where the stride is the kernel (no padding, no divisor override: LeNet's
pools), the pool is a sum of the window's strided slices over the window's size, its backward a
strided spread of ``g / size`` into the window, and the backward's backward the pool again: the
same operations as PyTorch's kernels, equal bit for bit (tested), in a third to a half of the time.

:func:`strided_pools` (a :class:`~torch.overrides.TorchFunctionMode`) makes such CPU calls these
operations; every other call passes through. The operators build their graphs inside it.

Example:
    >>> import torch
    >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
    >>> with strided_pools():
    ...     y = torch.nn.functional.avg_pool2d(x, 2)
    >>> torch.equal(y, torch.nn.functional.avg_pool2d(x, 2)), type(y.grad_fn).__name__
    (True, '_AveragePoolBackward')
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from plugins.curvature.convolution import _transformed
from plugins.grid_forward import pool_window, strided_average_pool

__all__ = ["strided_pools"]


def spread(g: Tensor, shape: torch.Size, kernel: tuple[int, int]) -> Tensor:
    """The backward of :func:`strided_average_pool`: ``g / size`` into every place of its window.

    Example:
        >>> spread(torch.ones(1, 1, 1, 1), torch.Size([1, 1, 2, 3]), (2, 2)).tolist()
        [[[[0.25, 0.25, 0.0], [0.25, 0.25, 0.0]]]]
    """
    kh, kw = kernel
    h, w = g.shape[-2] * kh, g.shape[-1] * kw
    fits = shape[-2] == h and shape[-1] == w
    out = g.new_empty(shape) if fits else g.new_zeros(shape)
    share = g / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            out[..., i:h:kh, j:w:kw] = share
    return out


class _AveragePool(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, kernel: tuple[int, int]) -> Tensor:
        return strided_average_pool(x, kernel)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.shape, ctx.kernel = inputs[0].shape, inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None]:
        return _Spread.apply(g, ctx.shape, ctx.kernel), None


class _Spread(torch.autograd.Function):
    @staticmethod
    def forward(g: Tensor, shape: torch.Size, kernel: tuple[int, int]) -> Tensor:
        return spread(g, shape, kernel)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.kernel = inputs[2]

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> tuple[Tensor | None, None, None]:
        return _AveragePool.apply(gg, ctx.kernel), None, None


class strided_pools(TorchFunctionMode):  # noqa: N801 (used as a context manager, like no_grad)
    """Inside: CPU average pools with stride = kernel (and their derivatives) as strided sums.

    Example:
        >>> with strided_pools():
        ...     y = torch.nn.functional.avg_pool2d(torch.ones(1, 4, 4, requires_grad=True), 2, stride=1)
        >>> type(y.grad_fn).__name__  # overlapping windows: PyTorch's own
        'AvgPool2DBackward0'
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.avg_pool2d and not _transformed():
            window = pool_window(args, kwargs)
            if window is not None:
                return _AveragePool.apply(args[0] if args else kwargs["input"], window)
        return func(*args, **kwargs)
