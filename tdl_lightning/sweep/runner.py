"""Running a sweep: each point a ``tdl fit`` subprocess, K at once, stopped cleanly on Ctrl-C.

Every run gets a fresh ``WANDB_RUN_ID`` (``<sweep>-<index>-<random>``, as ``wandb agent`` names
its runs), its output in ``<runs dir>/.sweep-logs/NNN.log``, and, with ``--parallel K > 1``, a
slot of :func:`~tdl_lightning.sweep.plan.plan_slots` (a GPU and a share of the CPUs). Progress
goes to a :mod:`~tdl_lightning.sweep.display`.

Example:
    >>> report = run_sweep("experiments/sweeps/edge_of_chaos.yaml", dry_run=True)  # doctest: +SKIP
    >>> report.count("planned")  # doctest: +SKIP
    9
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.directory import read_summary
from tdl_lightning.sweep.commands import executable
from tdl_lightning.sweep.config import SweepConfig
from tdl_lightning.sweep.display import SweepDisplay, choose_display
from tdl_lightning.sweep.plan import Slot, in_shard, plan_slots
from tdl_lightning.sweep.progress import SweepProgress
from tdl_lightning.sweep.report import SweepReport, SweepRun, plan_sweep
from tdl_lightning.sweep.sampling import expand_sweep

__all__ = ["run_sweep"]

_GRACE_SECONDS = 30.0


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted()


@dataclass
class _Running:
    """One point's run in flight."""

    run: SweepRun
    process: subprocess.Popen[bytes]
    started: float
    handle: IO[bytes]
    slot: Slot | None


def run_sweep(
    config: str | Path | SweepConfig,
    max_runs: int | None = None,
    parallel: int = 1,
    dry_run: bool = False,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
    shard: tuple[int, int] | None = None,
    display: SweepDisplay | None = None,
) -> SweepReport:
    """Run a sweep locally: each point a ``tdl fit`` subprocess, ``parallel`` at a time.

    With ``parallel > 1`` each run goes to a slot of :func:`~tdl_lightning.sweep.plan.plan_slots`
    (its own GPU round robin, its share of the usable CPUs); ``shard=(i, N)`` runs only the
    ``i``-th of ``N`` shares of the points (:func:`~tdl_lightning.sweep.plan.in_shard`).

    Finished runs are skipped; each run's output goes to ``<runs dir>/.sweep-logs/``. Progress
    goes to ``display`` (default :func:`~tdl_lightning.sweep.display.choose_display`: one line per
    event to ``echo`` when it is given or stdout is no terminal, else a live status). Ctrl-C (or
    SIGTERM) interrupts the running runs (SIGINT, so Lightning shuts down cleanly; killed after
    30 s or at a second Ctrl-C), starts no more, and returns with ``interrupted=True``: the same
    call resumes.

    Example:
        >>> report = run_sweep("experiments/sweeps/edge_of_chaos.yaml", dry_run=True)  # doctest: +SKIP
        >>> report.count("planned")  # doctest: +SKIP
        9
    """
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    show = display if display is not None else choose_display(echo)
    sweep, report = plan_sweep(config, max_runs=max_runs, seed=seed)
    report.runs = [run for run in report.runs if in_shard(run.index, shard)]
    slots = plan_slots(parallel) if parallel > 1 else []  # one at a time: the run has the whole host
    for note in sweep.notes:
        show.event(f"note: {note}")
    total = len(report.runs) if shard is None else len(expand_sweep(sweep, max_runs=max_runs, seed=seed))
    todo = [run for run in report.runs if run.status == "planned"]
    skipped = len(report.runs) - len(todo)
    share = "" if shard is None else f", share {shard[0]}/{shard[1]}: {len(report.runs)} of them"
    show.event(
        f"sweep {sweep.name} ({sweep.method}): {total} runs{share}, {skipped} finished before, "
        f"{len(todo)} to run; runs in {report.runs_dir}"
    )
    for slot in slots:
        show.event(f"slot {slot.index + 1}/{len(slots)}: {slot.describe()}")
    if dry_run:
        for run in report.runs:
            state = f"skip (finished: {run.run_dir})" if run.status == "skipped" else "run "
            show.event(f"[{run.index}/{total}] {state}  {shlex.join(run.command)}")
        return report
    progress = SweepProgress(len(todo), parallel, skipped=skipped)
    # Our own handlers, even where SIGINT was ignored (a sweep started with `&`): the runs, started
    # after this, get the default handlers back, so SIGINT reaches Lightning's clean shutdown.
    in_main_thread = threading.current_thread() is threading.main_thread()
    signums = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in signums}
    running: list[_Running] = []
    try:
        with show.live(progress):
            try:
                _run_all(todo, running, slots, report, total, show, progress, sweep.metric)
            except _Interrupted:
                report.interrupted = True
                _interrupt(running, show)
                for item in running:
                    progress.stop(item.run.index)
                show.event(
                    f"stopped. Resume with the same command: the {report.count('done') + skipped} "
                    "finished runs are skipped, the interrupted ones run again"
                )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return report


