"""The Hessian of the loss (compatibility module): the names it always had, now in :mod:`plugins.curvature`.

Import from :mod:`plugins.curvature` in new code; this module keeps ``from plugins.hessian import
hessian_eigenvalues`` and the class path ``plugins.hessian.HessianEigenvalues`` working.

Example:
    >>> from plugins import curvature
    >>> hessian_eigenvalues is curvature.hessian_eigenvalues
    True
"""

from plugins.curvature import (
    HessianEigenvalues,
    HessianTrace,
    SpectralDensity,
    density_figure,
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
    hessian_vector_product,
    ieee_float32,
    lambda_max_figure,
)

__all__ = [
    "HessianEigenvalues",
    "HessianTrace",
    "SpectralDensity",
    "density_figure",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "hessian_vector_product",
    "ieee_float32",
    "lambda_max_figure",
]
