"""Curvature of the loss: operators (Hessian, GGN, Fisher, dense; any parameter block) and algorithms.

Operators (one interface: ``matvec``, ``matmat``, ``@``, ``size``, ``dtype``, ``device``):

- :class:`HessianOperator`, :class:`GGNOperator`, :class:`FisherOperator` (``kind="empirical"`` or
  ``"mc"``), built from ``(model, loss_fn, data, *, parameters=None)``; ``parameters=`` restricts
  any of them to a block of parameters (per-layer curvature);
- :class:`DenseOperator` (a symmetric tensor).

Algorithms (each takes any operator, each in its own module):

- :func:`lanczos_eigenvalues` (top or bottom ``k``; thick restarts keep the basis within 1 GiB);
- :func:`hutchpp_trace` (Hutch++), :func:`diagonal_estimate` (Diag++), both with standard errors;
- :func:`spectral_density` (stochastic Lanczos quadrature).

The model-facing functions :func:`hessian_vector_product`, :func:`hessian_eigenvalues`,
:func:`hessian_trace` and :func:`hessian_spectral_density` are thin wrappers, and
:class:`HessianEigenvalues` is the callback. Checks live in ``_checks.py``; misuse raises
:class:`CurvatureError` (a ``MisconfigurationException`` and a ``ValueError``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.nn import functional as F
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> batch = (torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,)))
    >>> ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])
    >>> last_layer = HessianOperator(model, ce, batch, parameters=["2"])
    >>> top = lanczos_eigenvalues(last_layer, k=2)
    >>> fisher = FisherOperator(model, ce, batch, kind="empirical")
    >>> top.shape, hutchpp_trace(fisher, 30).estimate > 0
    (torch.Size([2]), True)
"""

from plugins.curvature._checks import CurvatureError
from plugins.curvature.callback import HessianEigenvalues, layer_blocks
from plugins.curvature.diagonal import DiagonalEstimate, diagonal_estimate
from plugins.curvature.figures import density_figure, lambda_max_figure
from plugins.curvature.fisher import FisherOperator
from plugins.curvature.functions import (
    HessianTrace,
    curvature_operator,
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
    hessian_vector_product,
)
from plugins.curvature.ggn import GGNOperator
from plugins.curvature.hessian import HessianOperator
from plugins.curvature.hutchpp import TraceEstimate, hutchpp_trace
from plugins.curvature.lanczos import lanczos_eigenvalues
from plugins.curvature.model import ModelOperator, selected_parameters
from plugins.curvature.operator import CurvatureOperator, DenseOperator
from plugins.curvature.precision import ieee_float32
from plugins.curvature.slq import SpectralDensity, spectral_density

__all__ = [
    "CurvatureError",
    "CurvatureOperator",
    "DenseOperator",
    "DiagonalEstimate",
    "FisherOperator",
    "GGNOperator",
    "HessianEigenvalues",
    "HessianOperator",
    "HessianTrace",
    "ModelOperator",
    "SpectralDensity",
    "TraceEstimate",
    "curvature_operator",
    "density_figure",
    "diagonal_estimate",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "hessian_vector_product",
    "hutchpp_trace",
    "ieee_float32",
    "lambda_max_figure",
    "lanczos_eigenvalues",
    "layer_blocks",
    "selected_parameters",
    "spectral_density",
]
