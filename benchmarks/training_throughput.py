"""The training path's cost: ``tdl fit`` against a raw PyTorch loop on the same model, data and schedule.

For each model, one config (``experiments/lenet_mnist.yaml``, or the same with the model section
swapped) is trained both ways, each run its own process, as a user starts it:

- ``tdl``: ``python -m tdl_lightning.cli fit --config <config> --trainer.max_epochs N``: the whole
  command with its defaults (W&B offline, CSV, checkpoints, progress bar, model summary, sanity
  check, summary.json and the final report), plus one tiny callback that notes when the first
  training step has finished;
- ``raw``: ``benchmarks/raw_loop.py <config> --epochs N``: the same architecture, MNIST5k split and
  batches, AdamW, cosine schedule, seed, per-epoch validation and the training loss and accuracy
  that ``tdl`` reports, written by hand in torch.

Per-epoch time is the difference of two run lengths (``--short`` and ``--long`` epochs, whole
processes, so every fixed cost cancels) over their difference; start-up is from the process start
to the end of the first training step. Each of ``--repeats`` rounds runs raw and tdl alternately
(raw, tdl, raw, tdl, with the order flipped every other pair) so that the load of a shared machine
falls on both alike; medians over the rounds are reported with their ratios (tdl / raw), the
load average, and a check that both sides ended at the same validation accuracy (the same
computation, not just the same amount of it). ``import_s`` times the import chains alone
(``import torch``, ``import lightning``, with ``wandb``, and the ``tdl`` CLI module) in fresh
processes: the part of each side's start-up that comes before any of its own work. The JSON goes to
``benchmarks/results/training_throughput_<device>.json``.

Then, for each model, one ``tdl`` process of ``--paired`` epochs runs a raw epoch on the same config
at the start of each of its own (:class:`PairedRawEpochs`): the ratio of each pair, seconds apart, is
immune to the drift of a shared machine's speed over minutes that the run lengths above are exposed
to; their median (without the first pair) is ``paired.per_epoch_ratio``.

``--device cuda`` runs both sides on the GPU with the data held there (``on_device``).

Example:
    OMP_NUM_THREADS=1 python -m benchmarks.training_throughput --models lenet --repeats 1 --short 1 --long 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BASE_CONFIG = REPO / "experiments" / "lenet_mnist.yaml"
# the architectures timed, as the config's model.init_args.model section (the rest is lenet_mnist.yaml)
MODELS: dict[str, dict[str, Any] | None] = {
    "lenet": None,  # the config as written: LeNet-5, tanh, average pooling
    "deep_mlp": {  # edge_of_chaos.yaml's 32-layer tanh MLP at its critical weight scale
        "class_path": "DeepMLP",
        "init_args": {
            "input_dim": 784,
            "width": 128,
            "depth": 32,
            "output_dim": 10,
            "activation": "tanh",
            "init": "gaussian",
            "sigma_w": 1.1225,
            "sigma_b": 0.05,
        },
    },
}


class FirstStepClock(L.Callback):
    """Writes ``{"first_step_unix": time.time(), "first_step_cpu_s": time.process_time()}`` to
    ``path`` once the first training step is done.

    Example:
        >>> FirstStepClock("/tmp/first_step.json").path.name
        'first_step.json'
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.done = False

    @override
    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.done:
            self.done = True
            clock = {"first_step_unix": time.time(), "first_step_cpu_s": time.process_time()}
            self.path.write_text(json.dumps(clock))


class PairedRawEpochs(L.Callback):
    """Runs one epoch of :class:`benchmarks.raw_loop.RawTraining` on the same config at the start of
    each ``tdl`` epoch, in the same process, and writes both sides' epoch seconds to ``path``.

    A ``tdl`` epoch is timed from the end of its raw twin to the start of the next epoch's hook (or
    the end of training): the training batches, validation, logging, checkpoint and every hook
    between. The two sides of a pair run seconds apart, so a drift of the machine's speed over
    minutes falls on both alike; the raw side runs under its own RNG state and leaves the ``tdl``
    run's untouched.

    Example:
        >>> PairedRawEpochs("experiments/lenet_mnist.yaml", "/tmp/pairs.json").pairs
        []
    """

    def __init__(self, config: str, path: str) -> None:
        self.config, self.path = yaml.safe_load(Path(config).read_text()), Path(path)
        self.pairs: list[dict[str, float]] = []
        self._mark: float | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from benchmarks.raw_loop import RawTraining

        with torch.random.fork_rng(devices=[]):
            self.raw = RawTraining(self.config, pl_module.device)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_pair()
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            self.raw_metrics = self.raw.epoch()
        self._mark = time.perf_counter()
        self.pairs.append({"raw_s": self._mark - start})

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_pair()
        self.path.write_text(json.dumps({"pairs": self.pairs, "raw_val_acc": self.raw_metrics["val_acc"]}))

    def _close_pair(self) -> None:
        if self._mark is not None:
            self.pairs[-1]["tdl_s"] = time.perf_counter() - self._mark
            self._mark = None


