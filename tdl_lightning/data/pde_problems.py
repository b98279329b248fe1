"""PDE problems for physics-informed networks: residuals, conditions, domains, solutions, samplers.

A :class:`PDEProblem` holds everything a PINN needs to know about one equation: the coordinates and
their box domain, the residual ``N[u](x)`` (zero for the true solution), the initial and boundary
values, an output transform that builds the initial/boundary conditions into the network (the *hard*
constraint), and the solution itself, against which the relative L2 error is measured on a fixed grid.
Nothing is downloaded: Burgers' reference comes from the Cole-Hopf formula
(:func:`~tdl_lightning.data.pde_reference.burgers_cole_hopf`), the other problems have closed-form
solutions. Every name here is also importable from :mod:`tdl_lightning.data.pde`.

Example:
    >>> problem = make_problem("burgers")
    >>> problem.coords, problem.bounds
    (('x', 't'), ((-1.0, 1.0), (0.0, 1.0)))
    >>> points, reference = problem.reference_grid()
    >>> points.shape, reference.shape
    (torch.Size([25600, 2]), torch.Size([25600, 1]))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tdl_lightning.data.pde_reference import burgers_cole_hopf
from tdl_lightning.errors import ConfigError

__all__ = [
    "PROBLEMS",
    "SAMPLERS",
    "Burgers",
    "Heat1D",
    "PDEProblem",
    "Poisson2D",
    "make_problem",
    "partial_derivatives",
    "require_whole_numbers",
    "sample_box",
]

SAMPLERS = ("uniform", "lhs", "sobol")


def sample_box(n: int, bounds: Sequence[tuple[float, float]], method: str = "sobol", seed: int = 0) -> Tensor:
    """``n`` points in the box ``bounds`` (float64), drawn by ``method`` from a seeded generator.

    ``uniform``: i.i.d. uniform; ``lhs``: Latin hypercube (one point in each of ``n`` strata per
    coordinate); ``sobol``: a scrambled Sobol sequence (``torch.quasirandom.SobolEngine``), the
    low-discrepancy choice.

    Example:
        >>> pts = sample_box(8, [(-1.0, 1.0), (0.0, 1.0)], method="lhs", seed=0)
        >>> pts.shape, bool((pts[:, 0] >= -1).all() and (pts[:, 1] <= 1).all())
        (torch.Size([8, 2]), True)
        >>> sorted((sample_box(4, [(0.0, 1.0)], "lhs", seed=1)[:, 0] * 4).floor().tolist())
        [0.0, 1.0, 2.0, 3.0]
    """
    if method not in SAMPLERS:
        raise ConfigError(f"unknown collocation sampler {method!r}: choose one of {list(SAMPLERS)}")
    if n < 0:
        raise ConfigError(f"the number of points must be >= 0, got {n}")
    dim = len(bounds)
    generator = torch.Generator().manual_seed(seed)
    if method == "uniform":
        unit = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    elif method == "lhs":
        strata = torch.stack([torch.randperm(n, generator=generator) for _ in range(dim)], dim=1)
        unit = (strata + torch.rand(n, dim, generator=generator, dtype=torch.float64)) / max(n, 1)
    else:
        engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
        unit = engine.draw(n, dtype=torch.float64)
    low = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
    high = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
    return low + (high - low) * unit


def partial_derivatives(
    u: Tensor, x: Tensor, names: Sequence[str], coords: Sequence[str]
) -> dict[str, Tensor]:
    """The partial derivatives of ``u`` (shape ``(N, 1)``) named in ``names``, by autograd.

    A name is a string of coordinate letters: ``"t"`` is ``du/dt``, ``"xx"`` is ``d2u/dx2``, ``"xy"``
    the mixed derivative. ``x`` must require grad and ``u`` must be computed from it; the graph is
    kept (``create_graph=True``) so that the residual can be trained on and differentiated again
    (a Hessian of the PINN loss needs this). Each first derivative costs one backward pass for all
    coordinates together, each second derivative one more.

    Example:
        >>> x = torch.tensor([[0.5, 2.0]], requires_grad=True)
        >>> u = (x[:, :1] ** 3) * x[:, 1:]  # u = x^3 t
        >>> d = partial_derivatives(u, x, ["x", "t", "xx"], ("x", "t"))
        >>> [round(d[k].item(), 4) for k in ("x", "t", "xx")]
        [1.5, 0.125, 6.0]
    """
    index = {c: i for i, c in enumerate(coords)}
    for name in names:
        if not name or len(name) > 2 or any(c not in index for c in name):
            raise ConfigError(
                f"cannot take the derivative {name!r}: use one or two of the coordinates {list(coords)}, "
                "e.g. 't' or 'xx'"
            )
    first = _gradient(u, x)
    second: dict[int, Tensor] = {}
    out: dict[str, Tensor] = {}
    for name in names:
        i = index[name[0]]
        if len(name) == 1:
            out[name] = first[:, i : i + 1]
            continue
        if i not in second:
            second[i] = _gradient(first[:, i], x)
        j = index[name[1]]
        out[name] = second[i][:, j : j + 1]
    return out


def _gradient(y: Tensor, x: Tensor) -> Tensor:
    """``d(sum y)/dx`` with the graph kept; zeros where ``y`` does not depend on ``x`` (a constant)."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    return torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True)[0]


