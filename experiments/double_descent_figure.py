"""The double-descent figure of docs/double_descent.md: test and train error against the number of
parameters of the runs of experiments/sweeps/double_descent.yaml, read with ``tdl compare``'s
reader (:func:`tdl_lightning.compare.compare_runs`), the interpolation threshold ``n x classes``
marked.

Run::

    tdl sweep experiments/sweeps/double_descent.yaml --parallel 2
    python experiments/double_descent_figure.py runs/double_descent

Example:
    >>> one_hidden_layer_parameters(784, 50, 10)  # 784*50 + 50 + 50*10 + 10
    39810
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tdl_lightning.compare import compare_runs  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
TRAINING_IMAGES, CLASSES = 4000, 10


def one_hidden_layer_parameters(inputs: int, width: int, classes: int) -> int:
    """Weights and biases of ``inputs -> width -> classes``."""
    return inputs * width + width + width * classes + classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or folders of runs (tdl compare's arguments)")
    parser.add_argument("--output", type=Path, default=FIGURES / "double_descent.png")
    args = parser.parse_args()
    comparison = compare_runs(args.runs, metrics=["val/acc", "train/acc", "val/loss"])
    rows = []
    for run in comparison.runs:
        width = int(run.config["model.model.width"])
        rows.append(
            {
                "width": width,
                "parameters": one_hidden_layer_parameters(784, width, CLASSES),
                "test_error": 1 - (run.value("val/acc") or 0.0),
                "train_error": 1 - (run.value("train/acc") or 0.0),
                "test_loss": run.value("val/loss"),
                "run": run.run_id,
            }
        )
    rows.sort(key=lambda r: r["parameters"])
    print(json.dumps(rows, indent=1))
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    params = [r["parameters"] for r in rows]
    ax.plot(params, [r["test_error"] for r in rows], "o-", label="test error (500 clean images)")
    ax.plot(params, [r["train_error"] for r in rows], "s--", label="train error (noisy labels)")
    ax.set_ylabel("error")
    ax_loss.plot(params, [r["test_loss"] for r in rows], "o-", color="C2", label="test cross-entropy")
    ax_loss.set_ylabel("test loss")
    threshold = TRAINING_IMAGES * CLASSES
    for a in (ax, ax_loss):
        a.axvline(threshold, color="k", lw=0.8, ls=":")
        a.text(threshold * 1.08, 0.97 * a.get_ylim()[1], "n x classes\n= 40,000", fontsize=7, va="top")
        a.set_xscale("log")
        a.set_xlabel("parameters of the one-hidden-layer net")
        a.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    (args.output.with_suffix(".json")).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
