"""The spectral density of ``J J^T`` of a deep net at ``q*`` by free probability (Pennington et al. 2017/18).

``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(phi'(h^l))``, ``h ~ N(0, q*)``. In the wide limit the
factors are asymptotically free, so S-transforms multiply::

    S_{JJ^T}(m) = (S_{D^2}(m) S_{WW^T}(m))^L,   S_{WW^T} = 1 / (sigma_w^2 (1 + m)) (Gaussian),
                                                  S_{WW^T} = 1 / sigma_w^2           (orthogonal)

with ``S(m) = (1 + m) / (m M^{-1}(m))``, ``M(z) = z G(z) - 1`` and ``G`` the Stieltjes transform.
Writing ``m = M_{D^2}(w) = E[d / (w - d)]`` (``d = phi'(h)^2``) reduces everything to one complex
equation in ``w`` at each ``z = lambda + i eps``::

    Gaussian:    z = (1 + m)/m * (sigma_w^2 m w)^L
    orthogonal:  z = (1 + m)/m * (sigma_w^2 m w / (1 + m))^L

solved by Newton's method, continued from large ``|z|`` (where ``m ~ E[JJ^T] / z``) down the
grid; the density is ``-Im G(lambda + i eps) / pi`` with ``G = (1 + m) / z``. The law of ``d`` is
exact for piecewise-linear activations (``relu``, ``linear``, ``hard_tanh``: atoms at 0 and 1) and
the trapezoid-rule discretisation of :mod:`plugins.signal_propagation` otherwise. An atom of
``D^2`` at 0 (ReLU: half the units are off) puts the same mass at ``lambda = 0``; it is returned in
the grid's first cell (``mass / cell width``), so the density always integrates to 1.

Example:
    >>> grid = np.linspace(0, 4, 401)
    >>> x, rho = predicted_spectral_density("linear", 1.0, 0.0, 1, weights="gaussian", grid=grid)
    >>> round(float(np.trapezoid(rho, x)), 2)  # Marchenko-Pastur: the 1/sqrt(x) at 0 is cut by the grid
    0.98
"""

from __future__ import annotations

import cmath
import math

import numpy as np

from plugins.checks import PluginConfigError
from plugins.gaussian_moments import ActivationLike, _activation, _trapezoid_grid
from plugins.mean_field import reference_q

__all__ = ["derivative_distribution", "predicted_spectral_density"]

WEIGHTS = ("gaussian", "orthogonal")


