"""The curvature algorithms on plain matrices of known spectrum, through DenseOperator.

Tolerances: eigenvalues 1e-8 relative at tol=1e-10 (float64); Hutch++ within 3 of its own standard
errors; Diag++ with 95% of the entries within 3 standard errors and z-scores of RMS 0.5-1.5;
exact (1e-9) once the sketch spans the space (3n products).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.curvature import (
    CurvatureError,
    DenseOperator,
    diagonal_estimate,
    hutchpp_trace,
    lanczos_eigenvalues,
    spectral_density,
)
from plugins.curvature import lanczos as lanczos_module

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def wishart(n: int = 200, m: int = 400, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, m, dtype=D, generator=torch.Generator().manual_seed(seed))
    return x @ x.T / m


def with_spectrum(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(values) Q^T`` for a random orthogonal ``Q``: a dense matrix of a chosen spectrum."""
    q, _ = torch.linalg.qr(
        torch.randn(len(values), len(values), dtype=D, generator=torch.Generator().manual_seed(seed))
    )
    return (q * values) @ q.T


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_top_and_bottom_k_of_a_wishart_matrix(which):
    a = wishart()
    exact = torch.linalg.eigvalsh(a)
    expected = exact.flip(0)[:5] if which == "largest" else exact[:5]
    op = DenseOperator(a)
    values, vectors = lanczos_eigenvalues(
        op, 5, which=which, tol=1e-10, max_iter=200, return_eigenvectors=True
    )
    torch.testing.assert_close(values, expected, rtol=1e-8, atol=0)
    residuals = (vectors @ a - values[:, None] * vectors).norm(dim=1)
    assert float(residuals.max()) < 1e-6 * float(exact.abs().max())
    assert op.num_matvecs < 200  # stopped on its error bounds, not on max_iter


