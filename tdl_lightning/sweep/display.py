"""What ``tdl sweep`` shows while it runs: a live status on a terminal, plain lines elsewhere.

On a terminal (stdout is a tty) the event lines (start, done, FAILED) scroll above a live area,
drawn with ``rich``, that shows a bar of the points finished, the counts done / failed / running
/ queued, the ETA of :class:`~tdl_lightning.sweep.progress.SweepProgress`, and every running
point with its time so far. Elsewhere (CI, a log file, a SLURM job, a notebook, tests) each
event is one plain line, and the line of each finished point ends with the same counts and ETA.

Example:
    >>> display = choose_display(echo=print)  # or stdout is no terminal
    >>> display.event("[1/2] done  lr=0.1 in 30.0 s", SweepProgress(to_run=2, done=1, durations=[30.0]))
    [1/2] done  lr=0.1 in 30.0 s [1 done, 0 failed, 0 running, 1 queued; ETA 30 s]
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TextIO

from tdl_lightning.sweep.progress import SweepProgress, format_duration

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["LiveDisplay", "PlainDisplay", "SweepDisplay", "choose_display"]

_MAX_RUNNING_SHOWN = 16


class SweepDisplay(Protocol):
    """Where a sweep's progress goes: :class:`PlainDisplay`, :class:`LiveDisplay` or a user's own.

    Example:
        >>> display: SweepDisplay = PlainDisplay(echo=print)
        >>> display.event("[1/2] start lr=0.1")
        [1/2] start lr=0.1
    """

    def event(self, line: str, progress: SweepProgress | None = None) -> None:
        """Show one event (it may span lines); ``progress``: the state just after it."""

    def live(self, progress: SweepProgress) -> contextlib.AbstractContextManager[None]:
        """A context for the time the runs run: a live view of ``progress``, or nothing."""


def _print_line(line: str) -> None:
    print(line, flush=True)  # progress lines show up at once, also in a log file


class PlainDisplay:
    """One plain line per event (stdout is no terminal: CI, a log file, tests); a finished
    point's line ends with ``[counts; ETA]``.

    Args:
        echo: where lines go (default: printed to stdout, flushed at once).

    Example:
        >>> display = PlainDisplay(echo=print)
        >>> display.event("[1/3] done  lr=0.1 in 61.0 s", SweepProgress(3, done=1, durations=[61.0]))
        [1/3] done  lr=0.1 in 61.0 s [1 done, 0 failed, 0 running, 2 queued; ETA 2 min 02 s]
    """

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.echo = echo or _print_line

    def event(self, line: str, progress: SweepProgress | None = None) -> None:
        """Print ``line``; with ``progress``, its first line ends with the counts and the ETA.

        Example:
            >>> failed = SweepProgress(to_run=2, failed=1)
            >>> PlainDisplay(print).event("[2/2] FAILED (exit 1) lr=1\\n    Traceback", failed)
            [2/2] FAILED (exit 1) lr=1 [0 done, 1 failed, 0 running, 1 queued]
                Traceback
        """
        if progress is not None:
            first, newline, rest = line.partition("\n")
            line = f"{first} [{progress.summary()}]{newline}{rest}"
        self.echo(line)

    def live(self, progress: SweepProgress) -> contextlib.AbstractContextManager[None]:
        """Nothing live: every event is already a line.

        Example:
            >>> with PlainDisplay().live(SweepProgress(1)):
            ...     pass
        """
        return contextlib.nullcontext()


class LiveDisplay:
    """Event lines above a live status drawn with ``rich``: a bar, the counts, the ETA and the
    running points (for stdout on a terminal).

    Args:
        console: the ``rich`` console to draw on (default: a new one on stdout).
        refresh_per_second: how often the live area is redrawn (the ETA counts down between events).

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> display = LiveDisplay(Console(file=io.StringIO(), force_terminal=True, width=80))
        >>> progress = SweepProgress(to_run=2, parallel=2)
        >>> with display.live(progress):
        ...     progress.start(1, "[1/2] lr=0.1")
        ...     display.event("[1/2] start lr=0.1")
        >>> "[1/2] start lr=0.1" in display.console.file.getvalue()
        True
    """

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4.0) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.refresh_per_second = refresh_per_second

    def event(self, line: str, progress: SweepProgress | None = None) -> None:
        """Print ``line`` above the live area (the counts are in the live area, not repeated here).

        Example:
            >>> import io
            >>> from rich.console import Console
            >>> display = LiveDisplay(Console(file=io.StringIO(), width=80))
            >>> display.event("[1/2] start [lr]=0.1"); display.console.file.getvalue()
            '[1/2] start [lr]=0.1\\n'
        """
        from rich.text import Text

        self.console.print(Text(line), soft_wrap=True)

    @contextlib.contextmanager
    def live(self, progress: SweepProgress) -> Iterator[None]:
        """Draw :meth:`render` of ``progress`` under the event lines until the block ends, then
        print the final counts and the time it took.

        Example:
            >>> import io
            >>> from rich.console import Console
            >>> display = LiveDisplay(Console(file=io.StringIO(), force_terminal=True, width=80))
            >>> with display.live(SweepProgress(to_run=0)):
            ...     pass
            >>> "0 done, 0 failed" in display.console.file.getvalue()
            True
        """
        from rich.live import Live
        from rich.text import Text

        began = time.monotonic()
        with Live(
            get_renderable=lambda: self.render(progress),
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            transient=True,
        ):
            yield
        took = format_duration(time.monotonic() - began)
        self.console.print(Text(f"sweep: {progress.summary()} in {took}"), soft_wrap=True)

    def render(self, progress: SweepProgress, now: float | None = None) -> RenderableType:
        """The live area: ``━━━━╸━━━ 3/9  3 done, 0 failed, 2 running, 4 queued; ETA 1 min 05 s``,
        then one line per running point with its time so far.

        Example:
            >>> import io
            >>> from rich.console import Console
            >>> display = LiveDisplay(Console(file=io.StringIO(), width=100, record=True))
            >>> progress = SweepProgress(to_run=3, done=1, durations=[30.0], running={2: ("[2/3] lr=1", 0.0)})
            >>> display.console.print(display.render(progress, now=10.0))
            >>> text = display.console.export_text()
            >>> "1/3" in text and "ETA 50 s" in text and "[2/3] lr=1  10 s" in text
            True
        """
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic() if now is None else now
        finished = progress.done + progress.failed
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(progress.to_run, 1), completed=finished, width=30),
            Text(f"{finished}/{progress.to_run}", style="bold"),
            Text(progress.summary(now)),
        )
        running = sorted(progress.running.items())
        lines = [
            Text(f"  {label}  {format_duration(now - began)}", style="dim") for _, (label, began) in running
        ]
        if len(lines) > _MAX_RUNNING_SHOWN:
            lines = lines[:_MAX_RUNNING_SHOWN] + [Text(f"  ... and {len(lines) - _MAX_RUNNING_SHOWN} more")]
        return Group(head, *lines)


def choose_display(echo: Callable[[str], None] | None = None, stream: TextIO | None = None) -> SweepDisplay:
    """:class:`PlainDisplay` with ``echo`` when it is given or when ``stream`` (default stdout) is no
    terminal (or ``TERM=dumb``); else :class:`LiveDisplay` on ``stream``.

    Example:
        >>> import io
        >>> type(choose_display(stream=io.StringIO())).__name__
        'PlainDisplay'
    """
    stream = sys.stdout if stream is None else stream
    if echo is not None or not _is_terminal(stream):
        return PlainDisplay(echo)
    from rich.console import Console

    return LiveDisplay(Console(file=stream))


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