def derivative_distribution(activation: ActivationLike, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The law of ``d = phi'(h)^2``, ``h ~ N(0, q)``: values and probabilities (summing to 1).

    Example:
        >>> derivative_distribution("relu", 1.0)
        (array([0., 1.]), array([0.5, 0.5]))
    """
    if activation == "relu":
        return np.array([0.0, 1.0]), np.array([0.5, 0.5])
    if activation == "linear":
        return np.array([1.0]), np.array([1.0])
    if activation == "hard_tanh":
        inside = 1.0 if q == 0 else math.erf(1.0 / math.sqrt(2 * q))
        return np.array([0.0, 1.0]), np.array([1.0 - inside, inside])
    z, weights = _trapezoid_grid(q)
    return _activation(activation).dphi(math.sqrt(q) * z) ** 2, weights


def _residual(w: complex, z: complex, d: np.ndarray, p: np.ndarray, sw2: float, depth: int, gaussian: bool):
    """``log`` of the right-hand side minus ``log z``, its derivative in ``w``, and ``m``."""
    m = complex(np.sum(p * d / (w - d)))
    dm = complex(-np.sum(p * d / (w - d) ** 2))
    u = sw2 * m * w if gaussian else sw2 * m * w / (1 + m)
    du = sw2 * (m + w * dm) if gaussian else sw2 * ((m + w * dm) * (1 + m) - m * w * dm) / (1 + m) ** 2
    f = cmath.log((1 + m) / m) + depth * cmath.log(u) - cmath.log(z)
    df = (dm / (1 + m) - dm / m) + depth * du / u
    return f, df, m


def _solve(w: complex, z: complex, *args) -> tuple[complex, complex, bool]:
    for _ in range(100):
        f, df, m = _residual(w, z, *args)
        step = f / df
        scale = 1.0
        while abs(step * scale) > 0.5 * abs(w) and scale > 1e-3:  # damped: stay on the branch
            scale *= 0.5
        w -= scale * step
        if abs(f) < 1e-12:
            return w, _residual(w, z, *args)[2], True
    f, _, m = _residual(w, z, *args)
    return w, m, abs(f) < 1e-8


def predicted_spectral_density(
    activation: ActivationLike,
    sigma_w: float,
    sigma_b: float,
    depth: int,
    *,
    weights: str = "gaussian",
    grid: np.ndarray | int = 400,
    q: float | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The predicted density of the squared singular values ``lambda`` of the input-output Jacobian.

    For ``depth`` square layers at the fixed point ``q*`` (or at ``q``), wide limit; see the module
    docstring for the equations. ``grid``: the ``lambda`` values (ascending, >= 0), or a number of
    points on ``[0, upper]`` with ``upper`` from the free-probability mean and variance
    (:func:`plugins.jacobian.jacobian_spectrum_moments`). ``eps``: the imaginary part of ``z`` (a
    smoothing width; default a fifth of the grid step). A deterministic ``D`` with orthogonal
    weights (deep linear orthogonal nets) gives a point mass at ``(sigma_w^2 d)^L``, returned in
    its grid cell.

    Returns:
        ``(x, density)``, numpy arrays; ``np.trapezoid(density, x)`` is 1 up to the grid's resolution.

    Example:
        >>> grid = np.linspace(0, 2, 201)
        >>> x, rho = predicted_spectral_density("linear", 1.0, 0.0, 8, weights="orthogonal", grid=grid)
        >>> float(x[rho.argmax()]), round(float(np.trapezoid(rho, x)), 6)  # every singular value is 1
        (1.0, 1.0)
    """
    if weights not in WEIGHTS:
        raise PluginConfigError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if not isinstance(depth, int) or depth < 1:
        raise PluginConfigError(f"depth must be a whole number >= 1, got {depth!r}")
    q = reference_q(activation, sigma_w, sigma_b, q)
    d, p = derivative_distribution(activation, q)
    keep = p > 0
    d, p = d[keep], p[keep]
    zero_mass = float(p[d <= 1e-300].sum())
    d, p = d[d > 1e-300], p[d > 1e-300]
    sw2 = sigma_w**2
    mean = (sw2 * float(np.sum(p * d))) ** depth if len(d) else 0.0
    x = np.asarray(grid, dtype=float) if not isinstance(grid, int) else None
    if x is None:
        from plugins.jacobian import jacobian_spectrum_moments

        moments = jacobian_spectrum_moments(activation, sigma_w, sigma_b, depth, weights, q0=None)
        spread = math.sqrt(max(moments.variance, 0.0))
        upper = moments.mean_squared_singular_value + 12 * spread if spread > 0 else 2 * max(mean, 1e-12)
        x = np.linspace(0.0, upper, int(grid))
    if x.ndim != 1 or len(x) < 2 or np.any(np.diff(x) <= 0) or x[0] < 0:
        raise PluginConfigError("grid must be ascending values >= 0 (at least two), or a number of points")
    density = np.zeros_like(x)
    if len(d) == 0:  # every unit off: J = 0
        density[0] = 1.0 / (x[1] - x[0]) * 2
        return x, density
    if (
        weights == "orthogonal" and zero_mass == 0 and np.ptp(d) < 1e-12
    ):  # J J^T = (sigma_w^2 d)^L I: a point mass
        k = int(np.argmin(np.abs(x - (sw2 * d[0]) ** depth)))
        _put_mass(density, x, k, 1.0 - zero_mass)
    else:
        eps = 0.2 * float(np.min(np.diff(x))) if eps is None else eps
        args = (d, p, sw2, depth, weights == "gaussian")
        density += _continuous_density(x, eps, mean, zero_mass, args)
    if zero_mass > 0:
        _put_mass(density, x, 0, zero_mass)
    return x, density


def _put_mass(density: np.ndarray, x: np.ndarray, k: int, mass: float) -> None:
    """Add a point mass in cell ``k`` so that the trapezoid rule counts exactly ``mass``."""
    left = 0.0 if k == 0 else (x[k] - x[k - 1]) / 2
    right = 0.0 if k == len(x) - 1 else (x[k + 1] - x[k]) / 2
    density[k] += mass / (left + right)


def _continuous_density(x: np.ndarray, eps: float, mean: float, zero_mass: float, args: tuple) -> np.ndarray:
    """``-Im G / pi`` on the grid without the pole ``zero_mass / z`` of the atom at 0.

    ``args`` holds the nonzero values of ``d`` with their probabilities (not renormalised: the atom
    at 0 adds nothing to ``E[d / (w - d)]``)."""
    d, p, sw2, depth, gaussian = args
    mean_d = float(np.sum(p * d))
    scale = max(float(x[-1]), mean, 1e-12)
    z = complex(20 * scale, eps)
    m0 = (sw2 * mean_d) ** depth / z  # m ~ E[lambda] / z at large z; then w ~ E[d] / m
    w = mean_d / m0
    for target in np.geomspace(20 * scale, max(float(x[-1]), 1e-12), 60):  # walk in along the real axis
        w, _, _ = _solve(w, complex(target, eps), *args)
    density = np.zeros_like(x)
    for k in range(len(x) - 1, -1, -1):
        zk = complex(max(float(x[k]), 0.0), eps)
        w, m, ok = _solve(w, zk, *args)
        g = (1 + m - zero_mass) / zk
        if ok and g.imag <= 0:
            density[k] = -g.imag / math.pi
        else:
            density[k] = math.nan
    bad = np.isnan(density)
    if bad.any() and (~bad).any():
        density[bad] = np.interp(x[bad], x[~bad], density[~bad])
    return np.nan_to_num(density)