def write_config(model: str, device: str, folder: Path) -> Path:
    """``lenet_mnist.yaml`` with ``model``'s architecture, and for a GPU the data on the device."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    architecture = MODELS[model]
    if architecture is not None:
        config["model"]["init_args"]["model"] = architecture
    if device != "cpu":
        config["trainer"]["accelerator"] = "gpu"
        config["data"]["init_args"]["on_device"] = True
    path = folder / f"{BASE_CONFIG.stem}_{model}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tdl_command(config: Path, epochs: int, root: Path, callback: dict[str, Any]) -> list[str]:
    """``tdl fit`` on ``config`` for ``epochs`` epochs into run root ``root``, with one more callback."""
    return [
        sys.executable,
        "-m",
        "tdl_lightning.cli",
        "fit",
        "--config",
        str(config),
        f"--trainer.max_epochs={epochs}",
        f"--run.root={root}",
        f"--trainer.callbacks+={json.dumps(callback)}",
    ]


def run_once(
    side: str, config: Path, epochs: int, device: str, env: dict[str, str], folder: Path
) -> dict[str, Any]:
    """One whole process of ``side`` (``tdl`` or ``raw``): its seconds, start-up and final val/acc."""
    clock, root = folder / f"clock-{time.time_ns()}.json", folder / f"runs-{time.time_ns()}"
    if side == "tdl":
        callback = {
            "class_path": "benchmarks.training_throughput.FirstStepClock",
            "init_args": {"path": str(clock)},
        }
        cmd = tdl_command(config, epochs, root, callback)
    else:
        cmd = [sys.executable, str(REPO / "benchmarks" / "raw_loop.py"), str(config), f"--epochs={epochs}"]
        cmd.append(f"--device={device}")
    log = folder / f"{side}-{epochs}.log"
    cpu_before, start = _children_cpu_s(), time.time()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds, cpu_seconds = time.time() - start, _children_cpu_s() - cpu_before
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"{side} run failed (exit {done.returncode}):\n{text[-3000:]}")
    if side == "tdl":
        report = json.loads(clock.read_text())
        (summary,) = root.glob("*/*/summary.json")
        val_acc = json.loads(summary.read_text())["metrics"]["val/acc"]
    else:
        report = json.loads(text.strip().splitlines()[-1])
        val_acc = report["val_acc"]
    return {
        "epochs": epochs,
        "total_s": seconds,
        "total_cpu_s": cpu_seconds,
        "startup_s": report["first_step_unix"] - start,
        "startup_cpu_s": report["first_step_cpu_s"],
        "val_acc": val_acc,
    }


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (and theirs, e.g. W&B's service)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(model: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """``args.repeats`` rounds of both sides at both lengths, interleaved; medians and ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "tdl": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_config(model, args.device, folder)
        load_before = os.getloadavg()
        pair = 0
        for _ in range(args.repeats):
            for epochs in (args.short, args.long):
                for side in ("raw", "tdl") if pair % 2 == 0 else ("tdl", "raw"):
                    runs[side].append(run_once(side, config, epochs, args.device, env, folder))
                    last = runs[side][-1]
                    print(
                        f"  {model:<9} {side:<4} {epochs:>3} epochs: {last['total_s']:6.2f} s "
                        f"({last['total_cpu_s']:6.2f} CPU s), start-up {last['startup_s']:5.2f} s "
                        f"({last['startup_cpu_s']:5.2f} CPU s), val/acc {last['val_acc']:.4f}",
                        flush=True,
                    )
                pair += 1
        load_after = os.getloadavg()
    row: dict[str, Any] = {"model": model, "architecture": MODELS[model] or "LeNet5 (lenet_mnist.yaml)"}
    for side, side_runs in runs.items():
        row[side] = {"runs": side_runs}
        for clock in ("s", "cpu_s"):  # wall seconds, and CPU seconds (steadier on a loaded machine)
            short = [r[f"total_{clock}"] for r in side_runs if r["epochs"] == args.short]
            long = [r[f"total_{clock}"] for r in side_runs if r["epochs"] == args.long]
            per_epoch = [(b - a) / (args.long - args.short) for a, b in zip(short, long, strict=True)]
            row[side][f"per_epoch_{clock}"] = statistics.median(per_epoch)
            row[side][f"per_epoch_{clock}_each_round"] = per_epoch
            row[side][f"startup_{clock}"] = statistics.median(r[f"startup_{clock}"] for r in side_runs)
    for clock in ("s", "cpu_s"):
        for what in ("per_epoch", "startup"):
            row[f"{what}_ratio{'' if clock == 's' else '_cpu'}"] = (
                row["tdl"][f"{what}_{clock}"] / row["raw"][f"{what}_{clock}"]
            )
    row["same_val_acc"] = all(
        abs(a["val_acc"] - b["val_acc"]) < 1e-6 for a, b in zip(runs["raw"], runs["tdl"], strict=True)
    )
    row["load_average_before_after"] = [load_before, load_after]
    return row


