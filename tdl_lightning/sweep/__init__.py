"""``tdl sweep``: run a W&B sweep config locally, one ``tdl fit`` after another (or K at once).

The sweep configs in ``experiments/sweeps/`` are ordinary W&B sweep configs: ``wandb sweep`` +
``wandb agent`` run them online. With no server, ``tdl sweep CONFIG`` expands the same config
(``grid``: every combination; ``random``: ``--max-runs`` draws from a seeded generator; ``bayes``
needs the server, so it runs as ``random`` here) and runs its ``command`` once per point, with
``${args}`` replaced by ``--key=value`` exactly as ``wandb agent`` does. Every run is a normal run
of experiment ``<sweep name>``, so ``tdl compare runs/<sweep name>`` compares them.

It is not a scheduler: it stops cleanly on Ctrl-C (its runs are interrupted and left unfinished)
and the same command resumes: runs that finished (a ``summary.json`` whose config holds the
run's values) are skipped.

    tdl sweep experiments/sweeps/edge_of_chaos.yaml --parallel 2
    tdl sweep experiments/sweeps/optimizer_lr.yaml --max-runs 6 --dry-run

One module per job:

- :mod:`~tdl_lightning.sweep.config`: the sweep YAML and its checks (:class:`SweepConfig`);
- :mod:`~tdl_lightning.sweep.sampling`: the points (grid, random, bayes-as-random);
- :mod:`~tdl_lightning.sweep.commands`: a point's command line, ``${args}`` and the other macros;
- :mod:`~tdl_lightning.sweep.resume`: which finished runs stand for which points;
- :mod:`~tdl_lightning.sweep.report`: the runs of a sweep and their status (:func:`plan_sweep`);
- :mod:`~tdl_lightning.sweep.plan`: slots (a GPU and CPUs per run) and shards across hosts;
- :mod:`~tdl_lightning.sweep.runner`: the child processes, K at once, and Ctrl-C (:func:`run_sweep`);
- :mod:`~tdl_lightning.sweep.progress`: counts, running points and the ETA, as plain values;
- :mod:`~tdl_lightning.sweep.display`: the live status on a terminal, plain lines elsewhere;
- :mod:`~tdl_lightning.sweep.cli`: the ``tdl sweep`` options and exit status (:func:`main`).

Example:
    >>> sweep = SweepConfig.from_dict({"name": "demo", "method": "grid",
    ...     "command": ["tdl", "fit", "--config", "base.yaml", "${args}"],
    ...     "parameters": {"optimizer.lr": {"values": [0.1, 0.01]}, "trainer.max_epochs": {"value": 2}}})
    >>> [point["optimizer.lr"] for point in expand_sweep(sweep)]
    [0.1, 0.01]
    >>> sweep_arguments({"optimizer.lr": 0.1, "run.experiment": "demo"})
    ['--optimizer.lr=0.1', '--run.experiment=demo']
"""

from __future__ import annotations

from tdl_lightning.sweep.cli import main
from tdl_lightning.sweep.commands import build_command, sweep_arguments
from tdl_lightning.sweep.config import SweepConfig
from tdl_lightning.sweep.display import LiveDisplay, PlainDisplay, SweepDisplay, choose_display
from tdl_lightning.sweep.plan import Slot, in_shard, parse_shard, plan_slots, usable_cpus, visible_gpus
from tdl_lightning.sweep.progress import SweepProgress, format_duration, remaining_seconds
from tdl_lightning.sweep.report import SweepReport, SweepRun, plan_sweep
from tdl_lightning.sweep.resume import config_matches, expected_settings, find_finished_runs
from tdl_lightning.sweep.runner import run_sweep
from tdl_lightning.sweep.sampling import expand_sweep, sample_parameter

__all__ = [
    "LiveDisplay",
    "PlainDisplay",
    "Slot",
    "SweepConfig",
    "SweepDisplay",
    "SweepProgress",
    "SweepReport",
    "SweepRun",
    "build_command",
    "choose_display",
    "config_matches",
    "expand_sweep",
    "expected_settings",
    "find_finished_runs",
    "format_duration",
    "in_shard",
    "main",
    "parse_shard",
    "plan_slots",
    "plan_sweep",
    "remaining_seconds",
    "run_sweep",
    "sample_parameter",
    "sweep_arguments",
    "usable_cpus",
    "visible_gpus",
]
