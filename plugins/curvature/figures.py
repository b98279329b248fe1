"""The figures of the curvature callback: the spectral density and lambda_max over training.

Example:
    >>> import numpy as np
    >>> from plugins.curvature.slq import SpectralDensity
    >>> d = SpectralDensity(np.linspace(-1, 1, 5), np.full(5, 0.5), np.zeros(1), np.ones(1), 0.1)
    >>> density_figure(d).axes[0].get_yscale()
    'log'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from plugins.base import fixed_layout_figure
from plugins.curvature.slq import SpectralDensity

__all__ = ["density_figure", "lambda_max_figure"]


def density_figure(density: SpectralDensity, title: str = "Hessian spectrum") -> Figure:
    """The spectral density on a log scale (bulk near zero, outliers to the right).

    Example:
        >>> d = SpectralDensity(np.linspace(-1, 1, 5), np.full(5, 0.5), np.zeros(1), np.ones(1), 0.1)
        >>> density_figure(d).axes[0].get_ylabel()
        'density'
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
