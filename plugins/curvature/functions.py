"""The Hessian of a model's loss in one call each: product, top eigenvalues, trace, density.

Thin wrappers: each builds the operator (:func:`curvature_operator`) inside
:func:`~plugins.base.preserved_training_state` (parameters, ``.grad``, modes, BatchNorm statistics
and RNG are as before the call) and runs one algorithm of the package on it.

All take ``loss_fn(model, batch) -> scalar`` and ``data`` = one batch or a re-iterable of
batches; the curvature is that of the mean loss over the union of the data (each batch weighted by
its number of samples). ``curvature="ggn"`` uses the generalised Gauss-Newton matrix
``J^T H_z J``. ``distributed=True`` (under ``torch.distributed``): every rank passes its own shard,
each product is all-reduced, and every rank runs the same steps in lockstep (same ``seed``).

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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch  # noqa: F401 (the examples use it)
from torch import Tensor, nn

from plugins.base import LossFn, preserved_training_state
from plugins.curvature._checks import CurvatureError, check_curvature, check_density, check_matvecs
from plugins.curvature.ggn import GGNOperator
from plugins.curvature.hessian import HessianOperator
from plugins.curvature.hutchpp import TraceEstimate, hutchpp_trace
from plugins.curvature.lanczos import lanczos_eigenvalues
from plugins.curvature.model import ModelOperator, ParameterChoice, flatten
from plugins.curvature.slq import SpectralDensity, spectral_density

__all__ = [
    "Curvature",
    "HessianTrace",
    "curvature_operator",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "hessian_vector_product",
]

Curvature = Literal["hessian", "ggn"]
HessianTrace = TraceEstimate  # the name these functions have always returned


def curvature_operator(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    curvature: Curvature = "hessian",
    *,
    parameters: ParameterChoice = None,
    distributed: bool = False,
    cuda_graph: bool = False,
) -> ModelOperator:
    """The :class:`~plugins.curvature.hessian.HessianOperator` or :class:`~plugins.curvature.ggn.GGNOperator`.

    Example:
        >>> curvature_operator(nn.Linear(2, 1), lambda m, b: m(b).pow(2).mean(), torch.ones(3, 2), "ggn").size
        3
    """
    check_curvature(curvature)
    kind = HessianOperator if curvature == "hessian" else GGNOperator
    return kind(model, loss_fn, data, parameters=parameters, distributed=distributed, cuda_graph=cuda_graph)


@contextmanager
def _operator(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    curvature: Curvature,
    parameters: ParameterChoice,
    distributed: bool,
    cuda_graph: bool = False,
) -> Iterator[ModelOperator]:
    """The operator, inside :func:`preserved_training_state` (the model as it was, on exit)."""
    with preserved_training_state(model):
        yield curvature_operator(
            model,
            loss_fn,
            data,
            curvature,
            parameters=parameters,
            distributed=distributed,
            cuda_graph=cuda_graph,
        )


def _flat(v: list[Tensor] | Tensor) -> Tensor:
    return v.reshape(-1) if isinstance(v, Tensor) else flatten(list(v))


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    v: list[Tensor] | Tensor,
    curvature: Curvature = "hessian",
    distributed: bool = False,
    parameters: ParameterChoice = None,
) -> list[Tensor]:
    """``H v``: the Hessian (or GGN) of the mean loss over ``data`` times ``v``, by double backward.

    Args:
        model: the network; its trainable parameters (``requires_grad``) are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        data: one batch, or a re-iterable of batches (mean over their union).
        v: a list of tensors shaped like the (chosen) trainable parameters, or one flat tensor.
        curvature: ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton ``J^T H_z J``).
        distributed: all-reduce the product over the ranks of ``torch.distributed``.
        parameters: a block of parameters (names of parameters or modules, or a predicate).

    Returns:
        A list of tensors shaped like the (chosen) trainable parameters.

    Example:
        >>> x = torch.randn(8, 2, dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> mse = lambda m, b: (m(b) ** 2).mean()
        >>> hv = hessian_vector_product(model, mse, x, [torch.ones(1, 2, dtype=torch.float64)])
        >>> torch.allclose(hv[0], (2 * x.T @ x / 8).sum(1).reshape(1, 2))
        True
    """
    with _operator(model, loss_fn, data, curvature, parameters, distributed) as op:
        flat = _flat(v)
        if flat.numel() != op.size:
            raise CurvatureError(
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
    parameters: ParameterChoice = None,
    max_basis: int | None = None,
) -> Tensor | tuple[Tensor, list[list[Tensor]]]:
    """The ``k`` largest (or smallest) eigenvalues of the Hessian of the mean loss over ``data``.

    :func:`~plugins.curvature.lanczos.lanczos_eigenvalues` on the operator: Lanczos with full
    reorthogonalisation, stopping on Ritz error bounds ``min(r, r^2 / gap) <= tol |theta|`` or
    after ``max_iter`` products (with a warning); thick restarts keep the basis within 1 GiB.
    ``which="largest"`` gives them descending (``lambda_max`` first), ``which="smallest"``
    ascending (the most negative first: directions out of a saddle).

    Args:
        model, loss_fn, data, curvature, distributed, parameters: as in :func:`hessian_vector_product`.
        cuda_graph: on a GPU with one batch, capture the product in a CUDA graph once and replay
            it (a small model's products are bound by kernel launches). Opt-in (``tests/test_gpu.py``
            checks it against plain autograd).
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
        max_basis: the most Lanczos vectors held at once (default: as many as fit in 1 GiB).

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
    with _operator(model, loss_fn, data, curvature, parameters, distributed, cuda_graph) as op:
        found = lanczos_eigenvalues(
            op,
            k,
            which=which,
            tol=tol,
            max_iter=max_iter,
            start=None if start is None else _flat(start),
            seed=seed,
            return_eigenvectors=return_eigenvectors,
            max_basis=max_basis,
        )
        if isinstance(found, Tensor):
            return found
        values, rows = found
        return values, [[t.detach().clone() for t in op.split(y)] for y in rows]


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_matvecs: int = 30,
    curvature: Curvature = "hessian",
    seed: int = 0,
    distributed: bool = False,
    cuda_graph: bool = False,
    parameters: ParameterChoice = None,
) -> HessianTrace:
    """The trace of the Hessian of the mean loss over ``data`` by Hutch++ (Meyer et al. 2021).

    :func:`~plugins.curvature.hutchpp.hutchpp_trace` on the operator: exact (standard error 0)
    with ``num_matvecs >= 3 * (number of parameters)``.

    Args:
        model, loss_fn, data, curvature, distributed, parameters: as in :func:`hessian_vector_product`.
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
    check_matvecs(num_matvecs)
    with _operator(model, loss_fn, data, curvature, parameters, distributed, cuda_graph) as op:
        return hutchpp_trace(op, num_matvecs, seed=seed)


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
    parameters: ParameterChoice = None,
) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    :func:`~plugins.curvature.slq.spectral_density` on the operator.

    Args:
        model, loss_fn, data, curvature, distributed, parameters: as in :func:`hessian_vector_product`.
        cuda_graph: as in :func:`hessian_eigenvalues`.
        num_probes: random start vectors (average of their quadratures).
        num_steps: Lanczos steps per probe (products per probe).
        num_points: grid points.
        sigma: Gaussian width relative to the width of the spectrum.
        seed: seed of the start vectors.

    Example:
        >>> import numpy as np
        >>> x = torch.randn(64, 3, dtype=torch.float64)
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> d = hessian_spectral_density(model, lambda m, b: (m(b) ** 2).mean(), x)
        >>> round(float(np.trapezoid(d.density, d.grid)), 6), len(d.nodes)
        (1.0, 3)
    """
    check_density(num_probes, num_steps, num_points, sigma)
    with _operator(model, loss_fn, data, curvature, parameters, distributed, cuda_graph) as op:
        return spectral_density(
            op, probes=num_probes, steps=num_steps, grid=num_points, sigma=sigma, seed=seed
        )
