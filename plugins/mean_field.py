"""Mean-field theory of signal propagation at initialisation (Poole 2016, Schoenholz 2017).

A deep network ``h^l = W^l phi(h^{l-1}) + b^l`` with ``W_ij ~ N(0, sigma_w^2/N)`` and
``b_i ~ N(0, sigma_b^2)`` propagates, in the wide limit, the length ``q^l`` of a pre-activation
vector through the *q-map* and the correlation ``c^l`` of two inputs through the *c-map*::

    q^{l+1} = sigma_w^2 E[phi(sqrt(q^l) z)^2] + sigma_b^2
    c^{l+1} = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*,   corr(u_1, u_2) = c^l

``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]`` separates the ordered phase (``chi_1 < 1``) from the
chaotic one (``chi_1 > 1``); correlations approach their fixed point over the depth scale
``xi_c = -1/ln chi_c`` that diverges at the edge of chaos.

The Gaussian expectations of each activation (closed forms where they exist, else an adaptive
trapezoid rule) come from :mod:`plugins.gaussian_moments`. The measurements these predictions are
compared with live in :mod:`plugins.signal_propagation`.

Example:
    >>> round(q_star("tanh", 1.5, 0.1), 6)
    0.813322
    >>> round(chi_1("relu", 2 ** 0.5, 0.0), 6)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from plugins.checks import PluginConfigError
from plugins.gaussian_moments import ACTIVATION_NAMES, ActivationLike, _activation

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
