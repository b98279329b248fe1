"""Burgers PINN: this project against DeepXDE on the same problem and machine.

Both sides solve viscous Burgers (nu = 0.01/pi, u(x,0) = -sin(pi x), u(+-1,t) = 0) and are scored by
the relative L2 error against the same Cole-Hopf reference on Raissi's 256 x 100 grid
(:func:`tdl_lightning.data.pde.burgers_cole_hopf`). Each run is its own subprocess, one after the
other, in the same invocation; the time is the training time only (imports and set-up excluded), as
wall-clock seconds and as process CPU seconds (the fairer number on a shared, loaded machine).

- ``tdl_lightning``: the project's Burgers recipe, the one ``experiments/pinn_burgers.yaml`` runs: a
  tanh MLP, hard initial/boundary conditions, float64, residual derivatives by forward (Taylor-mode)
  propagation compiled by ``torch.compile``, the dense self-scaled BFGS with a strong Wolfe line search
  (``--quasi-newton lbfgs`` for L-BFGS; a short Adam phase first when ``--adam`` > 0), collocation
  points drawn afresh every step of 500 iterations, residual-weighted (RAD: Sobol candidates, kept with
  probability ~ |residual| / mean + 1). ``--accelerator gpu`` moves this side (only) to the GPU.
- ``deepxde``: DeepXDE 1.x's Burgers example as published (3x20 tanh, Glorot normal, 2540 + 80 + 160
  points, soft constraints, float32, Adam 15,000 steps at lr 1e-3, then L-BFGS up to 15,000
  iterations), on the CPU, pytorch backend. ``--skip-peer`` leaves it out.
- ``tdl_lightning_deepxde_setup`` (with ``--same-setup``): this project on DeepXDE's setup and budget.

DeepXDE is a peer, never a dependency: install it beside the project only for this script, e.g.
``pip install --target /work/peers deepxde scikit-optimize`` and pass ``--peer-path /work/peers``.
When it is missing the JSON says so and only this project runs. The script never imports wandb.

    python benchmarks/pinn_burgers.py --seeds 0 1 2                     # CPU, both sides
    python benchmarks/pinn_burgers.py --accelerator gpu --skip-peer --seeds 0 1 2 --output x.json
    # the two sides side by side on a 2-core machine (one thread each), then one report with the ratios:
    python benchmarks/pinn_burgers.py --skip-peer --seeds 0 1 2 --output ours.json &
    python benchmarks/pinn_burgers.py --skip-ours --seeds 0 1 2 --output peer.json; wait
    python benchmarks/pinn_burgers.py --merge ours.json peer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NU = 0.01 / 3.141592653589793

# the project's recipe (keep in step with experiments/pinn_burgers.yaml)
RECIPE = {
    "depth": 4,
    "width": 20,
    "n_interior": 5000,
    "adam": 0,
    "lbfgs": 5000,
    "iters_per_step": 250,
    "history": 100,
    "compile": True,
    "quasi_newton": "bfgs",
    "resample_every": 1,
    "adaptive": "rad",
    "candidates": 50000,
}


def _reference():
    import numpy as np

    from tdl_lightning.data.pde import Burgers

    points, values = Burgers(nu=NU).reference_grid()
    return points.numpy(), values.numpy(), np.linalg.norm(values.numpy())


def _sync(accelerator: str) -> None:
    import torch

    if accelerator == "gpu":
        torch.cuda.synchronize()


def run_ours(seed: int, args: argparse.Namespace, variant: str) -> dict:
    """Train the project's PINN (programmatic Trainer, no loggers) and score it on the reference grid."""
    import lightning as L
    import numpy as np
    import torch

    from tdl_lightning.data.pde import PDECollocation
    from tdl_lightning.models import DeepMLP
    from tdl_lightning.tasks import PINN

    points, reference, norm = _reference()
    quasi_newton, resample, adaptive = args.quasi_newton, args.resample_every, args.adaptive
    if variant == "deepxde_setup":
        depth, width, constraint, dtype, n_interior = 3, 20, "soft", "float32", 2540
        adam, lbfgs, iters_per_step, history = args.peer_adam, args.peer_lbfgs, 500, 50
        quasi_newton, resample, adaptive = "lbfgs", 0, "none"
    else:
        depth, width, constraint, dtype = args.depth, args.width, "hard", "float64"
        n_interior, adam, lbfgs, iters_per_step = args.n_interior, args.adam, args.lbfgs, args.iters_per_step
        history = args.history
    L.seed_everything(seed, verbose=False)
    net = DeepMLP(input_dim=2, width=width, depth=depth, output_dim=1, activation="tanh", init="xavier")
    task = PINN(
        net,
        constraint=constraint,
        dtype=dtype,
        lr=1e-3,
        adam_steps=adam,
        lbfgs_steps=-(-lbfgs // iters_per_step),
        lbfgs_iters_per_step=iters_per_step,
        lbfgs_history=history,
        derivatives=args.derivatives,
        compile=args.compile and variant != "deepxde_setup",
        quasi_newton=quasi_newton,
        freeze_points=resample == 0,
    )
    data = PDECollocation(
        "burgers",
        n_interior=n_interior,
        n_initial=160,
        n_boundary=80,
        seed=seed,
        steps_per_epoch=1 if resample else max(adam, 1) + 100,
        resample_every_n_epochs=resample,
        adaptive=adaptive if resample else "none",
        candidates=max(args.candidates, n_interior),
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=100,
        default_root_dir=tempfile.mkdtemp(prefix="tdl_pinn_bench_"),  # its end-of-fit pictures go there
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(task, data)
    _sync(args.accelerator)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    device = trainer.strategy.root_device
    with torch.no_grad():
        u = task(torch.from_numpy(points).to(task.device)).double().cpu().numpy()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rel_l2": float(np.linalg.norm(u - reference) / norm),
        "adam_steps": adam,
        "lbfgs_iterations": task.lbfgs_iterations,
        "quasi_newton": quasi_newton,
        "points_redrawn_every_n_steps": resample,
        "adaptive": adaptive if resample else "none",
        "network": f"{depth}x{width} tanh",
        "n_interior": n_interior,
        "constraint": constraint,
        "dtype": dtype,
        "derivatives": "taylor" if task.use_taylor else "autograd",
        "compiled": callable(task._compiled),
        "device": str(device),  # where it trained (Lightning moves the module back to the CPU at the end)
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }


def run_deepxde(seed: int, args: argparse.Namespace) -> dict:
    """DeepXDE 1.x's Burgers example (pytorch backend, CPU), with the given iteration budget."""
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    import deepxde as dde
    import numpy as np

    adam, lbfgs = args.peer_adam, args.peer_lbfgs
    points, reference, norm = _reference()
    dde.config.set_random_seed(seed)

    def pde(x, y):
        dy_x = dde.grad.jacobian(y, x, i=0, j=0)
        dy_t = dde.grad.jacobian(y, x, i=0, j=1)
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        return dy_t + y * dy_x - NU * dy_xx

    geomtime = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 0.99))
    bc = dde.icbc.DirichletBC(geomtime, lambda x: 0, lambda _, on_boundary: on_boundary)
    ic = dde.icbc.IC(geomtime, lambda x: -np.sin(np.pi * x[:, 0:1]), lambda _, on_initial: on_initial)
    data = dde.data.TimePDE(geomtime, pde, [bc, ic], num_domain=2540, num_boundary=80, num_initial=160)
    net = dde.nn.FNN([2] + [20] * 3 + [1], "tanh", "Glorot normal")
    model = dde.Model(data, net)
    start, cpu = time.perf_counter(), time.process_time()
    model.compile("adam", lr=1e-3)
    model.train(iterations=adam, display_every=max(adam, 1), verbose=0)
    if lbfgs > 0:
        config = dde.optimizers.config
        config.set_LBFGS_options(maxiter=lbfgs)
        # the per-step split is computed once at import (from the default maxiter 15000): redo it here
        options = config.LBFGS_options
        options["iter_per_step"] = min(1000, lbfgs)
        options["fun_per_step"] = options["maxfun"] * options["iter_per_step"] // lbfgs
        model.compile("L-BFGS")
        model.train(display_every=lbfgs, verbose=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    u = model.predict(points.astype(np.float32)).astype(np.float64)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rel_l2": float(np.linalg.norm(u - reference) / norm),
        "adam_steps": adam,
        "lbfgs_iterations": int(model.train_state.step - adam),
        "network": "3x20 tanh",
        "n_interior": 2540,
        "constraint": "soft",
        "dtype": "float32",
        "device": "cpu",
        "version": dde.__version__,
    }


