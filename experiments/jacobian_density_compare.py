"""The four panels of Pennington, Schoenholz & Ganguli's figure: predicted vs measured Jacobian spectra.

Gaussian / orthogonal weights x tanh (sigma_w = 1.1225, sigma_b = 0.05, the edge of chaos) / ReLU
(sigma_w = sqrt(2), sigma_b = 0), depths 2, 8, 32, 128, width 256: the histogram of the squared
singular values of the hidden stack's input-output Jacobian (16 inputs on the fixed point q*, float64)
under predicted_spectral_density. Prints, per panel and depth, the measured and predicted mean and
variance of lambda and the L1 distance between histogram and prediction on the shown range
(first bin left out: it holds ReLU's atom at 0, which the drawn curve leaves off).

    python experiments/jacobian_density_compare.py   # ~2 min on one core; docs/figures/jacobian_density.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from plugins.free_probability import predicted_spectral_density
from plugins.jacobian import jacobian_singular_values
from plugins.signal_propagation import reference_q
from tdl_lightning.models import DeepMLP

DEPTHS = [2, 8, 32, 128]
WIDTH, INPUTS = 256, 16
SETTINGS = {"tanh": (1.1225, 0.05), "relu": (math.sqrt(2.0), 0.0)}
OUT = Path("docs/figures")


def measured(activation: str, init: str, depth: int) -> np.ndarray:
    sw, sb = SETTINGS[activation]
    torch.manual_seed(depth)
    net = DeepMLP(WIDTH, WIDTH, depth, None, activation, init=init, sigma_w=sw, sigma_b=sb).double()
    q0 = (reference_q(activation, sw, sb) - sb**2) / sw**2  # the first layer then sits at q*
    x = torch.randn(INPUTS, WIDTH, dtype=torch.float64) * math.sqrt(q0)
    return (jacobian_singular_values(net, x) ** 2).flatten().numpy()


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(2, 2)
    summary = {}
    for row, init in enumerate(("gaussian", "orthogonal")):
        for col, activation in enumerate(("tanh", "relu")):
            ax = axes[row][col]
            sw, sb = SETTINGS[activation]
            lams = {depth: measured(activation, init, depth) for depth in DEPTHS}
            upper = float(np.quantile(np.concatenate(list(lams.values())), 0.95))
            bins = np.linspace(0, upper, 50)
            for k, depth in enumerate(DEPTHS):
                lam = lams[depth]
                grid = np.linspace(0, upper, 400)
                x, rho = predicted_spectral_density(activation, sw, sb, depth, weights=init, grid=grid)
                counts, _ = np.histogram(lam, bins=bins)
                hist = counts / (len(lam) * np.diff(bins))
                ax.stairs(hist, bins, color=f"C{k}", alpha=0.8)
                shown = rho.copy()
                shown[0] = rho[1]  # ReLU's atom at 0 (mass 1/2) stays off the scale
                ax.plot(x, shown, color=f"C{k}", ls="--", lw=1, label=f"L = {depth}")
                centres = 0.5 * (bins[1:] + bins[:-1])
                predicted_hist = np.interp(centres, x, shown)
                fine = np.linspace(0, 8 * max(float(lam.max()), 1.0), 20000)
                _, rho_fine = predicted_spectral_density(activation, sw, sb, depth, weights=init, grid=fine)
                summary[f"{init}/{activation}/L={depth}"] = {
                    "measured_mean": round(float(lam.mean()), 4),
                    "predicted_mean": round(float(np.trapezoid(fine * rho_fine, fine)), 4),
                    "measured_var": round(float(lam.var()), 4),
                    "fraction_zero_measured": round(float((lam < 1e-10 * max(lam.max(), 1e-300)).mean()), 3),
                    "l1_on_range_without_first_bin": round(
                        float(np.sum(np.abs(hist - predicted_hist)[1:] * np.diff(bins)[1:])), 3
                    ),
                }
            ax.set_title(f"{init} weights, {activation} (sigma_w = {sw:.4g}, sigma_b = {sb:g})", fontsize=9)
            ax.set_xlabel(r"$\lambda$ (squared singular value), linear axis")
            ax.set_ylabel("density")
            ax.set_ylim(0, 2.0)  # the spikes at 0 (ReLU's atom, deep Gaussian nets' pile-up) run off the top
            ax.legend(fontsize=7, title="solid: measured, dashed: predicted", title_fontsize=7)
    fig.set_layout_engine("tight")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "jacobian_density.png", dpi=75)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
