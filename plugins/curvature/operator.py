"""The one interface every curvature matrix offers, and a dense matrix behind it.

An operator is a symmetric ``size x size`` matrix known only through its products: ``matvec``
(one flat vector), ``matmat`` (the columns of a matrix; the model operators make one product per
column, :class:`DenseOperator` one matrix product), ``size``, ``dtype``, ``device`` and the count
``num_matvecs`` of products made. Every algorithm of the package (Lanczos, Hutch++, SLQ, the
diagonal) takes any operator, so each is tested on plain matrices of known spectrum first.

Example:
    >>> import torch
    >>> op = DenseOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    >>> (op @ torch.ones(3, dtype=torch.float64)).tolist(), op.size, op.num_matvecs
    ([1.0, 2.0, 3.0], 3, 1)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from plugins.curvature._checks import CurvatureError

__all__ = ["CurvatureOperator", "DenseOperator"]


class CurvatureOperator(ABC):
    """A symmetric linear operator on flat vectors of length ``size``.

    Subclasses set ``size``, ``dtype`` and ``device`` and implement :meth:`_matvec`; they may
    override :meth:`_matmat` where several vectors at once cost less than one at a time.

    Example:
        >>> class Twice(CurvatureOperator):
        ...     size, dtype, device = 2, torch.float32, torch.device("cpu")
        ...     def _matvec(self, v):
        ...         return 2 * v
        >>> Twice().matmat(torch.eye(2)).tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """

    size: int
    dtype: torch.dtype
    device: torch.device
    num_matvecs: int = 0

    @abstractmethod
    def _matvec(self, v: Tensor) -> Tensor:
        """``A v`` for a flat ``v`` of length ``size``."""

    def _matmat(self, m: Tensor) -> Tensor:
        return torch.stack([self._matvec(column) for column in m.T], dim=1)

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for a flat vector ``v`` (counted in ``num_matvecs``)."""
        self.num_matvecs += 1
        return self._matvec(v)

    def matmat(self, m: Tensor) -> Tensor:
        """``A M`` for a ``(size, c)`` matrix ``M`` (``c`` products in ``num_matvecs``)."""
        self.num_matvecs += m.shape[1]
        return self._matmat(m)

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matvec(x) if x.dim() == 1 else self.matmat(x)


class DenseOperator(CurvatureOperator):
    """A symmetric matrix held as a tensor: the operator of tests and of small exact cases.

    Args:
        matrix: a square symmetric tensor (checked to 1e-6 of its largest entry).

    Raises:
        CurvatureError: if ``matrix`` is not square or not symmetric.

    Example:
        >>> a = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> DenseOperator(a).matmat(torch.eye(2)).equal(a)
        True
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise CurvatureError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        if not torch.allclose(matrix, matrix.T, rtol=0, atol=1e-6 * float(matrix.abs().max())):
            raise CurvatureError("DenseOperator needs a symmetric matrix: pass (A + A.T) / 2")
        self.matrix = matrix
        self.size, self.dtype, self.device = matrix.shape[0], matrix.dtype, matrix.device
        self.num_matvecs = 0

    def _matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def _matmat(self, m: Tensor) -> Tensor:
        return self.matrix @ m