def test_random_starts_find_lambda_max_of_small_wisharts():
    """Error bounds only say a Ritz value is near *some* eigenvalue: stopping after 2 products on a
    3 x 3 Wishart returned the second eigenvalue for 13 of 200 random starts. With the minimum of
    ``2k + 8`` products (capped by the size) every start finds lambda_max to 1e-10."""
    missed = []
    for seed in range(200):
        x = torch.randn(32, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        a = 2 * x.T @ x / 32
        top = lanczos_eigenvalues(DenseOperator(a), 1, seed=seed)
        if not torch.isclose(top[0], torch.linalg.eigvalsh(a)[-1], rtol=1e-10, atol=0):
            missed.append(seed)
    assert missed == []


def test_clustered_and_repeated_eigenvalues():
    clustered = torch.cat(
        [torch.tensor([10.0, 10.0 - 1e-3, 10.0 - 2e-3], dtype=D), torch.linspace(0, 1, 97, dtype=D)]
    )
    values = lanczos_eigenvalues(DenseOperator(with_spectrum(clustered)), 3, tol=1e-10, max_iter=100)
    torch.testing.assert_close(values, clustered[:3], rtol=1e-9, atol=0)
    # an exactly repeated top eigenvalue: each breakdown's new block finds one more copy
    repeated = torch.cat(
        [torch.full((3,), 5.0, dtype=D), torch.full((4,), 3.0, dtype=D), torch.ones(53, dtype=D)]
    )
    values = lanczos_eigenvalues(DenseOperator(torch.diag(repeated)), 4, tol=1e-10)
    torch.testing.assert_close(values, torch.tensor([5.0, 5.0, 5.0, 3.0], dtype=D), rtol=1e-10, atol=0)


def test_a_start_in_an_invariant_subspace_breaks_down_and_restarts():
    """The start spans two eigenvectors (eigenvalues 1 and 2): Lanczos breaks down after two steps,
    goes on from a random vector orthogonal to them, and finds the true top 3."""
    a = torch.diag(torch.arange(1.0, 51.0, dtype=D))
    start = torch.zeros(50, dtype=D)
    start[:2] = 1.0
    op = DenseOperator(a)
    values = lanczos_eigenvalues(op, 3, tol=1e-8, start=start)
    torch.testing.assert_close(values, torch.tensor([50.0, 49.0, 48.0], dtype=D), rtol=1e-8, atol=0)
    assert op.num_matvecs > 2
    smallest = lanczos_eigenvalues(DenseOperator(a), 2, which="smallest", tol=1e-8, start=start)
    torch.testing.assert_close(smallest, torch.tensor([1.0, 2.0], dtype=D), rtol=1e-8, atol=0)


def test_thick_restarts_keep_the_basis_small_and_find_the_same_values(monkeypatch):
    a = wishart(n=300)
    exact = torch.linalg.eigvalsh(a).flip(0)[:5]
    sizes = []
    run = lanczos_module.lanczos_run

    def recording(*args, **kwargs):
        out = run(*args, **kwargs)
        sizes.append(out.basis.shape[0])
        return out

    monkeypatch.setattr(lanczos_module, "lanczos_run", recording)
    plain = DenseOperator(a)
    torch.testing.assert_close(
        lanczos_eigenvalues(plain, 5, tol=1e-10, max_iter=300), exact, rtol=1e-8, atol=0
    )
    restarted = DenseOperator(a)
    values = lanczos_eigenvalues(restarted, 5, tol=1e-10, max_iter=300, max_basis=14)
    torch.testing.assert_close(values, exact, rtol=1e-8, atol=0)
    assert sizes[1] <= 14 < sizes[0]
    assert plain.num_matvecs < restarted.num_matvecs < 3 * plain.num_matvecs
    # chosen automatically: a basis budget of 16 vectors of 300 float64 entries
    monkeypatch.setattr(lanczos_module, "BASIS_BYTES", 16 * 300 * 8)
    torch.testing.assert_close(
        lanczos_eigenvalues(DenseOperator(a), 5, tol=1e-10, max_iter=300), exact, rtol=1e-8, atol=0
    )
    assert sizes[2] == 16


def test_max_iter_warns_and_returns_its_best_estimate():
    a = wishart()
    with pytest.warns(UserWarning, match="max_iter=8 before the 3 wanted"):
        values = lanczos_eigenvalues(DenseOperator(a), 3, tol=1e-12, max_iter=8)
    assert float(values[0]) <= float(torch.linalg.eigvalsh(a)[-1]) * (1 + 1e-12)  # Ritz values from below


def test_misuse_is_one_clear_error():
    with pytest.raises(CurvatureError, match="symmetric"):
        DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(CurvatureError, match="square"):
        DenseOperator(torch.ones(2, 3))
    op = DenseOperator(torch.eye(4, dtype=D))
    with pytest.raises(CurvatureError, match="exceeds"):
        lanczos_eigenvalues(op, 5)
    with pytest.raises(CurvatureError, match="non-zero"):
        lanczos_eigenvalues(op, 1, start=torch.zeros(4, dtype=D))
    with pytest.raises(CurvatureError, match="at least 6"):
        hutchpp_trace(op, 5)
    with pytest.raises(ValueError, match="which"):  # a CurvatureError is a ValueError too
        lanczos_eigenvalues(op, 1, which="middle")


def test_matmat_is_the_columns_of_matvec():
    a = wishart(n=20)
    op = DenseOperator(a)
    m = torch.randn(20, 3, dtype=D)
    torch.testing.assert_close(op @ m, torch.stack([a @ c for c in m.T], 1))
    assert op.num_matvecs == 3


def test_hutchpp_trace_within_its_standard_error_and_exact_at_3n():
    a = wishart(n=120, m=60)  # rank 60: a slowly decaying spectrum, so the sample part matters
    exact = float(torch.trace(a))
    for seed in range(4):
        tr = hutchpp_trace(DenseOperator(a), 30, seed=seed)
        assert tr.num_matvecs == 30 and tr.std_error > 0
        assert abs(tr.estimate - exact) <= 3 * tr.std_error, (seed, tr, exact)
    full = hutchpp_trace(DenseOperator(a), 360)
    assert abs(full.estimate - exact) < 1e-9 * exact and full.std_error == 0


def test_diagonal_within_its_standard_errors_and_exact_at_3n():
    a = wishart(n=100, m=50)
    exact = torch.diagonal(a)
    d = diagonal_estimate(DenseOperator(a), 60, seed=1)
    assert d.num_matvecs == 60 and bool((d.std_error > 0).all())
    z = (d.estimate - exact) / d.std_error
    assert float((z.abs() <= 3).double().mean()) >= 0.95
    assert 0.5 < float(z.pow(2).mean().sqrt()) < 1.5  # the stated errors are the real size of the error
    full = diagonal_estimate(DenseOperator(a), 300)
    torch.testing.assert_close(full.estimate, exact, rtol=1e-9, atol=1e-12)
    assert float(full.std_error.max()) == 0


def test_slq_is_exact_on_three_distinct_eigenvalues():
    """Three distinct eigenvalues: three Lanczos steps give the exact quadrature of each probe's
    spectral measure; the nodes are the eigenvalues, weights of mean 1/3 each (equal multiplicities)."""
    values = torch.tensor([1.0, 2.0, 4.0], dtype=D).repeat_interleave(40)
    d = spectral_density(DenseOperator(with_spectrum(values)), probes=20, steps=3, grid=400)
    assert abs(np.trapezoid(d.density, d.grid) - 1) < 1e-9 and abs(d.weights.sum() - 1) < 1e-9
    np.testing.assert_allclose(np.unique(np.round(d.nodes, 8)), [1.0, 2.0, 4.0])
    for value in (1.0, 2.0, 4.0):
        mass = d.weights[np.abs(d.nodes - value) < 1e-6].sum()
        assert abs(mass - 1 / 3) < 0.05  # Rademacher probes: 20 x 120 entries, about 0.01 spread
