"""The state of a running sweep and its ETA, as plain values (no terminal needed).

The ETA takes every point still to run to last the mean time of the points done so far (a
running point: that mean less its time so far) and deals them to the ``parallel`` slots as the
sweep does, so it is exact when all points take the same time. Failed points do not count: a
run that breaks at start-up says nothing about how long a run takes.

Example:
    >>> progress = SweepProgress(to_run=4, parallel=2)
    >>> progress.start(1, "[1/4] lr=0.1", now=0.0); progress.start(2, "[2/4] lr=0.01", now=0.0)
    >>> progress.finish(1, seconds=60.0, ok=True)
    >>> progress.summary(now=60.0)
    '1 done, 0 failed, 1 running, 2 queued; ETA 1 min 00 s'
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["SweepProgress", "format_duration", "remaining_seconds"]


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: ``45 s``, ``3 min 05 s``, ``2 h 03 min``.

    Example:
        >>> format_duration(4.4), format_duration(185), format_duration(7390)
        ('4 s', '3 min 05 s', '2 h 03 min')
    """
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def remaining_seconds(
    durations: Sequence[float], running_elapsed: Sequence[float], queued: int, parallel: int
) -> float | None:
    """Seconds until the last point ends, from the times of the points done so far.

    Every point takes ``mean(durations)``: a running one that mean less its time so far (at
    least 0), and each queued one starts in the slot that frees first.

    Args:
        durations: seconds each finished (done) point took.
        running_elapsed: seconds each running point has run so far.
        queued: points not started yet.
        parallel: points run at once.

    Returns:
        the seconds left, ``0.0`` when nothing is left, ``None`` while no point has finished.

    Example:
        >>> remaining_seconds([10.0, 20.0], running_elapsed=[], queued=3, parallel=2)  # 15 s each
        30.0
        >>> remaining_seconds([10.0], running_elapsed=[4.0], queued=1, parallel=2)
        10.0
        >>> remaining_seconds([], running_elapsed=[4.0], queued=1, parallel=2) is None
        True
    """
    if not running_elapsed and queued <= 0:
        return 0.0
    if not durations:
        return None
    mean = statistics.fmean(durations)
    free_at = [max(mean - elapsed, 0.0) for elapsed in running_elapsed]
    free_at += [0.0] * max(parallel - len(free_at), 0)
    heapq.heapify(free_at)
    for _ in range(max(queued, 0)):
        heapq.heappush(free_at, heapq.heappop(free_at) + mean)
    return max(free_at)


@dataclass
class SweepProgress:
    """The state of a running sweep: counts, the running points, and the times of finished ones.

    Attributes:
        to_run: points this call runs (finished ones before it not included).
        parallel: points run at once.
        skipped: points that finished before (skipped on this resume).
        done: points that ended well.
        failed: points whose run failed.
        durations: seconds each done point took.
        running: ``index -> (label, start time)`` of every running point.

    Example:
        >>> progress = SweepProgress(to_run=3)
        >>> progress.start(1, "[1/3] depth=4", now=100.0)
        >>> progress.queued, progress.eta(now=110.0) is None
        (2, True)
        >>> progress.finish(1, seconds=12.0, ok=True)
        >>> progress.eta(now=112.0)
        24.0
    """

    to_run: int
    parallel: int = 1
    skipped: int = 0
    done: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)
    running: dict[int, tuple[str, float]] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        """Points not started yet.

        Example:
            >>> SweepProgress(to_run=5, done=2).queued
            3
        """
        return max(self.to_run - self.done - self.failed - len(self.running), 0)

    def start(self, index: int, label: str, now: float | None = None) -> None:
        """Point ``index`` started (``now``: a ``time.monotonic()`` reading, default the present).

        Example:
            >>> progress = SweepProgress(to_run=1)
            >>> progress.start(1, "[1/1] lr=0.1", now=5.0)
            >>> progress.running
            {1: ('[1/1] lr=0.1', 5.0)}
        """
        self.running[index] = (label, time.monotonic() if now is None else now)

    def finish(self, index: int, seconds: float, ok: bool) -> None:
        """Point ``index`` ended after ``seconds``: done when ``ok``, else failed.

        Example:
            >>> progress = SweepProgress(to_run=2)
            >>> progress.start(1, "a", now=0.0); progress.finish(1, seconds=3.0, ok=False)
            >>> progress.failed, progress.durations
            (1, [])
        """
        self.running.pop(index, None)
        if ok:
            self.done += 1
            self.durations.append(seconds)
        else:
            self.failed += 1

    def stop(self, index: int) -> None:
        """Point ``index`` was stopped before its end (Ctrl-C): it counts as not started again.

        Example:
            >>> progress = SweepProgress(to_run=1)
            >>> progress.start(1, "a", now=0.0); progress.stop(1)
            >>> progress.queued
            1
        """
        self.running.pop(index, None)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the sweep ends (:func:`remaining_seconds`); ``None`` before a point is done.

        Example:
            >>> SweepProgress(to_run=4, parallel=2, done=2, durations=[30.0, 30.0]).eta()
            30.0
        """
        now = time.monotonic() if now is None else now
        elapsed = [now - started for _, started in self.running.values()]
        return remaining_seconds(self.durations, elapsed, self.queued, self.parallel)

    def summary(self, now: float | None = None) -> str:
        """``2 done, 1 failed, 2 running, 4 queued; ETA 1 min 05 s`` (no ETA before a point is done,
        nor once nothing is left).

        Example:
            >>> SweepProgress(to_run=2, done=1, failed=1, skipped=3).summary()
            '1 done (+3 before), 1 failed, 0 running, 0 queued'
        """
        before = f" (+{self.skipped} before)" if self.skipped else ""
        running = len(self.running)
        text = f"{self.done} done{before}, {self.failed} failed, {running} running, {self.queued} queued"
        eta = self.eta(now)
        if eta is not None and (self.running or self.queued):
            text += f"; ETA {format_duration(eta)}"
        return text
