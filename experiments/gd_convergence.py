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

import argparse
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
from plugins.ntk import empirical_ntk  # noqa: E402
from tdl_lightning.data import TeacherStudent  # noqa: E402
from tdl_lightning.models import DeepMLP  # noqa: E402
from tdl_lightning.tasks import Regressor  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
LINEAR_WIDTHS, LINEAR_STEPS = (1, 4, 16, 64), 400
RELU_WIDTHS, RELU_STEPS = (4, 16, 64, 256, 1024), 3000
CHECKPOINT_STEPS = (0, 500, 1500, RELU_STEPS - 1)


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


def loss_kernel(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The loss's tangent kernel ``K = (2 / n) Theta`` of the mean squared error over ``n`` examples.

    GD moves the residual ``r = f(x) - y`` of the linearised model by ``r <- (I - eta K) r``
    (``Theta`` is the empirical NTK, :func:`plugins.ntk.empirical_ntk`): its component along an
    eigenvector of ``K`` with eigenvalue ``lambda`` shrinks by ``1 - eta lambda`` per step, the
    loss's by ``(1 - eta lambda)^2``.

    Example:
        >>> net = torch.nn.Linear(2, 1).double()  # Theta = x . x' + 1
        >>> loss_kernel(net, torch.eye(2, dtype=torch.float64))  # (2 / 2) [[2, 1], [1, 2]]
        tensor([[2., 1.],
                [1., 2.]], dtype=torch.float64)
    """
    return empirical_ntk(net, x, chunk_size=None) * (2.0 / len(x))


def nonzero_spectrum(kernel: torch.Tensor, rank_tol: float = 1e-9) -> torch.Tensor:
    """The eigenvalues of a PSD kernel on its range, ascending.

    Eigenvalues below ``rank_tol * lambda_max`` count as zero: a deep linear net's kernel has rank
    at most ``input_dim + 1``, and the residual above the least-squares minimum lies in its range.

    Example:
        >>> nonzero_spectrum(torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
        tensor([1., 3.])
    """
    eigenvalues = torch.linalg.eigvalsh(kernel)
    return eigenvalues[eigenvalues > rank_tol * eigenvalues[-1]]


def kernel_rates(kernel: torch.Tensor, eta: float) -> dict[str, float]:
    """``lambda_min``, ``lambda_max`` and rank of ``K``; the bound and the linearised loss factor.

    ``bound_q = 1 - eta lambda_min`` (the theorem's bound on the loss's per-step factor, valid for
    ``eta lambda_max <= 1``) and ``linearised_q = max (1 - eta lambda)^2`` over the non-zero
    eigenvalues: the slowest mode of the linearised model (``lambda_min``'s unless
    ``eta lambda_max`` passes ``2 - eta lambda_min``).

    Example:
        >>> kernel_rates(torch.diag(torch.tensor([1.0, 3.0])), 0.25)
        {'lambda_min': 1.0, 'lambda_max': 3.0, 'rank': 2, 'bound_q': 0.75, 'linearised_q': 0.5625}
    """
    spectrum = nonzero_spectrum(kernel)
    return {
        "lambda_min": float(spectrum[0]),
        "lambda_max": float(spectrum[-1]),
        "rank": len(spectrum),
        "bound_q": 1.0 - eta * float(spectrum[0]),
        "linearised_q": float(((1.0 - eta * spectrum) ** 2).max()),
    }


def linearised_losses(kernel: torch.Tensor, residual: torch.Tensor, eta: float, steps: int) -> list[float]:
    """The loss of the model linearised at init under GD: ``r_t = (I - eta K)^t r_0``, ``L_t = |r_t|^2 / n``.

    Example:
        >>> linearised_losses(torch.eye(2), torch.tensor([1.0, 1.0]), 0.5, 3)  # r halves each step
        [1.0, 0.25, 0.0625]
    """
    eigenvalues, vectors = torch.linalg.eigh(kernel)
    coefficients = (vectors.T @ residual.reshape(-1)) ** 2 / len(residual)
    factors = (1.0 - eta * eigenvalues) ** 2
    return [float((coefficients * factors**t).sum()) for t in range(steps)]


def gradient_descent(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """Full-batch GD with ``eta = 1 / lambda_max`` at init; the loss before every step.

    Also :func:`kernel_rates` of the kernel (:func:`loss_kernel`) at init and at the end, and the
    loss curve of the model linearised at init (:func:`linearised_losses`).
    """
    task = Regressor(net.double())
    lambda_max = float(hessian_eigenvalues(task, lambda m, b: m.loss(b), (x, y), k=1, tol=1e-4)[0])
    eta = 1.0 / lambda_max
    kernel = loss_kernel(task.model, x)
    with torch.no_grad():
        linearised = linearised_losses(kernel, task(x) - y, eta, steps)
    optimizer = torch.optim.SGD(task.parameters(), lr=eta)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = task.loss((x, y))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {
        "lambda_max_init": lambda_max,
        "eta": eta,
        "losses": losses,
        "kernel_init": kernel_rates(kernel, eta),
        "kernel_end": kernel_rates(loss_kernel(task.model, x), eta),
        "linearised_losses": linearised,
    }


def main() -> None:
    """Run both studies, draw the figure, write the JSON, print the tables."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
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
                **{k: v for k, v in run.items() if not k.endswith("losses")},
                "excess_loss_end": excess[-1],
            }
        )
    x, y = _data(63, "tanh", 1)
    for width in RELU_WIDTHS:
        torch.manual_seed(0)
        run = gradient_descent(DeepMLP(10, width, 1, 1, "relu", init="he"), x, y, RELU_STEPS)
        q = per_step_factor(run["losses"])
        (line,) = right.semilogy(
            run["losses"], label=f"width {width}: q = {q:.5f}" if q else f"width {width}"
        )
        if width in (16, RELU_WIDTHS[-1]):
            right.semilogy(
                run["linearised_losses"], ":", color=line.get_color(), label=f"width {width}: NTK at init"
            )
        report["two_layer_relu"].append(
            {
                "width": width,
                "q": q,
                **{k: v for k, v in run.items() if not k.endswith("losses")},
                "loss_at": {t: run["losses"][t] for t in (0, 500, 1500, RELU_STEPS - 1)},
                "linearised_loss_at": {
                    t: run["linearised_losses"][t] for t in (0, 500, 1500, RELU_STEPS - 1)
                },
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
            k0, k1 = r["kernel_init"], r["kernel_end"]
            print(
                f"| {name} | {r['width']} | {r['lambda_max_init']:.2f} | {r['eta']:.4g} | {q} "
                f"| {k0['rank']} | "
                + " | ".join(
                    f"{k0[key]:{spec}} / {k1[key]:{spec}}"
                    for key, spec in (("lambda_min", ".4g"), ("lambda_max", ".4g"), ("bound_q", ".5f"))
                )
                + f" | {k0['linearised_q']:.5f} / {k1['linearised_q']:.5f} |"
            )


if __name__ == "__main__":
    main()