def _check_interval(name: str, low: float, high: float) -> tuple[float, float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ConfigError(
            f"the domain of {name} is empty or not finite: [{low}, {high}]; give an interval with "
            "low < high (e.g. t_max > 0)"
        )
    return float(low), float(high)


def require_whole_numbers(owner: str, **checks: tuple[int, int]) -> None:
    """Raise a :class:`ConfigError` unless every ``name=(value, least)`` is a whole number >= least.

    Example:
        >>> require_whole_numbers("PINN", adam_steps=(10, 0))
        >>> require_whole_numbers("PINN", adam_steps=(-1, 0))
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: PINN adam_steps must be a whole number >= 0, got -1
    """
    for name, (value, least) in checks.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{owner} {name} must be a whole number >= {least}, got {value!r}")


def _check_positive(name: str, value: float, problem: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{problem}: {name} must be a finite number > 0, got {value}")
    return float(value)


class PDEProblem:
    """One PDE on a box: residual, conditions, hard-constraint transform and solution.

    Subclasses set ``coords`` (coordinate names, time last and called ``t`` when there is one),
    ``bounds``, ``derivatives`` (the partials the residual uses, see :func:`partial_derivatives`) and
    implement :meth:`residual`, :meth:`solution` and :meth:`hard_constraint`.

    Example:
        >>> problem = Heat1D(alpha=0.1)
        >>> x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
        >>> float(problem.initial_value(x)), problem.time_dependent  # sin(pi/2) + 0.5 sin(3 pi/2)
        (0.5, True)
    """

    name: str = "pde"
    coords: tuple[str, ...] = ()
    bounds: tuple[tuple[float, float], ...] = ()
    derivatives: tuple[str, ...] = ()
    grid_size: tuple[int, int] = (101, 101)

    @property
    def time_dependent(self) -> bool:
        """Whether the last coordinate is time ``t`` (then there is an initial condition)."""
        return bool(self.coords) and self.coords[-1] == "t"

    @property
    def spatial(self) -> tuple[int, ...]:
        """Indices of the space coordinates (all but ``t``)."""
        return tuple(i for i, c in enumerate(self.coords) if c != "t")

    def residual(self, x: Tensor, u: Tensor, d: dict[str, Tensor]) -> Tensor:
        """The PDE residual at ``x`` (shape ``(N, 1)``); zero where ``u`` solves the equation."""
        raise NotImplementedError

    def solution(self, x: Tensor) -> Tensor:
        """The true solution at points ``x`` (shape ``(N, d)`` -> ``(N, 1)``)."""
        raise NotImplementedError

    def hard_constraint(self, x: Tensor, n: Tensor) -> Tensor:
        """``u = g(x) + D(x) n(x)``: a network output ``n`` mapped to a ``u`` that meets the IC/BC."""
        raise NotImplementedError

    def initial_value(self, x: Tensor) -> Tensor:
        """``u(x, t_0)``, the initial condition (time-dependent problems)."""
        return self.solution(x)

    def boundary_value(self, x: Tensor) -> Tensor:
        """The Dirichlet value of ``u`` on the spatial boundary."""
        return self.solution(x)

    def grid_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """The two axes of the fixed evaluation grid (first coordinate, second coordinate).

        Example:
            >>> [len(a) for a in Poisson2D().grid_axes()]
            [101, 101]
        """
        (a0, b0), (a1, b1) = self.bounds
        return np.linspace(a0, b0, self.grid_size[0]), np.linspace(a1, b1, self.grid_size[1])

    def reference_grid(self) -> tuple[Tensor, Tensor]:
        """The evaluation grid's points ``(N, 2)`` (first axis outer) and reference values ``(N, 1)``.

        Example:
            >>> pts, ref = Heat1D().reference_grid()
            >>> pts.shape, ref.dtype
            (torch.Size([10201, 2]), torch.float64)
        """
        a0, a1 = self.grid_axes()
        g0, g1 = np.meshgrid(a0, a1, indexing="ij")
        points = torch.from_numpy(np.stack([g0.ravel(), g1.ravel()], axis=1))
        with torch.no_grad():
            return points, self.solution(points)

    def sample_interior(self, n: int, method: str = "sobol", seed: int = 0) -> Tensor:
        """``n`` collocation points inside the domain.

        Example:
            >>> Burgers().sample_interior(16).shape
            torch.Size([16, 2])
        """
        return sample_box(n, self.bounds, method, seed)

    def sample_initial(self, n: int, method: str = "sobol", seed: int = 0) -> Tensor:
        """``n`` points on the initial slice ``t = t_0``.

        Example:
            >>> Burgers().sample_initial(4)[:, 1].tolist()
            [0.0, 0.0, 0.0, 0.0]
        """
        points = sample_box(n, self.bounds, method, seed + 1)
        points[:, -1] = self.bounds[-1][0]
        return points

    def sample_boundary(self, n: int, method: str = "sobol", seed: int = 0) -> Tensor:
        """``n`` points on the spatial boundary, spread evenly over its faces.

        Example:
            >>> sorted(set(Burgers().sample_boundary(6)[:, 0].tolist()))
            [-1.0, 1.0]
        """
        points = sample_box(n, self.bounds, method, seed + 2)
        faces = [(i, side) for i in self.spatial for side in (0, 1)]
        for k in range(n):
            i, side = faces[k % len(faces)]
            points[k, i] = self.bounds[i][side]
        return points

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Burgers(PDEProblem):
    """Viscous Burgers: ``u_t + u u_x = nu u_xx`` on ``[-1, 1] x [0, t_max]``.

    ``u(x, 0) = -sin(pi x)``, ``u(+-1, t) = 0``; with ``nu = 0.01/pi`` (Raissi et al. 2019) a shock
    forms at ``x = 0`` near ``t = 0.3``. The reference grid is Raissi's: 256 x-values, 100 times
    ``0, 0.01, ..., 0.99`` (for ``t_max = 1``). Hard constraint: ``u = -sin(pi x) + t (1 - x^2) n``.

    Example:
        >>> problem = Burgers()
        >>> round(problem.nu * math.pi, 6)
        0.01
        >>> x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
        >>> float(problem.hard_constraint(x, torch.ones(1, 1, dtype=torch.float64)))
        -1.0
    """

    name = "burgers"
    coords = ("x", "t")
    derivatives = ("t", "x", "xx")
    grid_size = (256, 100)

    def __init__(self, nu: float = 0.01 / math.pi, t_max: float = 1.0, quadrature_nodes: int = 128) -> None:
        self.nu = _check_positive("nu", nu, "Burgers")
        self.t_max = _check_interval("t", 0.0, t_max)[1]
        if quadrature_nodes < 8:
            raise ConfigError(f"Burgers: quadrature_nodes must be >= 8, got {quadrature_nodes}")
        self.quadrature_nodes = int(quadrature_nodes)
        self.bounds = ((-1.0, 1.0), (0.0, self.t_max))

    def residual(self, x: Tensor, u: Tensor, d: dict[str, Tensor]) -> Tensor:
        return d["t"] + u * d["x"] - self.nu * d["xx"]

    def solution(self, x: Tensor) -> Tensor:
        values = burgers_cole_hopf(
            x[:, 0].detach().cpu().double().numpy(),
            x[:, 1].detach().cpu().double().numpy(),
            self.nu,
            self.quadrature_nodes,
        )
        return torch.from_numpy(values).to(x.device, x.dtype).unsqueeze(1)

    def initial_value(self, x: Tensor) -> Tensor:
        return -torch.sin(math.pi * x[:, :1])

    def boundary_value(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x[:, :1])

    def hard_constraint(self, x: Tensor, n: Tensor) -> Tensor:
        xs, t = x[:, :1], x[:, 1:2]
        return -torch.sin(math.pi * xs) + t * (1.0 - xs**2) * n

    def grid_axes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.linspace(-1.0, 1.0, 256), np.linspace(0.0, self.t_max, 101)[:-1]

    def __repr__(self) -> str:
        return f"Burgers(nu={self.nu:.6g}, t_max={self.t_max:g})"


class Poisson2D(PDEProblem):
    """Poisson ``-(u_xx + u_yy) = f`` on the unit square, manufactured ``u = sin(kx pi x) sin(ky pi y)``.

    ``f = (kx^2 + ky^2) pi^2 u`` and ``u = 0`` on the boundary (integer frequencies). Hard
    constraint: ``u = x (1 - x) y (1 - y) n``.

    Example:
        >>> problem = Poisson2D(kx=1, ky=2)
        >>> float(problem.solution(torch.tensor([[0.5, 0.25]], dtype=torch.float64)))
        1.0
    """

    name = "poisson2d"
    coords = ("x", "y")
    bounds = ((0.0, 1.0), (0.0, 1.0))
    derivatives = ("xx", "yy")

    def __init__(self, kx: int = 1, ky: int = 2) -> None:
        for label, k in (("kx", kx), ("ky", ky)):
            if int(k) != k or k < 1:
                raise ConfigError(
                    f"Poisson2D: {label} must be a whole number >= 1 (so that u = 0 on the boundary), got {k}"
                )
        self.kx, self.ky = int(kx), int(ky)

    def source(self, x: Tensor) -> Tensor:
        """The right-hand side ``f`` of the manufactured solution.

        Example:
            >>> round(float(Poisson2D(1, 1).source(torch.tensor([[0.5, 0.5]]))), 4)
            19.7392
        """
        return (self.kx**2 + self.ky**2) * math.pi**2 * self.solution(x)

    def residual(self, x: Tensor, u: Tensor, d: dict[str, Tensor]) -> Tensor:
        return -(d["xx"] + d["yy"]) - self.source(x)

    def solution(self, x: Tensor) -> Tensor:
        return torch.sin(self.kx * math.pi * x[:, :1]) * torch.sin(self.ky * math.pi * x[:, 1:2])

    def hard_constraint(self, x: Tensor, n: Tensor) -> Tensor:
        xs, ys = x[:, :1], x[:, 1:2]
        return xs * (1 - xs) * ys * (1 - ys) * n

    def __repr__(self) -> str:
        return f"Poisson2D(kx={self.kx}, ky={self.ky})"


class Heat1D(PDEProblem):
    """Heat equation ``u_t = alpha u_xx`` on ``[0, length] x [0, t_max]`` with ``u = 0`` at both ends.

    ``u(x, 0) = sum_k a_k sin(k pi x / length)`` (``amplitudes = [a_1, a_2, ...]``) and the solution
    ``u = sum_k a_k exp(-alpha (k pi / length)^2 t) sin(k pi x / length)``. Hard constraint:
    ``u = u(x, 0) + t x (length - x) n``.

    Example:
        >>> problem = Heat1D(alpha=0.1, amplitudes=[1.0])
        >>> x = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
        >>> round(float(problem.solution(x)), 6) == round(math.exp(-0.1 * math.pi**2), 6)
        True
    """

    name = "heat1d"
    coords = ("x", "t")
    derivatives = ("t", "xx")

    def __init__(
        self,
        alpha: float = 0.1,
        length: float = 1.0,
        t_max: float = 1.0,
        amplitudes: Sequence[float] = (1.0, 0.0, 0.5),
    ) -> None:
        self.alpha = _check_positive("alpha (the diffusivity)", alpha, "Heat1D")
        self.length = _check_interval("x", 0.0, length)[1]
        self.t_max = _check_interval("t", 0.0, t_max)[1]
        if not amplitudes:
            raise ConfigError("Heat1D: amplitudes must list at least one Fourier coefficient, e.g. [1.0]")
        self.amplitudes = tuple(float(a) for a in amplitudes)
        self.bounds = ((0.0, self.length), (0.0, self.t_max))

    def residual(self, x: Tensor, u: Tensor, d: dict[str, Tensor]) -> Tensor:
        return d["t"] - self.alpha * d["xx"]

    def solution(self, x: Tensor) -> Tensor:
        xs, t = x[:, :1], x[:, 1:2]
        u = torch.zeros_like(xs)
        for k, a in enumerate(self.amplitudes, start=1):
            wave = k * math.pi / self.length
            u = u + a * torch.exp(-self.alpha * wave**2 * t) * torch.sin(wave * xs)
        return u

    def hard_constraint(self, x: Tensor, n: Tensor) -> Tensor:
        xs, t = x[:, :1], x[:, 1:2]
        return self.initial_value(x) + t * xs * (self.length - xs) * n

    def initial_value(self, x: Tensor) -> Tensor:
        return self.solution(torch.cat([x[:, :1], torch.zeros_like(x[:, 1:2])], dim=1))

    def __repr__(self) -> str:
        return f"Heat1D(alpha={self.alpha:g}, amplitudes={list(self.amplitudes)})"


PROBLEMS: dict[str, type[PDEProblem]] = {"burgers": Burgers, "poisson2d": Poisson2D, "heat1d": Heat1D}


def make_problem(name: str, **kwargs: Any) -> PDEProblem:
    """The problem called ``name`` (``burgers``, ``poisson2d``, ``heat1d``) with its parameters.

    Example:
        >>> make_problem("heat1d", alpha=0.05).alpha
        0.05
        >>> make_problem("wave")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: unknown PDE problem 'wave': choose one of ['burgers', ...]
    """
    if name not in PROBLEMS:
        raise ConfigError(f"unknown PDE problem {name!r}: choose one of {list(PROBLEMS)}")
    cls = PROBLEMS[name]
    try:
        return cls(**kwargs)
    except TypeError as err:
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(
            f"bad problem_args {kwargs} for {name!r} ({err}): its parameters are {allowed}"
        ) from None
