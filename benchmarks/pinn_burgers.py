"""Burgers PINN: this project against DeepXDE on the same problem, machine and iteration budget (CPU).

Both sides solve viscous Burgers (nu = 0.01/pi, u(x,0) = -sin(pi x), u(+-1,t) = 0) with the setup of
DeepXDE's Burgers example: a 3x20 tanh network with Glorot-normal init, 2540 interior, 80 boundary and
160 initial collocation points, soft constraints, float32, Adam (lr 1e-3) then L-BFGS. Both are scored
by the relative L2 error against the same Cole-Hopf reference on Raissi's 256 x 100 grid
(:func:`tdl_lightning.data.pde.burgers_cole_hopf`). Each side runs in its own subprocess, one after
the other, on the same machine in the same invocation; the time is the training time only (imports
and set-up excluded), as wall-clock seconds and as process CPU seconds (the fairer number on a shared,
loaded machine). A third run times the project's recommended setting (hard constraint, float64).

The iteration budget is smaller than the example's (Adam 15,000 + L-BFGS up to 15,000) so that the
benchmark stays within minutes on a shared CPU; the JSON states the budget used.

DeepXDE is a peer, never a dependency: install it beside the project only for this script, e.g.
``pip install --target /work/peers deepxde scikit-optimize`` and pass ``--peer-path /work/peers``
(``DDE_BACKEND=pytorch`` is set here). When it is missing the JSON says so and only this project runs.

    python benchmarks/pinn_burgers.py --adam 2000 --lbfgs 2000 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "pinn_burgers_cpu.json"
NU = 0.01 / 3.141592653589793


def _reference():
    import numpy as np

    from tdl_lightning.data.pde import Burgers

    points, values = Burgers(nu=NU).reference_grid()
    return points.numpy(), values.numpy(), np.linalg.norm(values.numpy())


def run_ours(seed: int, adam: int, lbfgs: int, variant: str) -> dict:
    """Train the project's PINN (programmatic Trainer, no loggers) and score it on the reference grid."""
    import lightning as L
    import numpy as np
    import torch

    from tdl_lightning.data.pde import PDECollocation
    from tdl_lightning.models import DeepMLP
    from tdl_lightning.tasks import PINN

    points, reference, norm = _reference()
    iters_per_step = 50
    lbfgs_steps = -(-lbfgs // iters_per_step)
    if variant == "deepxde_setup":
        depth, constraint, dtype, n_interior = 3, "soft", "float32", 2540
    else:
        depth, constraint, dtype, n_interior = 8, "hard", "float64", 2540
    L.seed_everything(seed, verbose=False)
    net = DeepMLP(input_dim=2, width=20, depth=depth, output_dim=1, activation="tanh", init="xavier")
    task = PINN(
        net,
        constraint=constraint,
        dtype=dtype,
        lr=1e-3,
        adam_steps=adam,
        lbfgs_steps=lbfgs_steps,
        lbfgs_iters_per_step=iters_per_step,
    )
    data = PDECollocation(
        "burgers", n_interior=n_interior, n_initial=160, n_boundary=80, seed=seed, steps_per_epoch=500
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(task, data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        u = task(torch.from_numpy(points)).double().numpy()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rel_l2": float(np.linalg.norm(u - reference) / norm),
        "adam_steps": adam,
        "lbfgs_iterations": task.lbfgs_iterations,
        "network": f"{depth}x20 tanh",
        "constraint": constraint,
        "dtype": dtype,
    }


def run_deepxde(seed: int, adam: int, lbfgs: int) -> dict:
    """DeepXDE 1.x's Burgers example (pytorch backend), with the given iteration budget."""
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    import deepxde as dde
    import numpy as np

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
        "constraint": "soft",
        "dtype": "float32",
        "version": dde.__version__,
    }


def _child(
    side: str, seed: int, adam: int, lbfgs: int, peer_path: str | None, timeout: float, threads: int
) -> dict:
    env = dict(os.environ, DDE_BACKEND="pytorch", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT)])))
    if peer_path:
        env["TDL_PEER_PATH"] = peer_path
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--seed",
        str(seed),
        "--adam",
        str(adam),
        "--lbfgs",
        str(lbfgs),
        "--threads",
        str(threads),
    ]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {
            "error": (out.stderr or out.stdout).strip().splitlines()[-1]
            if (out.stderr or out.stdout)
            else "failed"
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adam", type=int, default=2000, help="Adam steps (DeepXDE example: 15000)")
    parser.add_argument("--lbfgs", type=int, default=2000, help="most L-BFGS iterations (example: 15000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--peer-path", default=os.environ.get("TDL_PEER_PATH", "/work/peers"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on both sides (1: no spin-waiting)"
    )
    parser.add_argument("--child", choices=["ours", "ours_recommended", "deepxde"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        peer = os.environ.get("TDL_PEER_PATH")
        if peer and args.child == "deepxde":
            sys.path.append(peer)  # after the venv: the peer's copies never shadow the project's packages
        if args.child == "deepxde":
            result = run_deepxde(args.seed, args.adam, args.lbfgs)
        else:
            variant = "deepxde_setup" if args.child == "ours" else "recommended"
            result = run_ours(args.seed, args.adam, args.lbfgs, variant)
        print(json.dumps(result))
        return result

    import torch

    runs: dict[str, list[dict]] = {"tdl_lightning": [], "deepxde": [], "tdl_lightning_recommended": []}
    for seed in args.seeds:
        for side, key in (
            ("ours", "tdl_lightning"),
            ("deepxde", "deepxde"),
            ("ours_recommended", "tdl_lightning_recommended"),
        ):
            result = _child(side, seed, args.adam, args.lbfgs, args.peer_path, args.timeout, args.threads)
            result["seed"] = seed
            runs[key].append(result)
            print(f"{key:<28} seed {seed}: {result}", flush=True)
    ratios = []
    for ours, peer in zip(runs["tdl_lightning"], runs["deepxde"], strict=True):
        if "error" not in ours and "error" not in peer:
            ratios.append(
                {
                    "seed": ours["seed"],
                    "time_ratio_ours_over_deepxde": ours["seconds"] / peer["seconds"],
                    "cpu_time_ratio_ours_over_deepxde": ours["cpu_seconds"] / peer["cpu_seconds"],
                    "error_ratio_ours_over_deepxde": ours["rel_l2"] / peer["rel_l2"],
                }
            )
    deepxde_missing = all("No module named 'deepxde'" in r.get("error", "") for r in runs["deepxde"])
    report = {
        "benchmark": "pinn_burgers",
        "problem": "Burgers nu=0.01/pi on [-1,1]x[0,0.99]; rel. L2 vs Cole-Hopf on Raissi's 256x100 grid",
        "setup": "DeepXDE's Burgers example (3x20 tanh, Glorot normal, 2540+80+160 points, soft, float32), "
        f"Adam {args.adam} steps (lr 1e-3) then L-BFGS up to {args.lbfgs} iterations; the example uses "
        "15000 + 15000, this budget is smaller to stay within minutes on a shared CPU",
        "recommended": "tdl_lightning_recommended: the same budget with 8x20 tanh, hard constraint, float64",
        "machine": {
            "device": "cpu",
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "peer": "DeepXDE (pytorch backend)"
        + (": NOT INSTALLED, no comparison made (see the docstring)" if deepxde_missing else ""),
        "runs": runs,
        "ratios": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
