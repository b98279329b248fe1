"""What the plugins cost: each course experiment's fit timed with and without its plugins.

DESIGN.md's rule is that a plugin's default schedule keeps the overhead of the default
experiment configs under 10% of the training time. This benchmark runs each experiment config
in one process, through the real ``tdl`` configuration (the same data, model, optimizer and
trainer), once as written and once with ``trainer.callbacks`` emptied, times ``Trainer.fit``
alone (start-up excluded, the start of the W&B run among it: it is begun before the fit), and
writes the ratio to ``benchmarks/results/plugin_overhead_<device>.json``.

On a shared machine one pair of runs is noisy: ``--repeats N`` runs N pairs, alternating which
arm goes first, and reports the median of each arm (every time is kept in the JSON), with the
load average before and after. A run of some configs keeps the other configs' rows of the
results file (when measured with the same threads and epochs). The process's CPU seconds are
reported beside the wall seconds, and the CPU seconds spent inside the plugins' own hooks beside
the rest of the same fit: when other work competes for the cores, that share is the steadiest
measure of the overhead. The CPU seconds of drawing matplotlib figures in the hooks (the figures of
``Figure`` objects, and figure makers drawn in the training process: at a probe, the kinds cheaper to
draw than a drawing child, or at the end) and of ``on_train_end`` are reported apart too, and so are
the CPU seconds of the child processes that drew the other figure makers beside training
(:mod:`plugins.drawing`), with the share they make together with the hooks.

Example:
    python -m benchmarks.plugin_overhead --configs cnn_filters --max-epochs 2
    python -m benchmarks.plugin_overhead --configs cnn_filters --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = [
    "edge_of_chaos",
    "dynamical_isometry",
    "loss_landscape",
    "cnn_filters",
    "lenet_mnist_every_plugin",
    # the course experiments that carry plugins (their probes are the experiment, as above)
    "edge_of_stability",
    "gradient_noise",
    "expressivity",
    "information_plane",
    "intrinsic_dimension",
    "intrinsic_dimension_mlp",
    "linear_dynamics",
    "ntk_width",
]
# rows that attach plugins to a config at their default schedules: the case DESIGN.md's "costs little
# by default" speaks of (the experiment configs above probe densely on purpose: the probes are the
# experiment); the bare arm is the config as written
ATTACHED = {
    "lenet_mnist_every_plugin": (
        "lenet_mnist",
        ["InitStatistics", "JacobianSpectrum", "HessianEigenvalues", "LossLandscape", "FilterVisualisation"],
    )
}


HOOKS = ("setup", "on_train_start", "on_train_batch_end", "on_train_epoch_end", "on_train_end")


def _time_hooks(callback: Any, totals: dict[str, float]) -> None:
    """Add the wall and CPU seconds spent in ``callback``'s training hooks to ``totals``
    (its CPU seconds also to ``totals["hooks_cpu_s_<class name>"]``, and those of ``on_train_end``,
    where the figures of every probe are drawn, to ``totals["end_hooks_cpu_s"]``)."""
    own = f"hooks_cpu_s_{type(callback).__name__}"
    totals.setdefault(own, 0.0)
    totals.setdefault("end_hooks_cpu_s", 0.0)
    for hook in HOOKS:
        method = getattr(callback, hook)

        def timed(*args: Any, _method: Any = method, _hook: str = hook, **kwargs: Any) -> Any:
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return _method(*args, **kwargs)
            finally:
                totals["hooks_s"] += time.perf_counter() - start
                cpu = time.process_time() - cpu_start
                totals["hooks_cpu_s"] += cpu
                totals[own] += cpu
                if _hook == "on_train_end":
                    totals["end_hooks_cpu_s"] += cpu

        setattr(callback, hook, timed)  # an instance attribute: Lightning calls it in place of the method
    _time_figures(callback, totals)


def _time_figures(callback: Any, totals: dict[str, float]) -> None:
    """Add the CPU seconds ``callback`` spends drawing and saving matplotlib figures (inside its
    hooks: at once, or at the end of training for figure makers) to ``totals["figures_cpu_s"]``."""
    totals.setdefault("figures_cpu_s", 0.0)
    depth = [0]  # _output_figure calls _save_figure: count the outer call only
    for name in ("_output_figure", "_save_figure"):
        method = getattr(callback, name)

        def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            depth[0] += 1
            cpu_start = time.process_time()
            try:
                return _method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals["figures_cpu_s"] += time.process_time() - cpu_start

        setattr(callback, name, timed)


@contextlib.contextmanager
def _timed_drawing_here(totals: dict[str, float]) -> Iterator[None]:
    """Add to ``totals["figures_cpu_s"]`` the CPU seconds of the figures that :data:`plugins.drawing.DRAWING`
    draws in the training process at a probe (the kinds cheaper than a drawing child)."""
    from plugins import drawing

    draw = drawing._draw_and_save

    def timed(job: Any) -> None:
        cpu_start = time.process_time()
        try:
            draw(job)
        finally:
            totals["figures_cpu_s"] = totals.get("figures_cpu_s", 0.0) + time.process_time() - cpu_start

    drawing._draw_and_save = timed
    try:
        yield
    finally:
        drawing._draw_and_save = draw


def fit_seconds(config: str, with_plugins: bool, extra: list[str]) -> dict[str, float]:
    """Seconds of ``Trainer.fit`` for one experiment config (run directory in a temp folder).

    ``wall_s`` and ``cpu_s`` time the whole fit (CPU: this process, all its threads; on a machine
    shared with other work it varies less than the wall time, which also counts waiting for a
    core); ``hooks_s`` and ``hooks_cpu_s`` the plugins' own hooks inside it (probes and their
    output), a direct measure of their cost that no other noise of the fit enters.
    """
    from lightning.pytorch.loggers import WandbLogger

    from plugins.base import DiagnosticCallback
    from tdl_lightning.lightning_cli import TDLCLI

    config_file, attached = ATTACHED.get(config, (config, []))
    with tempfile.TemporaryDirectory() as root:
        args = [  # run=False: no subcommand, the parser is fit's
            "--config",
            str(REPO / "experiments" / f"{config_file}.yaml"),
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--run.root={root}",
            *extra,
        ]
        if not with_plugins:
            args.append("--trainer.callbacks=[]")
        else:
            args += [f"--trainer.callbacks+={plugin}" for plugin in attached]
        cli = TDLCLI(args=args, run=False)
        totals = {"hooks_s": 0.0, "hooks_cpu_s": 0.0}
        for logger in cli.trainer.loggers:
            # start-up, untimed in both arms: W&B starts its run (wandb.init, ~0.2 CPU s) at the first
            # access, inside the fit of both arms, where it would be charged to the hook that logs first
            if isinstance(logger, WandbLogger):
                _ = logger.experiment
        for callback in cli.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, DiagnosticCallback):
                _time_hooks(callback, totals)
        start, cpu_start, children_start = time.perf_counter(), time.process_time(), _children_cpu()
        with _timed_drawing_here(totals):
            cli.trainer.fit(cli.model, cli.datamodule)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        totals["children_cpu_s"] = _children_cpu() - children_start
        import wandb

        wandb.finish()
    return {"wall_s": seconds, "cpu_s": cpu_seconds, **totals}


def _children_cpu() -> float:
    """CPU seconds of this process's ended children: the processes that drew figures beside training."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--max-epochs", type=int, default=None, help="shorten both runs alike")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs; medians are reported")
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
        load_before = os.getloadavg()[0]
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for with_plugins in (False, True) if repeat % 2 == 0 else (True, False):
                runs[with_plugins].append(fit_seconds(config, with_plugins=with_plugins, extra=extra))
        bare, probed = _median(runs[False], "wall_s"), _median(runs[True], "wall_s")
        cpu_bare, cpu_probed = _median(runs[False], "cpu_s"), _median(runs[True], "cpu_s")
        hooks_cpu = _median(runs[True], "hooks_cpu_s")
        end_cpu = _median(runs[True], "end_hooks_cpu_s")
        # the probes alone (the hooks less the figures they draw), over the rest of the same fit
        probe_share = statistics.median(
            (run["hooks_cpu_s"] - run["figures_cpu_s"]) / (run["cpu_s"] - run["hooks_cpu_s"])
            for run in runs[True]
        )
        # the hooks' CPU seconds over the rest of the same fit: the overhead, free of run-to-run noise
        share = statistics.median(
            run["hooks_cpu_s"] / (run["cpu_s"] - run["hooks_cpu_s"]) for run in runs[True]
        )
        # with the CPU seconds of the processes that drew figures beside training (on other cores)
        total_share = statistics.median(
            (run["hooks_cpu_s"] + run["children_cpu_s"]) / (run["cpu_s"] - run["hooks_cpu_s"])
            for run in runs[True]
        )
        # each plugin's own share, measured the same way (DESIGN.md's budget is per plugin)
        per_plugin = {
            key.removeprefix("hooks_cpu_s_"): statistics.median(
                run[key] / (run["cpu_s"] - run["hooks_cpu_s"]) for run in runs[True]
            )
            for key in runs[True][0]
            if key.startswith("hooks_cpu_s_")
        }
        rows.append(
            {
                "config": config,
                "fit_s_without": bare,
                "fit_s_with": probed,
                "overhead": probed / bare - 1,
                "cpu_s_without": cpu_bare,
                "cpu_s_with": cpu_probed,
                "cpu_overhead": cpu_probed / cpu_bare - 1,
                "plugin_hooks_s": _median(runs[True], "hooks_s"),
                "plugin_hooks_cpu_s": hooks_cpu,
                "plugin_hooks_cpu_share": share,
                # of which at the end of training (the end probes, and the figures drawn from every probe)
                "plugin_end_hooks_cpu_s": end_cpu,
                "plugin_figures_cpu_s": _median(runs[True], "figures_cpu_s"),
                "plugin_probes_cpu_share": probe_share,  # the hooks without drawing figures
                # figures drawn in child processes beside training (plugins.drawing), not in the hooks
                "figure_children_cpu_s": _median(runs[True], "children_cpu_s"),
                "plugin_hooks_and_children_cpu_share": total_share,
                "plugin_hooks_cpu_share_by_plugin": per_plugin,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "runs_without": runs[False],
                "runs_with": runs[True],
                "load_average_1min": [load_before, os.getloadavg()[0]],
            }
        )
        row = rows[-1]
        print(
            f"{config:<20} without {bare:7.1f} s   with {probed:7.1f} s   overhead {row['overhead']:+.1%}"
            f"   CPU {cpu_bare:.1f} s / {cpu_probed:.1f} s: {row['cpu_overhead']:+.1%}"
            f"   plugin hooks {hooks_cpu:.2f} CPU s = {row['plugin_hooks_cpu_share']:.1%} of the rest"
            f" ({end_cpu:.2f} s of it at the end; without drawing figures {probe_share:.1%};"
            f" with the drawing processes' {row['figure_children_cpu_s']:.2f} CPU s {total_share:.1%})"
            f"   (median of {args.repeats}; load {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
        )
        print("    by plugin: " + ", ".join(f"{name} {value:.1%}" for name, value in per_plugin.items()))
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
    path = RESULTS / f"plugin_overhead_{device}.json"
    if path.is_file():  # keep the rows of configs not run this time, if measured alike
        old = json.loads(path.read_text())
        alike = all(old.get(k) == result[k] for k in ("device", "threads", "max_epochs_override"))
        ran = {row["config"] for row in rows}
        kept = [row for row in old.get("rows", []) if alike and row["config"] not in ran]
        result["rows"] = sorted(kept + rows, key=lambda row: (CONFIGS + [row["config"]]).index(row["config"]))
    path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
