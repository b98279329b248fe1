"""Benchmark: top-5 Hessian eigenvalues against PyHessian and hessian-eigenthings; HVP cost.

Cases: LeNet-5 on a batch of MNIST digits (the bundled MNIST5k, default 1000), and a
~1M-parameter CIFAR-sized CNN without BatchNorm on a batch of 256 random 3x32x32 inputs. For each:

- the cost of one gradient, one double-backward HVP from scratch (forward + backward + double
  backward), one HVP on a kept graph (what ``hessian_eigenvalues`` does on one batch), and one
  ``torch.func`` jvp-of-grad HVP, as ratios to the gradient;
- a high-accuracy reference top-5 (this project's Lanczos, tol=1e-10, float64 for LeNet-5,
  float32 for the 1M-parameter CNN);
- the top-5 of this project (default ``tol=1e-4``, float32), of PyHessian 0.1 (power iteration
  with deflation, its defaults ``maxIter=100, tol=1e-3``) and of hessian-eigenthings 1.0.0a5
  (Lanczos, 40 steps, largest algebraic): wall time and relative errors to the reference.

The peers are not dependencies of the project: install them aside and put them on the path::

    pip install --no-deps --target /work/peers pyhessian==0.1 hessian-eigenthings==1.0.0a5
    PYTHONPATH=/work/peers python benchmarks/hessian.py

A missing peer is reported as such in the JSON (``"missing": ...``). ``--baseline FILE`` also runs
an earlier version of this project's Hessian module (e.g. ``git show aeaaed2:plugins/hessian.py >
old.py``) on the same cases in the same process: the ratios of time and products, new over old,
are what a shared machine measures reliably.

The big-model case ``resnet18_cifar`` (torchvision's resnet18 with 10 classes, 11.2M parameters,
a batch of ``--resnet-batch`` random 3x32x32 inputs, train mode) runs what ``HessianEigenvalues(k=5)``
runs at a probe (its tolerance 1e-3, inside ``preserved_training_state``) and reports its wall
time, products, the Lanczos basis it held and its peak memory above the memory before the probe
(CPU: the resident set size, sampled every 5 ms; GPU: ``torch.cuda.max_memory_allocated``). Results go to
``benchmarks/results/hessian_<device>.json``. Timings are medians of ``--repeats`` runs for the
products and the fastest of ``--runs`` runs for the eigen-solvers (1 on CPU; 3 on a GPU, where the
first call pays for kernel selection). On a GPU the reference is float64 for both cases.

Example:
    >>> build_cnn().__class__.__name__
    'Sequential'
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import plugins.curvature.operator
from plugins.base import preserved_training_state
from plugins.curvature import HessianEigenvalues, HessianOperator, hessian_eigenvalues
from plugins.curvature.lanczos import default_basis
from tdl_lightning.data import MNIST5k
from tdl_lightning.models import LeNet5

RESULTS = Path(__file__).parent / "results"


def build_cnn() -> nn.Sequential:
    """A CIFAR-sized CNN without BatchNorm, about 1.0M parameters (most in the first dense layer)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 448),
        nn.ReLU(),
        nn.Linear(448, 10),
    )


def cases(
    lenet_batch: int, cnn_batch: int, device: str = "cpu"
) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]]:
    """The two benchmark cases: (model, batch), both on ``device``."""
    torch.manual_seed(0)
    dm = MNIST5k()
    dm.setup("fit")
    x, y = dm.splits["train"]
    lenet = LeNet5().to(device)
    cnn = build_cnn().to(device)
    cifar = (torch.randn(cnn_batch, 3, 32, 32), torch.randint(0, 10, (cnn_batch,)))
    to = lambda batch: tuple(t.to(device) for t in batch)  # noqa: E731
    return {
        "lenet5_mnist": (lenet, to((x[:lenet_batch], y[:lenet_batch]))),
        "cnn_cifar_1m": (cnn, to(cifar)),
    }


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def synchronize() -> None:
    """Wait for queued GPU work, so that wall times cover it (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], Any], runs: int = 1) -> tuple[float, Any]:
    """The fastest of ``runs`` wall times of ``fn`` (a GPU's first run pays kernel set-up), and its result."""
    best, out = float("inf"), None
    for _ in range(runs):
        synchronize()
        start = time.perf_counter()
        out = fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def product_costs(model: nn.Module, batch: Any, repeats: int) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    def gradient() -> Any:
        return torch.autograd.grad(loss_fn(model, batch), params)

    def hvp_scratch() -> Any:
        grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=v)

    kept = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)

    def hvp_kept_graph() -> Any:
        return torch.autograd.grad(kept, params, grad_outputs=v, retain_graph=True)

    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def f(*values: torch.Tensor) -> torch.Tensor:
        return loss_fn(
            lambda x: torch.func.functional_call(model, dict(zip(names, values, strict=True)), (x,)), batch
        )

    def hvp_func_jvp() -> Any:
        return torch.func.jvp(torch.func.grad(f, argnums=tuple(range(len(params)))), tuple(params), tuple(v))[
            1
        ]

    products = [
        ("gradient_s", gradient),
        ("hvp_double_backward_s", hvp_scratch),
        ("hvp_kept_graph_s", hvp_kept_graph),
        ("hvp_torch_func_jvp_s", hvp_func_jvp),
    ]
    if params[0].is_cuda:  # what hessian_eigenvalues does on a GPU: the kept graph, replayed
        op = HessianOperator(model, loss_fn, batch, cuda_graph=True)
        flat = torch.cat([t.reshape(-1) for t in v])
        products.append(("hvp_cuda_graph_replay_s", lambda: op.matvec(flat)))
    out = {name: median_time(fn, repeats) for name, fn in products}
    for key, _ in products[1:]:
        out[key.replace("_s", "_over_gradient")] = out[key] / out["gradient_s"]
    return out


