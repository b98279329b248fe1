"""The predicted Jacobian spectrum: closed forms (Marchenko-Pastur, orthogonal deep linear point mass),
normalisation, the mean chi^L, and a random-matrix check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plugins.free_probability import derivative_distribution, predicted_spectral_density
from plugins.jacobian import jacobian_spectrum_moments
from plugins.signal_propagation import derivative_moments, q_star


def test_one_gaussian_linear_layer_is_marchenko_pastur():
    x, rho = predicted_spectral_density(
        "linear", 1.0, 0.0, 1, weights="gaussian", grid=np.linspace(0.5, 3.5, 61)
    )
    closed = np.sqrt(x * (4 - x)) / (2 * math.pi * x)
    np.testing.assert_allclose(rho, closed, rtol=1e-3)


def test_deep_linear_orthogonal_is_a_point_mass():
    x, rho = predicted_spectral_density(
        "linear", 1.05, 0.0, 10, weights="orthogonal", grid=np.linspace(0, 5, 5001)
    )
    assert x[rho.argmax()] == pytest.approx(1.05**20, abs=1e-3)
    assert np.count_nonzero(rho) == 1 and np.trapezoid(rho, x) == pytest.approx(1.0)


@pytest.mark.parametrize("weights", ["orthogonal", "gaussian"])
def test_tanh_density_integrates_to_one_with_mean_chi_to_the_l(weights):
    sw, sb, depth = 1.1225, 0.05, 4
    # Gaussian weights: the density grows like lambda^(-L/(L+1)) at 0, resolved on a log grid
    grid = np.geomspace(1e-12, 20, 3000) if weights == "gaussian" else np.linspace(0, 4, 3000)
    x, rho = predicted_spectral_density("tanh", sw, sb, depth, weights=weights, grid=grid)
    mass, mean = np.trapezoid(rho, x), np.trapezoid(x * rho, x)
    chi = sw**2 * derivative_moments("tanh", q_star("tanh", sw, sb))[0]
    assert mass == pytest.approx(1.0, abs=0.01)
    assert mean == pytest.approx(chi**depth, rel=0.01)
    variance = np.trapezoid(x**2 * rho, x) - mean**2
    assert variance == pytest.approx(
        jacobian_spectrum_moments("tanh", sw, sb, depth, weights).variance, rel=0.03
    )


def test_relu_has_an_atom_at_zero():
    x, rho = predicted_spectral_density(
        "relu", math.sqrt(2), 0.0, 2, weights="orthogonal", grid=np.linspace(0, 8, 2000)
    )
    atom = rho[0] * (x[1] - x[0]) / 2
    assert atom == pytest.approx(0.5, abs=0.01)  # half the units are off: J has rank N/2
    assert np.trapezoid(x * rho, x) == pytest.approx(1.0, rel=0.02)  # chi = 1 at He init


def test_derivative_distribution_and_bad_input():
    values, probabilities = derivative_distribution("tanh", 0.5)
    assert probabilities.sum() == pytest.approx(1.0) and values.max() <= 1.0
    assert float(np.sum(probabilities * values)) == pytest.approx(
        derivative_moments("tanh", 0.5)[0], rel=1e-10
    )
    with pytest.raises(ValueError, match="weights"):
        predicted_spectral_density("tanh", 1.0, 0.0, 2, weights="haar", grid=10)
    with pytest.raises(ValueError, match="ascending"):
        predicted_spectral_density("tanh", 1.0, 0.1, 2, weights="gaussian", grid=np.array([1.0, 0.5]))


def test_jacobian_spectrum_overlays_the_density_on_square_hidden_stacks():
    import torch

    from plugins.jacobian import JacobianSpectrum
    from tdl_lightning.models import DeepMLP

    stack = DeepMLP(32, 32, 3, None, "tanh", init="orthogonal", sigma_w=1.1225, sigma_b=0.05)
    result = JacobianSpectrum(probe_size=4).probe(stack, torch.randn(4, 32))
    assert set(result.figures) == {"spectrum", "density"}
    with_readout = DeepMLP(32, 32, 3, 10, "tanh")
    assert set(JacobianSpectrum(probe_size=4).probe(with_readout, torch.randn(4, 32)).figures) == {"spectrum"}


def test_log_axis_figure_leaves_numerical_zeros_out():
    import torch

    from plugins.jacobian import _spectrum_figure

    s = torch.cat([torch.zeros(5), torch.logspace(-1, 0.3, 95)])
    (ax,) = _spectrum_figure(s, theory_mean_sq=None).axes
    fractions, edges = ax.patches[0].get_data()[:2]
    assert fractions.sum() == pytest.approx(0.95) and edges[0] == pytest.approx(0.1)
    assert "5 of 100 numerical zeros left out" in ax.get_legend().get_texts()[0].get_text()
