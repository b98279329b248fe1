"""What the plugins cost: each course experiment's fit timed with and without its plugins.

DESIGN.md's rule is that a plugin's default schedule keeps the overhead of the default
experiment configs under 10% of the training time. This benchmark runs each experiment config
twice in one process, through the real ``tdl`` configuration (the same data, model, optimizer
and trainer), once as written and once with ``trainer.callbacks`` emptied, times ``Trainer.fit``
alone (start-up excluded), and writes the ratio to ``benchmarks/results/plugin_overhead_<device>.json``.

Example:
    python -m benchmarks.plugin_overhead --configs cnn_filters --max-epochs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = ["edge_of_chaos", "dynamical_isometry", "loss_landscape", "cnn_filters"]


def fit_seconds(config: str, with_plugins: bool, extra: list[str]) -> float:
    """Seconds spent in ``Trainer.fit`` for one experiment config (run directory in a temp folder)."""
    from tdl_lightning.lightning_cli import TDLCLI

    with tempfile.TemporaryDirectory() as root:
        args = [  # run=False: no subcommand, the parser is fit's
            "--config",
            str(REPO / "experiments" / f"{config}.yaml"),
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--run.root={root}",
            *extra,
        ]
        if not with_plugins:
            args.append("--trainer.callbacks=[]")
        cli = TDLCLI(args=args, run=False)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, cli.datamodule)
        seconds = time.perf_counter() - start
        import wandb

        wandb.finish()
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--max-epochs", type=int, default=None, help="shorten both runs alike")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = [f"--trainer.max_epochs={args.max_epochs}"] if args.max_epochs else []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for config in args.configs:
        # warm-up, untimed: data parsing, W&B's service and torch's first kernels would otherwise
        # be paid by whichever run comes first
        fit_seconds(config, with_plugins=False, extra=["--trainer.max_epochs=1"])
        bare = fit_seconds(config, with_plugins=False, extra=extra)
        probed = fit_seconds(config, with_plugins=True, extra=extra)
        rows.append(
            {"config": config, "fit_s_without": bare, "fit_s_with": probed, "overhead": probed / bare - 1}
        )
        overhead = rows[-1]["overhead"]
        print(f"{config:<20} without {bare:7.1f} s   with {probed:7.1f} s   overhead {overhead:+.1%}")
    result = {
        "benchmark": "plugin_overhead",
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "max_epochs_override": args.max_epochs,
        "budget": "overhead < 10% of the training time (DESIGN.md)",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"plugin_overhead_{device}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
