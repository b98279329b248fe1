"""Gaussian moments of activations: what the mean-field maps integrate (:mod:`plugins.mean_field`).

For ``u ~ N(0, q)`` (and pairs ``u_1, u_2`` of variances ``q_1, q_2`` and correlation ``c``) each
activation gives ``E[phi(u)^2]``, ``E[phi'(u)^p]``, ``E[phi(u_1) phi(u_2)]`` and
``E[phi'(u_1) phi'(u_2)]``. Closed forms for ``relu`` (the arc-cosine kernels), ``linear``,
``hard_tanh`` and ``erf`` (Williams 1997); for ``tanh``, ``sigmoid`` and any callable a trapezoid rule
on ``[-10, 10]`` whose step adapts to ``q`` -- exponentially accurate for analytic activations, unlike
Gauss-Hermite at large ``q``. :mod:`plugins.ntk` and :mod:`plugins.free_probability` use the same
moments.

Example:
    >>> relu = _activation("relu")
    >>> relu.second_moment(2.0), relu.derivative_moment(2.0)
    (1.0, 0.5)
    >>> tanh = _activation("tanh")
    >>> abs(tanh.cross_moment(1.0, 1.0, 1.0) - tanh.second_moment(1.0)) < 1e-12  # c = 1: u_1 = u_2
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from plugins.checks import PluginConfigError

__all__ = ["ACTIVATION_NAMES", "ActivationLike"]

ActivationLike = str | Callable[[Tensor], Tensor]
ACTIVATION_NAMES = ("tanh", "relu", "linear", "hard_tanh", "sigmoid", "erf")

_Z_MAX = 10.0  # the standard normal's mass beyond 10 is 1.5e-23
_SQRT_2PI = math.sqrt(2.0 * math.pi)
# the largest step of the 2-D trapezoid rule of an analytic activation (tanh, sigmoid): 81 x 81 nodes
# instead of 401 x 401 at q < 2.25 (a twenty-fifth of the work), the same moments within 1e-12 of their
# scale for phi and 1e-9 for phi' (tests/test_mean_field.py)
_SMOOTH_H_MAX = 0.25
_C_ONE = 1.0 - 1e-12  # correlations closer to 1 than this are treated as 1


# --------------------------------------------------------------------------- Gaussian integrals
def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + torch.special.erf(torch.as_tensor(x, dtype=torch.float64) / math.sqrt(2.0)).numpy())


def _normal_pdf(x: np.ndarray | float) -> np.ndarray:
    return np.exp(-0.5 * np.asarray(x) ** 2) / _SQRT_2PI


def _trapezoid_grid(q: float, h_max: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E_z[f(z)], z ~ N(0, 1), for an f that varies on the scale 1/sqrt(q).

    The trapezoid rule on the line converges like exp(-2 pi d / h) for integrands analytic in a strip
    of half-width d; tanh(sqrt(q) z) has d = pi / (2 sqrt(q)), so h = 0.3 / sqrt(q) gives ~1e-13.
    The step is at most ``h_max``: 0.05 by default (for activations with kinks, where the rule
    converges like h^2); :data:`_SMOOTH_H_MAX` for analytic ones.
    """
    h = min(h_max, 0.3 / math.sqrt(max(q, 1e-300)))
    n = min(int(math.ceil(2 * _Z_MAX / h)) | 1, 20001)
    z = np.linspace(-_Z_MAX, _Z_MAX, n)
    w = _normal_pdf(z) * (z[1] - z[0])
    return z, w / w.sum()


