"""Dynamical isometry: tanh vs ReLU, Gaussian vs orthogonal weights, depths 8 to 128 (Pennington 2017).

Each network sits at its edge of chaos (tanh: sigma_w from ``critical_sigma_w`` at sigma_b = 0.05;
ReLU: sigma_w = sqrt(2), sigma_b = 0), so the mean squared singular value is ~1 for all four; what
differs is the spread. For every (activation, weights, depth): the singular values of the hidden
stack's input-output Jacobian at initialisation (width 128, 16 MNIST5k digits projected to 128
features), the free-probability prediction of their mean and variance, and the SGD steps a
``DeepMLP`` classifier needs to bring its running training loss below a target. Writes
``docs/figures/dynamical_isometry_spectra.png`` and ``dynamical_isometry.json``::

    python experiments/dynamical_isometry_compare.py    # ~4 minutes on 2 CPU cores

Example:
    >>> steps_to_target([2.0, 1.0, 0.4, 0.3], 0.5)
    3
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from plugins.jacobian import jacobian_singular_values, jacobian_spectrum_moments, spectrum_statistics  # noqa: E402
from plugins.signal_propagation import critical_sigma_w  # noqa: E402
from tdl_lightning.data import MNIST5k  # noqa: E402
from tdl_lightning.models import DeepMLP  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
WIDTH, DEPTHS, TARGET, MAX_STEPS = 128, (8, 32, 128), 0.5, 300


def steps_to_target(losses: list[float], target: float) -> int | None:
    """First step (1-based) whose loss is below ``target``, or ``None``.

    Example:
        >>> steps_to_target([1.0, 0.9], 0.5) is None
        True
    """
    return next((i + 1 for i, loss in enumerate(losses) if loss < target), None)


def main() -> None:
    """Run the comparison, write the figure and the JSON."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.set_num_threads(1)
    dm = MNIST5k(batch_size=128)
    dm.setup()
    x_all, y_all = dm.splits["train"]
    x_all = x_all.reshape(len(x_all), -1)
    # a fixed random projection to WIDTH features, scaled to unit mean square: square Jacobians
    proj = torch.randn(784, WIDTH, generator=torch.Generator().manual_seed(0)) / math.sqrt(784)
    feats = x_all @ proj
    feats = feats / feats.pow(2).mean().sqrt()
    probe = feats[:16]
    configs = [
        ("tanh", "gaussian", critical_sigma_w("tanh", 0.05), 0.05),
        ("tanh", "orthogonal", critical_sigma_w("tanh", 0.05), 0.05),
        ("relu", "gaussian", math.sqrt(2.0), 0.0),
        ("relu", "orthogonal", math.sqrt(2.0), 0.0),
    ]
    rows = []
    fig, axes = plt.subplots(1, len(DEPTHS), figsize=(13, 3.6), sharey=False)
    for k, depth in enumerate(DEPTHS):
        for activation, weights, sw, sb in configs:
            torch.manual_seed(0)
            net = DeepMLP(
                WIDTH, WIDTH, depth, 10, activation=activation, init=weights, sigma_w=sw, sigma_b=sb
            )
            s = jacobian_singular_values(net, probe, output_layer=f"act{depth}")
            stats = spectrum_statistics(s)
            theory = jacobian_spectrum_moments(activation, sw, sb, depth, weights, q0=1.0)
            values = s.flatten().double().clamp_min(1e-12).numpy()
            axes[k].hist(
                np.log10(values), bins=60, histtype="step", density=True, label=f"{activation}, {weights}"
            )
            opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
            g = torch.Generator().manual_seed(0)
            losses, running = [], None
            for _ in range(MAX_STEPS):
                idx = torch.randint(0, len(feats), (128,), generator=g)
                loss = torch.nn.functional.cross_entropy(net(feats[idx]), y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                losses.append(running)
                if running < TARGET or not math.isfinite(running):
                    break
            row = {
                "activation": activation,
                "weights": weights,
                "depth": depth,
                "sigma_w": sw,
                "sigma_b": sb,
                **stats,
                "mean_squared_singular_value_theory": theory.mean_squared_singular_value,
                "variance_squared_singular_value_theory": theory.variance,
                "steps_to_loss_target": steps_to_target(losses, TARGET),
                "final_running_loss": losses[-1],
            }
            rows.append(row)
            print({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
        axes[k].set_title(f"depth {depth}, width {WIDTH}")
        axes[k].set_xlabel(r"$\log_{10}$ singular value of $J$")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "dynamical_isometry_spectra.png", dpi=90)
    report = {"width": WIDTH, "loss_target": TARGET, "max_steps": MAX_STEPS, "runs": rows}
    (FIGURES / "dynamical_isometry.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
