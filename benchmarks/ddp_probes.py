"""What sharing a probe's work across DDP ranks buys: each plugin's probe on 1 and on 2 processes.

Each plugin probes its course model (LeNet-5 for the loss landscape, the Hessian and the filters, a
depth-16 width-256 tanh ``DeepMLP``'s hidden stack for the Jacobian spectrum, a depth-8 one for the
signal propagation) on a fixed batch of
MNIST5k images, once in one process and once on two CPU processes (``torch.distributed`` with
gloo, one thread each), exactly as under ``Trainer(strategy="ddp")``: the plugins that share their
work (``distributed = True``: LossLandscape, JacobianSpectrum, FilterVisualisation, and
HessianEigenvalues with ``distributed=True``) probe on every rank in lockstep, the others on rank
zero alone. A probe's time is rank zero's wall time from a barrier before it to a barrier after it
(so it includes the slowest rank and the gather), beside the most CPU seconds any rank spent in
it (the critical path: what the wall time would be on idle cores, and steady when other work
competes for them). Both arms run in the same two processes, alternating, ``--repeats`` times after
one warm-up (the 1-process arm: rank zero probing with ``torch.distributed`` hidden from the probe);
the JSON in ``benchmarks/results/ddp_probes_cpu.json`` keeps every time, the medians, their ratios
(goal: at most 0.6 for LossLandscape and JacobianSpectrum) and the load average before and after
(the machine is shared: read the medians, and the CPU ratio when the load exceeds the cores).

Example:
    python -m benchmarks.ddp_probes --repeats 5
    python -m benchmarks.ddp_probes --plugins LossLandscape --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLUGINS = ["LossLandscape", "JacobianSpectrum", "FilterVisualisation", "HessianEigenvalues", "InitStatistics"]


def build(plugin: str) -> tuple[Any, torch.nn.Module, Any]:
    """``(callback, module, probe batch)`` of one plugin's case, the same on every rank."""
    from plugins import (
        FilterVisualisation,
        HessianEigenvalues,
        InitStatistics,
        JacobianSpectrum,
        LossLandscape,
    )
    from plugins.base import take_probe_batch
    from tdl_lightning.data import MNIST5k
    from tdl_lightning.models import DeepMLP, LeNet5
    from tdl_lightning.tasks import Classifier

    torch.manual_seed(0)
    mlp = plugin in ("JacobianSpectrum", "InitStatistics")
    if plugin == "JacobianSpectrum":  # the hidden stack's 256 x 784 Jacobian per input, as in the course
        network = DeepMLP(input_dim=784, width=256, depth=16, output_dim=None)
    else:
        network = DeepMLP(input_dim=784, width=256, depth=8) if mlp else LeNet5()
    task = Classifier(network, num_classes=10)
    callbacks = {
        "LossLandscape": lambda: LossLandscape(),  # defaults: 11 x 11 plane + 21 path points, 128 inputs
        "JacobianSpectrum": lambda: JacobianSpectrum(probe_size=64),
        "FilterVisualisation": lambda: FilterVisualisation(
            layers=["model.conv1", "model.conv2"], maximise=True, maximise_steps=64
        ),
        # no warm start: the 1-process arm probes on rank zero alone, so its start vector would part
        # from the other ranks' and their Lanczos runs would fall out of lockstep
        "HessianEigenvalues": lambda: HessianEigenvalues(k=2, distributed=True, warm_start=False),
        "InitStatistics": lambda: InitStatistics(),
    }
    cb = callbacks[plugin]()
    data = MNIST5k(batch_size=64)
    data.setup("fit")
    batch = take_probe_batch(data.train_dataloader(), cb.probe_size, cb.probe_seed)
    if mlp:
        batch = (batch[0].flatten(1), batch[1])
    if plugin == "LossLandscape":  # a start of training away from the weights: the path is drawn too
        cb.theta_init = [p.detach() + 0.05 * torch.randn_like(p) for p in task.parameters()]
    return cb, task, batch


def _timed(cb: Any, task: torch.nn.Module, batch: Any, probing: bool) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one probe: rank zero's wall time between barriers, and the most
    CPU seconds any rank spent in it (the critical path on idle cores: steady under load)."""
    dist = torch.distributed
    dist.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    if probing:
        cb.probe(task, batch)
    cpu = torch.tensor([time.process_time() - cpu], dtype=torch.float64)
    dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
    return time.perf_counter() - wall, float(cpu)


def time_probe(plugin: str, repeats: int) -> dict[str, list[list[float]]]:
    """``(wall, cpu)`` seconds of ``repeats`` probes on one process and on every rank, alternating
    the two arms in the same processes (after one warm-up of each), so both see the same load.

    The one-process arm is rank zero probing alone with ``torch.distributed`` hidden from the probe
    (as in a 1-device run) while the other ranks wait in a barrier.
    """
    cb, task, batch = build(plugin)
    rank = torch.distributed.get_rank()
    shares = cb.distributed
    arms: dict[str, list[list[float]]] = {"one": [], "two": []}
    for repeat in range(repeats + 1):
        for arm in ("one", "two") if repeat % 2 else ("two", "one"):
            if arm == "one":
                with mock.patch("plugins.distributed.probe_world", return_value=(0, 1)):
                    cb.distributed = False  # HessianEigenvalues' own switch
                    timing = _timed(cb, task, batch, probing=rank == 0)
                    cb.distributed = shares
            else:
                timing = _timed(cb, task, batch, probing=shares or rank == 0)
            if repeat:
                arms[arm].append(list(timing))
    return arms


def _worker(rank: int, port: int, plugins: list[str], repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        times = {plugin: time_probe(plugin, repeats) for plugin in plugins}
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", nargs="+", default=PLUGINS, choices=PLUGINS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        torch.multiprocessing.spawn(_worker, args=(_free_port(), args.plugins, args.repeats, out), nprocs=2)
        times = json.loads(Path(out).read_text())
    rows = {}
    for plugin in args.plugins:
        one, two = times[plugin]["one"], times[plugin]["two"]
        row: dict[str, Any] = {"one_process_wall_cpu_s": one, "two_processes_wall_cpu_s": two}
        for i, kind in enumerate(("wall", "cpu")):
            m1, m2 = statistics.median(t[i] for t in one), statistics.median(t[i] for t in two)
            row.update({f"median_{kind}_one_s": m1, f"median_{kind}_two_s": m2, f"ratio_{kind}": m2 / m1})
        row["load_average_before_after"] = [load_before, os.getloadavg()]
        row["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows[plugin] = row
        print(
            f"{plugin:20s} wall {row['median_wall_one_s']:7.3f} -> {row['median_wall_two_s']:7.3f} s "
            f"(x{row['ratio_wall']:.2f})   critical-path CPU {row['median_cpu_one_s']:7.3f} -> "
            f"{row['median_cpu_two_s']:7.3f} s (x{row['ratio_cpu']:.2f})",
            flush=True,
        )
    record = {
        "device": "cpu",
        "backend": "gloo",
        "threads_per_process": 1,
        "repeats": args.repeats,
        "host": platform.node(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "plugins": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ddp_probes_cpu.json"
    if path.is_file():  # a run of some plugins keeps the other plugins' rows (each row has its load)
        record["plugins"] = {**json.loads(path.read_text()).get("plugins", {}), **rows}
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
