"""The figures of docs/expressivity.md: the sawtooth's exact piece count against k, the deep-narrow and
shallow-wide fits of the sawtooth target, and the region pictures of a trained MNIST MLP.

Run after the experiments whose runs it reads::

    tdl fit --config experiments/expressivity.yaml                                  # deep narrow
    tdl fit --config experiments/expressivity.yaml --model.init_args.model.init_args.depth=1 \\
        --model.init_args.model.init_args.width=128                                 # shallow wide
    tdl sweep experiments/sweeps/expressivity_depth.yaml --parallel 2
    python experiments/expressivity_figures.py --fits runs/expressivity/<deep> runs/expressivity/<shallow> \\
        --plane runs/expressivity_depth/<depth-4 run>

Example:
    >>> sawtooth_counts(3)
    [2, 4, 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from plugins.expressivity import linear_regions_along_line  # noqa: E402
from tdl_lightning.models import DeepMLP, Sawtooth, tent_map  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def sawtooth_counts(k_max: int) -> list[int]:
    """The exact number of linear pieces of ``Sawtooth(k)`` on ``[0, 1]`` for ``k = 1 .. k_max``."""
    ends = torch.zeros(1), torch.ones(1)
    return [linear_regions_along_line(Sawtooth(k), *ends).count for k in range(1, k_max + 1)]


def load_student(run: Path) -> tuple[DeepMLP, int]:
    """The trained ``DeepMLP`` of a run of experiments/expressivity.yaml (last checkpoint) and its k."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    args = config["model"]["init_args"]["model"]["init_args"]
    net = DeepMLP(**args)
    checkpoint = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return net.eval(), int(config["data"]["init_args"]["k"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", nargs="*", type=Path, default=[], help="runs of expressivity.yaml")
    parser.add_argument("--plane", type=Path, help="a run with LinearRegions plane pictures")
    parser.add_argument("--k-max", type=int, default=12)
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, object] = {}

    counts = sawtooth_counts(args.k_max)
    numbers["sawtooth_counts"] = counts
    ks = np.arange(1, args.k_max + 1)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.semilogy(ks, counts, "o", label="Sawtooth(k): exact count")
    ax.semilogy(ks, 2.0**ks, "-", color="k", lw=0.8, label="$2^k$")
    ax.semilogy(ks, 2 * ks + 1, "--", label="one hidden layer, same parameters: $\\leq N + 1 = 2k + 1$")
    ax.set_xlabel("k (hidden layers of width 2)")
    ax.set_ylabel("linear pieces on [0, 1]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "expressivity_sawtooth_count.png", dpi=100)

    if args.fits:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = torch.linspace(0, 1, 2001).unsqueeze(1)
        k = 0
        for run in args.fits:
            net, k = load_student(run)
            with torch.no_grad():
                y = net(x)
            mse = float(((y - tent_map(x, k)) ** 2).mean())
            pieces = linear_regions_along_line(net, torch.zeros(1), torch.ones(1)).count
            params = sum(p.numel() for p in net.parameters())
            label = f"{net.depth} x {net.width} ({params} params): MSE {mse:.1e}, {pieces} pieces"
            fit = {"mse": mse, "pieces": pieces, "params": params}
            numbers[f"fit_depth{net.depth}_width{net.width}"] = fit
            ax.plot(x.flatten(), y.flatten(), label=label)
        ax.plot(x.flatten(), tent_map(x, k).flatten(), "k:", lw=1, label=f"target $t^{k}(x)$")
        ax.set_xlabel("x")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(FIGURES / "expressivity_sawtooth_fit.png", dpi=100)

    if args.plane is not None:
        pictures = sorted((args.plane / "plugins" / "linear_regions").glob("plane_step*.png"))
        first, last = (np.asarray(PIL.Image.open(p).convert("RGB")) for p in (pictures[0], pictures[-1]))
        gap = np.full((first.shape[0], 8, 3), 255, dtype=np.uint8)
        side = np.concatenate([first, gap, last], axis=1)
        size = (side.shape[1] * 2, side.shape[0] * 2)
        doubled = PIL.Image.fromarray(side).resize(size, PIL.Image.Resampling.NEAREST)
        doubled.save(FIGURES / "expressivity_plane.png", optimize=True)
        numbers["plane_pictures"] = [p.name for p in (pictures[0], pictures[-1])]
    (FIGURES / "expressivity.json").write_text(json.dumps(numbers, indent=1))
    print(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
