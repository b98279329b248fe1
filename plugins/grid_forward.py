r"""The forwards of a loss-landscape grid, cheaper: the layers that read the data, and average pools.

A loss-landscape grid evaluates the model at ``theta = sum_k c_k theta_k`` for many coefficient
vectors ``c`` (the plane ``theta + a d_1 + b d_2``, the path ``(1 - alpha) theta_0 + alpha theta``).
A convolution or linear layer applied to the data itself is linear in its weight and bias:
``layer(x; sum_k c_k W_k, sum_k c_k b_k) = sum_k c_k layer(x; W_k, b_k)``. Inside
:class:`GridForward` such a call (``conv1d``/``conv2d``/``conv3d``/``linear`` whose input
is a tensor of the batch or a view of one, and whose weight and bias are trainable parameters) is
answered from the outputs ``layer(x; W_k, b_k)``, made once per basis element, combined with the
current point's coefficients: on LeNet-5 a grid point's first convolution (a third of its forward)
becomes two multiply-adds. The combination differs from the direct layer by float rounding only
(tests: 1e-6 relative in float32, 1e-12 in float64); the point with one coefficient ``1`` (the
centre) is the direct layer's output bit for bit. A point's arithmetic depends only on its own
coefficients, so a grid shared across ranks equals the grid of one process.

Inside it too, a CPU ``avg_pool2d`` whose stride is its kernel (no padding, no divisor override)
runs as the sum of the window's strided slices, in the window's row-major order, over the window's
size: the same additions as PyTorch's kernel (equal bit for bit: tested), in half its time on
LeNet-5's first pool (PyTorch's NCHW kernel is not vectorised over the window).

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(3, 2)
    >>> x = torch.randn(5, 3)
    >>> basis = [[p.detach().clone() for p in layer.parameters()], [torch.ones(2, 3), torch.zeros(2)]]
    >>> with torch.no_grad(), GridForward(list(layer.parameters()), basis, x) as combine:
    ...     combine.point = (1.0, 0.5)
    ...     y = layer(x)  # the weights themselves are not read: the basis and the point are
    >>> torch.allclose(y, x @ (basis[0][0] + 0.5).T + basis[0][1])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["CACHE_BYTES", "GridForward", "pool_window", "strided_average_pool"]

CACHE_BYTES = 2**28
"""The most memory the per-basis outputs may hold (256 MiB); beyond it layers run directly."""

_LAYERS = (torch.conv1d, torch.conv2d, torch.conv3d, torch.nn.functional.linear)
_POOL_ARGUMENTS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(isinstance(v, int) for v in value):
        return (value[0], value[-1])
    return None


def strided_average_pool(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """``avg_pool2d(x, kernel)`` (stride = kernel, no padding) as a sum of strided slices.

    Example:
        >>> x = torch.randn(2, 3, 6, 6)
        >>> torch.equal(strided_average_pool(x, (2, 2)), torch.nn.functional.avg_pool2d(x, 2))
        True
    """
    kh, kw = kernel
    h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    total: Tensor | None = None
    for i in range(kh):
        for j in range(kw):
            part = x[..., i:h:kh, j:w:kw]
            total = part if total is None else total + part
    assert total is not None
    return total / (kh * kw)


def pool_window(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The window of a call of ``avg_pool2d(*args, **kwargs)`` that :func:`strided_average_pool`
    computes bit for bit (CPU, float32/64, stride = kernel, no padding, no divisor override, no
    partial window), or None.

    Example:
        >>> pool_window((torch.ones(1, 4, 4), 2), {}), pool_window((torch.ones(1, 4, 4), 2, 1), {})
        ((2, 2), None)
    """
    given = {**dict(zip(_POOL_ARGUMENTS, args, strict=False)), **kwargs}
    x, kernel = given.get("input"), _pair(given.get("kernel_size"))
    stride = kernel if given.get("stride") in (None, [], ()) else _pair(given.get("stride"))
    if (
        not isinstance(x, Tensor)
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or x.dim() not in (3, 4)
        or kernel is None
        or stride != kernel
        or _pair(given.get("padding", 0)) != (0, 0)
        or given.get("divisor_override") is not None
        or x.shape[-2] < kernel[0]
        or x.shape[-1] < kernel[1]
        or (given.get("ceil_mode") and (x.shape[-2] % kernel[0] or x.shape[-1] % kernel[1]))
    ):
        return None
    return kernel


