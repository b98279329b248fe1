"""The spectral density of any operator by stochastic Lanczos quadrature (Ghorbani et al. 2019).

Each probe runs ``steps`` Lanczos steps from a random Rademacher unit vector; the Ritz values are
the nodes and the squared first components of their vectors the weights of a Gaussian quadrature
of the spectral measure. Each node is smoothed by a Gaussian of width ``sigma`` times the width of
the spectrum; the grid reaches 5 widths beyond the extreme nodes, covering the spectrum, and the
density is normalised to integrate to 1 on it.

Example:
    >>> import torch
    >>> from plugins.curvature.operator import DenseOperator
    >>> d = spectral_density(DenseOperator(torch.diag(torch.arange(1.0, 4.0, dtype=torch.float64))))
    >>> round(float(np.trapezoid(d.density, d.grid)), 6), sorted(round(float(x), 6) for x in d.nodes)
    (1.0, [1.0, 2.0, 3.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plugins.curvature._checks import check_density
from plugins.curvature._sampling import random_vector
from plugins.curvature.lanczos import lanczos_run
from plugins.curvature.operator import CurvatureOperator

__all__ = ["SpectralDensity", "spectral_density"]


@dataclass
class SpectralDensity:
    """A smoothed spectral density from stochastic Lanczos quadrature.

    Attributes:
        grid: points at which the density is given (ascending).
        density: values on the grid; the trapezoidal rule integrates them to 1.
        nodes: the quadrature nodes (Ritz values of all probes).
        weights: their weights (they sum to 1).
        sigma: width of the Gaussian put on each node.

    Example:
        >>> d = SpectralDensity(np.linspace(0, 1, 3), np.ones(3), np.array([0.5]), np.ones(1), 0.1)
        >>> float(np.trapezoid(d.density, d.grid))
        1.0
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float


def spectral_density(
    op: CurvatureOperator,
    *,
    probes: int = 1,
    steps: int = 60,
    grid: int = 1000,
    sigma: float = 0.01,
    seed: int = 0,
) -> SpectralDensity:
    """The eigenvalue density of ``op``: ``probes`` quadratures of ``steps`` products each.

    Args:
        op: any :class:`~plugins.curvature.operator.CurvatureOperator`.
        probes: random start vectors (average of their quadratures).
        steps: Lanczos steps per probe (products per probe).
        grid: points of the grid.
        sigma: Gaussian width relative to the width of the spectrum.
        seed: seed of the start vectors.

    Raises:
        CurvatureError: ``probes < 1``, ``steps < 1``, ``grid < 2`` or ``sigma <= 0``.

    Example:
        >>> from plugins.curvature.operator import DenseOperator
        >>> a = torch.randn(40, 40, dtype=torch.float64)
        >>> d = spectral_density(DenseOperator((a + a.T) / 2), probes=2, steps=10, grid=50)
        >>> d.grid.shape, round(float(d.weights.sum()), 9)
        ((50,), 1.0)
    """
    check_density(probes, steps, grid, sigma)
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(probes):
        run = lanczos_run(op, random_vector(op, generator, rademacher=True), steps, generator)
        theta, s, _ = run.ritz()
        nodes.append(theta.numpy())
        weights.append(s[0].pow(2).numpy() / probes)
    node, weight = np.concatenate(nodes), np.concatenate(weights)
    width = float(node.max() - node.min()) or max(float(np.abs(node).max()), 1e-12)
    sig = sigma * width
    points = np.linspace(node.min() - 5 * sig, node.max() + 5 * sig, grid)
    density = (weight[None, :] * np.exp(-0.5 * ((points[:, None] - node[None, :]) / sig) ** 2)).sum(1)
    density /= np.trapezoid(density, points)
    return SpectralDensity(grid=points, density=density, nodes=node, weights=weight, sigma=sig)
