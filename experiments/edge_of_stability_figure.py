"""The edge-of-stability figure and numbers from runs of ``experiments/edge_of_stability.yaml``.

For each full-batch run (one step size eta each): lambda_max over the steps with its 2/eta line, the
training loss on a log scale, and the measured ratio lambda_max / (2/eta) over the last third of the
steps; runs with ``data.full_batch: false`` (mini-batch SGD) are drawn in a third panel beside the
full-batch run of the same eta. Writes ``docs/figures/edge_of_stability.png`` and
``edge_of_stability.json`` and prints the table of the docs page::

    python experiments/edge_of_stability_figure.py runs/edge_of_stability runs/edge_of_stability_sgd

Example:
    >>> lambda_max, loss = [(0, 1.0), (10, 9.0), (20, 10.5), (30, 9.5)], [(0, 1.0), (1, 0.5), (2, 0.6)]
    >>> eos_summary(lambda_max, loss, eta=0.2)["ratio_mean"]  # steps 20 and 30: 10.5 and 9.5 over 10
    1.0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tdl_lightning.compare import find_run_dirs, load_run  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
Curve = list[tuple[int, float]]


def eos_summary(lambda_max: Curve, loss: Curve, eta: float, last: float = 1 / 3) -> dict[str, Any]:
    """lambda_max / (2/eta) over the last ``last`` of the steps (mean, min, max), and how often the loss rose.

    Example:
        >>> eos_summary([(0, 2.0), (3, 4.0)], [(0, 1.0), (1, 2.0)], 0.5, last=0.5)["loss_increases"]
        1
    """
    end = max(step for step, _ in lambda_max)
    tail = [value * eta / 2 for step, value in lambda_max if step >= end - last * end]
    rises = sum(b > a for (_, a), (_, b) in zip(loss, loss[1:], strict=False))
    return {
        "eta": eta,
        "two_over_eta": 2 / eta,
        "ratio_mean": round(statistics.fmean(tail), 4),
        "ratio_min": round(min(tail), 4),
        "ratio_max": round(max(tail), 4),
        "lambda_max_init": round(lambda_max[0][1], 3),
        "lambda_max_low": round(min(v for _, v in lambda_max), 3),
        "lambda_max_end": round(lambda_max[-1][1], 3),
        "loss_increases": rises,
        "loss_steps": len(loss),
        "final_loss": loss[-1][1] if loss else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Read the runs, draw the figure, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders of runs")
    parser.add_argument("--output", default=str(FIGURES / "edge_of_stability.png"))
    args = parser.parse_args(argv)
    dirs, problems = find_run_dirs(args.runs)
    for problem in problems:
        print(f"skipped {problem.message()}")
    full, sgd = {}, {}
    for path in dirs:
        run = load_run(path)
        eta = float(run.config["optimizer.lr"])
        entry = (run, run.curve("hessian/lambda_max"), run.curve("train/loss_step"))
        (full if run.config.get("data.full_batch") else sgd)[eta] = entry
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].set_ylim(0, 24)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = []
    for i, eta in enumerate(sorted(full)):
        _, lam, loss = full[eta]
        colour = colours[i % len(colours)]
        axes[0].plot(*zip(*lam, strict=True), color=colour, label=f"eta = {eta:g}")
        axes[0].axhline(2 / eta, color=colour, ls="--", lw=0.8)
        axes[1].semilogy(*zip(*loss, strict=True), color=colour, lw=0.8, label=f"eta = {eta:g}")
        rows.append({"optimizer": "full-batch GD", **eos_summary(lam, loss, eta)})
        if eta in sgd:
            axes[2].plot(*zip(*lam, strict=True), color=colour, label=f"full-batch GD, eta = {eta:g}")
    for eta in sorted(sgd):
        run, lam, loss = sgd[eta]
        batch = run.config.get("data.batch_size")
        axes[2].plot(*zip(*lam, strict=True), color="k", label=f"SGD, batch {batch}, eta = {eta:g}")
        axes[2].axhline(2 / eta, color="k", ls="--", lw=0.8, label="2 / eta")
        rows.append({"optimizer": f"SGD batch {batch}", **eos_summary(lam, loss, eta)})
    axes[0].set_title("full-batch GD: sharpness (dashed: 2/eta)")
    axes[0].set_ylabel(r"$\lambda_{max}$ of the training loss")
    axes[1].set_title("full-batch GD: training loss")
    axes[2].set_title("the same net under mini-batch SGD")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(
        "| optimiser | eta | 2/eta | lambda_max at init, lowest, end | lambda_max/(2/eta), last third: mean "
        "(min-max) | loss rises | final loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['eta']:g} | {r['two_over_eta']:.2f} | {r['lambda_max_init']}, "
            f"{r['lambda_max_low']}, {r['lambda_max_end']} | {r['ratio_mean']:.3f} "
            f"({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | "
            f"{r['loss_increases']} of {r['loss_steps'] - 1} | {r['final_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
