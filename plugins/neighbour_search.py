"""Exact ``k``-nearest-neighbour distances in float64 at about half the float64 work.

:func:`squared_neighbour_distances` returns the ``k`` smallest squared distances of each row of a
float64 matrix to the other rows, as ``sq_i + sq_j - 2 <x_i, x_j>`` in float64 (the formula of a
float64 Gram matrix), without computing the whole float64 Gram matrix:

1. a float32 Gram matrix (twice float64's rate on the CPU) gives, for every pair, a lower bound
   ``A_ij <= |x_i - x_j|^2`` and an upper bound ``A_ij + 2 beta S_ij`` (``S_ij = sq_i + sq_j``), from
   the rounding-error bound of any float32 dot product of length ``D``
   (``beta = 1.01 (D + 8) 2^-24 / (1 - (D + 8) 2^-24)``: the rounding of the data to float32, of the
   products' sum in any order, and of the three additions);
2. ``k`` columns of a row (the smallest of as many column blocks) bound its ``k``-th distance from
   above by ``U_i``; every column whose lower bound is at most ``U_i`` (plus twice float64's own
   error bound) is a candidate, so the ``k`` nearest neighbours, ties included, are among them:
   a column outside has a float64 distance larger than ``k`` candidates' ones;
3. the candidates' distances are computed in float64 (each pair once, as a sampled product) and
   the ``k`` smallest kept.

The result equals the ``k`` smallest values of the whole float64 distance matrix to float64's own
rounding (a few ``1e-16`` of ``S_ij``): the neighbour sets are provably the same, and the distances
differ only by how a float64 dot product is summed. The search runs on the CPU with IEEE float32
matrix products (``torch.get_float32_matmul_precision() == "highest"``); elsewhere, or for data
that is not finite, :func:`squared_neighbour_distances` computes the whole float64 matrix.

Example:
    >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    >>> squared_neighbour_distances(x - x.mean(0), 2).tolist()
    [[1.0, 9.0], [1.0, 4.0], [4.0, 9.0], [16.0, 36.0]]
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["gram", "squared_neighbour_distances", "screening_applies"]

UNIT_ROUNDOFF_32 = 2.0**-24
UNIT_ROUNDOFF_64 = 2.0**-53
BLOCK_COLUMNS = 16
"""Columns per block whose minimum bounds a row's ``k``-th distance (at most ``n // k``)."""


def gram(flat: Tensor, other: Tensor | None = None, blocks: int = 4) -> Tensor:
    """``flat @ other.T`` for ``other`` a multiple of ``flat`` (default ``flat`` itself): a symmetric
    matrix, its upper block triangle computed and mirrored (10 of 16 blocks: 62% of the work). Each
    entry is the same dot product as in the whole product (on MKL bitwise so).

    Example:
        >>> x = torch.randn(6, 3, dtype=torch.float64)
        >>> torch.equal(gram(x), x @ x.T), torch.equal(gram(x, -2 * x), x @ (-2 * x).T)
        (True, True)
    """
    other = flat if other is None else other
    n = len(flat)
    if n < 256 * blocks or flat.shape[1] < 512:  # small products: the blocks would cost more
        return flat @ other.T
    out = torch.empty(n, n, dtype=flat.dtype, device=flat.device)
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    for i in range(blocks):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, blocks):
            cols = slice(edges[j], edges[j + 1])
            torch.mm(flat[rows], other[cols].T, out=out[rows, cols])
            if j > i:
                out[cols, rows] = out[rows, cols].T
    return out


