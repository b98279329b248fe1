"""The data module that serves a PDE problem's collocation points to a physics-informed network.

:class:`PDECollocation` serves collocation points (uniform, Latin hypercube or scrambled Sobol, with
optional resampling) as one full batch per step, and the evaluation grid with its reference values.
The problems themselves live in :mod:`tdl_lightning.data.pde_problems` and Burgers' reference
solution in :mod:`tdl_lightning.data.pde_reference`; their public names are importable from here too.

Example:
    >>> problem = make_problem("burgers")
    >>> problem.coords, problem.bounds
    (('x', 't'), ((-1.0, 1.0), (0.0, 1.0)))
    >>> points, reference = problem.reference_grid()
    >>> points.shape, reference.shape
    (torch.Size([25600, 2]), torch.Size([25600, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from tdl_lightning.data.pde_problems import (
    PROBLEMS,
    SAMPLERS,
    Burgers,
    Heat1D,
    PDEProblem,
    Poisson2D,
    make_problem,
    partial_derivatives,
    require_whole_numbers,
    sample_box,
)
from tdl_lightning.data.pde_reference import burgers_cole_hopf
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

ADAPTIVE = ("none", "rad")


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

    Under DDP each process trains on its own share of the points: every process draws the same full
    set (same seeds; residual-weighted draws are broadcast from rank zero) and keeps the ``rank``-th
    of ``world_size`` equal slices of each kind of point (:meth:`share`), so the means of the
    processes' losses make the loss on the full set. The point counts must be multiples of the
    number of processes.

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

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.grid is None:
            self.grid = self.problem.reference_grid()

    def stop_resampling(self) -> None:
        """Keep the current collocation points from now on (the PINN calls this before L-BFGS)."""
        if self._train is not None:
            self._train.freeze()

    def _processes(self) -> tuple[int, int]:
        """``(global rank, world size)`` of the trainer this data module serves (``(0, 1)`` without one)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def share(self, batch: dict[str, Tensor], rank: int, world_size: int) -> dict[str, Tensor]:
        """Process ``rank``'s share of ``batch``: the ``rank``-th of ``world_size`` equal slices of every
        kind of point (and its values).

        Example:
            >>> dm = PDECollocation("heat1d", n_interior=8, n_initial=4, n_boundary=4)
            >>> full = dm.make_batch()
            >>> halves = [dm.share(full, r, 2) for r in (0, 1)]
            >>> torch.equal(torch.cat([h["x"] for h in halves]), full["x"]), halves[1]["u_initial"].shape
            (True, torch.Size([2, 1]))
        """
        counts = {"x": "n_interior", "x_initial": "n_initial", "x_boundary": "n_boundary"}
        for key, name in counts.items():
            count = len(batch[key]) if key in batch else 0
            if count % world_size:
                raise ConfigError(
                    f"PDECollocation shares its points equally over the {world_size} processes: {name}="
                    f"{count} is not a multiple of {world_size}; use e.g. {name}: "
                    f"{world_size * math.ceil(count / world_size)}"
                )
        return {key: value.chunk(world_size)[rank] for key, value in batch.items()}

    def _batch_of_this_process(self, epoch: int) -> dict[str, Tensor]:
        """The epoch's batch (:meth:`make_batch`), cut to this process's share under DDP."""
        rank, world_size = self._processes()
        if world_size == 1:
            return self.make_batch(epoch)
        batch = self.make_batch(epoch)
        if self.adaptive == "rad" and epoch > 0:  # drawn from residuals: every process takes rank zero's
            assert self.trainer is not None
            batch = self.trainer.strategy.broadcast(batch, src=0)
        return self.share(batch, rank, world_size)

    @override
    def train_dataloader(self) -> CollocationBatches:
        if self._train is None:
            self._train = CollocationBatches(
                self._batch_of_this_process, self.steps_per_epoch, self.resample_every_n_epochs
            )
        return self._train

    def _grid_loader(self) -> DataLoader:
        self.setup()
        assert self.grid is not None
        points, values = self.grid
        return DataLoader(TensorDataset(points, values), batch_size=len(points))

    @override
    def val_dataloader(self) -> DataLoader:
        return self._grid_loader()

    @override
    def test_dataloader(self) -> DataLoader:
        return self._grid_loader()

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._grid_loader()