@functools.cache
def _legendre_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _gauss_legendre(a: float, b: float, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    x, w = _legendre_nodes(n)
    return 0.5 * (b - a) * x + 0.5 * (b + a), 0.5 * (b - a) * w


class _Activation:
    """Gaussian moments of phi and phi' by quadrature; subclasses replace them by closed forms."""

    def __init__(
        self,
        phi: Callable[[np.ndarray], np.ndarray],
        dphi: Callable[[np.ndarray], np.ndarray],
        smooth: bool = False,
    ):
        self.phi, self.dphi = phi, dphi
        self.h_max = _SMOOTH_H_MAX if smooth else 0.05  # the 2-D rule's largest step (analytic phi: coarser)

    def second_moment(self, q: float) -> float:
        """E[phi(sqrt(q) z)^2]."""
        z, w = _trapezoid_grid(q)
        return float(np.sum(w * self.phi(math.sqrt(q) * z) ** 2))

    def derivative_moment(self, q: float, power: int = 2) -> float:
        """E[phi'(sqrt(q) z)^power]."""
        z, w = _trapezoid_grid(q)
        return float(np.sum(w * self.dphi(math.sqrt(q) * z) ** power))

    def _cross(self, f: Callable[[np.ndarray], np.ndarray], q1: float, q2: float, c: float) -> float:
        z, w = _trapezoid_grid(max(q1, q2), self.h_max)
        z1, z2 = z[:, None], z[None, :]
        u1 = math.sqrt(q1) * z1
        u2 = math.sqrt(q2) * (c * z1 + math.sqrt(max(0.0, 1.0 - c * c)) * z2)
        return float(w @ (f(u1) * f(u2)) @ w)

    def cross_moment(self, q1: float, q2: float, c: float) -> float:
        """E[phi(u1) phi(u2)] with Var u_i = q_i and corr(u1, u2) = c."""
        return self._cross(self.phi, q1, q2, c)

    def derivative_cross_moment(self, q1: float, q2: float, c: float) -> float:
        """E[phi'(u1) phi'(u2)] with Var u_i = q_i and corr(u1, u2) = c."""
        return self._cross(self.dphi, q1, q2, c)

    @property
    def odd_through_zero(self) -> bool:
        """Whether phi(0) = 0 (then q = 0 is a fixed point of the q-map when sigma_b = 0)."""
        return abs(float(self.phi(np.zeros(1))[0])) < 1e-15


class _Linear(_Activation):
    def __init__(self) -> None:
        super().__init__(lambda u: u, np.ones_like)

    def second_moment(self, q: float) -> float:
        return q

    def derivative_moment(self, q: float, power: int = 2) -> float:
        return 1.0

    def cross_moment(self, q1: float, q2: float, c: float) -> float:
        return c * math.sqrt(q1 * q2)

    def derivative_cross_moment(self, q1: float, q2: float, c: float) -> float:
        return 1.0


class _ReLU(_Activation):
    """The arc-cosine kernel of degree 1 (Cho and Saul 2009) and its derivative, degree 0."""

    def __init__(self) -> None:
        super().__init__(lambda u: np.maximum(u, 0.0), lambda u: (np.asarray(u) > 0).astype(float))

    def second_moment(self, q: float) -> float:
        return q / 2.0

    def derivative_moment(self, q: float, power: int = 2) -> float:
        return 0.5

    def cross_moment(self, q1: float, q2: float, c: float) -> float:
        c = min(1.0, max(-1.0, c))
        theta = math.acos(c)
        return math.sqrt(q1 * q2) / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * c)

    def derivative_cross_moment(self, q1: float, q2: float, c: float) -> float:
        return (math.pi - math.acos(min(1.0, max(-1.0, c)))) / (2 * math.pi)


class _Erf(_Activation):
    """Williams (1997): E[erf(u1) erf(u2)] = 2/pi arcsin(2 S12 / sqrt((1 + 2 S11)(1 + 2 S22)))."""

    def __init__(self) -> None:
        erf = torch.special.erf
        super().__init__(
            lambda u: erf(torch.as_tensor(u, dtype=torch.float64)).numpy(),
            lambda u: 2.0 / math.sqrt(math.pi) * np.exp(-(np.asarray(u) ** 2)),
        )

    def second_moment(self, q: float) -> float:
        return 2.0 / math.pi * math.asin(2 * q / (1 + 2 * q))

    def derivative_moment(self, q: float, power: int = 2) -> float:
        # E[exp(-k u^2)] = 1/sqrt(1 + 2 k q) for u ~ N(0, q), and phi'^p = (2/sqrt(pi))^p exp(-p u^2)
        return (2.0 / math.sqrt(math.pi)) ** power / math.sqrt(1 + 2 * power * q)

    def cross_moment(self, q1: float, q2: float, c: float) -> float:
        s12 = c * math.sqrt(q1 * q2)
        return 2.0 / math.pi * math.asin(2 * s12 / math.sqrt((1 + 2 * q1) * (1 + 2 * q2)))

    def derivative_cross_moment(self, q1: float, q2: float, c: float) -> float:
        s12 = c * math.sqrt(q1 * q2)
        return 4.0 / math.pi / math.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * s12 * s12)


