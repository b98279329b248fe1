"""The float32-screened k-NN search returns the float64 distances of the whole distance matrix,
where the neighbours are exactly tied and where they differ by less than float32 can resolve."""

from __future__ import annotations

import math

import pytest
import torch

from plugins.neighbour_search import screening_applies, squared_neighbour_distances


def _brute_force(x: torch.Tensor, k: int) -> torch.Tensor:
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    return d2.fill_diagonal_(math.inf).topk(k, dim=1, largest=False).values


def _lattice(side: int, dims: int) -> torch.Tensor:
    axes = [torch.arange(side, dtype=torch.float64)] * dims
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dims)
    return grid - grid.mean(0)


@pytest.mark.parametrize("k", [1, 6, 20])
def test_exact_ties_on_a_lattice_are_kept_to_the_last_digit(k):
    x = _lattice(8, 3)  # 512 points; every inner point has 6 neighbours at exactly 1, 12 at 2, ...
    assert screening_applies(x, k, (x**2).sum(1))
    assert torch.equal(squared_neighbour_distances(x, k), _brute_force(x, k))


@pytest.mark.parametrize("chunk_elements", [2**24, 5000])
def test_near_ties_below_float32_resolution_pick_the_float64_neighbours(chunk_elements):
    """Lattice neighbours moved apart by ~1e-9 relative (float32 resolves 6e-8) and rotated into 40
    dimensions: the screen cannot order them, the float64 refinement must. A wrong neighbour would
    be off by ~1e-9 relative, a thousand times the tolerance."""
    g = torch.Generator().manual_seed(0)
    flat = _lattice(7, 3) + 1e-9 * torch.randn(343, 3, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    x = torch.cat([flat, torch.zeros(343, 37, dtype=torch.float64)], 1) @ rotation
    x = x - x.mean(0)
    for k in (1, 6, 18):
        assert screening_applies(x, k, (x**2).sum(1))
        got = squared_neighbour_distances(x, k, chunk_elements=chunk_elements)
        torch.testing.assert_close(got, _brute_force(x, k), rtol=1e-12, atol=0.0)


def test_duplicates_and_outliers_are_within_float64s_rounding_of_the_gram_formula():
    """The distances are ``sq_i + sq_j - 2 <x_i, x_j>`` in float64: duplicates come out at zero and
    every distance within a few float64 roundings of the largest squared norm (the formula's own
    error, the same as the whole float64 matrix's)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:30], 1e3 * torch.randn(5, 12, generator=g, dtype=torch.float64)])
    x = x - x.mean(0)
    sq = (x**2).sum(1)
    assert screening_applies(x, 4, sq)
    got = squared_neighbour_distances(x, 4)
    rounding = 16 * 12 * 2.0**-53 * float(sq.max())
    assert got[:30, 0].abs().max() <= rounding
    torch.testing.assert_close(got, _brute_force(x, 4), rtol=0.0, atol=rounding)


def test_data_the_screen_cannot_bound_takes_the_whole_float64_matrix():
    x = torch.randn(100, 5, dtype=torch.float64)
    x[3, 0] = math.inf
    assert not screening_applies(x, 5, (x**2).sum(1))
    small = torch.randn(20, 5, dtype=torch.float64)
    assert not screening_applies(small, 5, (small**2).sum(1))  # too few rows for the column blocks
    got = squared_neighbour_distances(small, 5)
    torch.testing.assert_close(got, _brute_force(small, 5), rtol=1e-12, atol=0.0)
