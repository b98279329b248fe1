r"""The extreme eigenvalues of any operator by Lanczos, with full reorthogonalisation and thick restarts.

:func:`lanczos_eigenvalues` runs Lanczos from a seeded random start (or a given one), keeps every
basis vector orthogonal to the others (Gram-Schmidt, twice), and stops as soon as the ``k`` wanted
Ritz values have an estimated relative error below ``tol`` (and, from a random start, at least
``2k + 8`` products were made, so that a start poor in a wanted direction does not stop on the
next eigenvalue): from the residual
``r = |beta| |s_last|`` the bound ``min(r, r^2 / gap)`` (Kato-Temple; ``gap`` = the distance to the
nearest other Ritz value), divided by ``|theta|``; or after ``max_iter`` products, with a warning.

Memory: the basis holds at most ``max_basis`` vectors of ``op.size`` entries. By default that is as
many as fit in :data:`BASIS_BYTES` (1 GiB; at least ``2k + 4``), which is more than ``max_iter``
for models up to a few million parameters (no restart: plain Lanczos). Above, the run restarts
thickly (Wu & Simon 2000): the basis shrinks to the wanted Ritz vectors and their nearest
neighbours, coupled to the residual (an arrowhead), and Lanczos goes on from there. A resnet18
(11.7M parameters, float32: 47 MB a vector) keeps 22 vectors, 1 GiB, instead of ``max_iter``.

On a breakdown (the Krylov space is invariant: the start lay in an invariant subspace, or the
spectrum has repeated eigenvalues) the run goes on from a fresh random vector orthogonal to the
basis (a new block), unless the finished block's extreme value lies outside the wanted ones; and it
stops only once the new block's extreme Ritz value has converged too. So eigenvalues outside the
start's invariant subspace are found, and the copies of a repeated eigenvalue one block each.

Example:
    >>> import torch
    >>> from plugins.curvature.operator import DenseOperator
    >>> op = DenseOperator(torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64)))
    >>> [round(x, 9) for x in lanczos_eigenvalues(op, 3, tol=1e-10).tolist()]
    [20.0, 19.0, 18.0]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from plugins.curvature._checks import CurvatureError, check_eigen, check_start
from plugins.curvature._sampling import random_vector
from plugins.curvature.operator import CurvatureOperator

__all__ = ["BASIS_BYTES", "LanczosRun", "lanczos_eigenvalues", "lanczos_run"]

BASIS_BYTES = 2**30
"""Default memory for the Lanczos basis: above it, thick restarts keep the basis at this size."""

Which = Literal["largest", "smallest"]


class LanczosRun:
    """The state of a Lanczos run: the basis rows, the projected matrix ``T = V^T A V`` (float64,
    tridiagonal but for the arrowhead of a thick restart) and the coupling ``beta`` to the next vector.

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> ones = torch.ones(3, dtype=torch.float64)
        >>> run = lanczos_run(DenseOperator(torch.eye(3, dtype=torch.float64)), ones, 5, torch.Generator())
        >>> run.size, [round(x, 12) for x in run.ritz()[0].tolist()]
        (3, [1.0, 1.0, 1.0])
    """

    def __init__(self, capacity: int, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.capacity = capacity
        self.basis = torch.empty(min(capacity, 32), n, dtype=dtype, device=device)
        self.t = torch.zeros(capacity, capacity, dtype=torch.float64)
        self.size = 0  # vectors in use
        self.beta = 0.0  # coupling of the last vector to the next one (the residual norm)
        self.block = 0  # where the block since the last breakdown starts
        self.steps = 0  # products made
        self.coupling: Tensor | None = None  # the arrowhead of a thick restart, for the next step
        self.restarts = 0

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), their coefficient vectors in the basis, and their residual norms."""
        theta, s = torch.linalg.eigh(self.t[: self.size, : self.size])
        return theta, s, abs(self.beta) * s[-1].abs()

    def vectors(self, coefficients: Tensor) -> Tensor:
        """``coefficients^T V``: Ritz vectors as rows (``coefficients`` of shape ``(size, c)``)."""
        return coefficients.T.to(self.basis.dtype).to(self.basis.device) @ self.basis[: self.size]

    def append(self, v: Tensor) -> None:
        if self.size == self.basis.shape[0]:
            grown = torch.empty(
                min(2 * self.size, self.capacity), self.basis.shape[1], dtype=v.dtype, device=v.device
            )
            grown[: self.size] = self.basis
            self.basis = grown
        self.basis[self.size] = v
        self.size += 1

    def orthogonalise(self, w: Tensor) -> Tensor:
        """``w`` less its projection on the basis (Gram-Schmidt, twice: full reorthogonalisation)."""
        used = self.basis[: self.size]
        for _ in range(2):
            w -= used.T @ (used @ w)
        return w

    def restart(self, keep: Tensor) -> None:
        """Thick restart: the basis becomes the Ritz vectors of the columns ``keep``, ``T`` their
        Ritz values with the arrowhead coupling ``beta s_last`` to the next vector."""
        theta, s, _ = self.ritz()
        coefficients = s[:, keep].to(self.basis.dtype).to(self.basis.device)
        chunk = max(1, 2**24 // self.size)  # the new rows, a block of columns at a time: no second basis
        for c in range(0, self.basis.shape[1], chunk):
            self.basis[: len(keep), c : c + chunk] = coefficients.T @ self.basis[: self.size, c : c + chunk]
        coupling = self.beta * s[-1, keep]
        self.t.zero_()
        self.t[: len(keep), : len(keep)] = torch.diag(theta[keep])
        self.t[: len(keep), len(keep)] = self.t[len(keep), : len(keep)] = coupling
        self.size, self.block, self.coupling = len(keep), 0, coupling
        self.restarts += 1


def lanczos_run(
    op: CurvatureOperator,
    v0: Tensor,
    max_steps: int,
    generator: torch.Generator,
    done: Callable[[LanczosRun], bool] | None = None,
    max_basis: int | None = None,
    keep: Callable[[LanczosRun], Tensor] | None = None,
) -> LanczosRun:
    """Up to ``max_steps`` Lanczos steps from ``v0``; ``done`` is asked after each and may stop early.

    With ``max_basis < max_steps`` the basis restarts thickly when full, keeping the columns that
    ``keep`` chooses (default: plain Lanczos, the basis grows to ``max_steps``).

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> run = lanczos_run(DenseOperator(a), torch.ones(3, dtype=torch.float64), 3, torch.Generator())
        >>> [round(x, 12) for x in run.ritz()[0].tolist()]
        [1.0, 2.0, 3.0]
    """
    if max_basis is not None and keep is None:
        raise CurvatureError(
            "lanczos_run(max_basis=...) restarts thickly: pass keep=, the Ritz columns to keep"
        )
    max_steps = min(max_steps, op.size) if max_basis is None else max_steps
    capacity = min(max_steps, op.size) if max_basis is None else min(max_basis, op.size)
    run = LanczosRun(capacity, op.size, op.dtype, op.device)
    v = v0 / v0.norm()
    for _ in range(max_steps):
        j = run.size
        run.append(v)
        w = op.matvec(v)
        run.steps += 1
        alpha = float(w @ v)
        w -= alpha * v
        if run.coupling is not None:  # the first step after a thick restart: the arrowhead
            w -= run.basis[:j].T @ run.coupling.to(w.dtype).to(w.device)
            run.coupling = None
        elif j > run.block and run.beta:
            w -= run.beta * run.basis[j - 1]
            run.t[j - 1, j] = run.t[j, j - 1] = run.beta
        run.t[j, j] = alpha
        w = run.orthogonalise(w)
        beta = float(w.norm())
        scale = float(run.t[: j + 1, : j + 1].abs().sum(1).max())
        if beta <= 1e-10 * max(scale, 1e-30) or not math.isfinite(beta):  # an invariant subspace
            run.beta = 0.0
            if run.size == op.size or (done is not None and done(run)):
                break
            run.block = run.size
            w = run.orthogonalise(random_vector(op, generator))
            v = w / w.norm()
            if run.size == run.capacity and keep is not None:
                run.restart(keep(run))
            continue
        run.beta = beta
        if done is not None and done(run):
            break
        v = w / beta
        if run.size == run.capacity and keep is not None:
            run.restart(keep(run))
    return run


def _error_bounds(theta: Tensor, residuals: Tensor, cautious: bool = False) -> Tensor:
    """Error bounds of Ritz values: ``min(r, r**2 / gap)`` (Kato-Temple; gap to the other Ritz values).

    ``cautious`` (after thick restarts, when the few Ritz values left may sit far from the
    eigenvalues next to a wanted one): the gap to each other Ritz value less that value's residual,
    so an unconverged neighbour shrinks the gap instead of widening it.
    """
    if len(theta) == 1:
        return residuals
    distance = (theta[:, None] - theta[None, :]).abs()
    if cautious:
        distance = distance - residuals[None, :]
    gap = (distance + torch.diag(torch.full_like(theta, math.inf))).min(dim=1).values
    return torch.minimum(residuals, residuals**2 / gap.clamp_min(1e-300))


def _order(theta: Tensor, which: str) -> Tensor:
    return torch.argsort(theta, descending=which == "largest")


def _block_extreme(run: LanczosRun, which: str) -> tuple[float, float]:
    """The extreme Ritz value of the block since the last breakdown, and its residual norm."""
    theta, s = torch.linalg.eigh(run.t[run.block : run.size, run.block : run.size])
    i = int(_order(theta, which)[0])
    return float(theta[i]), abs(run.beta) * abs(float(s[-1, i]))


def default_basis(op: CurvatureOperator, k: int, max_iter: int) -> int:
    """Vectors the basis holds by default: ``max_iter`` if they fit in :data:`BASIS_BYTES`, else as
    many as fit (at least ``2k + 4``).

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> default_basis(DenseOperator(torch.eye(10)), k=2, max_iter=100)
        100
    """
    per_vector = op.size * torch.empty((), dtype=op.dtype).element_size()
    return max(min(max_iter, BASIS_BYTES // per_vector), 2 * k + 4)


def lanczos_eigenvalues(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: Which = "largest",
    tol: float = 1e-4,
    max_iter: int = 100,
    start: Tensor | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    max_basis: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) eigenvalues of a symmetric operator.

    Algebraic order: ``which="largest"`` gives them descending (``lambda_max`` first),
    ``which="smallest"`` ascending (the most negative first). The copies of an exactly repeated
    eigenvalue are found one per breakdown (see the module); a cluster of nearly equal ones needs
    the steps that resolve it, or ``max_iter`` warns.

    Args:
        op: any :class:`~plugins.curvature.operator.CurvatureOperator`.
        k: how many eigenvalues.
        which: ``"largest"`` or ``"smallest"``.
        tol: estimated relative eigenvalue error at which to stop.
        max_iter: the most products (Lanczos steps).
        start: the start vector (flat, ``op.size`` entries) instead of a seeded random one.
        seed: seed of the random start and of restart vectors.
        return_eigenvectors: also return the unit eigenvectors as the rows of a ``(k, size)`` tensor.
        max_basis: the most basis vectors held at once (``None``: :func:`default_basis`); fewer
            than ``max_iter`` turns on thick restarts.

    Returns:
        Eigenvalues as a float64 tensor of shape ``(k,)``; with ``return_eigenvectors`` a tuple
        ``(eigenvalues, eigenvectors)``.

    Raises:
        CurvatureError: for a bad ``k``, ``which``, ``tol``, ``max_iter`` or ``start``.

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> a = torch.diag(torch.tensor([-3.0, 1.0, 2.0, 5.0], dtype=torch.float64))
        >>> values, vectors = lanczos_eigenvalues(
        ...     DenseOperator(a), 1, which="smallest", return_eigenvectors=True
        ... )
        >>> round(float(values[0]), 10), vectors.abs().argmax().item()
        (-3.0, 0)
    """
    check_eigen(k, tol, max_iter, which, size=op.size)
    generator = torch.Generator().manual_seed(seed)
    if start is not None:
        start = start.reshape(-1).to(op.device, op.dtype)
        check_start(start, op.size)
    capacity = default_basis(op, k, max_iter) if max_basis is None else max(max_basis, k + 2)
    # error bounds say how close a Ritz value is to *some* eigenvalue, not that it is a wanted one:
    # a start nearly orthogonal to the top eigenvector converges to the next eigenvalue first (on
    # a 3 x 3 Wishart, stopping at step 2 missed lambda_max for 13 of 200 random starts). Taking
    # at least 2k + 8 products lets the Krylov polynomial bring the wanted direction up.
    min_steps = min(op.size, max_iter, 2 * k + 8) if start is None else k  # a given start is trusted

    def relative_errors(run: LanczosRun) -> Tensor:
        theta, _, residuals = run.ritz()
        wanted = _order(theta, which)[:k]
        floor = 1e-12 * float(theta.abs().max())
        bounds = _error_bounds(theta, residuals, cautious=run.restarts > 0)
        errors = bounds[wanted] / theta[wanted].abs().clamp_min(floor)
        if run.beta and 0 < run.block < run.size:  # after a breakdown: the open block's extreme too
            value, r = _block_extreme(run, which)
            errors = torch.cat([errors, torch.tensor([r / max(abs(value), floor)], dtype=torch.float64)])
        return errors

    def converged(run: LanczosRun) -> bool:
        if run.steps < min_steps or not bool((relative_errors(run) <= tol).all()):
            return False
        if run.beta:
            return True
        # a breakdown: the block just finished is invariant; if its extreme value is among the
        # wanted ones, the rest of the space may hold more copies of it: look on
        theta = run.ritz()[0]
        cutoff = float(theta[_order(theta, which)[k - 1]])
        value, _ = _block_extreme(run, which)
        return value < cutoff if which == "largest" else value > cutoff

    def keep(run: LanczosRun) -> Tensor:
        order = _order(run.ritz()[0], which)
        return order[: min(run.size - 1, k + (run.size - k) // 2)].sort().values

    v0 = random_vector(op, generator) if start is None else start
    run = lanczos_run(op, v0, max_iter, generator, converged, capacity if capacity < max_iter else None, keep)
    theta, s, _ = run.ritz()
    wanted = _order(theta, which)[:k]
    if run.steps < op.size and not converged(run):
        warnings.warn(
            f"lanczos_eigenvalues: Lanczos stopped at max_iter={max_iter} before the {k} wanted "
            f"eigenvalues reached tol={tol} (worst estimated relative error "
            f"{float(relative_errors(run).max()):.2g}): raise max_iter or tol",
            stacklevel=2,
        )
    if not return_eigenvectors:
        return theta[wanted]
    vectors = run.vectors(s[:, wanted])
    return theta[wanted], vectors.div_(vectors.norm(dim=1, keepdim=True))