def measure_paired(model: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """One ``tdl fit`` of ``args.paired`` epochs with :class:`PairedRawEpochs`: each epoch's ratio
    ``tdl / raw`` within its pair, and their median over all pairs but the first (both warm up)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_config(model, args.device, folder)
        pairs_path, root, log = folder / "pairs.json", folder / "runs", folder / "paired.log"
        callback = {
            "class_path": "benchmarks.training_throughput.PairedRawEpochs",
            "init_args": {"config": str(config), "path": str(pairs_path)},
        }
        with log.open("w") as out:
            done = subprocess.run(
                tdl_command(config, args.paired, root, callback),
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"paired run failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")
        report = json.loads(pairs_path.read_text())
        (summary,) = root.glob("*/*/summary.json")
        tdl_val_acc = json.loads(summary.read_text())["metrics"]["val/acc"]
    timed = report["pairs"][1:]
    ratios = [pair["tdl_s"] / pair["raw_s"] for pair in timed]
    return {
        "epochs": args.paired,
        "pairs": report["pairs"],
        "per_epoch_ratio": statistics.median(ratios),
        "per_epoch_ratio_quartiles": statistics.quantiles(ratios, n=4),
        "raw_per_epoch_s": statistics.median(pair["raw_s"] for pair in timed),
        "tdl_per_epoch_s": statistics.median(pair["tdl_s"] for pair in timed),
        "same_val_acc": abs(report["raw_val_acc"] - tdl_val_acc) < 1e-6,
    }


IMPORTS = {  # what each side must import before its first step, timed alone in fresh processes
    "torch": "import torch",
    "lightning": "import lightning",
    "lightning_wandb": "import lightning, wandb",
    "tdl_cli": "import tdl_lightning.lightning_cli",
}


def import_seconds(env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median wall seconds of a fresh ``python -c <import>`` for each of :data:`IMPORTS`: the floor that
    an import chain puts under a side's start-up, whatever the side then does."""
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(repeats):
        for name, statement in IMPORTS.items():
            start = time.time()
            subprocess.run([sys.executable, "-c", statement], cwd=REPO, env=env, check=True)
            times[name].append(time.time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--short", type=int, default=5, help="epochs of the short run")
    parser.add_argument("--long", type=int, default=25, help="epochs of the long run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sides")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--paired", type=int, default=12, help="epochs of the paired run, >= 3 (0: none); see PairedRawEpochs"
    )
    args = parser.parse_args(argv)
    if args.long <= args.short:
        parser.error("--long must be more epochs than --short")
    if args.paired in (1, 2):
        parser.error("--paired needs 3 epochs or more (the first pair is left out, quartiles need two), or 0")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    rows = []
    for model in args.models:
        rows.append(measure(model, args, env))
        row = rows[-1]
        tdl, raw = row["tdl"], row["raw"]
        load = row["load_average_before_after"]
        print(
            f"{model:<9} per epoch: tdl {tdl['per_epoch_s']:.3f} s, raw {raw['per_epoch_s']:.3f} s = "
            f"{row['per_epoch_ratio']:.2f}x (CPU {tdl['per_epoch_cpu_s']:.3f}/{raw['per_epoch_cpu_s']:.3f} s"
            f" = {row['per_epoch_ratio_cpu']:.2f}x); start-up: tdl {tdl['startup_s']:.2f} s, raw "
            f"{raw['startup_s']:.2f} s = {row['startup_ratio']:.2f}x (CPU {row['startup_ratio_cpu']:.2f}x); "
            f"same val/acc: {row['same_val_acc']} (load {load[0][0]:.1f} -> {load[1][0]:.1f})",
            flush=True,
        )
        if args.paired:
            paired = row["paired"] = measure_paired(model, args, env)
            low, _, high = paired["per_epoch_ratio_quartiles"]
            print(
                f"{model:<9} paired epochs: tdl {paired['tdl_per_epoch_s']:.3f} s, raw "
                f"{paired['raw_per_epoch_s']:.3f} s; median ratio {paired['per_epoch_ratio']:.2f}x "
                f"(quartiles {low:.2f}-{high:.2f}) over {args.paired - 1} pairs; same val/acc: "
                f"{paired['same_val_acc']}",
                flush=True,
            )
    imports = import_seconds(env, args.repeats)
    print("import seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in imports.items()), flush=True)
    result = {
        "benchmark": "training_throughput",
        "device": args.device,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "short_epochs": args.short,
        "long_epochs": args.long,
        "repeats": args.repeats,
        "paired_epochs": args.paired,
        "goal": "tdl per-epoch <= 1.1x raw; start-up <= 1.5x raw",
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
        "import_s": imports,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"training_throughput_{args.device}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
