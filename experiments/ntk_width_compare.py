"""The figures and numbers of docs/ntk.md: the NTK's drift with width, and lazy vs feature learning.

One-hidden-layer ReLU nets in the NTK parameterisation (sigma_w = sqrt(2), sigma_b = 0.1) learn a
tanh teacher (TeacherStudent: 8 inputs, 256 training and 64 test points) by full-batch gradient
descent on torch's mean squared error (lr 0.5, 400 steps), for widths 64 ... 4096 and 3 seeds.
Measured on the training inputs: the relative kernel change |Theta_T - Theta_0| / |Theta_0|, the
relative weight change |theta_T - theta_0| / |theta_0| (both ~ width^-1/2, Lee et al. 2019), the
empirical NTK at init vs analytic_ntk, and the test predictions vs linearised_predictions. Then, at
width 256, the output scale alpha of a centred model (Chizat, Oyallon & Bach 2019: lr / alpha^2)
and the three parameterisations.

    python experiments/ntk_width_compare.py   # ~2 min on one core; writes docs/figures/ntk_*.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from plugins.ntk import analytic_ntk, empirical_ntk, kernel_distance, linearised_predictions, parameter_vector
from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP

WIDTHS = [64, 128, 256, 512, 1024, 2048, 4096]
DEEP_WIDTHS = [64, 128, 256, 512]  # two hidden layers: width^2 weights, and J is 256 x P float64 numbers
SEEDS = [0, 1, 2]
LR, STEPS = 0.5, 400
SW, SB = math.sqrt(2.0), 0.1
OUT = Path("docs/figures")


def _data():
    dm = TeacherStudent(num_samples=320, input_dim=8, teacher_width=32, activation="tanh", seed=0)
    dm.setup()
    x, y = dm.splits["train"]
    xt = torch.cat([dm.splits["val"][0], dm.splits["test"][0]])
    yt = torch.cat([dm.splits["val"][1], dm.splits["test"][1]])
    return x.double(), y.double(), xt.double(), yt.double()


def _fit(model: nn.Module, x, y, lr: float, f0_shift: torch.Tensor | None = None) -> None:
    """Full-batch GD on mse_loss; ``f0_shift``: targets moved by the initial outputs (a centred model)."""
    target = y if f0_shift is None else y + f0_shift
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()


def _drift(model: nn.Module, x, y, xt, yt, lr: float, centred: bool = False) -> dict[str, float]:
    k0 = empirical_ntk(model, x)
    w0 = parameter_vector(model)
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    kt0 = empirical_ntk(model, xt, x)
    _fit(model, x, y, lr, f0 if centred else None)
    k1 = empirical_ntk(model, x)
    with torch.no_grad():
        f1t = model(xt) - (f0t if centred else 0)
    n = len(x)
    base, base_t = (torch.zeros_like(f0), torch.zeros_like(f0t)) if centred else (f0, f0t)
    lin = linearised_predictions(k0, kt0, base, base_t, y, lr * 2 / n, STEPS)
    return {
        "relative_kernel_change": float((k1 - k0).norm() / k0.norm()),
        "kernel_distance": kernel_distance(k1, k0),
        "relative_weight_change": float((parameter_vector(model) - w0).norm() / w0.norm()),
        "test_mse": float(nn.functional.mse_loss(f1t, yt)),
        "linearised_test_mse": float(nn.functional.mse_loss(lin, yt)),
        "net_vs_linearised_rms": float((f1t - lin).pow(2).mean().sqrt() / lin.pow(2).mean().sqrt()),
    }


def _slope(widths, values) -> float:
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    x, y, xt, yt = _data()
    analytic = analytic_ntk("relu", 1, x[:64], sigma_w=SW, sigma_b=SB)
    rows: dict[int, list[dict[str, float]]] = {w: [] for w in WIDTHS}
    for width in WIDTHS:
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = DeepMLP(8, width, 1, 1, "relu", sigma_w=SW, sigma_b=SB, parameterisation="ntk").double()
            init_error = float((empirical_ntk(model, x[:64]) - analytic).norm() / analytic.norm())
            rows[width].append({"init_vs_analytic": init_error, **_drift(model, x, y, xt, yt, LR)})
    # two hidden layers: the kernel's own drift
    deep: dict[int, list[dict[str, float]]] = {w: [] for w in DEEP_WIDTHS}
    for width in DEEP_WIDTHS:
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = DeepMLP(8, width, 2, 1, "relu", sigma_w=SW, sigma_b=SB, parameterisation="ntk").double()
            deep[width].append(_drift(model, x, y, xt, yt, LR / 2))
    mean = {w: {k: float(np.mean([r[k] for r in rows[w]])) for k in rows[w][0]} for w in WIDTHS}
    mean_deep = {w: {k: float(np.mean([r[k] for r in deep[w]])) for k in deep[w][0]} for w in DEEP_WIDTHS}
    slopes_deep = {
        k: _slope(DEEP_WIDTHS, [mean_deep[w][k] for w in DEEP_WIDTHS])
        for k in ("relative_kernel_change", "relative_weight_change")
    }
    slopes = {
        k: _slope(WIDTHS, [mean[w][k] for w in WIDTHS])
        for k in (
            "relative_kernel_change",
            "relative_weight_change",
            "init_vs_analytic",
            "net_vs_linearised_rms",
        )
    }

    alphas = [0.1, 0.3, 1.0, 3.0, 10.0]
    lazy = {}
    for alpha in alphas:
        torch.manual_seed(0)
        model = DeepMLP(
            8, 256, 1, 1, "relu", sigma_w=SW, sigma_b=SB, parameterisation="ntk", alpha=alpha
        ).double()
        lazy[alpha] = _drift(model, x, y, xt, yt, LR / alpha**2, centred=True)
    params = {}  # no biases: the mean-field read-out bias would move at lr * sigma_b, far past stability
    for name, lr in (("standard", 4 * LR / 256), ("ntk", LR), ("mean_field", LR * 256)):
        torch.manual_seed(0)
        model = DeepMLP(8, 256, 1, 1, "relu", sigma_w=SW, parameterisation=name, bias=False).double()
        params[name] = {"lr": lr, **_drift(model, x, y, xt, yt, lr)}

    fig = Figure(figsize=(13, 3.6))
    ax_w, ax_i, ax_a = fig.subplots(1, 3)
    for key, label in (
        ("relative_kernel_change", r"$|\Theta_T-\Theta_0|/|\Theta_0|$"),
        ("relative_weight_change", r"$|\theta_T-\theta_0|/|\theta_0|$"),
        ("net_vs_linearised_rms", "net vs linearised (test, rel. RMS)"),
    ):
        values = [mean[w][key] for w in WIDTHS]
        ax_w.loglog(WIDTHS, values, "o-", ms=4, label=f"{label}: slope {slopes[key]:.2f}")
    for key, marker in (("relative_kernel_change", "^"), ("relative_weight_change", "v")):
        values = [mean_deep[w][key] for w in DEEP_WIDTHS]
        ax_w.loglog(
            DEEP_WIDTHS,
            values,
            marker + ":",
            ms=4,
            label=f"2 hidden layers, {key.split('_')[1]}: slope {slopes_deep[key]:.2f}",
        )
    ax_w.set_xlabel("width")
    ax_w.set_title(f"after {STEPS} GD steps (mean of {len(SEEDS)} seeds)", fontsize=9)
    ax_w.legend(fontsize=7)
    ax_i.loglog(
        WIDTHS,
        [mean[w]["init_vs_analytic"] for w in WIDTHS],
        "o-",
        ms=4,
        label=f"slope {slopes['init_vs_analytic']:.2f}",
    )
    ax_i.loglog(
        WIDTHS,
        [mean[WIDTHS[0]]["init_vs_analytic"] * (w / WIDTHS[0]) ** -0.5 for w in WIDTHS],
        "k--",
        lw=1,
        label=r"width$^{-1/2}$",
    )
    ax_i.set_xlabel("width")
    ax_i.set_title(r"empirical vs analytic NTK at init, $|\hat\Theta-\Theta|/|\Theta|$", fontsize=9)
    ax_i.legend(fontsize=7)
    ax_a.loglog(
        alphas, [lazy[a]["relative_kernel_change"] for a in alphas], "o-", ms=4, label="kernel change"
    )
    ax_a.loglog(alphas, [lazy[a]["test_mse"] for a in alphas], "s-", ms=4, label="test MSE")
    ax_a.set_xlabel(r"output scale $\alpha$ (lr / $\alpha^2$), width 256")
    ax_a.set_title("lazy (large alpha) vs feature learning", fontsize=9)
    ax_a.legend(fontsize=7)
    fig.set_layout_engine("tight")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "ntk_width.png", dpi=80)
    print(
        json.dumps(
            {
                "mean": mean,
                "slopes": slopes,
                "mean_depth2": mean_deep,
                "slopes_depth2": slopes_deep,
                "alpha": lazy,
                "parameterisation": params,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
