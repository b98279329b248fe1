"""The callback that logs the top Hessian eigenvalues (and trace, density, per-layer lambda_max).

Example:
    >>> cb = HessianEigenvalues(k=2, per_layer=True)
    >>> cb.name, cb.per_layer
    ('hessian', True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from matplotlib.figure import Figure
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import DiagnosticCallback, LossFn, ProbeResult, require_loss
from plugins.checks import check_moments
from plugins.curvature._checks import check_curvature, check_density, check_eigen, check_matvecs
from plugins.curvature._sampling import random_vector
from plugins.curvature.figures import density_figure, lambda_max_figure
from plugins.curvature.functions import Curvature, curvature_operator
from plugins.curvature.hutchpp import hutchpp_trace
from plugins.curvature.lanczos import lanczos_eigenvalues
from plugins.curvature.model import ParameterChoice, selected_parameters
from plugins.curvature.operator import CurvatureOperator
from plugins.curvature.slq import spectral_density

__all__ = ["HessianEigenvalues", "layer_blocks"]

_DENSITY_SEED = 0  # the seed of the spectral density's start vectors


def _sgd_lr(pl_module: L.LightningModule) -> tuple[float, float] | None:
    """``(lr, momentum)`` of the first param group if training uses ``torch.optim.SGD``."""
    try:
        optimizers = pl_module.trainer.optimizers
    except (AttributeError, RuntimeError):  # not attached to a Trainer
        return None
    if not optimizers or not isinstance(optimizers[0], torch.optim.SGD):
        return None
    group = optimizers[0].param_groups[0]
    return float(group["lr"]), float(group.get("momentum", 0.0))


def _warm_start(vectors: Tensor, seed: int) -> Tensor:
    """A Lanczos start from eigenvectors (rows): their unit sum plus a seeded random tenth."""
    summed = vectors.sum(0)
    noise = torch.randn(summed.numel(), generator=torch.Generator().manual_seed(seed), dtype=summed.dtype)
    return summed / summed.norm() + 0.1 * noise.to(summed.device) / noise.norm()


class _Replay(CurvatureOperator):
    """``op``, keeping its first ``keep`` products: a second Lanczos run from the same start vector
    makes the first run's steps again bit for bit, and after :meth:`replay` gets each of them back
    (checked: the same vector) without a product, until the runs part.

    At a probe that draws the density, the top-k run starts from the density's first Rademacher
    vector (not from the warm start): the density's run then costs ``density_steps`` less the top-k's
    steps (LeNet-5 at init: 69 products become 40; at the end 44 become 40). Rank-local, so not used
    under DDP (a replay that one rank made and another did not would leave their all-reduces out of
    step).
    """

    def __init__(self, op: CurvatureOperator, keep: int) -> None:
        self.op, self.keep = op, keep
        self.size, self.dtype, self.device = op.size, op.dtype, op.device
        self.kept: list[tuple[Tensor, Tensor]] = []
        self.position: int | None = None  # None: recording; else the next kept product to replay

    def replay(self) -> None:
        self.position = 0

    def _matvec(self, v: Tensor) -> Tensor:
        if self.position is None:
            product = self.op.matvec(v)
            if len(self.kept) < self.keep:
                self.kept.append((v.clone(), product.clone()))
            return product
        if self.position < len(self.kept) and torch.equal(self.kept[self.position][0], v):
            self.position += 1
            return self.kept[self.position - 1][1].clone()
        self.position, self.kept = len(self.kept), []  # the runs parted: no replay from here on
        return self.op.matvec(v)

    def _matmat(self, m: Tensor) -> Tensor:
        return self.op.matmat(m)


def layer_blocks(model: nn.Module, parameters: ParameterChoice = None) -> dict[str, list[str]]:
    """The chosen trainable parameters grouped by the module that holds them: one block per layer.

    Example:
        >>> layer_blocks(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
        {'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}
    """
    blocks: dict[str, list[str]] = {}
    for name in selected_parameters(model, parameters)[0]:
        blocks.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(name)
    return blocks


class HessianEigenvalues(DiagnosticCallback):
    """Logs the top Hessian eigenvalues (``lambda_max`` first) on a fixed probe batch during training.

    Logged scalars (``hessian/<key>``): ``lambda_1`` ... ``lambda_k`` and ``lambda_max``; for
    ``torch.optim.SGD`` also ``two_over_lr`` (the edge of stability of gradient descent, Cohen et
    al. 2021), ``stability_threshold`` (``(2 + 2 momentum) / lr``) and ``eos_ratio`` =
    ``lambda_max / stability_threshold`` (1 at the edge); with ``trace=True`` also ``trace`` and
    ``trace_std_error``; with ``per_layer=True`` ``<layer>/lambda_max``, the top eigenvalue of each
    layer's diagonal block (the curvature in that layer's parameters, the others held fixed);
    ``probe_seconds`` (the probe's cost). With ``density_at`` the spectral density is drawn
    (``density`` figure, log scale: bulk near 0 and outliers) at those moments. At the end of
    training the figure ``lambda_max_curve`` shows ``lambda_max`` against the step beside ``2 / lr``.

    One operator serves the top-k, the trace and the density of a probe; its Lanczos basis keeps
    within 1 GiB (thick restarts above; ``max_basis``), beside the probe's copy of the training
    state (parameters, gradients, buffers) that the base class keeps to restore it.

    Needs ``pl_module.loss(batch)`` (or ``loss_fn``).

    Args:
        k: how many top eigenvalues.
        curvature: ``"hessian"`` or ``"ggn"``.
        tol: Lanczos stopping tolerance (estimated relative eigenvalue error).
        max_iter: the most Hessian-vector products per eigenvalue probe.
        warm_start: start each probe's Lanczos run from the previous probe's eigenvectors (summed,
            with a tenth of a random vector so that a newly risen eigenvalue is still seen): fewer
            products on slowly changing weights. Not kept in checkpoints (a resumed run's first
            probe starts at random). A probe that draws the density starts at the density's first
            vector instead, and the density's Lanczos run reuses those products.
        trace: also estimate the trace (Hutch++) at every probe.
        trace_matvecs: products for the trace.
        density_at: when to draw the spectral density: any of ``"init"``, ``"step"``, ``"epoch"``,
            ``"end"`` (e.g. ``["init", "end"]``).
        density_probes: SLQ start vectors.
        density_steps: Lanczos steps per SLQ start vector.
        parameters: probe the block of these parameters only: names of parameters or modules, as
            in ``named_parameters()`` (a list in a YAML config), or, from Python, a predicate on the
            parameter's name (``lambda name: name.startswith("conv")``). ``None``: all of them.
        per_layer: also log each layer's ``lambda_max`` (one Lanczos run per layer).
        max_basis: the most Lanczos vectors held at once (default: as many as fit in 1 GiB).
        loss_fn: ``loss_fn(model, batch)``; default ``pl_module.loss``.
        distributed: under DDP, every rank probes its shard of the probe batch and the products
            are all-reduced, so the result is that of the whole probe batch.
        at_end: probe when training ends (default here: yes).
        **schedule: the schedule and probe batch of :class:`~plugins.base.DiagnosticCallback` (``at_init``,
            ``every_n_steps``, ``every_n_epochs``, ``probe_size``, ``probe_seed``). By default: at init and at
            the end, on 256 inputs (LeNet-5's lambda_max on 256 and on 512 digits differ by 0.3% at init; the
            probe costs half).

    Two instances that probe different ``parameters`` (or curvatures) can be attached together:
    each keeps its own history in the checkpoint (their ``state_key`` differs).

    Raises:
        CurvatureError: (a :class:`~plugins.base.PluginConfigError`) a bad argument (at construction),
            ``parameters`` that name no
            trainable parameter (at setup).

    Example:
        >>> cb = HessianEigenvalues(k=3, every_n_steps=50, density_at=["init", "end"])
        >>> cb.name, cb.k
        ('hessian', 3)
    """

    name = "hessian"
    state_key_args = ("curvature", "parameters")

    def __init__(
        self,
        k: int = 1,
        curvature: Curvature = "hessian",
        tol: float = 1e-3,
        max_iter: int = 100,
        warm_start: bool = True,
        trace: bool = False,
        trace_matvecs: int = 30,
        density_at: list[str] | None = None,
        density_probes: int = 1,
        density_steps: int = 60,
        parameters: Sequence[str] | Callable[[str], bool] | None = None,
        per_layer: bool = False,
        max_basis: int | None = None,
        loss_fn: LossFn | None = None,
        distributed: bool = False,
        *,
        at_end: bool = True,
        **schedule: Any,
    ) -> None:
        super().__init__(at_end=at_end, **schedule)
        check_eigen(k, tol, max_iter)
        check_curvature(curvature)
        if trace:
            check_matvecs(trace_matvecs)
        check_density(density_probes, density_steps, 2, 1.0)
        self.k, self.curvature, self.tol, self.max_iter = k, curvature, tol, max_iter
        self.warm_start = warm_start
        self._start: Tensor | None = None  # the last probe's eigenvectors, summed (flat)
        self.trace, self.trace_matvecs = trace, trace_matvecs
        self.density_at = check_moments("HessianEigenvalues", "density_at", density_at)
        self.density_probes, self.density_steps = density_probes, density_steps
        self.parameters, self.per_layer, self.max_basis = parameters, per_layer, max_basis
        self.loss_fn, self.distributed = loss_fn, distributed

    @override
    def check_module(self, pl_module: L.LightningModule) -> None:
        require_loss("HessianEigenvalues", pl_module, self.loss_fn)
        selected_parameters(pl_module, self.parameters)  # names that exist, one dtype and device

    @override
    def repeats_probe(self, when: str) -> bool:
        return when == "end" and "end" in self.density_at  # the last step's probe drew no end density

    @override
    def end_figures(self) -> dict[str, Figure]:
        if not self.history:
            return {}
        return {"lambda_max_curve": lambda_max_figure(self.history, key=f"{self.name}/lambda_max")}

    def _lanczos(self, op: Any, k: int, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
        found = lanczos_eigenvalues(
            op,
            k,
            tol=self.tol,
            max_iter=self.max_iter,
            start=start,
            max_basis=self.max_basis,
            return_eigenvectors=True,
        )
        assert isinstance(found, tuple)
        return found

    @override
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Top-k eigenvalues (and trace, density, per layer) of the loss on ``batch``: see the class."""
        start = time.perf_counter()
        loss_fn = require_loss("HessianEigenvalues", pl_module, self.loss_fn)
        distributed = (
            self.distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        if distributed:
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            batch = apply_to_collection(batch, Tensor, lambda t: t[rank::world])

        def operator(parameters: ParameterChoice) -> Any:
            return curvature_operator(
                pl_module, loss_fn, batch, self.curvature, parameters=parameters, distributed=distributed
            )

        op = operator(self.parameters)
        start_vector = self._start
        if self.probe_when in self.density_at and not distributed:
            # start where the density's Lanczos run starts (not warm): that run replays these products
            op = _Replay(op, self.density_steps)
            start_vector = random_vector(op, torch.Generator().manual_seed(_DENSITY_SEED), rademacher=True)
        values, vectors = self._lanczos(op, self.k, start=start_vector)
        if self.warm_start:
            self._start = _warm_start(vectors, seed=self.probe_seed)
        del vectors
        scalars = {f"lambda_{i + 1}": float(v) for i, v in enumerate(values)}
        scalars["lambda_max"] = float(values[0])
        sgd = _sgd_lr(pl_module)
        if sgd is not None and sgd[0] > 0:
            lr, momentum = sgd
            scalars["two_over_lr"] = 2.0 / lr
            scalars["stability_threshold"] = (2.0 + 2.0 * momentum) / lr
            scalars["eos_ratio"] = scalars["lambda_max"] / scalars["stability_threshold"]
        result = ProbeResult(scalars=scalars, arrays={"eigenvalues": values})
        if self.trace:
            tr = hutchpp_trace(op, self.trace_matvecs)
            scalars["trace"], scalars["trace_std_error"] = tr.estimate, tr.std_error
        if self.probe_when in self.density_at:
            if isinstance(op, _Replay):
                op.replay()
            density = spectral_density(
                op, probes=self.density_probes, steps=self.density_steps, seed=_DENSITY_SEED
            )
            result.arrays.update(
                density_grid=density.grid,
                density=density.density,
                density_nodes=density.nodes,
                density_weights=density.weights,
            )
            title = f"{self.curvature} spectrum ({self.probe_when})"
            result.figures = {"density": lambda: density_figure(density, title=title)}  # drawn at the end
        del op  # its graph, before the per-layer ones
        if self.per_layer:
            for layer, names in layer_blocks(pl_module, self.parameters).items():
                top = self._lanczos(operator(names), 1)[0]
                scalars[f"{layer}/lambda_max"] = float(top[0])
        scalars["probe_seconds"] = time.perf_counter() - start
        return result
