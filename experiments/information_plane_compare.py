"""docs/information_plane.md's figure and numbers: tanh vs ReLU 12-10-7-5-4-3-2 nets, information plane.

The training of experiments/information_plane.yaml (IBTask, 85% for training, SGD lr 0.5, batch
256, 600 epochs; xavier init for tanh, he for ReLU) in a plain loop, for 3 seeds each; every 20
epochs each layer's binned I(X;T), I(T;Y) (30 bins per unit) on all 4,096 patterns. Prints, per
layer, I(X;T) at its maximum and at the end: compression is the fall between them.

    python experiments/information_plane_compare.py   # 1-4 min on one core; writes the figure
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from plugins.information_plane import _representations, mutual_information_binned, pattern_ids
from tdl_lightning.data import IBTask, twelve_bit_task
from tdl_lightning.models import DeepMLP

EPOCHS, EVERY, LR, BATCH = 600, 20, 0.5, 256
OUT = Path("docs/figures")


def run(activation: str, seed: int) -> np.ndarray:
    """``(probes, layers, 2)`` of (I(X;T), I(T;Y))."""
    dm = IBTask(seed=seed)
    dm.setup()
    x, y = dm.splits["train"]
    x_all, y_all = twelve_bit_task()
    ids = pattern_ids(x_all)
    torch.manual_seed(seed)
    init = "xavier" if activation == "tanh" else "he"
    model = DeepMLP(12, widths=[10, 7, 5, 4, 3], output_dim=2, activation=activation, init=init)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    plane = []
    for epoch in range(EPOCHS + 1):
        if epoch % EVERY == 0:
            _, outputs = _representations(model, x_all)
            plane.append([mutual_information_binned(t, ids, y_all, bins=30) for t in outputs])
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return np.asarray(plane)


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    summary = {}
    for ax, activation in zip(axes, ("tanh", "relu"), strict=True):
        planes = np.stack([run(activation, seed) for seed in (0, 1, 2)])
        mean = planes.mean(0)
        epochs = np.arange(len(mean)) * EVERY
        for layer in range(mean.shape[1]):
            ax.plot(mean[:, layer, 0], mean[:, layer, 1], "-", color="0.75", lw=0.8, zorder=1)
            scatter = ax.scatter(
                mean[:, layer, 0], mean[:, layer, 1], c=epochs, cmap="viridis", s=10, zorder=2
            )
            ax.annotate(
                str(layer + 1),
                (mean[-1, layer, 0], mean[-1, layer, 1]),
                fontsize=8,
                xytext=(3, -9),
                textcoords="offset points",
            )
        ax.set_title(f"{activation}: 12-10-7-5-4-3-2, mean of 3 seeds", fontsize=9)
        ax.set_xlabel(r"$I(X;T)$ (bits, 30 bins per unit)")
        ax.set_ylabel(r"$I(T;Y)$ (bits)")
        fig.colorbar(scatter, ax=ax, label="epoch")
        i_xt = planes[:, :, :, 0]
        summary[activation] = {
            f"layer_{layer + 1}": {
                "i_xt_max": round(float(mean[:, layer, 0].max()), 3),
                "epoch_of_max": int(epochs[mean[:, layer, 0].argmax()]),
                "i_xt_epoch_100": round(float(mean[100 // EVERY, layer, 0]), 3),
                "i_xt_epoch_300": round(float(mean[300 // EVERY, layer, 0]), 3),
                "i_xt_end": round(float(mean[-1, layer, 0]), 3),
                "i_xt_end_per_seed": [round(float(v), 3) for v in i_xt[:, -1, layer]],
                "i_ty_end": round(float(mean[-1, layer, 1]), 3),
            }
            for layer in range(mean.shape[1])
        }
    fig.set_layout_engine("tight")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "information_plane.png", dpi=80)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