class GridForward(TorchFunctionMode):
    """Inside (under ``no_grad``): layers that read ``data`` give ``sum_k point[k] layer(x; basis[k])``.

    Args:
        params: the trainable parameters, aligned with each basis element.
        basis: weights ``theta_k``, each a list of tensors aligned with ``params``.
        data: the one batch the grid is evaluated on (its tensors are matched by identity).

    Set :attr:`point` (one coefficient per basis element) before each evaluation. A layer is
    answered from the basis only if its weight (and bias, if any) are among ``params``; every
    other call runs as it is.

    Example:
        >>> conv = torch.nn.Conv1d(1, 2, 3)
        >>> x = torch.randn(4, 1, 9)
        >>> theta = [p.detach().clone() for p in conv.parameters()]
        >>> with torch.no_grad(), GridForward(list(conv.parameters()), [theta], x) as combine:
        ...     combine.point = (2.0,)
        ...     twice = conv(x)
        >>> torch.allclose(twice, 2 * conv(x))
        True
    """

    def __init__(self, params: Sequence[Tensor], basis: Sequence[Sequence[Tensor]], data: Any) -> None:
        super().__init__()
        self.index = {id(p): j for j, p in enumerate(params)}
        self.basis = basis
        self.point: tuple[float, ...] = tuple(1.0 for _ in basis)
        # the storages the data lives in (a probe batch is often a slice of a data set), kept alive so
        # that their ids stay theirs; a view of one is the same data wherever its geometry is the same
        self.roots = [_root(t) for t in _tensors(data)]
        self.outputs: dict[tuple[Any, ...], list[Tensor]] = {}
        self.bytes, self.full = 0, False

    def _reads_data(self, x: Any) -> bool:
        return isinstance(x, Tensor) and any(_root(x) is root for root in self.roots)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            return func(*args, **kwargs)  # autocast's casts: PyTorch's own path
        if func is torch.nn.functional.avg_pool2d and not torch.is_grad_enabled():
            window = pool_window(args, kwargs)
            x = args[0] if args else kwargs["input"]
            return func(*args, **kwargs) if window is None else strided_average_pool(x, window)
        if func not in _LAYERS or torch.is_grad_enabled() or not args or not self._reads_data(args[0]):
            return func(*args, **kwargs)
        given = list(args) + [None] * (3 - len(args))
        weight = kwargs.get("weight", given[1])
        bias = kwargs.get("bias", given[2])
        j = self.index.get(id(weight))
        i = None if bias is None else self.index.get(id(bias))
        if j is None or (bias is not None and i is None) or self.full:
            return func(*args, **kwargs)
        x = args[0]
        others = tuple(id(a) if isinstance(a, Tensor) else a for a in args[3:])
        named = tuple(
            (k, id(v) if isinstance(v, Tensor) else v)
            for k, v in kwargs.items()
            if k not in ("weight", "bias")
        )
        geometry = (x.dtype, x.shape, x.stride(), x.storage_offset(), x._version)
        key = (func, id(_root(x)), geometry, j, i, others, named)
        outputs = self.outputs.get(key)
        if outputs is None:
            outputs = self._per_basis(func, args, kwargs, j, i)
            if outputs is None:
                return func(*args, **kwargs)
            self.outputs[key] = outputs
        terms: list[tuple[float, Tensor]] = [
            (c, y) for c, y in zip(self.point, outputs, strict=True) if c != 0
        ]
        if not terms:
            return torch.zeros_like(outputs[0])
        lead, first = terms[0]
        rest = terms[1:]
        if lead != 1:
            total = first * lead
        elif rest:  # 1 * y + c' y' in one pass
            total = torch.add(first, rest[0][1], alpha=rest[0][0])
            rest = rest[1:]
        else:
            total = first.clone()  # never the cached output itself: the model may change it in place
        for coefficient, output in rest:
            total.add_(output, alpha=coefficient)
        return total

    def _per_basis(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], j: int, i: int | None
    ) -> list[Tensor] | None:
        """``layer(x; W_k, b_k)`` for every basis element, or None if they would not fit the cache."""
        outputs: list[Tensor] = []
        for theta in self.basis:
            call_args, call_kwargs = list(args), dict(kwargs)
            for position, name, index in ((1, "weight", j), (2, "bias", i)):
                if index is None:
                    continue
                if name in call_kwargs:
                    call_kwargs[name] = theta[index]
                else:
                    call_args[position] = theta[index]
            out = func(*call_args, **call_kwargs)
            if not outputs and self.bytes + len(self.basis) * out.numel() * out.element_size() > CACHE_BYTES:
                self.full = True  # this layer and any later one run directly
                return None
            outputs.append(out)
        self.bytes += sum(out.numel() * out.element_size() for out in outputs)
        return outputs


def _root(t: Tensor) -> Tensor:
    """The tensor that owns ``t``'s memory: ``t`` itself, or the tensor it is a view of."""
    return t if t._base is None else t._base


def _tensors(data: Any) -> list[Tensor]:
    found: list[Tensor] = []
    apply_to_collection(data, Tensor, found.append)
    return found