def screening_applies(flat: Tensor, k: int, sq: Tensor) -> bool:
    """Whether :func:`squared_neighbour_distances` screens with float32 (else: the float64 matrix):
    CPU data, IEEE float32 products, finite nonzero squared norms ``sq`` (so finite data), and
    rows enough for the column blocks to pay.

    Example:
        >>> x = torch.randn(500, 10, dtype=torch.float64)
        >>> screening_applies(x, 20, (x**2).sum(1)), screening_applies(x.cuda() if torch.cuda.is_available()
        ...     else x[:50], 20, (x**2).sum(1))
        (True, False)
    """
    n, d = flat.shape
    top = float(sq.max()) if n else 0.0
    return (
        flat.device.type == "cpu"
        and torch.get_float32_matmul_precision() == "highest"
        and n >= 4 * (k + 1)
        and (d + 8) * UNIT_ROUNDOFF_32 < 0.01
        and 0 < top < math.inf
        and bool(torch.isfinite(sq).all())
    )


def _float64_search(flat: Tensor, sq: Tensor, k: int, chunk_elements: int = 2**24) -> Tensor:
    """The ``k`` smallest of ``sq_i + sq_j - 2 <x_i, x_j>`` per row from the whole float64 matrix,
    ``chunk_elements`` entries at a time."""
    n = len(flat)
    rows = max(1, chunk_elements // n)
    out = []
    for begin in range(0, n, rows):
        block = flat[begin : begin + rows]
        d2 = (gram(flat) if len(block) == n else block @ flat.T).mul_(-2)
        d2.add_(sq[begin : begin + rows, None] + sq[None, :])
        d2[torch.arange(len(block)), torch.arange(begin, begin + len(block))] = math.inf
        out.append(d2.topk(k, dim=1, largest=False).values)
    return torch.cat(out)


def squared_neighbour_distances(
    flat: Tensor, k: int, sq: Tensor | None = None, chunk_elements: int = 2**24
) -> Tensor:
    """``(n, k)``: the ``k`` smallest ``sq_i + sq_j - 2 <x_i, x_j>`` (float64) of each row ``i`` of the
    float64 matrix ``flat`` over the other rows ``j``, ascending (``sq``: the rows' squared norms,
    ``(flat**2).sum(1)`` unless given); at most ``chunk_elements`` pairs are held at once. Centre
    the rows first for accuracy.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(300, 40, generator=g, dtype=torch.float64)
        >>> x = x - x.mean(0)
        >>> d2 = torch.cdist(x, x).pow(2).fill_diagonal_(math.inf)
        >>> torch.allclose(squared_neighbour_distances(x, 5), d2.topk(5, largest=False).values, rtol=1e-12)
        True
    """
    if sq is None:
        sq = (flat**2).sum(1)
    if not screening_applies(flat, k, sq):
        return _float64_search(flat, sq, k, chunk_elements)
    rows, cols = _candidates(flat, sq, k, chunk_elements)
    exact = _sampled_distances(flat, sq, rows, cols)
    n = len(flat)
    counts = torch.bincount(rows, minlength=n)
    if int(counts.min()) < k:  # impossible by the bounds; kept as a guard
        return _float64_search(flat, sq, k, chunk_elements)
    starts = counts.cumsum(0) - counts
    table = torch.full((n, int(counts.max())), math.inf, dtype=flat.dtype)
    table[rows, torch.arange(len(rows)) - starts[rows]] = exact
    return table.topk(k, dim=1, largest=False).values


def _candidates(flat: Tensor, sq: Tensor, k: int, chunk_elements: int) -> tuple[Tensor, Tensor]:
    """The pairs ``(i, j)`` (``i`` ascending) among which each row's ``k`` nearest neighbours lie,
    ties and float64's rounding included (the module's steps 1 and 2)."""
    n, d = flat.shape
    # the data scaled by a power of two (exact) so that every row's norm is below 1: float32 cannot
    # overflow, and what falls below its normal range costs at most ``tiny``
    scale = 2.0 ** -math.frexp(math.sqrt(float(sq.max())))[1]
    c = (d + 10) * UNIT_ROUNDOFF_32
    beta = 1.01 * c / (1 - c)
    slack64 = 4.04 * (d + 8) * UNIT_ROUNDOFF_64  # twice float64's error bound on a distance
    tiny = 4.0 * d * 2.0**-126
    sq_scaled = sq * scale**2
    weights = ((1 - beta) * sq_scaled).float()
    low32 = flat.float().mul_(scale)
    # column blocks: block b holds the columns b, b + blocks, b + 2 blocks, ... (width of them)
    width = max(1, min(BLOCK_COLUMNS, n // (k + 1)))
    blocks = n // width
    tail = width * blocks  # the columns from here on belong to no block: always tested
    block_sq = sq_scaled[:tail].view(width, blocks).amax(0)
    step = max(1, chunk_elements // n)
    found_rows, found_cols = [], []
    for begin in range(0, n, step):
        end = min(n, begin + step)
        # lower bounds A_ij = fl(fl(fl(-2 s_ij) + w_j) + w_i), w = (1 - beta) sq: A_ij <= |x_i - x_j|^2
        lower = gram(low32, -2 * low32) if end - begin == n else low32[begin:end] @ (-2 * low32).T
        lower.add_(weights[None, :]).add_(weights[:, None] if end - begin == n else weights[begin:end, None])
        lower[torch.arange(end - begin), torch.arange(begin, end)] = math.inf
        by_block = lower[:, :tail].unflatten(1, (width, blocks))
        minima = by_block.amin(1)
        # each block's minimum is a column j with |x_i - x_j|^2 <= A_ij + 2 beta S_ij: the k-th
        # smallest of these upper bounds bounds the k-th nearest distance
        bounds = minima.double() + 2 * beta * (sq_scaled[begin:end, None] + block_sq[None, :]) + tiny
        upper = bounds.topk(k, dim=1, largest=False).values[:, -1]
        threshold = upper * (1 + 1e-9) + slack64 * (sq_scaled[begin:end] + sq_scaled.max()) + tiny
        limit = threshold.float()  # rounded up to float32, so that no candidate is lost
        limit = torch.where(limit.double() < threshold, torch.nextafter(limit, _INF32), limit)
        # the candidates: in the blocks whose minimum is within the limit, and in the tail
        block_rows, block_ids = (minima <= limit[:, None]).nonzero(as_tuple=True)
        members = by_block[block_rows, :, block_ids]  # (blocks found, width)
        which, place = (members <= limit[block_rows, None]).nonzero(as_tuple=True)
        rows, cols = block_rows[which], place * blocks + block_ids[which]
        if tail < n:
            tail_rows, tail_cols = (lower[:, tail:] <= limit[:, None]).nonzero(as_tuple=True)
            rows, cols = torch.cat([rows, tail_rows]), torch.cat([cols, tail_cols + tail])
            order = torch.sort(rows, stable=True).indices
            rows, cols = rows[order], cols[order]
        found_rows.append(rows + begin)
        found_cols.append(cols)
    return torch.cat(found_rows), torch.cat(found_cols)


_INF32 = torch.tensor(math.inf, dtype=torch.float32)


def _sampled_distances(flat: Tensor, sq: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``sq_i + sq_j - 2 <x_i, x_j>`` in float64 for the pairs ``(rows, cols)`` (``rows`` ascending),
    the dot products as a sampled product over a CSR pattern; for long rows (``D >= 512``, where
    the products cost more than finding the pairs) each unordered pair's product once."""
    n, d = flat.shape
    back = None
    if d >= 512:
        pairs = torch.minimum(rows, cols) * n + torch.maximum(rows, cols)
        keys, back = torch.unique(pairs, return_inverse=True)
        rows, cols = keys // n, keys % n
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow, cols, torch.zeros(len(cols), dtype=flat.dtype), (n, n), check_invariants=False
        )
        dots = torch.sparse.sampled_addmm(pattern, flat, flat.T, beta=0.0).values()
    exact = (dots * -2).add_(sq[rows] + sq[cols])
    return exact if back is None else exact[back]
