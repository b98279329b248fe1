"""Where the plugins' figure makers are drawn: in the training process, or in a forked child beside it.

A probe's figure makers (:attr:`~plugins.base.ProbeResult.figures`) need from a few hundredths to several
tenths of a second of matplotlib each. On Linux the plugins hand them to :data:`DRAWING`, which can fork
one child process at a time to draw and save them while training goes on: the child is a copy of the
training process (the makers and their arrays are there already, nothing is pickled), draws each figure,
writes its PNG under a temporary name and renames it, and exits. The plugin logs each PNG to W&B under its
own probe's step once its child has exited (at a later training step, or when training ends).

A child is not free: besides the fork, every page that training writes while the child lives is
copied (copy-on-write), about :data:`CHILD_COST_SECONDS` of the training process's CPU per child. So
the first figure of each kind (a plugin's figure, e.g. ``init_statistics/q_c``) is drawn in the
training process at once, and timed: a kind that draws for less than a child costs is drawn there
from then on (most line plots: a few hundredths of a second each), the others go to children, which
inherit the filled font and text caches of matplotlib. (The process's first figure fills those caches
and is not timed: the next of its kind is drawn here again.) What is still waiting when training ends,
and every figure whose child failed or stalled, is drawn in the training process itself, so every
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

__all__ = ["CHILD_COST_SECONDS", "DRAWING", "BackgroundDrawing", "FigureJob", "drawing_in_background"]

CHILD_COST_SECONDS = 0.06
"""The training process's CPU seconds per drawing child (fork and copy-on-write): measured on the fit of
``experiments/edge_of_chaos.yaml`` with its six figures drawn in six children (1.03 CPU s) and in process
(0.89 CPU s, 0.21 s of it drawing). A kind of figure that draws for less stays in the training process."""
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
    ``drawn`` turns true once it is saved (by a child process, or here); a job that is not drawn when
    its plugin asks (:meth:`BackgroundDrawing.wait`) is drawn in the training process. ``kind`` names
    the figure across probes (default: ``name``), so that what one costs to draw decides where the
    next is drawn.

    Example:
        >>> from pathlib import Path
        >>> job = FigureJob("curve", lambda: None, "init", 0, Path("curve.png"), save=print)
        >>> job.drawn, job.kind
        (False, 'curve')
    """

    name: str
    maker: FigureMaker
    when: str
    step: int
    path: Path
    save: Callable[[Figure, Path], None] = field(repr=False)
    drawn: bool = False
    kind: str = ""

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name


@dataclass
class _Child:
    pid: int
    jobs: list[FigureJob]
    started: float  # time.monotonic()
    started_ns: int  # time.time_ns(), beside the files' modification times


class BackgroundDrawing:
    """The figure jobs of every plugin of this process: each drawn here or in a child, by its cost.

    :meth:`submit` draws here at once the jobs of a kind never drawn here, or cheaper to draw than
    ``child_cost`` CPU seconds (the last draw of the kind, timed), and queues the others, starting a
    child when none is drawing; :meth:`poll` (cheap: one ``waitpid`` while a child runs) notes a
    finished child and starts the next on what queued meanwhile; :meth:`wait` takes a plugin's jobs out
    of the queue and waits for the child that holds any of them, so that the caller draws in process
    whatever is left undrawn.

    Args:
        child_cost: what a child costs the training process, in CPU seconds (``0``: every job to a
            child, none drawn here first).

    Example:
        >>> drawing = BackgroundDrawing(child_cost=0.0)  # every job to a child
        >>> drawing.busy, drawing.poll(), drawing.costs
        (False, [], {})
    """

    def __init__(self, child_cost: float = CHILD_COST_SECONDS) -> None:
        self.enabled = drawing_in_background()
        self.child_cost = child_cost
        self.costs: dict[str, float] = {}
        """CPU seconds of the last draw here of each kind of figure (:attr:`FigureJob.kind`)."""
        self._caches_filled = False  # the first draw here also fills matplotlib's caches: not timed
        self._queue: list[FigureJob] = []
        self._child: _Child | None = None
        self._warned = False

    @property
    def busy(self) -> bool:
        """Whether a child is drawing or jobs are queued."""
        return self._child is not None or bool(self._queue)

    def submit(self, jobs: Iterable[FigureJob]) -> None:
        """Draw here the jobs whose kind is new or cheap (they are ``drawn`` on return); queue the
        others and start a child on the queue if none is drawing (no-op where disabled)."""
        if not self.enabled:
            return
        for job in jobs:
            cost = self.costs.get(job.kind)
            if self.child_cost > 0 and (cost is None or cost < self.child_cost):
                began = time.thread_time()
                _draw_and_save(job)
                if self._caches_filled:
                    self.costs[job.kind] = time.thread_time() - began
                self._caches_filled = True
            else:
                self._queue.append(job)
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
