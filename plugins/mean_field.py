"""Mean-field theory of signal propagation at initialisation (Poole 2016, Schoenholz 2017).

A deep network ``h^l = W^l phi(h^{l-1}) + b^l`` with ``W_ij ~ N(0, sigma_w^2/N)`` and
``b_i ~ N(0, sigma_b^2)`` propagates, in the wide limit, the length ``q^l`` of a pre-activation
vector through the *q-map* and the correlation ``c^l`` of two inputs through the *c-map*::

    q^{l+1} = sigma_w^2 E[phi(sqrt(q^l) z)^2] + sigma_b^2
    c^{l+1} = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*,   corr(u_1, u_2) = c^l

``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]`` separates the ordered phase (``chi_1 < 1``) from the
chaotic one (``chi_1 > 1``); correlations approach their fixed point over the depth scale
``xi_c = -1/ln chi_c`` that diverges at the edge of chaos.

Closed forms for ``relu``, ``linear``, ``hard_tanh`` and ``erf``; for ``tanh``, ``sigmoid`` and any
callable a trapezoid rule on ``[-10, 10]`` whose step adapts to ``q`` -- exponentially accurate for
analytic activations, unlike Gauss-Hermite at large ``q``. The measurements these predictions are
compared with live in :mod:`plugins.signal_propagation`.

Example:
    >>> round(q_star("tanh", 1.5, 0.1), 6)
    0.813322
    >>> round(chi_1("relu", 2 ** 0.5, 0.0), 6)
    1.0
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from plugins.checks import PluginConfigError

__all__ = [
    "ACTIVATION_NAMES",
    "ActivationLike",
    "c_map",
    "c_map_iterates",
    "c_star",
    "chi_1",
    "chi_c",
    "critical_sigma_w",
    "depth_scale",
    "derivative_moments",
    "q_map",
    "q_map_iterates",
    "q_star",
    "reference_q",
]

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


def _check_scales(sigma_w: float, sigma_b: float) -> None:
    if not sigma_w > 0:
        raise PluginConfigError(f"sigma_w must be > 0, got {sigma_w}")
    if not sigma_b >= 0:
        raise PluginConfigError(f"sigma_b is a standard deviation and must be >= 0, got {sigma_b}")


def _bisect(f: Callable[[float], float], lo: float, hi: float, iterations: int = 200) -> float:
    """A root of f in [lo, hi], given f(lo) > 0 >= f(hi): regula falsi with the Illinois fix
    (superlinear, and the bracket is kept, so it cannot fail)."""
    f_lo, f_hi, side = f(lo), f(hi), 0
    for _ in range(iterations):
        if hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
        mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_lo != f_hi else 0.5 * (lo + hi)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if f_mid == 0:
            return mid
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            f_hi, side = (f_hi / 2, 1) if side == 1 else (f_hi, 1)
        else:
            hi, f_hi = mid, f_mid
            f_lo, side = (f_lo / 2, -1) if side == -1 else (f_lo, -1)
        if abs(f_mid) < 1e-15:
            return mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- mean-field maps
def q_map(activation: ActivationLike, sigma_w: float, sigma_b: float, q: float) -> float:
    """One step of the length map: ``sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2``.

    Example:
        >>> round(q_map("relu", 2 ** 0.5, 0.0, 3.0), 12)  # He init keeps the length
        3.0
        >>> round(q_map("tanh", 1.0, 0.0, 1.0), 6)
        0.394294
    """
    _check_scales(sigma_w, sigma_b)
    if q < 0:
        raise PluginConfigError(f"q is a second moment and must be >= 0, got {q}")
    return sigma_w**2 * _activation(activation).second_moment(q) + sigma_b**2


def q_map_iterates(
    activation: ActivationLike, sigma_w: float, sigma_b: float, q0: float, depth: int
) -> np.ndarray:
    """Predicted ``q^1 .. q^depth`` for inputs with mean squared feature ``q0``.

    The first layer sees the raw input, ``q^1 = sigma_w^2 q0 + sigma_b^2``; later layers follow
    :func:`q_map`.

    Example:
        >>> q_map_iterates("linear", 0.5, 0.0, 4.0, 3)
        array([1.    , 0.25  , 0.0625])
    """
    _check_scales(sigma_w, sigma_b)
    if depth < 1:
        raise PluginConfigError(f"depth must be >= 1, got {depth}")
    act = _activation(activation)
    qs = [sigma_w**2 * q0 + sigma_b**2]
    for _ in range(depth - 1):
        qs.append(sigma_w**2 * act.second_moment(qs[-1]) + sigma_b**2)
    return np.asarray(qs)


def q_star(activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """The stable fixed point of the q-map (0 when the signal dies out).

    Raises ``ValueError`` when the q-map has no finite stable fixed point (e.g. ReLU with
    ``sigma_w^2 > 2``: lengths grow without bound).

    Example:
        >>> q_star("tanh", 1.0, 0.0)  # at sigma_b = 0 the ordered phase has q* = 0
        0.0
        >>> round(q_star("relu", 1.0, 1.0), 6)  # sigma_b^2 / (1 - sigma_w^2 / 2)
        2.0
    """
    _check_scales(sigma_w, sigma_b)
    act = _activation(activation)
    name = activation if isinstance(activation, str) else None
    if name in ("linear", "relu"):
        gain = sigma_w**2 * (1.0 if name == "linear" else 0.5)
        if gain < 1:
            return sigma_b**2 / (1 - gain)
        if gain == 1 and sigma_b == 0:
            raise PluginConfigError(
                f"{name} with sigma_w^2 * E[phi'^2] = 1 and sigma_b = 0 keeps every length: q* is not "
                "unique; pass q explicitly to the function that needs it"
            )
        raise PluginConfigError(
            f"{name} with sigma_w = {sigma_w}, sigma_b = {sigma_b} has no finite q*: lengths grow "
            "without bound"
        )

    def gap(q: float) -> float:
        return sigma_w**2 * act.second_moment(q) + sigma_b**2 - q

    lo = 0.0
    if sigma_b == 0 and act.odd_through_zero:
        lo = 1e-12
        if gap(lo) <= 0:
            return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2.0
        if hi > 1e12:
            raise PluginConfigError(f"the q-map of {activation!r} has no finite fixed point below 1e12")
    return _bisect(gap, lo, hi)


def reference_q(activation: ActivationLike, sigma_w: float, sigma_b: float, q: float | None = None) -> float:
    """The length at which the c-map and ``chi_1`` are evaluated: ``q`` if given, else ``q*``.

    Positively homogeneous activations (``relu``, ``linear``) with ``sigma_b = 0`` are scale-free:
    their maps do not depend on ``q``, so ``q = 1`` stands in when ``q*`` does not exist.

    Example:
        >>> reference_q("relu", 2 ** 0.5, 0.0)
        1.0
    """
    if q is not None:
        if q < 0:
            raise PluginConfigError(f"q is a second moment and must be >= 0, got {q}")
        return q
    if activation in ("linear", "relu") and sigma_b == 0:
        return 1.0
    return q_star(activation, sigma_w, sigma_b)


def c_map(
    activation: ActivationLike, sigma_w: float, sigma_b: float, c: float, q: float | None = None
) -> float:
    """One step of the correlation map at length ``q`` (default ``q*``).

    ``(sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q_map(q)`` with ``Var u_i = q``,
    ``corr(u1, u2) = c`` (at ``q = q*`` the denominator is ``q*``).
    At ``q = 0`` (the ordered phase with ``sigma_b = 0``) the network is linear near 0: ``c -> c``.

    Example:
        >>> round(c_map("relu", 2 ** 0.5, 0.0, 0.0), 6)  # 1/pi: ReLU correlates orthogonal inputs
        0.31831
        >>> round(c_map("tanh", 2.0, 0.0, 1.0), 6)
        1.0
    """
    if not -1.0 <= c <= 1.0:
        raise PluginConfigError(f"c is a correlation and must lie in [-1, 1], got {c}")
    _check_scales(sigma_w, sigma_b)
    q = reference_q(activation, sigma_w, sigma_b, q)
    if q == 0:
        return c
    q_next = sigma_w**2 * _activation(activation).cross_moment(q, q, c) + sigma_b**2
    return q_next / (sigma_w**2 * _activation(activation).second_moment(q) + sigma_b**2)


def c_map_iterates(
    activation: ActivationLike, sigma_w: float, sigma_b: float, c0: float, depth: int, q0: float = 1.0
) -> np.ndarray:
    """Predicted ``c^1 .. c^depth`` for two inputs with mean squared feature ``q0`` and cosine ``c0``.

    The full 2x2 covariance map is iterated, so the prediction holds before lengths reach ``q*``.

    Example:
        >>> c_map_iterates("linear", 1.0, 0.0, 0.3, 2)
        array([0.3, 0.3])
    """
    _check_scales(sigma_w, sigma_b)
    if depth < 1:
        raise PluginConfigError(f"depth must be >= 1, got {depth}")
    act = _activation(activation)
    q = sigma_w**2 * q0 + sigma_b**2
    q12 = sigma_w**2 * c0 * q0 + sigma_b**2
    cs = [q12 / q if q > 0 else c0]
    for _ in range(depth - 1):
        c = min(1.0, max(-1.0, cs[-1]))
        q, q12 = (
            sigma_w**2 * act.second_moment(q) + sigma_b**2,
            sigma_w**2 * act.cross_moment(q, q, c) + sigma_b**2,
        )
        cs.append(q12 / q if q > 0 else c)
    return np.asarray(cs)


def c_star(activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """The stable fixed point of the c-map: 1 in the ordered phase, below 1 in the chaotic phase.

    Example:
        >>> c_star("tanh", 0.5, 0.1)
        1.0
        >>> abs(c_star("tanh", 3.0, 0.0)) < 1e-9  # chaos with sigma_b = 0 decorrelates fully
        True
    """
    if chi_1(activation, sigma_w, sigma_b) <= 1.0:
        return 1.0
    q = reference_q(activation, sigma_w, sigma_b, None)

    def gap(c: float) -> float:
        return c_map(activation, sigma_w, sigma_b, c, q) - c

    top = 1.0 - 1e-6
    if gap(top) >= 0:
        return 1.0
    return _bisect(gap, -1.0, top, iterations=60)


def chi_1(activation: ActivationLike, sigma_w: float, sigma_b: float, q: float | None = None) -> float:
    """``sigma_w^2 E[phi'(sqrt(q) z)^2]`` at ``q`` (default ``q*``): the mean squared singular
    value of one layer's Jacobian, and the slope of the c-map at ``c = 1``.

    Example:
        >>> round(chi_1("relu", 2 ** 0.5, 0.0), 12)
        1.0
        >>> chi_1("tanh", 1.0, 0.0)
        1.0
    """
    _check_scales(sigma_w, sigma_b)
    q = reference_q(activation, sigma_w, sigma_b, q)
    return sigma_w**2 * _activation(activation).derivative_moment(q, 2)


def derivative_moments(activation: ActivationLike, q: float) -> tuple[float, float]:
    """``(E[phi'(u)^2], E[phi'(u)^4])`` for ``u ~ N(0, q)``: the first two moments of ``D^2``.

    Example:
        >>> derivative_moments("relu", 1.0)
        (0.5, 0.5)
    """
    if q < 0:
        raise PluginConfigError(f"q is a second moment and must be >= 0, got {q}")
    act = _activation(activation)
    return act.derivative_moment(q, 2), act.derivative_moment(q, 4)


def chi_c(activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """``sigma_w^2 E[phi'(u1) phi'(u2)]`` at ``(q*, c*)``: the slope of the c-map at its fixed point.

    Example:
        >>> chi_c("tanh", 0.8, 0.0) == chi_1("tanh", 0.8, 0.0)  # ordered phase: c* = 1
        True
    """
    c = c_star(activation, sigma_w, sigma_b)
    if c >= 1.0:
        return chi_1(activation, sigma_w, sigma_b)
    q = reference_q(activation, sigma_w, sigma_b, None)
    return sigma_w**2 * _activation(activation).derivative_cross_moment(q, q, c)


def depth_scale(activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """Schoenholz's correlation depth scale ``xi_c = -1 / ln chi_c`` (``inf`` at the edge of chaos).

    ``|c^l - c*| ~ exp(-l / xi_c)``: information about how two inputs differ survives about
    ``xi_c`` layers, and networks much deeper than a few ``xi_c`` do not train.

    Example:
        >>> round(depth_scale("tanh", 0.5, 0.0), 4)  # -1 / ln(0.25)
        0.7213
        >>> depth_scale("tanh", 1.0, 0.0)
        inf
    """
    chi = chi_c(activation, sigma_w, sigma_b)
    if abs(chi - 1.0) < 1e-12:
        return math.inf
    return -1.0 / math.log(chi)


def critical_sigma_w(activation: ActivationLike, sigma_b: float = 0.0) -> float:
    """The edge of chaos: the ``sigma_w`` at which ``chi_1(sigma_w, sigma_b) = 1``.

    Example:
        >>> round(critical_sigma_w("tanh", 0.0), 6)
        1.0
        >>> round(critical_sigma_w("relu", 0.0) ** 2, 6)  # He et al.
        2.0
    """
    _check_scales(1.0, sigma_b)
    if activation == "linear":
        return 1.0
    if activation == "relu":
        return math.sqrt(2.0)

    def gap(sigma_w: float) -> float:
        return 1.0 - chi_1(activation, sigma_w, sigma_b)

    lo, hi = 1e-3, 1.0
    while gap(hi) > 0:
        hi *= 2.0
        if hi > 1e4:
            raise PluginConfigError(
                f"chi_1 of {activation!r} stays below 1 for sigma_w up to 1e4: no edge of chaos"
            )
    return _bisect(gap, lo, hi, iterations=80)
