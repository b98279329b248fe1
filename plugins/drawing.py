"""Figures drawn beside training: the plugins' figure makers drawn in a forked child process.

A probe's figure makers (:attr:`~plugins.base.ProbeResult.figures`) need a tenth of a second or
more of matplotlib each. On Linux the plugins hand them to :data:`DRAWING`, which forks one child
process at a time to draw and save them while training goes on: the child is a copy of the
training process (the makers and their arrays are there already, nothing is pickled), draws
each figure, writes its PNG under a temporary name and renames it, and exits. The plugin logs each
PNG to W&B under its own probe's step once its child has exited (at a later training step, or when
training ends). The process's first figure is drawn in the training process, so that every child
inherits matplotlib's filled font and text caches. What is still waiting when training ends, and
every figure whose child failed or stalled, is drawn in the training process itself, so every
figure is still there.

The child draws only: it ignores SIGINT (the training process stops it by its own rules), writes
to the terminal past any console capture, and leaves CUDA, W&B and the checkpoints alone, as a
``DataLoader`` worker does. Where ``os.fork`` is missing (Windows), off Linux, or with
``TDL_FIGURES_IN_PROCESS=1``, the figures are drawn in the training process when training ends.

Example:
    >>> import functools, tempfile
    >>> from pathlib import Path
    >>> from plugins.figures import fixed_layout_figure
    >>> def draw():
    ...     figure, (ax,) = fixed_layout_figure(4, 3)
    ...     ax.plot([0, 1], [1, 0])
    ...     return figure
    >>> path = Path(tempfile.mkdtemp()) / "curve.png"
    >>> job = FigureJob("curve", draw, "epoch", 3, path, save=lambda fig, to: fig.savefig(to, format="png"))
    >>> drawing = BackgroundDrawing()
    >>> drawing.submit([job])
    >>> drawing.wait([job])
    >>> job.drawn == drawing.enabled, path.is_file() == drawing.enabled
    (True, True)
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from plugins.figures import FigureMaker, draw_figure

__all__ = ["DRAWING", "BackgroundDrawing", "FigureJob", "drawing_in_background"]

SECONDS_PER_FIGURE = 10.0  # a child that takes longer than this per figure (plus a minute) is stalled
_STALL_GRACE_SECONDS = 60.0


def drawing_in_background() -> bool:
    """Whether figure makers are drawn in a forked child process here (Linux with ``os.fork``, unless
    ``TDL_FIGURES_IN_PROCESS=1``).

    Example:
        >>> isinstance(drawing_in_background(), bool)
        True
    """
    return sys.platform == "linux" and hasattr(os, "fork") and os.environ.get("TDL_FIGURES_IN_PROCESS") != "1"


@dataclass(eq=False)
class FigureJob:
    """One figure to draw and save as ``path``: its probe's figure maker, figure name, reason and step.

    ``save(figure, to)`` writes the drawn figure as PNG to ``to`` (the plugin's own ``savefig``).
    ``drawn`` turns true once it is saved (by a child process, or here for the process's first job);
    a job that is not drawn when its plugin asks (:meth:`BackgroundDrawing.wait`) is drawn in the
    training process.

    Example:
        >>> from pathlib import Path
        >>> FigureJob("curve", lambda: None, "init", 0, Path("curve.png"), save=print).drawn
        False
    """

    name: str
    maker: FigureMaker
    when: str
    step: int
    path: Path
    save: Callable[[Figure, Path], None] = field(repr=False)
    drawn: bool = False


@dataclass
class _Child:
    pid: int
    jobs: list[FigureJob]
    started: float  # time.monotonic()
    started_ns: int  # time.time_ns(), beside the files' modification times


class BackgroundDrawing:
    """The figure jobs of every plugin of this process, drawn one child process at a time.

    :meth:`submit` queues jobs and starts a child when none is drawing; :meth:`poll` (cheap: one
    ``waitpid`` while a child runs) notes a finished child and starts the next on what queued
    meanwhile; :meth:`wait` takes a plugin's jobs out of the queue and waits for the child that holds
    any of them, so that the caller draws in process whatever is left undrawn.

    Example:
        >>> drawing = BackgroundDrawing(warm=True)  # every job to a child (else the first is drawn here)
        >>> drawing.busy, drawing.poll()
        (False, [])
    """

    def __init__(self, warm: bool = False) -> None:
        self.enabled = drawing_in_background()
        self.warm = warm
        """Whether this process has drawn a figure (matplotlib's caches are filled): until then the
        first job submitted is drawn here."""
        self._queue: list[FigureJob] = []
        self._child: _Child | None = None
        self._warned = False

    @property
    def busy(self) -> bool:
        """Whether a child is drawing or jobs are queued."""
        return self._child is not None or bool(self._queue)

    def submit(self, jobs: Iterable[FigureJob]) -> None:
        """Queue ``jobs``; start a child on the queue if none is drawing (no-op where disabled).

        The first job this process is given is drawn here at once (and marked ``drawn``): matplotlib
        fills its font and text caches on the first figure, and every child inherits them instead of
        filling them again (a figure costs a child twice the CPU time without them)."""
        if not self.enabled:
            return
        jobs = list(jobs)
        if jobs and not self.warm:
            self.warm = True
            _draw_and_save(jobs[0])
            jobs = jobs[1:]
        self._queue.extend(jobs)
        self.poll()

    def poll(self) -> list[FigureJob]:
        """The jobs of a child that has exited since the last call (its saved figures marked ``drawn``);
        a new child starts on the queued jobs when none is drawing."""
        finished: list[FigureJob] = []
        child = self._child
        if child is not None:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid != 0:
                finished = self._finish(child, status)
        if self._child is None and self._queue:
            self._start(self._queue)
            self._queue = []
        return finished

    def withdraw(self, jobs: Iterable[FigureJob]) -> list[FigureJob]:
        """Take ``jobs`` out of the queue: those of them that no child holds, now the caller's to draw.

        Example:
            >>> BackgroundDrawing().withdraw([])
            []
        """
        mine = list(jobs)
        self._queue = [job for job in self._queue if job not in mine]
        held = self._child.jobs if self._child is not None else []
        return [job for job in mine if job not in held and not job.drawn]

    def wait(self, jobs: Iterable[FigureJob]) -> None:
        """Take ``jobs`` out of the queue and wait for the child drawing any of them (a stalled child
        is killed); afterwards a job is ``drawn`` or is the caller's to draw."""
        mine = list(jobs)
        self.withdraw(mine)
        child = self._child
        if child is not None and any(job in child.jobs for job in mine):
            budget = _STALL_GRACE_SECONDS + SECONDS_PER_FIGURE * len(child.jobs)
            if not _exited(child.pid, budget - (time.monotonic() - child.started)):
                self._warn(f"a figure-drawing process drew {len(child.jobs)} figures for over {budget:.0f} s")
                os.kill(child.pid, signal.SIGKILL)
            self._finish(child, os.waitpid(child.pid, 0)[1])
        self.poll()

    def _start(self, jobs: list[FigureJob]) -> None:
        try:
            with warnings.catch_warnings():
                # Python 3.12 warns of fork in a threaded process: the child only draws
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as err:  # no memory or processes left: the jobs are drawn in process
            self._warn(f"no figure-drawing process could start ({err})")
            return
        if pid == 0:
            _draw_in_child(jobs)  # never returns
        self._child = _Child(pid, jobs, time.monotonic(), time.time_ns())

    def _finish(self, child: _Child, status: int) -> list[FigureJob]:
        self._child = None
        for job in child.jobs:  # a child that failed saved the figures before its failure (and no other)
            job.drawn = os.waitstatus_to_exitcode(status) == 0 or _written_since(job.path, child.started_ns)
        return child.jobs

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{what}: the figures left are drawn in the training process", stacklevel=3)


def _written_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (a child) exits within ``timeout`` seconds (not reaped)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd: wait without a limit
        return True
    try:
        return bool(select.select([pidfd], [], [], max(timeout, 0.0))[0])
    finally:
        os.close(pidfd)


def _draw_in_child(jobs: list[FigureJob]) -> None:
    """Draw and save ``jobs`` in this forked child, then exit: 0 if every figure was saved."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the training process decides
        for signum in (signal.SIGTERM, getattr(signal, "SIGUSR1", signal.SIGTERM)):
            signal.signal(signum, signal.SIG_DFL)  # not the training process's handlers
        # past W&B's console capture, which belongs to the parent; open till os._exit
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        import torch

        torch.set_num_threads(1)  # as a DataLoader worker: the parent's OpenMP pool is not forked
        for job in jobs:
            _draw_and_save(job)
        code = 0
    finally:
        os._exit(code)  # nothing of the parent's (atexit, W&B, pytest) runs here


def _draw_and_save(job: FigureJob) -> None:
    """Draw ``job``'s figure and save it as its PNG, whole or not at all; it is ``drawn`` then."""
    figure = draw_figure(job.maker)
    part = job.path.with_name(f".{job.path.name}.part")
    job.save(figure, part)
    os.replace(part, job.path)
    figure.clear()
    job.drawn = True


#: The drawing of this process's plugins (one child at a time, shared by every plugin).
DRAWING = BackgroundDrawing()