class _HardTanh(_Activation):
    """clip(u, -1, 1): closed-form 1-D moments; 2-D moments by conditioning on u1, whose
    inner expectation is closed-form and smooth, and Gauss-Legendre between the kinks of the outer."""

    def __init__(self) -> None:
        super().__init__(lambda u: np.clip(u, -1.0, 1.0), lambda u: (np.abs(u) < 1).astype(float))

    def second_moment(self, q: float) -> float:
        if q == 0:
            return 0.0
        a = 1.0 / math.sqrt(q)
        inside = math.erf(a / math.sqrt(2))  # P(|z| < a)
        return q * (inside - 2 * a * float(_normal_pdf(a))) + (1.0 - inside)

    def derivative_moment(self, q: float, power: int = 2) -> float:
        return 1.0 if q == 0 else math.erf(1.0 / math.sqrt(2 * q))

    def _conditional(self, q1: float, q2: float, c: float, derivative: bool) -> float:
        if c >= _C_ONE and q1 == q2:
            return self.derivative_moment(q1) if derivative else self.second_moment(q1)
        c = min(_C_ONE, max(-_C_ONE, c))  # keeps u2 | z1 non-degenerate; the cuts resolve its steepness
        s = math.sqrt(q2 * (1.0 - c * c))
        a1, a2 = 1.0 / math.sqrt(q1), 1.0 / max(abs(c) * math.sqrt(q2), 1e-300)
        width = 8.0 * s / max(abs(c) * math.sqrt(q2), 1e-300)  # where u2 | z1 crosses +-1 steeply
        points = (-a1, a1, -a2, a2, -a2 - width, -a2 + width, a2 - width, a2 + width)
        cuts = sorted({-_Z_MAX, _Z_MAX, *[p for p in points if abs(p) < _Z_MAX]})
        total = 0.0
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            if derivative and (hi <= -a1 or lo >= a1):
                continue  # phi'(u1) = 0 outside |z1| < a1
            z1, w = _gauss_legendre(lo, hi)
            m = math.sqrt(q2) * c * z1  # u2 | z1 ~ N(m, s^2)
            lo2, hi2 = (-1.0 - m) / s, (1.0 - m) / s
            p_in = _normal_cdf(hi2) - _normal_cdf(lo2)
            if derivative:
                outer, inner = (np.abs(z1) < a1).astype(float), p_in
            else:
                outer = np.clip(math.sqrt(q1) * z1, -1.0, 1.0)
                inner = (1.0 - _normal_cdf(hi2)) - _normal_cdf(lo2) + m * p_in
                inner = inner + s * (_normal_pdf(lo2) - _normal_pdf(hi2))
            total += float(np.sum(w * _normal_pdf(z1) * outer * inner))
        return total

    def cross_moment(self, q1: float, q2: float, c: float) -> float:
        return self._conditional(q1, q2, c, derivative=False)

    def derivative_cross_moment(self, q1: float, q2: float, c: float) -> float:
        return self._conditional(q1, q2, c, derivative=True)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(u)))


_NAMED: dict[str, Callable[[], _Activation]] = {
    "linear": _Linear,
    "relu": _ReLU,
    "erf": _Erf,
    "hard_tanh": _HardTanh,
    "tanh": lambda: _Activation(np.tanh, lambda u: 1.0 / np.cosh(u) ** 2, smooth=True),
    "sigmoid": lambda: _Activation(_sigmoid, lambda u: _sigmoid(u) * (1.0 - _sigmoid(u)), smooth=True),
}


def _from_callable(fn: Callable[[Tensor], Tensor]) -> _Activation:
    def phi(u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.as_tensor(u, dtype=torch.float64)).numpy()

    def dphi(u: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(u, dtype=torch.float64).clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(fn(x).sum(), x)
        return grad.numpy()

    return _Activation(phi, dphi)


def _activation(activation: ActivationLike) -> _Activation:
    if callable(activation) and not isinstance(activation, str):
        return _from_callable(activation)
    if activation not in _NAMED:
        raise PluginConfigError(
            f"unknown activation {activation!r}: use one of {list(ACTIVATION_NAMES)}, or pass a callable "
            "mapping a float64 tensor to a tensor (its derivative is taken by autograd)"
        )
    return _NAMED[activation]()
