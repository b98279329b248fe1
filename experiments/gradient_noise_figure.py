"""The gradient-noise figure from runs of ``experiments/gradient_noise.yaml`` at several batch sizes.

Left: the simple noise scale ``B_simple`` over training (epochs = examples seen / training-set size),
one line per run, with the run's batch size dashed; right: the cosine between each mini-batch
gradient and the probe batch's gradient, beside its prediction for independent noise (dotted).
Writes ``docs/figures/gradient_noise.png`` and ``gradient_noise.json`` and prints a table::

    python experiments/gradient_noise_figure.py runs/gradient_noise

Example:
    >>> epochs([(0, 1.0), (100, 2.0)], batch_size=40, train_size=4000)
    [0.0, 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tdl_lightning.compare import find_run_dirs, load_run  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def epochs(curve: list[tuple[int, float]], batch_size: int, train_size: int) -> list[float]:
    """The steps of ``curve`` as epochs: ``step * batch_size / train_size``.

    Example:
        >>> epochs([(50, 0.0)], batch_size=16, train_size=800)
        [1.0]
    """
    return [step * batch_size / train_size for step, _ in curve]


def main(argv: list[str] | None = None) -> None:
    """Read the runs, draw the figure, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders of runs")
    parser.add_argument("--train-size", type=int, default=4000, help="training examples (MNIST5k: 4000)")
    parser.add_argument("--output", default=str(FIGURES / "gradient_noise.png"))
    args = parser.parse_args(argv)
    dirs, _ = find_run_dirs(args.runs)
    runs = sorted((load_run(d) for d in dirs), key=lambda r: int(r.config["data.batch_size"]))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = []
    for i, run in enumerate(runs):
        batch, colour = int(run.config["data.batch_size"]), colours[i % len(colours)]
        b_simple = run.curve("gradient_noise/b_simple")
        cosine = run.curve("gradient_noise/cosine_minibatch")
        expected = run.curve("gradient_noise/cosine_expected")
        left.semilogy(
            epochs(b_simple, batch, args.train_size),
            [v for _, v in b_simple],
            "o-",
            ms=2,
            color=colour,
            label=f"batch {batch}",
        )
        left.axhline(batch, color=colour, ls="--", lw=0.8)
        right.plot(
            epochs(cosine, batch, args.train_size),
            [v for _, v in cosine],
            "o-",
            ms=2,
            color=colour,
            label=f"batch {batch}",
        )
        right.plot(epochs(expected, batch, args.train_size), [v for _, v in expected], ":", color=colour)
        values = [v for _, v in b_simple]
        rows.append(
            {
                "batch_size": batch,
                "b_simple_init": round(values[0], 1),
                "b_simple_median": round(statistics.median(values), 1),
                "b_simple_end": round(values[-1], 1),
                "cosine_mean": round(statistics.fmean(v for _, v in cosine), 3),
                "cosine_expected_mean": round(statistics.fmean(v for _, v in expected), 3),
                "val_acc": run.final.get("val/acc"),
            }
        )
    left.set_xlabel("epoch")
    left.set_ylabel("B_simple = tr(Sigma) / |G|^2")
    left.set_title("simple noise scale (dashed: the batch size used)")
    right.set_xlabel("epoch")
    right.set_ylabel("cosine(mini-batch gradient, probe gradient)")
    right.set_title("measured (dotted: independent-noise prediction)")
    for ax in (left, right):
        ax.legend(fontsize=8)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("| batch | B_simple at init | median | at the end | cosine measured (mean) | predicted | val/acc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['batch_size']} | {r['b_simple_init']} | {r['b_simple_median']} | {r['b_simple_end']} | "
            f"{r['cosine_mean']} | {r['cosine_expected_mean']} | {r['val_acc']:.3f} |"
        )


if __name__ == "__main__":
    main()
