"""Edge of chaos over a grid of sigma_w (tanh, sigma_b = 0.05): mean-field theory vs measurement.

For each sigma_w: q*, chi_1 and the correlation depth scale xi_c from :mod:`plugins.signal_propagation`,
beside the same quantities measured in random width-400 tanh MLPs at initialisation (q^l in the deep
layers; chi_1 as the per-layer growth of the Jacobian's mean squared singular value for inputs on
q*; xi_c from the exponential approach of c^l to c*). Then a small local version of Schoenholz et
al.'s Fig. 5: training accuracy of depth x sigma_w after a fixed number of SGD steps on MNIST5k,
with the 6 xi_c line. Writes ``docs/figures/edge_of_chaos_*.png`` and ``edge_of_chaos_grid.json``::

    python experiments/edge_of_chaos_grid.py            # ~3 minutes on 2 CPU cores
    python experiments/edge_of_chaos_grid.py --quick    # theory vs measurement only

Example:
    >>> round(measured_xi(np.array([0.5, 0.25, 0.125, 0.0625]), 0.0), 3)  # halves per layer: 1/ln 2
    1.443
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

from plugins.jacobian import jacobian_singular_values  # noqa: E402
from plugins.signal_propagation import (  # noqa: E402
    c_map_iterates,
    c_star,
    chi_1,
    correlation_propagation,
    critical_sigma_w,
    depth_scale,
    preactivation_variances,
    q_star,
)
from tdl_lightning.data import MNIST5k  # noqa: E402
from tdl_lightning.models import DeepMLP  # noqa: E402

SIGMA_B = 0.05
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def measured_xi(c: np.ndarray, target: float) -> float:
    """Depth scale from a least-squares fit of ``log |c^l - c*|`` against ``l`` (``nan`` if flat).

    Example:
        >>> math.isnan(measured_xi(np.array([0.5, 0.5]), 0.5))
        True
    """
    gap = np.abs(np.asarray(c) - target)
    keep = gap > 1e-3  # below this, finite-width noise dominates
    if keep.sum() < 3:
        return math.nan
    slope = np.polyfit(np.flatnonzero(keep), np.log(gap[keep]), 1)[0]
    return -1.0 / slope if slope < 0 else math.inf


def theory_vs_measurement(sigma_ws: np.ndarray, width: int, depth: int) -> list[dict[str, float]]:
    """One row per sigma_w: theory and measurement of q*, chi_1 and xi_c."""
    rows = []
    g = torch.Generator().manual_seed(1)
    for sw in sigma_ws:
        torch.manual_seed(0)
        net = DeepMLP(width, width, depth, None, activation="tanh", sigma_w=float(sw), sigma_b=SIGMA_B)
        qs, cs = q_star("tanh", sw, SIGMA_B), c_star("tanh", sw, SIGMA_B)
        q0 = (qs - SIGMA_B**2) / sw**2  # inputs whose first pre-activations already sit at q*
        x = torch.randn(64, width, generator=g) * math.sqrt(max(q0, 1e-6))
        q_measured = float(preactivation_variances(net, x)[depth // 2 :].mean())
        shallow = DeepMLP(width, width, 8, None, activation="tanh", sigma_w=float(sw), sigma_b=SIGMA_B)
        m1 = float((jacobian_singular_values(shallow, x[:6]).double() ** 2).mean())
        x_b = 0.5 * x + math.sqrt(0.75) * torch.randn(64, width, generator=g) * math.sqrt(max(q0, 1e-6))
        c_measured = correlation_propagation(net, x, x_b).numpy()
        c0 = float(torch.nn.functional.cosine_similarity(x, x_b).mean())
        c_theory = c_map_iterates("tanh", sw, SIGMA_B, c0, depth, max(q0, 1e-6))
        rows.append(
            {
                "sigma_w": float(sw),
                "q_star": qs,
                "q_measured": q_measured,
                "chi_1": chi_1("tanh", sw, SIGMA_B),
                "chi_1_measured": m1 ** (1 / 8),
                "c_star": cs,
                "xi_c": depth_scale("tanh", sw, SIGMA_B),
                "xi_c_measured": measured_xi(c_measured, cs),
                "xi_c_from_c_map_iterates": measured_xi(c_theory, cs),
                "c_max_abs_error": float(np.max(np.abs(c_measured - c_theory))),
            }
        )
        print({k: round(v, 4) for k, v in rows[-1].items()}, flush=True)
    return rows


def trainability(sigma_ws: list[float], depths: list[int], steps: int, width: int) -> np.ndarray:
    """Training accuracy after ``steps`` SGD steps on MNIST5k for every (depth, sigma_w)."""
    dm = MNIST5k(batch_size=128)
    dm.setup()
    x_all, y_all = dm.splits["train"]
    x_all = x_all.reshape(len(x_all), -1)
    acc = np.zeros((len(depths), len(sigma_ws)))
    for i, depth in enumerate(depths):
        for j, sw in enumerate(sigma_ws):
            torch.manual_seed(0)
            net = DeepMLP(784, width, depth, 10, activation="tanh", sigma_w=sw, sigma_b=SIGMA_B)
            opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
            g = torch.Generator().manual_seed(0)
            for _ in range(steps):
                idx = torch.randint(0, len(x_all), (128,), generator=g)
                loss = torch.nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                acc[i, j] = float((net(x_all).argmax(1) == y_all).float().mean())
            print(f"depth {depth:3d} sigma_w {sw:.2f}: train acc {acc[i, j]:.3f}", flush=True)
    return acc


def main() -> None:
    """Run the grid, write the figures and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the trainability heatmap")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    FIGURES.mkdir(parents=True, exist_ok=True)
    sigma_ws = np.array([0.6, 0.8, 0.95, 1.05, 1.12, 1.2, 1.35, 1.6, 2.0, 2.5, 3.0])
    rows = theory_vs_measurement(sigma_ws, width=400, depth=40)
    sw_c = critical_sigma_w("tanh", SIGMA_B)
    dense = np.linspace(0.5, 3.1, 80)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    measured = {k: [r[k] for r in rows] for k in rows[0]}
    axes[0].plot(dense, [q_star("tanh", s, SIGMA_B) for s in dense], label="theory $q^*$")
    axes[0].plot(sigma_ws, measured["q_measured"], "o", label="measured (width 400)")
    axes[1].plot(dense, [chi_1("tanh", s, SIGMA_B) for s in dense], label=r"theory $\chi_1$")
    axes[1].plot(sigma_ws, measured["chi_1_measured"], "o", label=r"measured $(\overline{s^2})^{1/L}$")
    axes[1].axhline(1.0, color="gray", lw=0.5)
    axes[2].plot(dense, [depth_scale("tanh", s, SIGMA_B) for s in dense], label=r"theory $\xi_c$")
    axes[2].plot(sigma_ws, measured["xi_c_measured"], "o", label=r"measured: fit of $|c^l - c^*|$")
    axes[2].set_ylim(0, 30)
    for ax, name in zip(axes, ("$q^*$", r"$\chi_1$", r"$\xi_c$"), strict=True):
        ax.axvline(sw_c, color="r", ls="--", lw=0.8, label=rf"edge of chaos $\sigma_w$={sw_c:.3f}")
        ax.set_xlabel(r"$\sigma_w$ ($\sigma_b$ = 0.05)")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "edge_of_chaos_theory.png", dpi=90)
    report = {"sigma_b": SIGMA_B, "critical_sigma_w": sw_c, "grid": rows}
    if not args.quick:
        grid_sw = [0.5, 0.8, 1.0, 1.12, 1.3, 1.6, 2.0, 2.5, 3.0]
        depths = [2, 4, 8, 16, 32, 64]
        acc = trainability(grid_sw, depths, args.steps, width=64)
        fig, ax = plt.subplots(figsize=(6, 4))
        mesh = ax.pcolormesh(np.arange(len(grid_sw) + 1), np.arange(len(depths) + 1), acc, vmin=0.1, vmax=1.0)
        fig.colorbar(mesh, label=f"train accuracy after {args.steps} SGD steps")
        ax.set_xticks(np.arange(len(grid_sw)) + 0.5, [f"{s:g}" for s in grid_sw])
        ax.set_yticks(np.arange(len(depths)) + 0.5, [str(d) for d in depths])
        xi = np.array([depth_scale("tanh", s, SIGMA_B) for s in grid_sw])
        ax.plot(
            np.arange(len(grid_sw)) + 0.5,
            np.interp(np.log2(6 * xi), np.log2(depths), np.arange(len(depths)) + 0.5),
            "w--",
            label=r"$6\,\xi_c$",
        )
        ax.set_xlabel(r"$\sigma_w$")
        ax.set_ylabel("depth L")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(FIGURES / "edge_of_chaos_trainability.png", dpi=90)
        report["trainability"] = {
            "sigma_w": grid_sw,
            "depth": depths,
            "train_acc": acc.tolist(),
            "steps": args.steps,
        }
    out = Path(__file__).resolve().parents[1] / "docs" / "figures" / "edge_of_chaos_grid.json"
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
