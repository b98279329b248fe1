"""The diagonal of any operator by Diag++ (Hutchinson's diagonal estimator with a sketched subspace
taken out exactly, Baston & Nakatsukasa 2022), with a standard error per entry.

A third of the products sketch ``Q = orth(A S)``; ``diag(Q Q^T A)`` is exact from ``A Q`` (another
third); the rest estimate ``diag((I - QQ^T) A)`` as the mean of ``g * (I - QQ^T) A g`` over
Rademacher vectors ``g``, each entry with the standard error of its mean. With
``matvecs >= 3 size`` the estimate is exact.

Example:
    >>> import torch
    >>> from plugins.curvature.operator import DenseOperator
    >>> a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> [round(x, 12) for x in diagonal_estimate(DenseOperator(a), 6).estimate.tolist()]
    [2.0, 3.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from plugins.curvature._checks import check_matvecs
from plugins.curvature._sampling import random_vector, sketch
from plugins.curvature.operator import CurvatureOperator

__all__ = ["DiagonalEstimate", "diagonal_estimate"]


@dataclass
class DiagonalEstimate:
    """A diagonal estimate and the standard error of each entry.

    Attributes:
        estimate: the estimated diagonal, a flat tensor of ``size`` entries.
        std_error: one standard error per entry (0 where exact).
        num_matvecs: operator products spent.

    Example:
        >>> DiagonalEstimate(torch.ones(2), torch.zeros(2), 6).estimate.tolist()
        [1.0, 1.0]
    """

    estimate: Tensor
    std_error: Tensor
    num_matvecs: int


def diagonal_estimate(op: CurvatureOperator, matvecs: int = 30, *, seed: int = 0) -> DiagonalEstimate:
    """The diagonal of ``op`` from ``matvecs`` products (at least 6), by Diag++.

    Args:
        op: any :class:`~plugins.curvature.operator.CurvatureOperator`.
        matvecs: products to spend.
        seed: seed of the random vectors.

    Raises:
        CurvatureError: ``matvecs < 6``.

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> d = diagonal_estimate(DenseOperator(torch.diag(torch.arange(5.0, dtype=torch.float64))), 15)
        >>> [round(x, 12) for x in d.estimate.tolist()], float(d.std_error.max())
        ([0.0, 1.0, 2.0, 3.0, 4.0], 0.0)
    """
    check_matvecs(matvecs, "Diag++")
    before = op.num_matvecs
    generator = torch.Generator().manual_seed(seed)
    q = sketch(op, generator, min(matvecs // 3, op.size))
    aq = torch.stack([op.matvec(q[:, i]) for i in range(q.shape[1])], 1)
    exact = (q * aq).sum(1)  # diag(Q (A Q)^T) = diag(Q Q^T A), A symmetric
    zeros = torch.zeros_like(exact)
    samples = []
    if q.shape[1] < op.size:
        for _ in range(matvecs - 2 * q.shape[1]):
            g = random_vector(op, generator, rademacher=True)
            ag = op.matvec(g)
            samples.append(g * (ag - q @ (q.T @ ag)))
    if not samples:
        return DiagonalEstimate(exact, zeros, op.num_matvecs - before)
    stacked = torch.stack(samples)
    error = stacked.std(0) / math.sqrt(len(samples)) if len(samples) > 1 else zeros
    return DiagonalEstimate(exact + stacked.mean(0), error, op.num_matvecs - before)
