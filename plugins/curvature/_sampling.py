"""Random vectors for the randomised algorithms, drawn on the CPU from a seeded generator.

Drawn on the CPU so that every DDP rank (and every device) draws the same numbers from the same
seed; the model's own RNG streams are never touched.

Example:
    >>> import torch
    >>> from plugins.curvature.operator import DenseOperator
    >>> op = DenseOperator(torch.eye(4))
    >>> sorted(set(random_vector(op, torch.Generator().manual_seed(0), rademacher=True).tolist()))
    [-1.0, 1.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from plugins.curvature.operator import CurvatureOperator

__all__ = ["random_vector", "sketch"]


def random_vector(op: CurvatureOperator, generator: torch.Generator, rademacher: bool = False) -> Tensor:
    """A Gaussian (or Rademacher: entries +-1) vector of ``op.size`` entries on ``op``'s device."""
    if rademacher:
        v = torch.randint(0, 2, (op.size,), generator=generator).to(op.dtype) * 2 - 1
    else:
        v = torch.randn(op.size, generator=generator, dtype=op.dtype)
    return v.to(op.device)


def sketch(op: CurvatureOperator, generator: torch.Generator, count: int) -> Tensor:
    """``Q = orth(A S)``: an orthonormal ``(size, count)`` basis of ``op`` applied to ``count``
    Rademacher vectors (the dominant subspace that Hutch++ and Diag++ take out exactly).

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> q = sketch(DenseOperator(torch.eye(5, dtype=torch.float64)), torch.Generator(), 2)
        >>> torch.allclose(q.T @ q, torch.eye(2, dtype=torch.float64))
        True
    """
    columns = [op.matvec(random_vector(op, generator, rademacher=True)) for _ in range(count)]
    q, _ = torch.linalg.qr(torch.stack(columns, 1).double())
    return q.to(op.dtype)
