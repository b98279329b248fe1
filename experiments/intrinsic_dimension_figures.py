"""The table and figures of docs/intrinsic_dimension.md.

1. Each MNIST digit class's intrinsic dimension at the input, by TwoNN and by MLE (k = 3, 5, 10, 20),
   on all 500 images of the class in MNIST5k (pixels in [0, 1]); the same for all 5,000 images.
2. How the estimates move with the number of images (TwoNN on subsamples) -- why they disagree.
3. The per-layer profiles of trained networks, from runs of experiments/intrinsic_dimension*.yaml.

Run::

    python experiments/intrinsic_dimension_figures.py --runs runs/intrinsic_dimension/<id> \\
        runs/intrinsic_dimension_mlp/<id>          # ~1 minute on one core, plus the runs

Example:
    >>> [round(v) for v in class_dimensions(torch.rand(60, 2, dtype=torch.float64), ks=(5,)).values()]
    [2, 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from plugins.intrinsic_dimension import _mle, _twonn, nearest_neighbour_distances  # noqa: E402
from tdl_lightning.data import read_mnist5k  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
KS = (3, 5, 10, 20)


def class_dimensions(x: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """TwoNN and MLE at each ``k`` of the samples ``x``, from one neighbour search."""
    distances = nearest_neighbour_distances(x, max(ks))
    return {"twonn": _twonn(distances, 0.1), **{f"mle_k{k}": _mle(distances, k) for k in ks}}


def subsample_twonn(x: torch.Tensor, sizes: tuple[int, ...], seed: int = 0) -> dict[int, float]:
    """TwoNN on random subsets of ``x`` of each size, averaged over disjoint subsets."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    out = {}
    for size in sizes:
        parts = [order[i : i + size] for i in range(0, len(x) - size + 1, size)]
        out[size] = float(np.mean([_twonn(nearest_neighbour_distances(x[p], 2), 0.1) for p in parts]))
    return out


def profile_figure(runs: list[Path]) -> dict[str, object]:
    """Per-layer TwoNN/MLE of each run at its first and last probe, side by side."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
    numbers: dict[str, object] = {}
    for ax, run in zip(axes[0], runs, strict=True):
        files = sorted((run / "plugins" / "intrinsic_dimension").glob("step*.npz"))
        first, last = np.load(files[0]), np.load(files[-1])
        names = [str(n) for n in last["layer_names"]]
        positions = np.arange(len(names))
        for data, style, when in ((first, "--", "init"), (last, "-", "trained")):
            ax.plot(positions, data["twonn"], style + "o", color="C0", ms=3, label=f"TwoNN, {when}")
            ax.plot(positions, data["mle"], style + "s", color="C1", ms=3, label=f"MLE k=20, {when}")
        ax.set_xticks(positions, names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("intrinsic dimension")
        ax.set_title(f"{run.parent.name} (dashed: init, solid: trained)", fontsize=9)
        ax.legend(fontsize=7)
        numbers[run.parent.name] = {
            "layers": names,
            "twonn_init": first["twonn"].round(2).tolist(),
            "twonn_trained": last["twonn"].round(2).tolist(),
            "mle_init": first["mle"].round(2).tolist(),
            "mle_trained": last["mle"].round(2).tolist(),
        }
    fig.tight_layout()
    fig.savefig(FIGURES / "intrinsic_dimension_profiles.png", dpi=90)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="runs with IntrinsicDimension")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    pixels, labels = read_mnist5k()
    x = pixels.double() / 255
    numbers: dict[str, object] = {"classes": {}}
    for c in range(10):
        numbers["classes"][str(c)] = class_dimensions(x[labels == c])  # type: ignore[index]
    numbers["all"] = class_dimensions(x)
    numbers["twonn_vs_images_per_class"] = {
        str(c): subsample_twonn(x[labels == c], (50, 100, 250, 500)) for c in range(10)
    }
    print(json.dumps(numbers, indent=1))

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    classes = np.arange(10)
    per_class: dict[str, dict[str, float]] = numbers["classes"]  # type: ignore[assignment]
    ax.plot(classes, [per_class[str(c)]["twonn"] for c in classes], "o-", label="TwoNN")
    for k in KS:
        ax.plot(classes, [per_class[str(c)][f"mle_k{k}"] for c in classes], ".--", label=f"MLE k={k}")
    ax.axhline(15, color="k", lw=0.8)
    ax.set_xticks(classes)
    ax.set_xlabel("digit class (500 MNIST5k images each)")
    ax.set_ylabel("intrinsic dimension")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(FIGURES / "intrinsic_dimension_classes.png", dpi=100)
    if args.runs:
        numbers["profiles"] = profile_figure(args.runs)
    (FIGURES / "intrinsic_dimension.json").write_text(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
