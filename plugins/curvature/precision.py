"""Full float32 arithmetic for curvature products, and a product replayed from a CUDA graph.

Example:
    >>> with ieee_float32():
    ...     torch.backends.cudnn.allow_tf32
    False
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

__all__ = ["ieee_float32", "replayed"]

Product = Callable[[list[Tensor]], list[Tensor]]


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Full float32 arithmetic on a GPU inside the block: no TF32 in cuDNN convolutions or matmuls.

    TF32 (cuDNN's default for convolutions on Ampere and later) keeps 10 mantissa bits, which moves
    Hessian eigenvalues by ~1e-4 relative; curvature is measured at full precision. No-op on CPU.

    Example:
        >>> with ieee_float32():
        ...     torch.get_float32_matmul_precision()
        'highest'
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(matmul)


def replayed(build: Callable[[], Product], params: list[Tensor]) -> Callable[[list[Tensor]], Tensor]:
    """``build()``'s product, captured once in a CUDA graph and replayed for every vector (flat out).

    A small model's Hessian-vector product on a GPU is bound by kernel launches (hundreds of small
    kernels); one graph replay launches them all at once. The loss graph is built on the capture
    stream, because autograd runs each backward kernel on its forward's stream. Where capture
    fails (an operation that syncs with the host, say), the plain product is used, with a warning.

    Example:
        >>> replayed.__name__  # needs a GPU; see tests/test_gpu.py
        'replayed'
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with ieee_float32(), torch.cuda.stream(stream):
        product = build()
        inputs = [torch.zeros_like(p) for p in params]
        for _ in range(2):  # warm-up: allocations and cuDNN's algorithm choice happen outside capture
            product(inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with ieee_float32(), torch.cuda.graph(graph, stream=stream):
            output = parameters_to_vector(product(inputs))
    except RuntimeError as error:
        warnings.warn(
            f"CUDA graph capture of the curvature product failed ({error}); using autograd", stacklevel=4
        )
        torch.cuda.synchronize()
        return lambda vs: parameters_to_vector(product(vs))

    def replay(vs: list[Tensor]) -> Tensor:
        for buffer, v in zip(inputs, vs, strict=True):
            buffer.copy_(v)
        graph.replay()
        return output.clone()

    return replay