CHILD_FLAGS = (
    "accelerator", "threads", "depth", "width", "n_interior", "adam", "lbfgs", "iters_per_step",
    "history", "derivatives", "compile", "quasi_newton", "resample_every",
    "adaptive", "candidates", "peer_adam", "peer_lbfgs",
)  # fmt: skip


def _child(side: str, seed: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ, DDE_BACKEND="pytorch", PYTHONPATH=str(ROOT))
    # a cold torch.compile cache per run: the time includes the compilation a first run pays
    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="tdl_pinn_inductor_")
    if args.peer_path:
        env["TDL_PEER_PATH"] = args.peer_path
    cmd = [sys.executable, __file__, "--child", side, "--seed", str(seed)]
    for flag in CHILD_FLAGS:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    if out.returncode != 0:
        text = (out.stderr or out.stdout).strip()
        return {"error": text.splitlines()[-1] if text else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _resolve_accelerator(name: str) -> str:
    import torch

    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: no CUDA device here (use cpu or auto)")
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--accelerator", choices=["cpu", "gpu", "auto"], default="cpu", help="this project's side only"
    )
    parser.add_argument("--skip-peer", action="store_true", help="do not run DeepXDE")
    parser.add_argument(
        "--skip-ours", action="store_true", help="run DeepXDE alone (e.g. beside a run of ours)"
    )
    parser.add_argument("--same-setup", action="store_true", help="also run this project on DeepXDE's setup")
    parser.add_argument("--depth", type=int, default=RECIPE["depth"], help="hidden layers of ours")
    parser.add_argument("--width", type=int, default=RECIPE["width"])
    parser.add_argument("--n-interior", type=int, default=RECIPE["n_interior"], help="collocation points")
    parser.add_argument("--adam", type=int, default=RECIPE["adam"], help="Adam steps before L-BFGS (ours)")
    parser.add_argument("--lbfgs", type=int, default=RECIPE["lbfgs"], help="most L-BFGS iterations (ours)")
    parser.add_argument("--iters-per-step", type=int, default=RECIPE["iters_per_step"])
    parser.add_argument("--history", type=int, default=RECIPE["history"], help="L-BFGS history size (ours)")
    parser.add_argument("--derivatives", choices=["auto", "taylor", "autograd"], default="auto")
    parser.add_argument("--quasi-newton", choices=["lbfgs", "bfgs"], default=RECIPE["quasi_newton"])
    parser.add_argument(
        "--resample-every",
        type=int,
        default=RECIPE["resample_every"],
        help="fresh Sobol points every this many quasi-Newton steps (0: one fixed point set)",
    )
    parser.add_argument(
        "--adaptive", choices=["none", "rad"], default=RECIPE["adaptive"], help="residual-weighted draws"
    )
    parser.add_argument("--candidates", type=int, default=RECIPE["candidates"], help="per adaptive draw")
    parser.add_argument(
        "--compile",
        type=lambda text: text.lower() in ("1", "true", "yes"),
        default=RECIPE["compile"],
        help="torch.compile the residual (ours; default true as in the recipe): true/false",
    )
    parser.add_argument("--peer-adam", type=int, default=15000, help="DeepXDE's Adam steps (example: 15000)")
    parser.add_argument("--peer-lbfgs", type=int, default=15000, help="DeepXDE's most L-BFGS iterations")
    parser.add_argument("--peer-path", default=os.environ.get("TDL_PEER_PATH", "/work/peers"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument(
        "--output", type=Path, default=None, help="default: results/pinn_burgers_<device>.json"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on both sides (1: no spin-waiting)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="run nothing: merge these reports of earlier invocations (e.g. --skip-peer and --skip-ours "
        "run side by side) into one, with the ratios",
    )
    parser.add_argument("--note", default=None, help="a remark stored in the report (how it was run)")
    parser.add_argument("--child", choices=["ours", "ours_deepxde_setup", "deepxde"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        peer = os.environ.get("TDL_PEER_PATH")
        if args.child == "deepxde":
            if peer:
                sys.path.append(peer)  # after the venv: the peer's copies never shadow the project's packages
            result = run_deepxde(args.seed, args)
        else:
            result = run_ours(args.seed, args, "deepxde_setup" if args.child == "ours_deepxde_setup" else "")
        print(json.dumps(result))
        return result

    import torch

    args.accelerator = _resolve_accelerator(args.accelerator)
    output = args.output or RESULTS / f"pinn_burgers_{args.accelerator}.json"
    sides = [] if args.skip_ours else [("ours", "tdl_lightning")]
    if not args.skip_peer:
        sides.append(("deepxde", "deepxde"))
    if args.same_setup:
        sides.append(("ours_deepxde_setup", "tdl_lightning_deepxde_setup"))
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {key: [] for _, key in sides}
    if args.merge:  # reports of separate invocations (e.g. the two sides run side by side) as one
        runs = {}
        for path in args.merge:
            earlier = json.loads(Path(path).read_text())
            load_start = earlier["machine"]["load_average_at_start"]
            for key, results in earlier["runs"].items():
                runs.setdefault(key, []).extend(results)
        for results in runs.values():
            results.sort(key=lambda r: r["seed"])
    for seed in [] if args.merge else args.seeds:
        for side, key in sides:
            result = _child(side, seed, args)
            result["seed"] = seed
            result["load_average_after"] = os.getloadavg()
            runs[key].append(result)
            print(f"{key:<30} seed {seed}: {result}", flush=True)
    ratios = []
    for ours, peer in zip(runs.get("tdl_lightning", []), runs.get("deepxde", []), strict=False):
        if "error" not in ours and "error" not in peer:
            ratios.append(
                {
                    "seed": ours["seed"],
                    "time_ratio_ours_over_deepxde": ours["seconds"] / peer["seconds"],
                    "cpu_time_ratio_ours_over_deepxde": ours["cpu_seconds"] / peer["cpu_seconds"],
                    "error_ratio_ours_over_deepxde": ours["rel_l2"] / peer["rel_l2"],
                }
            )
    ours_runs = runs.get("tdl_lightning", [])
    ours_ok = [r for r in ours_runs if "error" not in r]
    peer_runs = runs.get("deepxde", [])
    deepxde_missing = bool(peer_runs) and all(
        "No module named 'deepxde'" in r.get("error", "") for r in peer_runs
    )
    report = {
        "benchmark": "pinn_burgers",
        "problem": "Burgers nu=0.01/pi; rel. L2 vs Cole-Hopf on Raissi's 256x100 grid (t = 0..0.99)",
        "tdl_lightning": (
            f"{args.depth}x{args.width} tanh, hard IC/BC, float64, derivatives={args.derivatives}, "
            f"{args.n_interior} Sobol points (fresh every {args.resample_every} steps, 0: fixed; adaptive "
            f"{args.adaptive} from {args.candidates} candidates), "
            f"compile={args.compile}, Adam {args.adam} steps then {args.quasi_newton} (strong Wolfe"
            + (f", history {args.history}" if args.quasi_newton == "lbfgs" else ", dense self-scaled")
            + f") up to {args.lbfgs} iterations, {args.iters_per_step} per Lightning step, on "
            f"{args.accelerator}"
        ),
        "deepxde": "skipped (--skip-peer)"
        if args.skip_peer
        else (
            "DeepXDE's Burgers example: 3x20 tanh, Glorot normal, 2540+80+160 points, soft, float32, "
            f"Adam {args.peer_adam} (lr 1e-3) then L-BFGS up to {args.peer_lbfgs} iterations, CPU"
            + (": NOT INSTALLED, no comparison made (see the docstring)" if deepxde_missing else "")
        ),
        "goal": "rel_l2 <= 1e-3 on every seed",
        "goal_met": bool(ours_ok)
        and len(ours_ok) == len(ours_runs)
        and all(r["rel_l2"] <= 1e-3 for r in ours_ok),
        "machine": {
            "accelerator": args.accelerator,
            "gpu": torch.cuda.get_device_name() if args.accelerator == "gpu" else None,
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "runs": runs,
        "ratios": ratios,
    }
    if args.merge:
        report["merged_from"] = [str(path) for path in args.merge]
    if args.note:
        report["note"] = args.note
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