_MATVECS = [0]


def count_matvecs(operator: type = plugins.curvature.operator.CurvatureOperator) -> int:
    """Products made by ``operator`` (this project's, or a baseline's) so far: the benchmark wraps
    its ``matvec`` (one counter for all)."""
    if not operator.__dict__.get("_benchmark_counted"):
        matvec = operator.matvec

        def counted(self: Any, v: torch.Tensor) -> torch.Tensor:
            _MATVECS[0] += 1
            return matvec(self, v)

        operator.matvec, operator._benchmark_counted = counted, True
    return _MATVECS[0]


def load_baseline(path: Path | None) -> Any:
    """An earlier version of the Hessian module, imported from a file (``None``: no baseline)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("hessian_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any]) -> tuple[float, Any, dict[str, float]]:
    """Wall time, result and peak memory of ``fn``: above the memory at its start, and in all.

    GPU: ``torch.cuda.max_memory_allocated``; CPU: the resident set size sampled every 5 ms.
    """
    if torch.cuda.is_available():
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        synchronize()
        seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated()
        kind = "torch.cuda.max_memory_allocated"
    else:
        before, samples, running = _rss(), [0], [True]

        def sample() -> None:
            while running[0]:
                samples[0] = max(samples[0], _rss())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        running[0] = False
        sampler.join()
        peak, kind = max(samples[0], _rss()), "resident set size, sampled every 5 ms"
    gib = 2**30
    memory = {
        "peak_gib": peak / gib,
        "before_gib": before / gib,
        "peak_above_before_gib": (peak - before) / gib,
    }
    return seconds, out, {**memory, "measured": kind}


def relative_errors(values: Any, reference: torch.Tensor) -> list[float]:
    values = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    values = values.sort(descending=True).values
    return [float(e) for e in ((values - reference[: len(values)]).abs() / reference[: len(values)].abs())]


def run_pyhessian(model: nn.Module, batch: Any, k: int, runs: int) -> dict[str, Any]:
    try:
        pyhessian = importlib.import_module("pyhessian")
    except ImportError:
        return {
            "missing": "pyhessian==0.1 is not importable: pip install --no-deps --target DIR pyhessian==0.1"
        }
    model = copy.deepcopy(model)  # PyHessian forces eval mode and writes into .grad

    def solve() -> Any:
        hessian = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=batch, cuda=batch[0].is_cuda)
        return hessian.eigenvalues(top_n=k)[0]

    seconds, values = timed(solve, runs)
    return {
        "seconds": seconds,
        "eigenvalues": [float(v) for v in values],
        "settings": "maxIter=100, tol=1e-3",
    }


def run_eigenthings(model: nn.Module, batch: Any, k: int, steps: int, runs: int) -> dict[str, Any]:
    try:
        het = importlib.import_module("hessian_eigenthings")
    except ImportError:
        return {
            "missing": "hessian-eigenthings==1.0.0a5 is not importable: "
            "pip install --no-deps --target DIR hessian-eigenthings==1.0.0a5"
        }

    def solve() -> Any:
        operator = het.HessianOperator(model, [batch], loss_fn)
        return het.lanczos(operator, k=k, max_iter=steps, which="LA", seed=0).eigenvalues

    seconds, values = timed(solve, runs)
    return {
        "seconds": seconds,
        "eigenvalues": [float(v) for v in values],
        "settings": f"lanczos, {steps} steps, LA",
    }


def run_case(name: str, model: nn.Module, batch: Any, args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"[{name}] {sum(p.numel() for p in model.parameters())} parameters, batch {len(batch[0])}", flush=True
    )
    out: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": len(batch[0]),
        "products": product_costs(model, batch, args.repeats),
    }
    print(f"[{name}] products {out['products']}", flush=True)
    # the reference: float64 where affordable (LeNet), else float32; errors of 1e-4 are what is measured
    dtype = torch.float64 if out["parameters"] < 200_000 or batch[0].is_cuda else torch.float32
    model_ref, batch_ref = copy.deepcopy(model).to(dtype), (batch[0].to(dtype), batch[1])
    seconds, reference = timed(
        lambda: hessian_eigenvalues(model_ref, loss_fn, batch_ref, k=args.k, tol=1e-10, max_iter=300)
    )
    reference = reference.double().cpu()
    out["reference"] = {
        "seconds": seconds,
        "eigenvalues": reference.tolist(),
        "settings": f"this project's Lanczos, {dtype}, tol=1e-10",
    }
    print(f"[{name}] reference {out['reference']}", flush=True)
    before = count_matvecs()
    seconds, ours = timed(
        lambda: hessian_eigenvalues(model, loss_fn, batch, k=args.k, tol=args.tol), args.runs
    )
    out["tdl"] = {
        "seconds": seconds,
        "eigenvalues": ours.tolist(),
        "matvecs": (count_matvecs() - before) // args.runs,
        "settings": f"lanczos, tol={args.tol}, float32, graph kept",
    }
    if args.baseline_module is not None:  # the earlier implementation, same settings, same process
        old = args.baseline_module
        before = count_matvecs(old._CurvatureOperator)
        seconds, values = timed(
            lambda: old.hessian_eigenvalues(model, loss_fn, batch, k=args.k, tol=args.tol), args.runs
        )
        out["tdl_baseline"] = {
            "seconds": seconds,
            "eigenvalues": values.tolist(),
            "matvecs": (count_matvecs(old._CurvatureOperator) - before) // args.runs,
            "settings": f"{args.baseline}, lanczos, tol={args.tol}, float32, graph kept",
            "tdl_over_baseline_seconds": out["tdl"]["seconds"] / seconds,
        }
    if batch[0].is_cuda:  # the same solver with its product replayed from a CUDA graph (opt-in)
        seconds, values = timed(
            lambda: hessian_eigenvalues(model, loss_fn, batch, k=args.k, tol=args.tol, cuda_graph=True),
            args.runs,
        )
        out["tdl_cuda_graph"] = {
            "seconds": seconds,
            "eigenvalues": values.tolist(),
            "settings": f"lanczos, tol={args.tol}, float32, graph kept, CUDA graph replay",
        }
    peers = {"pyhessian": lambda: run_pyhessian(model, batch, args.k, args.runs)}
    for i, steps in enumerate(args.eigenthings_steps):  # the first is the setting (40 steps)
        peers["hessian_eigenthings" + ("" if i == 0 else f"_{steps}_steps")] = lambda steps=steps: (
            run_eigenthings(model, batch, args.k, steps, args.runs)
        )
    for peer, solve in peers.items():
        skipped = any(peer.startswith(name) for name in args.skip)
        out[peer] = {"skipped": "--skip"} if skipped else solve()
    extra = [s for s in ("tdl_baseline", "tdl_cuda_graph") if s in out]
    for solver in ["tdl", *extra, *peers]:
        result = out[solver]
        if "eigenvalues" in result:
            errors = relative_errors(result["eigenvalues"], reference)
            result["relative_errors"] = errors
            result["max_relative_error"] = max(errors)
            result["speedup_of_tdl"] = result["seconds"] / out["tdl"]["seconds"]
        print(f"[{name}] {solver} {result}", flush=True)
    # the peer's cheapest run that reaches the tolerance asked of this project's solver
    at_tol = [
        (out[p]["seconds"], p)
        for p in peers
        if p.startswith("hessian_eigenthings") and out[p].get("max_relative_error", 1.0) <= args.tol
    ]
    out["hessian_eigenthings_at_tol"] = (
        {"run": min(at_tol)[1], "speedup_of_tdl": min(at_tol)[0] / out["tdl"]["seconds"]}
        if at_tol
        else {"run": None, "note": f"no step budget in {args.eigenthings_steps} reached tol={args.tol}"}
    )
    return out


def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so that the next resident-set reading
    starts from what is really in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_big_model(
    batch_size: int, device: str, baseline: Any, k: int = 5, tol: float = 1e-3, repeats: int = 2
) -> dict[str, Any]:
    """resnet18 (11.2M parameters) on a CIFAR-shaped batch: a ``HessianEigenvalues(k=5)`` probe's
    time, products, basis and peak memory, and the baseline's probe (its own ``HessianEigenvalues``)
    alternating with it, ``repeats`` times each (fastest time and lowest peak kept)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).train()
    batch = (
        torch.randn(batch_size, 3, 32, 32, device=device),
        torch.randint(0, 10, (batch_size,), device=device),
    )
    size = sum(p.numel() for p in model.parameters())
    print(f"[resnet18_cifar] {size} parameters, batch {batch_size}", flush=True)
    callbacks = {
        "tdl": (
            HessianEigenvalues(k=k, tol=tol, loss_fn=loss_fn),
            plugins.curvature.operator.CurvatureOperator,
        )
    }
    if baseline is not None:
        old = baseline.HessianEigenvalues(k=k, tol=tol, loss_fn=loss_fn)
        callbacks["tdl_baseline"] = (old, baseline._CurvatureOperator)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in callbacks}
    for _ in range(repeats):
        for name, (callback, operator) in callbacks.items():
            callback.warm_start, callback._start = True, None  # a cold probe (then warm-start vectors kept)

            def probe(callback: Any = callback) -> Any:  # what DiagnosticCallback._probe does around probe()
                with preserved_training_state(model):
                    return callback.probe(model, batch)

            _malloc_trim()
            before = count_matvecs(operator)
            seconds, result, memory = peak_memory(probe)
            values = [result.scalars[f"lambda_{i + 1}"] for i in range(k)]
            runs[name].append(
                {
                    "seconds": seconds,
                    "matvecs": count_matvecs(operator) - before,
                    "eigenvalues": values,
                    **memory,
                }
            )
            print(f"[resnet18_cifar] {name} {runs[name][-1]}", flush=True)
    vector_gib = size * 4 / 2**30
    basis = default_basis(SimpleNamespace(size=size, dtype=torch.float32), k, 100)
    out: dict[str, Any] = {
        "parameters": size,
        "batch": batch_size,
        "vector_gib": vector_gib,
        "basis_vectors": basis,
        "basis_gib": basis * vector_gib,
        "preserved_state_gib": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30,
        "settings": f"HessianEigenvalues(k={k}, tol={tol}) probe (warm start vectors kept), train mode",
    }
    for name, rows in runs.items():
        out[name] = {
            "seconds": min(r["seconds"] for r in rows),
            "peak_above_before_gib": min(r["peak_above_before_gib"] for r in rows),
            "matvecs": rows[0]["matvecs"],
            "eigenvalues": rows[0]["eigenvalues"],
            "runs": rows,
        }
    if baseline is not None:
        new, old = out["tdl"], out["tdl_baseline"]
        new["over_baseline"] = {
            key: new[key] / old[key] for key in ("seconds", "peak_above_before_gib", "matvecs")
        }
        new["max_relative_difference_to_baseline"] = max(
            abs(a - b) / abs(b) for a, b in zip(new["eigenvalues"], old["eigenvalues"], strict=True)
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lenet-batch", type=int, default=1000)
    parser.add_argument("--cnn-batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument(
        "--eigenthings-steps",
        type=int,
        nargs="+",
        default=[40, 60, 80, 120],
        help="Lanczos budgets for hessian-eigenthings; the first is the reference setting",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs of each eigen-solver, fastest kept (default: 1 CPU, 3 GPU)",
    )
    parser.add_argument("--cases", nargs="*", default=["lenet5_mnist", "cnn_cifar_1m", "resnet18_cifar"])
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument(
        "--resnet-tol", type=float, default=1e-3, help="HessianEigenvalues' tol (its default)"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="an earlier plugins/hessian.py to compare with"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="peers to skip: pyhessian hessian_eigenthings")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.baseline_module = load_baseline(args.baseline)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # every solver at full float32 (TF32 convolutions, cuDNN's default, move eigenvalues by ~1e-4)
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.runs = args.runs or (3 if device == "cuda" else 1)
    results: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "note": "CPU only (no GPU in this session); timings on a shared 2-core machine"
        if device == "cpu"
        else "GPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "baseline": None if args.baseline is None else str(args.baseline),
        "load_average_at_start": os.getloadavg()[0],
        "solver_runs": args.runs,
        "tf32": False,
        "python": sys.version.split()[0],
        "cases": {},
    }
    start = time.perf_counter()
    for name, (model, batch) in cases(args.lenet_batch, args.cnn_batch, device).items():
        if name in args.cases:
            results["cases"][name] = run_case(name, model, batch, args)
    if "resnet18_cifar" in args.cases:
        results["cases"]["resnet18_cifar"] = run_big_model(
            args.resnet_batch, device, args.baseline_module, args.k, args.resnet_tol
        )
    results["total_seconds"] = time.perf_counter() - start
    path = args.out or RESULTS / f"hessian_{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
