"""The trace of any operator by Hutch++ (Meyer, Musco, Musco & Woodruff 2021), with its standard error.

A third of the products sketch the dominant subspace ``Q = orth(A S)`` (whose trace ``tr(Q^T A Q)``
is exact), the rest run Hutchinson with Rademacher vectors on the deflated remainder
``(I - QQ^T) A (I - QQ^T)``; the standard error is that of the Hutchinson average. With
``matvecs >= 3 size`` the sketch spans everything and the trace is exact (standard error 0).

Example:
    >>> import torch
    >>> from plugins.curvature.operator import DenseOperator
    >>> op = DenseOperator(torch.diag(torch.arange(4.0, dtype=torch.float64)))
    >>> hutchpp_trace(op, 12).estimate
    6.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from plugins.curvature._checks import check_matvecs
from plugins.curvature._sampling import random_vector, sketch
from plugins.curvature.operator import CurvatureOperator

__all__ = ["TraceEstimate", "hutchpp_trace"]


@dataclass
class TraceEstimate:
    """A trace estimate and its standard error.

    Attributes:
        estimate: the estimated trace.
        std_error: one standard error of the estimate (0 when it is exact).
        num_matvecs: operator products spent.

    Example:
        >>> TraceEstimate(estimate=3.0, std_error=0.1, num_matvecs=30).estimate
        3.0
    """

    estimate: float
    std_error: float
    num_matvecs: int


def hutchpp_trace(op: CurvatureOperator, matvecs: int = 30, *, seed: int = 0) -> TraceEstimate:
    """The trace of ``op`` from ``matvecs`` products (at least 6), by Hutch++.

    Args:
        op: any :class:`~plugins.curvature.operator.CurvatureOperator`.
        matvecs: products to spend.
        seed: seed of the random vectors.

    Raises:
        CurvatureError: ``matvecs < 6``.

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> a = torch.randn(50, 50, dtype=torch.float64)
        >>> t = hutchpp_trace(DenseOperator(a @ a.T), 30)
        >>> abs(t.estimate - float(torch.trace(a @ a.T))) < 5 * t.std_error
        True
    """
    check_matvecs(matvecs)
    before = op.num_matvecs
    generator = torch.Generator().manual_seed(seed)
    q = sketch(op, generator, min(matvecs // 3, op.size))
    exact = sum(float(q[:, i] @ op.matvec(q[:, i])) for i in range(q.shape[1]))
    samples = []
    if q.shape[1] < op.size:
        for _ in range(matvecs - 2 * q.shape[1]):
            g = random_vector(op, generator, rademacher=True)
            g -= q @ (q.T @ g)
            samples.append(float(g @ op.matvec(g)))
    rest = float(np.mean(samples)) if samples else 0.0
    error = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else 0.0
    return TraceEstimate(estimate=exact + rest, std_error=error, num_matvecs=op.num_matvecs - before)
