"""The Hessian of the loss: top eigenvalues, trace, spectral density, and a callback that logs them.

Pure functions (usable from a notebook; they never change the model):

- :func:`hessian_vector_product` -- ``H v`` by double backward (``curvature="ggn"``: ``G v``);
- :func:`hessian_eigenvalues` -- the ``k`` largest (or smallest) eigenvalues by Lanczos with full
  reorthogonalisation, stopping on Ritz residuals; optionally the eigenvectors;
- :func:`hessian_trace` -- Hutch++ with an error estimate;
- :func:`hessian_spectral_density` -- stochastic Lanczos quadrature: a grid and a density of mass 1.

All of them take ``loss_fn(model, batch) -> scalar`` and ``data`` = one batch or a re-iterable of
batches; the curvature is that of the mean loss over the union of the data (each batch weighted by
its number of samples). One batch keeps its autograd graph between products (a product then costs
one double-backward pass); several batches are recomputed batch by batch, never held together.

``curvature="ggn"`` uses the generalised Gauss-Newton matrix ``J^T H_z J`` (``z`` = the output of
``model``, ``H_z`` = the Hessian of the loss in ``z``): positive semi-definite for convex losses,
and what many papers call "the Hessian".

``distributed=True`` (under ``torch.distributed``): every rank passes its own shard of the data,
each product is all-reduced (summed, with the sample counts) so every rank holds the product of the
mean over the union of all shards, and every rank runs the same Lanczos steps in lockstep. All ranks
must make the same call with the same ``seed``.

The callback :class:`HessianEigenvalues` logs ``lambda_max`` (and the top-k, the trace and the
density if asked) on a fixed probe batch during training, beside the edge-of-stability line
``2 / lr`` for SGD (Cohen et al. 2021).

Example:
    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(32, 3, dtype=torch.float64)
    >>> model = nn.Linear(3, 1, bias=False).double()
    >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    >>> top = hessian_eigenvalues(model, mse, (x, torch.zeros(32, 1, dtype=torch.float64)), k=1)
    >>> exact = torch.linalg.eigvalsh(2 * x.T @ x / 32)[-1]
    >>> bool(torch.isclose(top[0], exact))
    True
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import Tensor, nn

from plugins.base import (
    DiagnosticCallback,
    LossFn,
    ProbeResult,
    fixed_layout_figure,
    iterate_batches,
    preserved_training_state,
    require_loss,
)

__all__ = [
    "HessianEigenvalues",
    "HessianTrace",
    "SpectralDensity",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "hessian_vector_product",
    "ieee_float32",
]

Curvature = Literal["hessian", "ggn"]
_CURVATURES = ("hessian", "ggn")


# --------------------------------------------------------------------------- the operator
class _CurvatureOperator:
    """``v -> C v`` on flat vectors, ``C`` = Hessian or GGN of the mean loss over ``data``.

    One batch: the graph is built once and reused by every product. Several batches: each product
    recomputes batch by batch, with the same random state per batch (so dropout masks agree).
    ``distributed``: the local sum ``sum_b n_b C_b v`` and the local ``sum_b n_b`` are all-reduced.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        curvature: str,
        distributed: bool,
        cuda_graph: bool = False,
    ) -> None:
        if curvature not in _CURVATURES:
            raise ValueError(f"curvature={curvature!r}: use 'hessian' or 'ggn'")
        if torch.is_inference_mode_enabled():
            raise ValueError(
                "the Hessian needs autograd, and this call runs under torch.inference_mode (e.g. a "
                "validation hook): call it from a training hook, or use Trainer(inference_mode=False)"
            )
        if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group (e.g. under "
                "Trainer(strategy='ddp')); use distributed=False for one process"
            )
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.curvature, self.distributed = curvature, distributed
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"all trainable parameters must share one dtype and device, got {dtypes} on {devices}: "
                "cast the model with .to(dtype) first"
            )
        self.dtype, self.device = dtypes.pop(), devices.pop()
        self.size = sum(p.numel() for p in self.params)
        self.num_matvecs = 0
        only = _only_batch(data)
        self._cached: tuple[Callable[[list[Tensor]], Tensor], int] | None = None
        if only is not None and cuda_graph and self.device.type == "cuda":
            self._cached = (_replayed(lambda: self._graph(only[0], 0), self.params), only[1])
        elif only is not None:
            product = self._graph(only[0], 0)
            self._cached = (lambda vs: _flat(product(vs)), only[1])

    # .................................................................... graphs of one batch
    def _graph(self, batch: Any, index: int) -> Callable[[list[Tensor]], list[Tensor]]:
        with torch.enable_grad(), ieee_float32():
            torch.manual_seed(index)  # the caller forks the RNG: same dropout masks at every product
            return self._ggn_graph(batch) if self.curvature == "ggn" else self._hessian_graph(batch)

    def _hessian_graph(self, batch: Any) -> Callable[[list[Tensor]], list[Tensor]]:
        loss = _scalar_loss(self.loss_fn(self.model, batch))
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def product(vs: list[Tensor]) -> list[Tensor]:
            if not live:
                return [torch.zeros_like(p) for p in self.params]
            hv = torch.autograd.grad(
                [grads[i] for i in live],
                self.params,
                grad_outputs=[vs[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            return [torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv, strict=True)]

        return product

    def _ggn_graph(self, batch: Any) -> Callable[[list[Tensor]], list[Tensor]]:
        outputs: list[Any] = []
        handle = self.model.register_forward_hook(lambda module, args, out: outputs.append(out))
        try:
            loss = _scalar_loss(self.loss_fn(self.model, batch))
        finally:
            handle.remove()
        if len(outputs) != 1 or not isinstance(outputs[0], Tensor):
            raise ValueError(
                f"curvature='ggn' needs loss_fn to call the model exactly once on a tensor output "
                f"(it was called {len(outputs)} times): the GGN is J^T H_z J with z = model(x)"
            )
        z = outputs[0]
        (dz,) = torch.autograd.grad(loss, z, create_graph=True)
        u = torch.zeros_like(z, requires_grad=True)
        jtu = torch.autograd.grad(z, self.params, grad_outputs=u, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]

        def product(vs: list[Tensor]) -> list[Tensor]:
            if not live or not dz.requires_grad:
                return [torch.zeros_like(p) for p in self.params]
            (jv,) = torch.autograd.grad(
                [jtu[i] for i in live], u, grad_outputs=[vs[i] for i in live], retain_graph=True
            )
            (hjv,) = torch.autograd.grad(dz, z, grad_outputs=jv, retain_graph=True)
            out = torch.autograd.grad(z, self.params, grad_outputs=hjv, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, out, strict=True)]

        return product

    # .................................................................... flat products
    def split(self, v: Tensor) -> list[Tensor]:
        """A flat vector as a list of tensors shaped like the parameters."""
        return [
            c.view_as(p) for c, p in zip(v.split([p.numel() for p in self.params]), self.params, strict=True)
        ]

    def matvec(self, v: Tensor) -> Tensor:
        """``C v`` for a flat ``v`` of length ``size`` (the same on every rank when distributed)."""
        self.num_matvecs += 1
        vs = self.split(v.detach())
        with ieee_float32():
            if self._cached is not None and not self.distributed:
                return self._cached[0](vs)
            if self._cached is not None:
                product, count = self._cached
                total, count = product(vs) * count, float(count)
            else:
                total, count = torch.zeros_like(v), 0.0
                for index, (batch, n) in enumerate(iterate_batches(self.data)):
                    total += _flat(self._graph(batch, index)(vs)) * n
                    count += n
        if self.distributed:
            packed = torch.cat([total, total.new_tensor([count])])
            torch.distributed.all_reduce(packed)
            total, count = packed[:-1], float(packed[-1])
        return total / count

    def random(self, generator: torch.Generator, rademacher: bool = False) -> Tensor:
        """A random flat vector drawn on the CPU from ``generator`` (identical on every rank)."""
        if rademacher:
            v = torch.randint(0, 2, (self.size,), generator=generator).to(self.dtype) * 2 - 1
        else:
            v = torch.randn(self.size, generator=generator, dtype=self.dtype)
        return v.to(self.device)


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Full float32 arithmetic on a GPU inside the block: no TF32 in cuDNN convolutions or matmuls.

    TF32 (cuDNN's default for convolutions on Ampere and later) keeps 10 mantissa bits, which moves
    Hessian eigenvalues by ~1e-4 relative; curvature is measured at full precision. No-op on CPU.

    Example:
        >>> with ieee_float32():
        ...     torch.backends.cudnn.allow_tf32
        False
    """
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(matmul)


def _replayed(
    build: Callable[[], Callable[[list[Tensor]], list[Tensor]]], params: list[Tensor]
) -> Callable[[list[Tensor]], Tensor]:
    """``build()``'s product, captured once in a CUDA graph and replayed for every vector.

    A small model's Hessian-vector product on a GPU is bound by kernel launches (hundreds of small
    kernels); one graph replay launches them all at once. The loss graph is built on the capture
    stream, because autograd runs each backward kernel on its forward's stream. Where capture
    fails (an operation that syncs with the host, say), the plain product is used, with a warning.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with ieee_float32(), torch.cuda.stream(stream):
        product = build()
        inputs = [torch.zeros_like(p) for p in params]
        for _ in range(2):  # warm-up: allocations and cuDNN's algorithm choice happen outside capture
            product(inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with ieee_float32(), torch.cuda.graph(graph, stream=stream):
            output = _flat(product(inputs))
    except RuntimeError as error:
        warnings.warn(
            f"CUDA graph capture of the curvature product failed ({error}); using autograd", stacklevel=4
        )
        torch.cuda.synchronize()
        return lambda vs: _flat(product(vs))

    def replay(vs: list[Tensor]) -> Tensor:
        for buffer, v in zip(inputs, vs, strict=True):
            buffer.copy_(v)
        graph.replay()
        return output.clone()

    return replay


def _only_batch(data: Any) -> tuple[Any, int] | None:
    """``(batch, samples)`` if ``data`` holds exactly one batch (its graph is then kept), else None."""
    batches = iterate_batches(data)
    first = next(batches)
    return first if next(batches, None) is None else None


def _scalar_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"loss_fn(model, batch) must return a scalar tensor, got "
            f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, Tensor) else ''}: reduce it "
            "with .mean()"
        )
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not depend on any trainable parameter (it has no grad_fn): check that "
            "loss_fn calls the model and that the parameters have requires_grad=True"
        )
    return loss.reshape(())


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# --------------------------------------------------------------------------- Lanczos
@dataclass
class _Lanczos:
    """A Lanczos run: tridiagonal ``T`` (float64), orthonormal basis rows ``V``, last ``beta``."""

    alphas: list[float]
    betas: list[float]  # betas[j] couples step j and j + 1; betas[-1] is the residual norm
    basis: Tensor  # (steps, n)

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), their vectors in the basis, and their residual norms."""
        m = len(self.alphas)
        t = torch.diag(torch.tensor(self.alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.betas[: m - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        residuals = abs(self.betas[m - 1]) * s[-1].abs()
        return theta, s, residuals


def _lanczos(
    op: _CurvatureOperator,
    v0: Tensor,
    max_steps: int,
    generator: torch.Generator,
    done: Callable[[_Lanczos], bool] | None = None,
) -> _Lanczos:
    """Lanczos with full (twice-applied Gram-Schmidt) reorthogonalisation.

    On a breakdown (an invariant subspace) the run restarts from a fresh random vector orthogonal to
    the basis, with a zero coupling, so repeated eigenvalues are found too. ``done`` is asked after
    every step and stops the run early.
    """
    max_steps = min(max_steps, op.size)
    basis = torch.empty(min(max_steps, 32), op.size, dtype=op.dtype, device=op.device)
    run = _Lanczos([], [], basis[:0])
    v = v0 / v0.norm()
    for j in range(max_steps):
        if j == basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis[: min(j, max_steps - j)])])
        basis[j] = v
        w = op.matvec(v)
        alpha = float(w @ v)
        w -= alpha * v
        if j > 0:
            w -= run.betas[-1] * basis[j - 1]
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        run.alphas.append(alpha)
        run.basis = basis[: j + 1]
        scale = max(abs(a) for a in run.alphas) + max([abs(b) for b in run.betas] + [0.0])
        if beta <= 1e-10 * max(scale, 1e-30) or not math.isfinite(beta):
            run.betas.append(0.0)
            if j + 1 == max_steps or (done is not None and done(run)):
                break
            w = op.random(generator)
            for _ in range(2):
                w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
            v = w / w.norm()
            continue
        run.betas.append(beta)
        if done is not None and done(run):
            break
        v = w / beta
    return run


def _error_bounds(theta: Tensor, residuals: Tensor) -> Tensor:
    """Error bounds of Ritz values: ``min(r, r**2 / gap)`` (Kato-Temple; gap to the other Ritz values)."""
    if len(theta) == 1:
        return residuals
    distance = (theta[:, None] - theta[None, :]).abs() + torch.diag(torch.full_like(theta, math.inf))
    gap = distance.min(dim=1).values
    return torch.minimum(residuals, residuals**2 / gap.clamp_min(1e-300))


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    order = torch.argsort(theta, descending=which == "largest")
    return order[:k]


def _eigen(
    op: _CurvatureOperator,
    k: int,
    which: str,
    tol: float,
    max_iter: int,
    seed: int,
    start: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, _Lanczos]:
    """Eigenvalues (float64), Ritz coefficients, residuals and the Lanczos run (from ``start``, or
    from a seeded random vector)."""
    generator = torch.Generator().manual_seed(seed)

    def relative_errors(run: _Lanczos) -> Tensor:
        theta, _, residuals = run.ritz()
        idx = _select(theta, k, which)
        return _error_bounds(theta, residuals)[idx] / theta[idx].abs().clamp_min(
            1e-12 * float(theta.abs().max())
        )

    def converged(run: _Lanczos) -> bool:
        return len(run.alphas) >= k and bool((relative_errors(run) <= tol).all())

    v0 = op.random(generator) if start is None else start
    run = _lanczos(op, v0, max_iter, generator, converged)
    theta, s, residuals = run.ritz()
    idx = _select(theta, k, which)
    if len(run.alphas) < op.size and not converged(run):
        warnings.warn(
            f"hessian_eigenvalues: Lanczos stopped at max_iter={max_iter} before the {k} wanted "
            f"eigenvalues reached tol={tol} (worst estimated relative error "
            f"{float(relative_errors(run).max()):.2g}): raise max_iter or tol",
            stacklevel=3,
        )
    return theta[idx], s[:, idx], residuals[idx], run


def _check_k(k: int, size: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: use a whole number >= 1")
    if k > size:
        raise ValueError(f"k={k} exceeds the number of trainable parameters ({size})")


# --------------------------------------------------------------------------- public functions
def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    v: list[Tensor] | Tensor,
    curvature: Curvature = "hessian",
    distributed: bool = False,
) -> list[Tensor]:
    """``H v``: the Hessian (or GGN) of the mean loss over ``data`` times ``v``, by double backward.

    Args:
        model: the network; its trainable parameters (``requires_grad``) are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        data: one batch, or a re-iterable of batches (mean over their union).
        v: a list of tensors shaped like the trainable parameters, or one flat tensor.
        curvature: ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton ``J^T H_z J``).
        distributed: all-reduce the product over the ranks of ``torch.distributed``.

    Returns:
        A list of tensors shaped like the trainable parameters.

    Example:
        >>> x = torch.randn(8, 2, dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> mse = lambda m, b: (m(b) ** 2).mean()
        >>> hv = hessian_vector_product(model, mse, x, [torch.ones(1, 2, dtype=torch.float64)])
        >>> torch.allclose(hv[0], (2 * x.T @ x / 8).sum(1).reshape(1, 2))
        True
    """
    with preserved_training_state(model):
        op = _CurvatureOperator(model, loss_fn, data, curvature, distributed)
        flat = _flat(list(v)) if not isinstance(v, Tensor) else v.reshape(-1)
        if flat.numel() != op.size:
            raise ValueError(
                f"v has {flat.numel()} entries but the model has {op.size} trainable parameters: "
                "pass one tensor per trainable parameter, shaped like it"
            )
        return [h.detach().clone() for h in op.split(op.matvec(flat.to(op.dtype)))]


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 100,
    which: Literal["largest", "smallest"] = "largest",
    curvature: Curvature = "hessian",
    return_eigenvectors: bool = False,
    seed: int = 0,
    distributed: bool = False,
    cuda_graph: bool = False,
    start: list[Tensor] | Tensor | None = None,
) -> Tensor | tuple[Tensor, list[list[Tensor]]]:
    """The ``k`` largest (or smallest) eigenvalues of the Hessian of the mean loss over ``data``.

    Lanczos with full reorthogonalisation from a seeded random start; it stops as soon as the
    ``k`` wanted Ritz values have an estimated relative error below ``tol``: from the residual
    ``r = ||H y - theta y||`` the error bound ``min(r, r**2 / gap)`` (``gap`` = distance to the
    nearest other Ritz value), divided by ``|theta|``; or after ``max_iter`` products (with a
    warning). Measured errors are usually far below ``tol``; a single-vector Krylov method can miss
    copies of an exactly repeated eigenvalue only. Algebraic order: ``which="largest"`` gives them
    descending (``lambda_max`` first), ``which="smallest"`` ascending (the most negative first:
    directions out of a saddle).

    Args:
        model, loss_fn, data, curvature, distributed: as in :func:`hessian_vector_product`.
        cuda_graph: on a GPU with one batch, capture the product in a CUDA graph once and replay
            it (a small model's products are bound by kernel launches). Opt-in: its speed and its
            agreement with plain autograd (``tests/test_gpu.py``) are still to be measured on a GPU.
        k: how many eigenvalues.
        tol: estimated relative eigenvalue error at which to stop.
        max_iter: the most Hessian-vector products (Lanczos steps).
        which: ``"largest"`` or ``"smallest"``.
        return_eigenvectors: also return the unit eigenvectors, each a list of tensors shaped
            like the trainable parameters (ready for :func:`plugins.loss_landscape.loss_surface`).
        seed: seed of the random start (the model's RNG streams are untouched).
        start: the Lanczos start vector instead of a random one, shaped like the trainable
            parameters (a list) or flat: e.g. the sum of the eigenvectors of an earlier call on
            slowly changing weights (a warm start: LeNet-5's top 2 every 75 SGD steps took 5-7
            products instead of 9-11 at ``tol=1e-3``).

    Returns:
        Eigenvalues as a float64 tensor of shape ``(k,)``; with ``return_eigenvectors`` a tuple
        ``(eigenvalues, eigenvectors)``.

    Example:
        >>> x = torch.randn(64, 4, dtype=torch.float64)
        >>> model = nn.Linear(4, 1, bias=False).double()
        >>> mse = lambda m, b: (m(b) ** 2).mean()
        >>> values, vectors = hessian_eigenvalues(model, mse, x, k=2, return_eigenvectors=True)
        >>> exact = torch.linalg.eigvalsh(2 * x.T @ x / 64).flip(0)[:2]
        >>> torch.allclose(values, exact), vectors[0][0].shape
        (True, torch.Size([1, 4]))
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"which={which!r}: use 'largest' or 'smallest'")
    if not tol > 0:
        raise ValueError(f"tol={tol}: use a positive relative residual such as 1e-4")
    with preserved_training_state(model):
        op = _CurvatureOperator(model, loss_fn, data, curvature, distributed, cuda_graph)
        _check_k(k, op.size)
        if max_iter < k:
            raise ValueError(f"max_iter={max_iter} must be at least k={k}")
        v0 = None
        if start is not None:
            v0 = (_flat(list(start)) if not isinstance(start, Tensor) else start.reshape(-1)).to(
                op.device, op.dtype
            )
            if v0.numel() != op.size or not bool(torch.isfinite(v0).all()) or float(v0.norm()) == 0:
                raise ValueError(
                    f"start must be a finite non-zero vector with one entry per trainable parameter "
                    f"({op.size}), got {v0.numel()} entries"
                )
        values, coefficients, _, run = _eigen(op, k, which, tol, max_iter, seed, v0)
        if not return_eigenvectors:
            return values
        ritz = coefficients.T.to(op.dtype) @ run.basis
        vectors = [[t.detach().clone() for t in op.split(y / y.norm())] for y in ritz]
        return values, vectors


@dataclass
class HessianTrace:
    """A trace estimate and its standard error.

    Attributes:
        estimate: the estimated trace of the curvature matrix.
        std_error: one standard error of the estimate (0 when it is exact).
        num_matvecs: curvature-vector products spent.

    Example:
        >>> HessianTrace(estimate=3.0, std_error=0.1, num_matvecs=30).estimate
        3.0
    """

    estimate: float
    std_error: float
    num_matvecs: int


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_matvecs: int = 30,
    curvature: Curvature = "hessian",
    seed: int = 0,
    distributed: bool = False,
    cuda_graph: bool = False,
) -> HessianTrace:
    """The trace of the Hessian of the mean loss over ``data`` by Hutch++ (Meyer et al. 2021).

    A third of the products sketch the dominant subspace ``Q`` (whose trace is exact), the rest
    run Hutchinson with Rademacher vectors on the deflated remainder ``(I - QQ^T) H (I - QQ^T)``;
    the standard error is that of the Hutchinson average. With ``num_matvecs >= 3 * (number of
    parameters)`` the sketch spans everything and the trace is exact.

    Args:
        model, loss_fn, data, curvature, distributed: as in :func:`hessian_vector_product`.
        cuda_graph: as in :func:`hessian_eigenvalues`.
        num_matvecs: products to spend (at least 6).
        seed: seed of the random vectors.

    Example:
        >>> x = torch.randn(64, 3, dtype=torch.float64)
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> t = hessian_trace(model, lambda m, b: (m(b) ** 2).mean(), x, num_matvecs=9)
        >>> abs(t.estimate - float(2 * (x ** 2).sum() / 64)) < 1e-8, t.std_error
        (True, 0.0)
    """
    if not isinstance(num_matvecs, int) or num_matvecs < 6:
        raise ValueError(f"num_matvecs={num_matvecs!r}: Hutch++ needs at least 6 products")
    with preserved_training_state(model):
        op = _CurvatureOperator(model, loss_fn, data, curvature, distributed, cuda_graph)
        generator = torch.Generator().manual_seed(seed)
        sketch = min(num_matvecs // 3, op.size)
        hs = torch.stack([op.matvec(op.random(generator, rademacher=True)) for _ in range(sketch)], 1)
        q, _ = torch.linalg.qr(hs.double())
        q = q.to(op.dtype)
        exact = sum(float(q[:, i] @ op.matvec(q[:, i])) for i in range(q.shape[1]))
        samples = []
        if q.shape[1] < op.size:
            for _ in range(num_matvecs - 2 * sketch):
                g = op.random(generator, rademacher=True)
                g -= q @ (q.T @ g)
                samples.append(float(g @ op.matvec(g)))
        rest = float(np.mean(samples)) if samples else 0.0
        error = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else 0.0
        return HessianTrace(estimate=exact + rest, std_error=error, num_matvecs=op.num_matvecs)


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


def hessian_spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_probes: int = 1,
    num_steps: int = 60,
    num_points: int = 1000,
    sigma: float = 0.01,
    curvature: Curvature = "hessian",
    seed: int = 0,
    distributed: bool = False,
    cuda_graph: bool = False,
) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each probe runs ``num_steps`` Lanczos steps from a random unit vector; the Ritz values are the
    nodes and the squared first components of their vectors the weights of a Gaussian quadrature
    of the spectral measure. Each node is smoothed by a Gaussian of width ``sigma`` times the width
    of the spectrum; the grid reaches 5 widths beyond the extreme nodes, covering the spectrum,
    and the density is normalised to integrate to 1 on it.

    Args:
        model, loss_fn, data, curvature, distributed: as in :func:`hessian_vector_product`.
        cuda_graph: as in :func:`hessian_eigenvalues`.
        num_probes: random start vectors (average of their quadratures).
        num_steps: Lanczos steps per probe (products per probe).
        num_points: grid points.
        sigma: Gaussian width relative to the width of the spectrum.
        seed: seed of the start vectors.

    Example:
        >>> x = torch.randn(64, 3, dtype=torch.float64)
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> d = hessian_spectral_density(model, lambda m, b: (m(b) ** 2).mean(), x)
        >>> round(float(np.trapezoid(d.density, d.grid)), 6), len(d.nodes)
        (1.0, 3)
    """
    if min(num_probes, num_steps) < 1 or num_points < 2 or not sigma > 0:
        raise ValueError(
            f"num_probes={num_probes}, num_steps={num_steps}, num_points={num_points}, sigma={sigma}: "
            "use num_probes >= 1, num_steps >= 1, num_points >= 2 and sigma > 0"
        )
    with preserved_training_state(model):
        op = _CurvatureOperator(model, loss_fn, data, curvature, distributed, cuda_graph)
        generator = torch.Generator().manual_seed(seed)
        nodes, weights = [], []
        for _ in range(num_probes):
            run = _lanczos(op, op.random(generator, rademacher=True), num_steps, generator)
            theta, s, _ = run.ritz()
            nodes.append(theta.numpy())
            weights.append(s[0].pow(2).numpy() / num_probes)
    node, weight = np.concatenate(nodes), np.concatenate(weights)
    width = float(node.max() - node.min()) or max(float(np.abs(node).max()), 1e-12)
    sig = sigma * width
    grid = np.linspace(node.min() - 5 * sig, node.max() + 5 * sig, num_points)
    density = (weight[None, :] * np.exp(-0.5 * ((grid[:, None] - node[None, :]) / sig) ** 2)).sum(1)
    density /= np.trapezoid(density, grid)
    return SpectralDensity(grid=grid, density=density, nodes=node, weights=weight, sigma=sig)


# --------------------------------------------------------------------------- the callback
def _shard(batch: Any, rank: int, world: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[rank::world]
    if isinstance(batch, dict):
        return {key: _shard(value, rank, world) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_shard(value, rank, world) for value in batch)
    return batch


def _sgd_lr(pl_module: nn.Module) -> tuple[float, float] | None:
    """``(lr, momentum)`` of the first param group if training uses ``torch.optim.SGD``."""
    try:
        optimizers = pl_module.trainer.optimizers
    except (AttributeError, RuntimeError):  # not attached to a Trainer
        return None
    if not optimizers or not isinstance(optimizers[0], torch.optim.SGD):
        return None
    group = optimizers[0].param_groups[0]
    return float(group["lr"]), float(group.get("momentum", 0.0))


def _warm_start(vectors: list[list[Tensor]], seed: int) -> Tensor:
    """A Lanczos start from eigenvectors: their unit sum plus a seeded random tenth."""
    summed = sum(_flat(vector) for vector in vectors)
    noise = torch.randn(summed.numel(), generator=torch.Generator().manual_seed(seed), dtype=summed.dtype)
    return summed / summed.norm() + 0.1 * noise.to(summed.device) / noise.norm()


class HessianEigenvalues(DiagnosticCallback):
    """Logs the top Hessian eigenvalues (``lambda_max`` first) on a fixed probe batch during training.

    Logged scalars (``hessian/<key>``): ``lambda_1`` ... ``lambda_k`` and ``lambda_max``; for
    ``torch.optim.SGD`` also ``two_over_lr`` (the edge of stability of gradient descent, Cohen et
    al. 2021), ``stability_threshold`` (``(2 + 2 momentum) / lr``) and ``eos_ratio`` =
    ``lambda_max / stability_threshold`` (1 at the edge); with ``trace=True`` also ``trace`` and
    ``trace_std_error``; ``probe_seconds`` (the probe's cost). With ``density_at`` the spectral
    density is drawn (``density`` figure, log scale: bulk near 0 and outliers) at those moments.
    At the end of training the figure ``lambda_max_curve`` shows ``lambda_max`` against the step
    beside ``2 / lr``.

    Needs ``pl_module.loss(batch)`` (or ``loss_fn``).

    Args:
        k: how many top eigenvalues.
        curvature: ``"hessian"`` or ``"ggn"``.
        tol: Lanczos stopping tolerance (estimated relative eigenvalue error).
        max_iter: the most Hessian-vector products per eigenvalue probe.
        warm_start: start each probe's Lanczos run from the previous probe's eigenvectors (summed,
            with a tenth of a random vector so that a newly risen eigenvalue is still seen): fewer
            products on slowly changing weights. Not kept in checkpoints (a resumed run's first
            probe starts at random).
        trace: also estimate the trace (Hutch++) at every probe.
        trace_matvecs: products for the trace.
        density_at: when to draw the spectral density: any of ``"init"``, ``"step"``, ``"epoch"``,
            ``"end"`` (e.g. ``["init", "end"]``).
        density_probes: SLQ start vectors.
        density_steps: Lanczos steps per SLQ start vector.
        loss_fn: ``loss_fn(model, batch)``; default ``pl_module.loss``.
        distributed: under DDP, every rank probes its shard of the probe batch and the products
            are all-reduced, so the result is that of the whole probe batch.
        **kwargs: the schedule and probe batch of :class:`~plugins.base.DiagnosticCallback`
            (``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``, ``probe_seed``).
            By default: at init and at the end, on 256 inputs (LeNet-5's lambda_max on 256 and on
            512 digits differ by 0.3% at init; the probe costs half).

    Example:
        >>> cb = HessianEigenvalues(k=3, every_n_steps=50, density_at=["init", "end"])
        >>> cb.name, cb.k
        ('hessian', 3)
    """

    name = "hessian"

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
        loss_fn: LossFn | None = None,
        distributed: bool = False,
        at_init: bool = True,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_end: bool = True,
        probe_size: int = 256,
        probe_seed: int = 0,
    ) -> None:
        super().__init__(at_init, every_n_steps, every_n_epochs, at_end, probe_size, probe_seed)
        if not isinstance(k, int) or k < 1 or max_iter < k:
            raise MisconfigurationException(
                f"HessianEigenvalues(k={k!r}, max_iter={max_iter!r}): use k >= 1 and max_iter >= k"
            )
        if curvature not in _CURVATURES:
            raise MisconfigurationException(
                f"HessianEigenvalues(curvature={curvature!r}): use 'hessian' or 'ggn'"
            )
        bad = set(density_at or []) - {"init", "step", "epoch", "end"}
        if bad:
            raise MisconfigurationException(
                f"HessianEigenvalues(density_at={density_at!r}): {sorted(bad)} unknown; choose from "
                "'init', 'step', 'epoch', 'end'"
            )
        if trace and trace_matvecs < 6:
            raise MisconfigurationException(f"HessianEigenvalues(trace_matvecs={trace_matvecs}): use >= 6")
        self.k, self.curvature, self.tol, self.max_iter = k, curvature, tol, max_iter
        self.warm_start = warm_start
        self._start: Tensor | None = None  # the last probe's eigenvectors, summed (flat)
        self.trace, self.trace_matvecs = trace, trace_matvecs
        self.density_at = list(density_at or [])
        self.density_probes, self.density_steps = density_probes, density_steps
        self.loss_fn, self.distributed = loss_fn, distributed

    def check_module(self, pl_module: L.LightningModule) -> None:
        require_loss("HessianEigenvalues", pl_module, self.loss_fn)

    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Top-k eigenvalues (and trace, density) of the loss on ``batch``; see the class docstring."""
        start = time.perf_counter()
        loss_fn = require_loss("HessianEigenvalues", pl_module, self.loss_fn)
        distributed = (
            self.distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        if distributed:
            batch = _shard(batch, torch.distributed.get_rank(), torch.distributed.get_world_size())
        common = dict(curvature=self.curvature, distributed=distributed)
        values, vectors = hessian_eigenvalues(
            pl_module,
            loss_fn,
            batch,
            k=self.k,
            tol=self.tol,
            max_iter=self.max_iter,
            return_eigenvectors=True,
            start=self._start,
            **common,
        )
        if self.warm_start:
            self._start = _warm_start(vectors, seed=self.probe_seed)
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
            tr = hessian_trace(pl_module, loss_fn, batch, num_matvecs=self.trace_matvecs, **common)
            scalars["trace"], scalars["trace_std_error"] = tr.estimate, tr.std_error
        if self.probe_when in self.density_at:
            density = hessian_spectral_density(
                pl_module, loss_fn, batch, self.density_probes, self.density_steps, **common
            )
            result.arrays.update(
                density_grid=density.grid,
                density=density.density,
                density_nodes=density.nodes,
                density_weights=density.weights,
            )
            result.figures["density"] = density_figure(
                density, title=f"{self.curvature} spectrum ({self.probe_when})"
            )
        scalars["probe_seconds"] = time.perf_counter() - start
        return result

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        probed_now = self.last_probe_step == trainer.global_step and self.probe_when != "end"
        if self.at_end and "end" in self.density_at and probed_now:
            self.last_probe_step = -1  # the last step was probed without the end's density: again
        super().on_train_end(trainer, pl_module)
        if not trainer.is_global_zero or not self.history or self.out_dir is None:
            return
        figure = lambda_max_figure(self.history, key=f"{self.name}/lambda_max")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        self._save_figure(figure, "lambda_max_curve", step)
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is not None:
            self._log_media(wandb_logger, ProbeResult(figures={"lambda_max_curve": figure}), "end", step)
        figure.clear()


def density_figure(density: SpectralDensity, title: str = "Hessian spectrum") -> Figure:
    """The spectral density on a log scale (bulk near zero, outliers to the right).

    Example:
        >>> d = SpectralDensity(np.linspace(-1, 1, 5), np.full(5, 0.5), np.zeros(1), np.ones(1), 0.1)
        >>> density_figure(d).axes[0].get_yscale()
        'log'
    """
    figure, (ax,) = fixed_layout_figure(5, 3.5)
    ax.semilogy(density.grid, np.maximum(density.density, 1e-12))
    ax.minorticks_off()  # a log axis's minor ticks are most of the cost of drawing it
    ax.set_ylim(bottom=max(1e-8, float(density.density.max()) * 1e-7))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    return figure


def lambda_max_figure(history: list[dict[str, Any]], key: str = "hessian/lambda_max") -> Figure:
    """``lambda_max`` against the step, with the ``2 / lr`` line of SGD when it was logged.

    Example:
        >>> h = [{"step": 0, "hessian/lambda_max": 1.0, "hessian/two_over_lr": 20.0}]
        >>> len(lambda_max_figure(h).axes[0].lines)
        2
    """
    prefix = key.rsplit("/", 1)[0]
    figure, (ax,) = fixed_layout_figure(5, 3.5)
    rows = [h for h in history if key in h]
    ax.plot([h["step"] for h in rows], [h[key] for h in rows], "o-", label="lambda_max")
    for name, label in (("two_over_lr", "2 / lr"), ("stability_threshold", "(2 + 2 momentum) / lr")):
        line = [h for h in rows if f"{prefix}/{name}" in h]
        if line and (
            name == "two_over_lr"
            or any(h[f"{prefix}/{name}"] != h.get(f"{prefix}/two_over_lr") for h in line)
        ):
            ax.plot([h["step"] for h in line], [h[f"{prefix}/{name}"] for h in line], "--", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("top eigenvalue")
    ax.legend()
    return figure
