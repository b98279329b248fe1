"""PDE problems for physics-informed networks, and the data module that serves their points.

A :class:`PDEProblem` holds everything a PINN needs to know about one equation: the coordinates and
their box domain, the residual ``N[u](x)`` (zero for the true solution), the initial and boundary
values, an output transform that builds the initial/boundary conditions into the network (the *hard*
constraint), and the solution itself, against which the relative L2 error is measured on a fixed grid.
Nothing is downloaded: Burgers' reference comes from the Cole-Hopf formula evaluated by Gauss-Hermite
quadrature (:func:`burgers_cole_hopf`), the other problems have closed-form solutions.

:class:`PDECollocation` serves collocation points (uniform, Latin hypercube or scrambled Sobol, with
optional resampling) as one full batch per step, and the evaluation grid with its reference values.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tdl_lightning.errors import ConfigError

__all__ = [
    "PROBLEMS",
    "SAMPLERS",
    "Burgers",
    "CollocationBatches",
    "Heat1D",
    "PDECollocation",
    "PDEProblem",
    "Poisson2D",
    "burgers_cole_hopf",
    "make_problem",
    "partial_derivatives",
    "require_whole_numbers",
    "sample_box",
]

SAMPLERS = ("uniform", "lhs", "sobol")
ADAPTIVE = ("none", "rad")


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


def burgers_cole_hopf(x: np.ndarray, t: np.ndarray, nu: float, n_nodes: int = 128) -> np.ndarray:
    """Burgers' solution for ``u(x, 0) = -sin(pi x)`` by the Cole-Hopf formula (float64, numpy).

    ``u(x,t) = -int sin(pi(x-e)) f(x-e) G(e,t) de / int f(x-e) G(e,t) de`` with
    ``f(y) = exp(-cos(pi y) / (2 pi nu))`` and the heat kernel ``G``; with ``e = 2 sqrt(nu t) z``
    both integrals are Gauss-Hermite sums. With 128 nodes the result agrees with adaptive quadrature
    to ~1e-15 for ``nu = 0.01/pi``, ``t <= 1``, shock included.

    Example:
        >>> u = burgers_cole_hopf(np.array([-0.5, 0.0, 0.5]), np.array([0.0, 0.5, 0.5]), nu=0.01 / np.pi)
        >>> (np.round(u, 6) + 0.0).tolist()
        [1.0, 0.0, -0.59277]
    """
    if nu <= 0:
        raise ConfigError(f"Burgers' viscosity nu must be > 0, got {nu}")
    z, w = np.polynomial.hermite.hermgauss(n_nodes)
    x, t = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
    y = x[..., None] - 2.0 * np.sqrt(nu * np.maximum(t, 0.0))[..., None] * z
    exponent = -np.cos(np.pi * y) / (2.0 * np.pi * nu)
    weights = w * np.exp(exponent - exponent.max(axis=-1, keepdims=True))
    u = -(np.sin(np.pi * y) * weights).sum(-1) / weights.sum(-1)
    return np.where(t > 0, u, -np.sin(np.pi * x))


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


class CollocationBatches:
    """The training loader: the same full batch of collocation points, ``steps`` times per epoch.

    With ``resample_every_n_epochs > 0`` the interior points are drawn afresh (new seed) at the start
    of every such epoch, until :meth:`freeze` (called by the PINN when it switches to L-BFGS, whose
    line search needs a fixed objective).

    Example:
        >>> loader = CollocationBatches(lambda epoch: {"x": torch.zeros(3, 2) + epoch}, steps=2)
        >>> [b["x"].shape for b in loader]
        [torch.Size([3, 2]), torch.Size([3, 2])]
    """

    def __init__(self, make_batch: Any, steps: int, resample_every_n_epochs: int = 0) -> None:
        self.make_batch, self.steps = make_batch, steps
        self.resample_every_n_epochs = resample_every_n_epochs
        self.epoch, self.frozen = 0, False
        self.batch: dict[str, Tensor] = make_batch(0)

    def freeze(self) -> None:
        """Stop resampling: every later batch is the current one."""
        self.frozen = True

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        every = self.resample_every_n_epochs
        if every > 0 and self.epoch > 0 and self.epoch % every == 0 and not self.frozen:
            self.batch = self.make_batch(self.epoch)
        self.epoch += 1
        for _ in range(self.steps):
            yield self.batch

    def __len__(self) -> int:
        return self.steps


class PDECollocation(L.LightningDataModule):
    """Collocation points for training and the reference grid for evaluation, for one PDE problem.

    Training batches are dicts: ``x`` (interior points), and unless the problem has no time
    ``x_initial``/``u_initial``, and ``x_boundary``/``u_boundary`` (points and values); all float64.
    Validation, test and predict batches are ``(grid points, reference values)``.

    Args:
        problem: ``burgers``, ``poisson2d`` or ``heat1d``.
        problem_args: the problem's parameters, e.g. ``{nu: 0.01}`` (see :data:`PROBLEMS`).
        n_interior: collocation points inside the domain.
        n_initial: points on the initial slice (time-dependent problems).
        n_boundary: points on the spatial boundary.
        sampler: ``uniform``, ``lhs`` or ``sobol``.
        resample_every_n_epochs: draw fresh interior points every this many epochs (0: never).
        adaptive: ``none``, or ``rad`` (residual-based adaptive distribution, Wu et al. 2023): each
            fresh draw takes ``n_interior`` of ``candidates`` points (drawn by ``sampler``) without
            replacement, with probability proportional to ``|r|^rad_k / mean(|r|^rad_k) + rad_c`` for the
            current PDE residual ``r``, so points gather where the residual is large (Burgers' shock).
            The PINN task hands its residual over at ``setup``; the first draw, before any training,
            is plain.
        candidates: candidate points per adaptive draw.
        rad_k: exponent of the residual in the adaptive density.
        rad_c: floor of the adaptive density (relative to the mean): the uniform share.
        steps_per_epoch: optimizer steps per epoch (the full batch is reused); validation runs once
            per epoch.
        seed: seed of the point sets.

    Example:
        >>> dm = PDECollocation("heat1d", n_interior=64, n_initial=8, n_boundary=8, steps_per_epoch=2)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted((k, tuple(v.shape)) for k, v in batch.items())[:2]
        [('u_boundary', (8, 1)), ('u_initial', (8, 1))]
        >>> next(iter(dm.val_dataloader()))[0].shape
        torch.Size([10201, 2])
    """

    def __init__(
        self,
        problem: str = "burgers",
        problem_args: dict[str, Any] | None = None,
        n_interior: int = 10000,
        n_initial: int = 256,
        n_boundary: int = 256,
        sampler: str = "sobol",
        resample_every_n_epochs: int = 0,
        adaptive: str = "none",
        candidates: int = 50_000,
        rad_k: float = 1.0,
        rad_c: float = 1.0,
        steps_per_epoch: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.problem = make_problem(problem, **(problem_args or {}))
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown collocation sampler {sampler!r}: choose one of {list(SAMPLERS)}")
        require_whole_numbers(
            "PDECollocation",
            n_interior=(n_interior, 1),
            n_initial=(n_initial, 0),
            n_boundary=(n_boundary, 0),
            steps_per_epoch=(steps_per_epoch, 1),
            resample_every_n_epochs=(resample_every_n_epochs, 0),
            candidates=(candidates, 1),
        )
        if adaptive not in ADAPTIVE:
            raise ConfigError(f"unknown PDECollocation adaptive {adaptive!r}: choose one of {list(ADAPTIVE)}")
        if adaptive != "none" and candidates < n_interior:
            raise ConfigError(
                f"PDECollocation adaptive={adaptive!r} draws n_interior={n_interior} of "
                f"candidates={candidates} points: give at least as many candidates"
            )
        if adaptive != "none" and resample_every_n_epochs == 0:
            raise ConfigError(
                f"PDECollocation adaptive={adaptive!r} acts when points are drawn afresh: set "
                "resample_every_n_epochs >= 1"
            )
        if not (rad_k >= 0 and rad_c >= 0 and math.isfinite(rad_k + rad_c)):
            raise ConfigError(f"PDECollocation rad_k={rad_k}, rad_c={rad_c}: use finite values >= 0")
        self.adaptive, self.candidates, self.rad_k, self.rad_c = adaptive, candidates, rad_k, rad_c
        self.residual: Callable[[Tensor], Tensor] | None = None  # attached by the PINN task
        self.n_interior, self.n_initial, self.n_boundary = n_interior, n_initial, n_boundary
        self.sampler, self.seed = sampler, seed
        self.resample_every_n_epochs, self.steps_per_epoch = resample_every_n_epochs, steps_per_epoch
        self.grid: tuple[Tensor, Tensor] | None = None
        self._train: CollocationBatches | None = None

    def make_batch(self, epoch: int = 0) -> dict[str, Tensor]:
        """The collocation batch of an epoch (interior points re-drawn with seed ``seed + epoch``).

        Example:
            >>> dm = PDECollocation("poisson2d", n_interior=16, n_boundary=4)
            >>> sorted(dm.make_batch())
            ['u_boundary', 'x', 'x_boundary']
        """
        p, method = self.problem, self.sampler
        seed = self.seed + 7919 * epoch
        if self.adaptive == "rad" and epoch > 0:
            batch = {"x": self.residual_weighted_points(seed)}
        else:
            batch = {"x": p.sample_interior(self.n_interior, method, seed)}
        if p.time_dependent and self.n_initial > 0:
            x0 = p.sample_initial(self.n_initial, method, self.seed)
            batch.update(x_initial=x0, u_initial=p.initial_value(x0))
        if self.n_boundary > 0:
            xb = p.sample_boundary(self.n_boundary, method, self.seed)
            batch.update(x_boundary=xb, u_boundary=p.boundary_value(xb))
        return batch

    def attach_residual(self, residual: Callable[[Tensor], Tensor]) -> None:
        """Use ``residual(points) -> (N, 1)`` (no gradient needed) for adaptive draws; the PINN calls this.

        Example:
            >>> dm = PDECollocation("heat1d", n_interior=8, adaptive="rad", candidates=64,
            ...                     resample_every_n_epochs=1)
            >>> dm.attach_residual(lambda x: x[:, :1])
            >>> dm.make_batch(epoch=1)["x"].shape
            torch.Size([8, 2])
        """
        self.residual = residual

    def residual_weighted_points(self, seed: int) -> Tensor:
        """``n_interior`` of ``candidates`` points drawn with the RAD density (see ``adaptive``).

        Example:
            >>> dm = PDECollocation("burgers", n_interior=100, adaptive="rad", candidates=2000,
            ...                     resample_every_n_epochs=1, rad_c=0.0)
            >>> dm.attach_residual(lambda x: (x[:, :1].abs() < 0.1).double())  # residual near x = 0
            >>> bool((dm.residual_weighted_points(seed=1)[:, 0].abs() < 0.1).all())
            True
        """
        if self.residual is None:
            raise ConfigError(
                "PDECollocation adaptive='rad' needs the PINN's residual: train with the PINN task (it "
                "attaches it at setup) or call attach_residual(fn)"
            )
        candidates = self.problem.sample_interior(self.candidates, self.sampler, seed)
        magnitude = self.residual(candidates).detach().reshape(len(candidates)).abs().double().cpu()
        weight = magnitude**self.rad_k
        mean = weight.mean()
        density = (weight / mean if mean > 0 else torch.zeros_like(weight)) + self.rad_c
        if not (torch.isfinite(density).all() and int((density > 0).sum()) >= self.n_interior):
            raise ConfigError(
                "PDECollocation adaptive='rad': the residual gave no usable density (non-finite, or "
                f"fewer than n_interior={self.n_interior} candidates of positive weight with rad_c = 0); "
                "lower the learning rate or set rad_c > 0"
            )
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.multinomial(density, self.n_interior, replacement=False, generator=generator)
        return candidates[chosen]

    def setup(self, stage: str | None = None) -> None:
        if self.grid is None:
            self.grid = self.problem.reference_grid()

    def stop_resampling(self) -> None:
        """Keep the current collocation points from now on (the PINN calls this before L-BFGS)."""
        if self._train is not None:
            self._train.freeze()

    def train_dataloader(self) -> CollocationBatches:
        if self._train is None:
            self._train = CollocationBatches(
                self.make_batch, self.steps_per_epoch, self.resample_every_n_epochs
            )
        return self._train

    def _grid_loader(self) -> DataLoader:
        self.setup()
        assert self.grid is not None
        points, values = self.grid
        return DataLoader(TensorDataset(points, values), batch_size=len(points))

    def val_dataloader(self) -> DataLoader:
        return self._grid_loader()

    def test_dataloader(self) -> DataLoader:
        return self._grid_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._grid_loader()