def _run_all(
    todo: list[SweepRun],
    running: list[_Running],
    slots: list[Slot],
    report: SweepReport,
    total: int,
    show: SweepDisplay,
    progress: SweepProgress,
    metric: dict[str, Any] | None,
) -> None:
    """Start runs while fewer than ``progress.parallel`` run, and reap the ones that end."""
    logs = report.runs_dir / ".sweep-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # each run starts its own W&B service: attached to this process's one (a notebook that used
    # wandb, a test session), a run's file could be left unwritten when this process moves on
    env.pop("WANDB_SERVICE", None)
    while todo or running:
        while todo and len(running) < progress.parallel:
            run = todo.pop(0)
            slot = next((s for s in slots if all(r.slot is not s for r in running)), None)
            where = f" on slot {slot.index + 1}" if slot is not None else ""
            show.event(f"[{run.index}/{total}] start {run.label()}{where}")
            progress.start(run.index, f"[{run.index}/{total}] {run.label()}{where}")
            running.append(_start(run, slot, logs, env, report.runs_dir))
        time.sleep(0.2)
        for item in [item for item in running if item.process.poll() is not None]:
            running.remove(item)
            _finish(item, total, show, progress, metric)


def _start(run: SweepRun, slot: Slot | None, logs: Path, env: dict[str, str], runs_dir: Path) -> _Running:
    """Start the run of one point, its output into ``logs/NNN.log``."""
    run.log = logs / f"{run.index:03d}.log"
    handle = run.log.open("wb")
    point_env = {**env, "WANDB_RUN_ID": _run_identity(run, runs_dir)}
    process = subprocess.Popen(
        executable(run.command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=point_env if slot is None else slot.env(point_env),
        start_new_session=True,  # Ctrl-C reaches the sweep, which then stops its runs
        preexec_fn=None if slot is None else functools.partial(os.sched_setaffinity, 0, slot.cpus),
    )
    return _Running(run, process, time.monotonic(), handle, slot)


def _finish(
    item: _Running,
    total: int,
    show: SweepDisplay,
    progress: SweepProgress,
    metric: dict[str, Any] | None,
) -> None:
    run, process = item.run, item.process
    item.handle.close()
    run.seconds = time.monotonic() - item.started
    text = run.log.read_text(errors="replace") if run.log else ""
    if run.run_dir is not None and not run.run_dir.is_dir():
        run.run_dir = None  # found by its id (_run_identity), never in its printed output
    progress.finish(run.index, run.seconds, ok=process.returncode == 0)
    if process.returncode == 0:
        run.status = "done"
        extra = ""
        name = (metric or {}).get("name")
        summary = read_summary(run.run_dir) if name and run.run_dir else None
        if summary is not None:
            value = (summary.get("metrics") or {}).get(name)
            extra = f", {name} {value:.4g}" if isinstance(value, (int, float)) else ""
        line = f"[{run.index}/{total}] done  {run.label()} in {run.seconds:.1f} s{extra}: {run.run_dir}"
        show.event(line, progress)
    else:
        run.status = "failed"
        tail = "".join("\n    " + line for line in text.splitlines()[-15:])
        show.event(
            f"[{run.index}/{total}] FAILED (exit {process.returncode}) {run.label()}; log {run.log}{tail}",
            progress,
        )


def _run_identity(run: SweepRun, runs_dir: Path) -> str:
    """A fresh run id for one try of a point (``<sweep>-<index>-<random>``); sets where its run will be.

    It reaches the run as ``WANDB_RUN_ID``, the way ``wandb agent`` names its runs (and never the
    id this process inherited), so a point that failed or was interrupted runs again as a new run,
    never over the old one's files, and its run is found by its id, not in its printed output.
    """
    run_id = f"{runs_dir.name}-{run.index:03d}-{secrets.token_hex(3)}"
    run.run_dir = runs_dir / run_id
    return run_id


def _interrupt(running: list[_Running], show: SweepDisplay) -> None:
    """Stop every running run (a second Ctrl-C: kill them now) and mark them ``interrupted``."""
    show.event(f"interrupted: stopping {len(running)} running run(s) ...")
    try:
        _stop(running)
    except _Interrupted:  # a second Ctrl-C: no more waiting
        for item in running:
            _signal_group(item.process, signal.SIGKILL)
            item.process.wait()
    for item in running:
        item.run.status = "interrupted"
        item.handle.close()


def _stop(running: list[_Running]) -> None:
    """SIGINT each run's process group (Lightning shuts down cleanly), SIGKILL what is left after 30 s."""
    for item in running:
        _signal_group(item.process, signal.SIGINT)
    deadline = time.monotonic() + _GRACE_SECONDS
    for item in running:
        try:
            item.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(item.process, signal.SIGKILL)
            item.process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
