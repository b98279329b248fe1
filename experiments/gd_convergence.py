"""Linear convergence of full-batch gradient descent (the MIPT lectures): deep linear and wide ReLU nets.

The convergence theorems of the course say that gradient descent on the square loss converges
*linearly* (the loss falls geometrically, a straight line on a log scale) for deep linear networks
wide enough (Arora et al. 2019, Du & Hu 2019) and for two-layer ReLU networks wide enough to fit the
data (Du et al. 2019: the rate is set by the smallest eigenvalue of the neural tangent kernel). On
TeacherStudent data (Gaussian inputs, 10 dimensions) this script trains, by full-batch GD with step
``eta = 1 / lambda_max`` at init (``plugins.HessianEigenvalues``' Lanczos), in float64:

- a deep linear net (3 hidden layers of width 1, 4, 16, 64) on a linear teacher (200 examples), the
  loss measured above the least-squares minimum ``L*``;
- a two-layer ReLU net (width 4 to 1024, He init) on a one-hidden-layer tanh teacher (51 examples).

It fits the rate (``loss_t ~ C q^t``: the per-step factor ``q``) over the second half of the steps
and writes ``docs/figures/gd_convergence.png`` and ``gd_convergence.json``::

    python experiments/gd_convergence.py    # ~1-2 minutes on 2 CPU cores

Example:
    >>> round(per_step_factor([1.0, 0.5, 0.25, 0.125]), 6)
    0.5
    >>> per_step_factor([1.0, 0.0, 0.0, 0.0]) is None  # converged to rounding at once: nothing to fit
    True
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

try:  # the curvature package; plugins.hessian before it
    from plugins.curvature import hessian_eigenvalues  # noqa: E402
except ImportError:
    from plugins.hessian import hessian_eigenvalues  # noqa: E402
from tdl_lightning.data import TeacherStudent  # noqa: E402
from tdl_lightning.models import DeepMLP  # noqa: E402
from tdl_lightning.tasks import Regressor  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
LINEAR_WIDTHS, LINEAR_STEPS = (1, 4, 16, 64), 400
RELU_WIDTHS, RELU_STEPS = (4, 16, 64, 256, 1024), 3000


def per_step_factor(excess: list[float], floor: float = 1e-20) -> float | None:
    """``q`` of the least-squares fit ``log excess_t = a + t log q`` over the second half of the steps.

    Values at or below ``floor`` (float64 rounding) are left out; where fewer than 2 values of the
    second half are above it (converged early), the fit takes the steps between ``1e-3`` (after the
    first transient) and ``floor``. ``None`` when nothing is left to fit.

    Example:
        >>> round(per_step_factor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25]), 6)
        0.5
    """
    points = [(t, math.log(v)) for t, v in enumerate(excess) if t >= len(excess) // 2 and v > floor]
    if len(points) < 2:
        points = [(t, math.log(v)) for t, v in enumerate(excess) if floor < v < 1e-3]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / sum((t - mean_t) ** 2 for t, _ in points)
    return math.exp(slope)


def _data(num_samples: int, activation: str, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    dm = TeacherStudent(
        num_samples=num_samples,
        input_dim=10,
        teacher_width=20,
        teacher_depth=depth,
        activation=activation,
        full_batch=True,
    )
    dm.setup()
    (batch,) = list(dm.train_dataloader())  # the whole training split: one full batch
    return batch[0].double(), batch[1].double()


def gradient_descent(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """Full-batch GD with ``eta = 1 / lambda_max`` at init; the loss before every step."""
    task = Regressor(net.double())
    lambda_max = float(hessian_eigenvalues(task, lambda m, b: m.loss(b), (x, y), k=1, tol=1e-4)[0])
    optimizer = torch.optim.SGD(task.parameters(), lr=1.0 / lambda_max)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = task.loss((x, y))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"lambda_max_init": lambda_max, "eta": 1.0 / lambda_max, "losses": losses}


def main() -> None:
    """Run both studies, draw the figure, write the JSON, print the tables."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*Lanczos stopped")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    report: dict[str, list] = {"deep_linear": [], "two_layer_relu": []}
    x, y = _data(250, "linear", 0)
    n_linear = len(x)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    least_squares = float((design @ torch.linalg.lstsq(design, y).solution - y).pow(2).mean())
    for width in LINEAR_WIDTHS:
        torch.manual_seed(0)
        run = gradient_descent(DeepMLP(10, width, 3, 1, "linear", sigma_w=1.0), x, y, LINEAR_STEPS)
        excess = [max(v - least_squares, 1e-30) for v in run["losses"]]
        q = per_step_factor(excess)
        left.semilogy(excess, label=f"width {width}: q = {q:.4f}" if q else f"width {width}")
        report["deep_linear"].append(
            {
                "width": width,
                "q": q,
                **{k: run[k] for k in ("lambda_max_init", "eta")},
                "excess_loss_end": excess[-1],
            }
        )
    x, y = _data(63, "tanh", 1)
    for width in RELU_WIDTHS:
        torch.manual_seed(0)
        run = gradient_descent(DeepMLP(10, width, 1, 1, "relu", init="he"), x, y, RELU_STEPS)
        q = per_step_factor(run["losses"])
        right.semilogy(run["losses"], label=f"width {width}: q = {q:.5f}" if q else f"width {width}")
        report["two_layer_relu"].append(
            {
                "width": width,
                "q": q,
                **{k: run[k] for k in ("lambda_max_init", "eta")},
                "loss_at": {t: run["losses"][t] for t in (0, 500, 1500, RELU_STEPS - 1)},
            }
        )
        print(report["two_layer_relu"][-1], flush=True)
    left.set_title(f"deep linear net (3 hidden layers), {n_linear} examples")
    left.set_ylabel("loss - least-squares minimum")
    right.set_title(f"two-layer ReLU net, {len(x)} examples")
    right.set_ylabel("training loss")
    for ax in (left, right):
        ax.set_xlabel("full-batch GD step (eta = 1 / lambda_max at init)")
        ax.legend(fontsize=7)
    figure.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    figure.savefig(FIGURES / "gd_convergence.png", dpi=80)
    report["least_squares_minimum"] = least_squares
    (FIGURES / "gd_convergence.json").write_text(json.dumps(report, indent=1))
    for name, rows in (("deep linear", report["deep_linear"]), ("two-layer ReLU", report["two_layer_relu"])):
        for r in rows:
            q = "-" if r["q"] is None else f"{r['q']:.5f}"
            print(f"| {name} | {r['width']} | {r['lambda_max_init']:.2f} | {r['eta']:.4g} | {q} |")


if __name__ == "__main__":
    main()
