"""One GradientNoise probe, ``method="vmap"`` against ``method="layerwise"``, in CPU seconds.

The ``gradient_noise`` experiment's probe (LeNet-5, tanh and average pooling, on 256 MNIST5k
images, and the cosine with a training batch of 64) is timed by both methods in turn in one
process, beside one training step of a batch of 64 (forward, backward, SGD step), so that a
probe's cost reads in training steps. Each arm's median CPU seconds over ``--repeats`` rounds
(arms interleaved, so that the load of a shared machine falls on both alike) and the largest
relative difference of the logged numbers between the methods go to
``benchmarks/results/gradient_noise_probe_<device>.json``.

Example:
    python -m benchmarks.gradient_noise_probe --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _cpu_seconds(work: Any) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from plugins import GradientNoise
    from tdl_lightning.data import MNIST5k
    from tdl_lightning.models import LeNet5
    from tdl_lightning.tasks import Classifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = MNIST5k()
    data.setup()
    x, y = data.splits["train"]
    probe_batch, train_batch = (x[:256], y[:256]), (x[256:320], y[256:320])
    task = Classifier(LeNet5(activation="tanh", pooling="avg"), num_classes=10)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.0)  # lr 0: every round sees the same weights

    def step() -> None:
        optimizer.zero_grad()
        task.loss(train_batch).backward()
        optimizer.step()

    callbacks = {method: GradientNoise(chunk_size=256, method=method) for method in ("vmap", "layerwise")}
    results = {}
    for method, callback in callbacks.items():  # the first probe (with its checks), untimed
        callback._last_batch = train_batch
        results[method] = callback.probe(task, probe_batch).scalars
    step()
    times: dict[str, list[float]] = {"vmap": [], "layerwise": [], "train_step": []}
    for _ in range(args.repeats):
        for method, callback in callbacks.items():
            times[method].append(_cpu_seconds(lambda cb=callback: cb.probe(task, probe_batch)))
        times["train_step"].append(_cpu_seconds(step))
    medians = {key: statistics.median(values) for key, values in times.items()}
    differences = {
        key: abs(results["layerwise"][key] / results["vmap"][key] - 1)
        for key in results["vmap"]
        if key != "probe_seconds" and results["vmap"][key] != 0
    }
    result = {
        "benchmark": "gradient_noise_probe",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "cpu_s_median": medians,
        "speedup": medians["vmap"] / medians["layerwise"],
        "probe_in_train_steps": {m: medians[m] / medians["train_step"] for m in ("vmap", "layerwise")},
        "largest_relative_difference": max(differences.values()),
        "cpu_s": times,
    }
    print(
        f"probe CPU s (median of {args.repeats}): vmap {medians['vmap']:.4f}, layerwise "
        f"{medians['layerwise']:.4f} ({result['speedup']:.2f}x); one training step of 64 "
        f"{medians['train_step']:.4f} s: a probe = {result['probe_in_train_steps']['vmap']:.1f} -> "
        f"{result['probe_in_train_steps']['layerwise']:.1f} steps; logged numbers differ by at most "
        f"{result['largest_relative_difference']:.1e} (relative)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gradient_noise_probe_cpu.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
