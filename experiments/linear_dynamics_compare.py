"""The figures of docs/linear_networks.md: measured mode strengths over Saxe et al.'s exact curves.

Full-batch gradient descent (lr 0.01 on torch's mean squared error, tau = K / (2 lr) = 300 steps) of
deep linear nets of width 128 on the white-input linear teacher of experiments/linear_dynamics.yaml
(singular values 3, 2, 1, 0.5). Panels: two layers from a small random init, four layers from a small
random and from a balanced orthogonal init (the setting of the exact deep solution), and the
smallest Hessian eigenvalue along the two-layer run: negative on the plateaus (saddles), zero or
positive once every mode is learnt (every local minimum of a linear net is global).

    python experiments/linear_dynamics_compare.py   # ~1 min on one core; writes docs/figures/linear_*.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from plugins.linear_dynamics import (
    deep_mode_strength,
    input_output_correlation,
    mode_strengths,
    saxe_mode_strength,
)
from tdl_lightning.data import TeacherStudent

try:  # the Hessian's public name, wherever the curvature package keeps it
    from plugins.curvature import hessian_eigenvalues  # type: ignore
except ImportError:
    from plugins.hessian import hessian_eigenvalues

SINGULAR_VALUES = [3.0, 2.0, 1.0, 0.5]
LR, STEPS, WIDTH = 0.01, 3000, 128
OUT = Path("docs/figures")


def _net(layers: int, init: str, scale: float, v: torch.Tensor, u: torch.Tensor) -> nn.Sequential:
    dims = [8] + [WIDTH] * (layers - 1) + [6]
    linears = [nn.Linear(a, b, bias=False).double() for a, b in zip(dims[:-1], dims[1:], strict=True)]
    for layer in linears:
        nn.init.normal_(layer.weight, std=scale / math.sqrt(layer.in_features))
    if init == "orthogonal":  # balanced: W_l = a O_l O_{l-1}^T, O_0 = V, O_L = U; every mode starts at a^L
        basis = [v] + [
            torch.linalg.qr(torch.randn(WIDTH, WIDTH, dtype=torch.float64)).Q[:, :4]
            for _ in range(layers - 1)
        ]
        basis.append(u)
        with torch.no_grad():
            for layer, left, right in zip(linears, basis[1:], basis[:-1], strict=True):
                layer.weight.copy_(scale * left @ right.T)
    return nn.Sequential(*linears)


def _train(net: nn.Sequential, x, y, u, v, hessian: bool = False):
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    steps, modes, smallest = [], [], []
    for step in range(STEPS + 1):
        if step % 20 == 0:
            steps.append(step)
            modes.append(mode_strengths(net, u, v))
            if hessian and step % 100 == 0:
                lam = hessian_eigenvalues(
                    net, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), (x, y), k=1, which="smallest"
                )
                smallest.append((step, float(lam[0])))
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return torch.tensor(steps, dtype=torch.float64), torch.stack(modes).T, smallest


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.manual_seed(0)
    dm = TeacherStudent(
        num_samples=500, input_dim=8, output_dim=6, teacher_singular_values=SINGULAR_VALUES, whiten=True
    )
    dm.setup()
    x, y = (t.double() for t in dm.splits["train"])
    u, s, v, _ = input_output_correlation(x, y)
    u, s, v = u[:, :4], s[:4], v[:, :4]
    tau = 6 / (2 * LR)
    runs = {
        "2 layers, small random init": (2, "random", 0.05),
        "4 layers, small random init": (4, "random", 0.3),
        "4 layers, balanced orthogonal init": (4, "orthogonal", 0.3),
    }
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 4)
    summary: dict[str, dict[str, Any]] = {}
    for ax, (title, (layers, init, scale)) in zip(axes, runs.items(), strict=False):
        net = _net(layers, init, scale, v, u)
        if layers == 2:  # the part of the two layers' vectors that grows: u0 = |(W1 v + W2^T u) / 2|^2
            first, second = (m.weight for m in net if isinstance(m, nn.Linear))
            u0 = (0.5 * (first @ v + second.T @ u)).pow(2).sum(0).detach()
        else:
            u0 = mode_strengths(net, u, v).abs()
        steps, modes, smallest = _train(net, x, y, u, v, hessian=layers == 2)
        errors, half = [], []
        for a in range(4):
            color = f"C{a}"
            reached = steps[modes[a] >= float(s[a]) / 2]
            half.append(float(reached[0]) if len(reached) else math.nan)
            if layers == 2 or init == "orthogonal":  # an unbalanced deep start has no exact curve
                if layers == 2:
                    theory = saxe_mode_strength(steps, float(s[a]), float(u0[a]), tau)
                else:
                    theory = deep_mode_strength(steps, float(s[a]), float(u0[a]), tau, layers)
                errors.append(float((modes[a] - theory).abs().max()))
                ax.plot(steps, theory, lw=1, color=color)
            ax.plot(steps[::4], modes[a][::4], ".", ms=3, color=color, label=f"s = {float(s[a]):g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("gradient-descent steps")
        summary[title] = {
            "max_abs_error": max(errors, default=math.nan),
            "per_mode": errors,
            "steps_to_half": half,
        }
        if smallest:
            summary[title]["smallest_hessian_eigenvalue"] = smallest
            summary[title]["theory_steps_to_half"] = [
                tau / (2 * float(s[a])) * math.log(float(s[a]) / float(u0[a]) - 1) for a in range(4)
            ]
    axes[0].set_ylabel("mode strength (dots: measured, lines: theory)")
    axes[0].legend(fontsize=7)
    steps_h, lam = zip(*summary["2 layers, small random init"]["smallest_hessian_eigenvalue"], strict=True)
    axes[3].plot(steps_h, lam, "o-", ms=3)
    axes[3].axhline(0, color="k", lw=0.5)
    axes[3].axhline(
        -2 * SINGULAR_VALUES[0] / 6, color="r", ls="--", lw=1, label=r"$-2 s_1 / K$ (saddle at 0)"
    )
    axes[3].set_title("2 layers: smallest Hessian eigenvalue", fontsize=9)
    axes[3].set_xlabel("gradient-descent steps")
    axes[3].legend(fontsize=7)
    fig.set_layout_engine("tight")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "linear_dynamics_modes.png", dpi=80)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
