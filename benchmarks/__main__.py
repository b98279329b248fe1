"""Run the benchmarks: ``python -m benchmarks [NAME ...]`` (default: all of them).

Each benchmark is a module of this package with a ``main`` and writes its JSON into
``benchmarks/results/``. Peers (PyHessian, hessian-eigenthings, DeepXDE) are installed by the
``bench`` tox environment only.

Example:
    python -m benchmarks jacobian_spectrum plugin_overhead
"""

from __future__ import annotations

import importlib
import sys

NAMES = [
    "jacobian_spectrum",
    "plugin_overhead",
    "hessian",
    "pinn_burgers",
    "ddp_probes",
    "training_throughput",
]

if __name__ == "__main__":
    chosen = sys.argv[1:] or NAMES
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}: choose from {NAMES}")
    for name in chosen:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        sys.argv = [f"benchmarks/{name}.py"]
        module.main()
