"""The tables of docs/optimisers.md from the runs of ``experiments/sweeps/optimizers.yaml``.

Groups the runs by optimiser (class, momentum, Nesterov, weight decay, SAM's rho) and learning rate,
prints the learning-rate grid (val/acc of each run) and, at each optimiser's best learning rate (the
highest mean val/acc), the mean and spread over its seeds of val/acc, val/loss, and the sharpness
``hessian/lambda_max`` and ``hessian/trace`` at the end; writes ``docs/figures/optimisers.json`` and
``optimisers.png`` (val/acc over the steps, mean over the seeds; lambda_max and the trace of every
seed) and prints the run directories of the best runs (for ``tdl compare``)::

    python experiments/optimizers_summary.py runs/optimizers_sweep

Example:
    >>> optimiser_label({"optimizer.class_path": "torch.optim.SGD", "optimizer.momentum": 0.9,
    ...                  "optimizer.nesterov": True})
    'Nesterov 0.9'
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from tdl_lightning.compare import find_run_dirs, load_run

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
METRICS = ("val/acc", "val/loss", "hessian/lambda_max", "hessian/trace")


def optimiser_label(config: dict[str, Any]) -> str:
    """A short name of a run's optimiser from its flattened config.

    Example:
        >>> optimiser_label({"optimizer.class_path": "tdl_lightning.optim.SAM", "optimizer.rho": 0.05})
        'SAM rho 0.05'
    """
    name = str(config["optimizer.class_path"]).rsplit(".", 1)[-1]
    if name == "SAM":
        return f"SAM rho {config.get('optimizer.rho')}"
    if name == "SGD":
        momentum = float(config.get("optimizer.momentum") or 0.0)
        if momentum == 0:
            return "SGD"
        return f"{'Nesterov' if config.get('optimizer.nesterov') else 'momentum'} {momentum:g}"
    decay = config.get("optimizer.weight_decay")
    return f"{name} wd {decay:g}" if name == "AdamW" and decay else name


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} +- {statistics.stdev(values):.2g}"


def _figure(groups: dict[str, dict[float, list[Any]]], report: list[dict[str, Any]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, row in enumerate(report):
        runs = groups[row["optimiser"]][row["lr"]]
        curves = [dict(r.curve("val/acc")) for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.fmean(c[s] for c in curves) for s in steps]
        axes[0].plot(steps, mean, "o-", ms=3, label=f"{row['optimiser']}, lr {row['lr']:g}")
        for ax, metric in ((axes[1], "hessian/lambda_max"), (axes[2], "hessian/trace")):
            ax.plot([i] * len(row[metric]), row[metric], "o", color=f"C{i}")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("val/acc (mean over seeds)")
    axes[0].legend(fontsize=7)
    for ax, title in ((axes[1], "lambda_max at the end"), (axes[2], "Hessian trace at the end")):
        ax.set_xticks(range(len(report)), [row["optimiser"] for row in report], rotation=30, fontsize=7)
        ax.set_title(title + " (each seed)")
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    dirs, _ = find_run_dirs(args.runs)
    dirs = [d for d in dirs if (d / "summary.json").is_file()]  # finished runs only
    groups: dict[str, dict[float, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for d in dirs:
        run = load_run(d)
        groups[optimiser_label(run.config)][float(run.config["optimizer.lr"])].append(run)
    report = []
    print("| optimiser | learning rate: val/acc (seed 0) |\n| --- | --- |")
    for label, by_lr in groups.items():
        first = {
            lr: next((r for r in runs if r.config.get("seed_everything") == 0), runs[0])
            for lr, runs in by_lr.items()
        }
        grid = ", ".join(
            f"{lr:g}: {run.final.get('val/acc', float('nan')):.3f}" for lr, run in sorted(first.items())
        )
        print(f"| {label} | {grid} |")
    print("\n| optimiser | best lr | seeds | " + " | ".join(METRICS) + " |")
    print("| --- | --- | --- |" + " --- |" * len(METRICS))
    for label, by_lr in groups.items():
        lr, runs = max(
            by_lr.items(), key=lambda item: statistics.fmean(r.final.get("val/acc", 0) for r in item[1])
        )
        row = {"optimiser": label, "lr": lr, "seeds": sorted(r.config.get("seed_everything") for r in runs)}
        for metric in METRICS:
            row[metric] = [r.final[metric] for r in runs if metric in r.final]
        report.append({**row, "runs": [str(r.path) for r in runs]})
        cells = " | ".join(_spread(row[m]) if row[m] else "-" for m in METRICS)
        print(f"| {label} | {lr:g} | {len(runs)} | {cells} |")
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "optimisers.json").write_text(json.dumps(report, indent=1))
    _figure(groups, report, FIGURES / "optimisers.png")
    print("\nbest runs:", " ".join(p for row in report for p in row["runs"]))


if __name__ == "__main__":
    main()
