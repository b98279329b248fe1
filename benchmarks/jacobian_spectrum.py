"""Benchmark: Jacobian spectra of 64 inputs through a depth-16, width-256 tanh MLP (issue 3).

Two ways to get the 64 input-output Jacobians (256 x 256 each) and their singular values, in the
same run on the same network and inputs:

- ``vmap``: :func:`plugins.jacobian.input_output_jacobians`, ``torch.func.vmap(jacrev)``, chunked
  (the default ``chunk_size="auto"``, which takes all 64 here; chunks of 16, the earlier default;
  and one chunk of all 64);
- ``loop``: the naive reference, one forward per input and one ``backward`` per Jacobian row
  (64 x 256 = 16,384 backward passes).

Reported: wall times (median of ``--repeats`` for ``vmap``, one run for ``loop``) of the Jacobians
alone and with ``torch.linalg.svdvals``, the speed-up ratios, and the largest difference between the
two methods' singular values. The goal is a ratio of at least 100. Results go to
``benchmarks/results/jacobian_spectrum_<device>.json``::

    python benchmarks/jacobian_spectrum.py                 # CPU, 1 thread
    python benchmarks/jacobian_spectrum.py --device cuda   # on a GPU machine

Example:
    >>> net, x = build_case(torch.device("cpu"), inputs=2, width=8, depth=2)
    >>> x.shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugins.jacobian import input_output_jacobians
from tdl_lightning.models import DeepMLP


def build_case(
    device: torch.device, inputs: int = 64, width: int = 256, depth: int = 16
) -> tuple[nn.Module, torch.Tensor]:
    """The benchmark's network (tanh, Gaussian init at the edge of chaos) and inputs.

    Example:
        >>> build_case(torch.device("cpu"), inputs=1, width=4, depth=1)[0].depth
        1
    """
    torch.manual_seed(0)
    net = DeepMLP(width, width, depth, output_dim=None, activation="tanh", sigma_w=1.0, sigma_b=0.05)
    return net.to(device).eval(), torch.randn(inputs, width, device=device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of one call (synchronised on CUDA) and its result.

    Example:
        >>> timed(lambda: 1, torch.device("cpu"))[1]
        1
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def singular_value_costs(jac: torch.Tensor, repeats: int) -> dict[str, float]:
    """Warm median seconds of ways to get the singular values of a batch of square Jacobians.

    ``svdvals`` (and, on CUDA, each cuSOLVER driver), ``svdvals`` after a copy to the CPU, and the
    square roots of ``eigvalsh(J^T J)`` (cheaper, but small singular values lose relative accuracy);
    with the largest difference of each from the default ``svdvals``.

    Example:
        >>> sorted(singular_value_costs(torch.eye(3).expand(2, 3, 3), 1))[:2]
        ['eigvalsh_gram_max_abs_difference', 'eigvalsh_gram_s']
    """
    device = jac.device
    ways = {
        "svdvals": lambda: torch.linalg.svdvals(jac),
        "svdvals_on_cpu": lambda: torch.linalg.svdvals(jac.cpu()),
        "eigvalsh_gram": lambda: torch.linalg.eigvalsh(jac.mT @ jac).clamp_min(0).sqrt().flip(-1),
    }
    if device.type == "cuda":
        for driver in ("gesvd", "gesvdj", "gesvda"):
            ways[f"svdvals_{driver}"] = lambda d=driver: torch.linalg.svdvals(jac, driver=d)
    reference = torch.linalg.svdvals(jac.double().cpu())
    out: dict[str, float] = {}
    for name, fn in ways.items():
        fn()  # warm-up: the first call creates solver handles
        times = [timed(fn, device)[0] for _ in range(repeats)]
        out[f"{name}_s"] = statistics.median(times)
        out[f"{name}_max_abs_difference"] = float((fn().double().cpu() - reference).abs().max())
    return out


def gemm_rate(device: torch.device, width: int = 256, rows: int = 64 * 256, repeats: int = 5) -> float:
    """Measured GFLOP/s of the GEMM that forming the Jacobians is made of: ``(rows, w) @ (w, w)``.

    Example:
        >>> gemm_rate(torch.device("cpu"), width=8, rows=16, repeats=1) > 0
        True
    """
    a, w = torch.randn(rows, width, device=device), torch.randn(width, width, device=device)
    a @ w  # warm-up
    seconds = statistics.median(timed(lambda: a @ w, device)[0] for _ in range(repeats))
    return 2 * rows * width * width / seconds / 1e9


def main() -> None:
    """Run the benchmark and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on shared cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    net, x = build_case(device)

    input_output_jacobians(net, x[:2])  # warm-up: torch.func's first call pays for its set-up
    results: dict[str, Any] = {}
    for label, chunk in (("vmap_auto", "auto"), ("vmap_chunk16", 16), ("vmap_one_chunk", None)):
        runs = [
            timed(lambda c=chunk: input_output_jacobians(net, x, chunk_size=c), device)
            for _ in range(args.repeats)
        ]
        jac = runs[-1][1]
        svd_time, s_fast = timed(lambda j=jac: torch.linalg.svdvals(j), device)
        results[label] = {"jacobian_s": statistics.median(t for t, _ in runs), "svdvals_s": svd_time}
    loop_time, jac_loop = timed(lambda: input_output_jacobians(net, x, method="loop"), device)
    loop_svd_time, s_loop = timed(lambda: torch.linalg.svdvals(jac_loop), device)
    results["loop"] = {"jacobian_s": loop_time, "svdvals_s": loop_svd_time}

    default = results["vmap_auto"]  # the default chunk_size: as many inputs as fit in 1 GiB (here all)
    results["singular_values"] = singular_value_costs(jac_loop, args.repeats)
    report = {
        "benchmark": "jacobian_spectrum",
        "case": "64 inputs, DeepMLP depth 16, width 256, tanh, gaussian sigma_w=1.0 sigma_b=0.05, "
        "256x256 Jacobians",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "note": "CPU only in this run: no GPU was available to this session"
        if device.type == "cpu"
        else "GPU run",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "repeats_vmap": args.repeats,
        "methods": results,
        "speedup_jacobian": loop_time / default["jacobian_s"],
        "speedup_jacobian_chunk16": loop_time / results["vmap_chunk16"]["jacobian_s"],
        "speedup_jacobian_one_chunk": loop_time / results["vmap_one_chunk"]["jacobian_s"],
        "speedup_with_svd": (loop_time + loop_svd_time) / (default["jacobian_s"] + default["svdvals_s"]),
        "max_abs_singular_value_difference": float((s_fast - s_loop).abs().max()),
        # forming 64 products of 16 width-256 layers is 64 x 15 GEMMs of 256^3 (the first layer is free):
        # at the GEMM rate measured here that sets the fastest any exact method can be, and the best ratio
        "jacobian_gflop": (gflop := 64 * 15 * 2 * 256**3 / 1e9),
        "gemm_gflops_measured": (rate := gemm_rate(device)),
        "best_possible_speedup_at_that_rate": loop_time / (gflop / rate),
        "goal": "speedup_jacobian >= 100",
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"jacobian_spectrum_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
