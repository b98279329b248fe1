"""What ``tdl sweep`` shows: the ETA from finished points' times, plain lines, the live view."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from tdl_lightning import sweep as sweep_module
from tdl_lightning.sweep import (
    LiveDisplay,
    PlainDisplay,
    SweepProgress,
    choose_display,
    format_duration,
    remaining_seconds,
    run_sweep,
)
from tests.sweep.helpers import FAKE_FIT, write_sweep


def test_eta_from_the_finished_points_times():
    # mean 20 s; the running points are 5 s and 25 s in: free after 15 s and at once
    assert remaining_seconds([10.0, 20.0, 30.0], [5.0, 25.0], queued=3, parallel=2) == 40.0
    assert remaining_seconds([12.0], [], queued=4, parallel=1) == 48.0
    assert remaining_seconds([12.0], [], queued=3, parallel=8) == 12.0  # more slots than points
    assert remaining_seconds([], [3.0], queued=2, parallel=2) is None  # nothing finished yet
    assert remaining_seconds([], [], queued=0, parallel=2) == 0.0


def test_eta_is_exact_when_every_point_takes_the_same_time():
    """5 points of 10 s, 2 at once, on a made-up clock: they end at 10, 10, 20, 20 and 30 s."""
    progress = SweepProgress(to_run=5, parallel=2)
    progress.start(1, "[1/5]", now=0.0)
    progress.start(2, "[2/5]", now=0.0)
    assert progress.eta(now=5.0) is None
    progress.finish(1, seconds=10.0, ok=True)
    assert progress.eta(now=10.0) == 20.0  # point 2 ends now, then 3+4, then 5
    progress.finish(2, seconds=10.0, ok=True)
    progress.start(3, "[3/5]", now=10.0)
    progress.start(4, "[4/5]", now=10.0)
    assert progress.queued == 1
    assert progress.eta(now=14.0) == 16.0
    assert progress.summary(now=14.0) == "2 done, 0 failed, 2 running, 1 queued; ETA 16 s"


def test_failed_points_count_but_do_not_set_the_eta():
    progress = SweepProgress(to_run=3, skipped=2)
    progress.start(1, "[1/5]", now=0.0)
    progress.finish(1, seconds=0.5, ok=False)
    assert (progress.done, progress.failed, progress.queued, progress.eta(now=1.0)) == (0, 1, 2, None)
    assert progress.summary(now=1.0) == "0 done (+2 before), 1 failed, 0 running, 2 queued"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.6, "1 min 00 s"), (61, "1 min 01 s"), (3600, "1 h 00 min")]
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert format_duration(seconds) == text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_view_only_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(choose_display(stream=io.StringIO()), PlainDisplay)  # a pipe, a file, CI
    assert isinstance(choose_display(stream=_Terminal()), LiveDisplay)
    assert isinstance(choose_display(echo=print, stream=_Terminal()), PlainDisplay)  # echo: lines
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(choose_display(stream=_Terminal()), PlainDisplay)


def test_plain_lines_carry_the_counts_on_finished_points_only():
    lines: list[str] = []
    display = PlainDisplay(lines.append)
    progress = SweepProgress(to_run=2, done=1, failed=1)
    display.event("[1/2] start lr=0.1")
    display.event("[2/2] FAILED (exit 1) lr=1; log x.log\n    Traceback\n    ValueError", progress)
    assert lines == [
        "[1/2] start lr=0.1",
        "[2/2] FAILED (exit 1) lr=1; log x.log [1 done, 1 failed, 0 running, 0 queued]\n"
        "    Traceback\n    ValueError",
    ]


def test_the_command_prints_plain_lines_when_stdout_is_no_terminal(in_tmp, capsys):
    (in_tmp / "fake_fit.py").write_text(FAKE_FIT)
    path = write_sweep(in_tmp, [sys.executable, "fake_fit.py", "${args}"], [0.5, 1.0, 2.0])
    sweep_module.main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep tiny_sweep (grid): 3 runs, 0 finished before, 3 to run; runs in runs/tiny_sweep"
    assert [line.split()[:2] for line in lines[1:7]] == [
        ["[1/3]", "start"],
        ["[1/3]", "done"],
        ["[2/3]", "start"],
        ["[2/3]", "done"],
        ["[3/3]", "start"],
        ["[3/3]", "done"],
    ]
    assert "[1 done, 0 failed, 0 running, 2 queued; ETA " in lines[2]  # one at a time: mean x 2
    assert lines[6].endswith("[3 done, 0 failed, 0 running, 0 queued]")
    assert lines[7] == "compare them: tdl compare runs/tiny_sweep --output tiny_sweep.png"


def test_a_sweep_on_a_terminal_draws_the_live_view(in_tmp, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU slots
    (in_tmp / "fake_fit.py").write_text(FAKE_FIT)
    path = write_sweep(in_tmp, [sys.executable, "fake_fit.py", "${args}"], [0.5, -1.0, 2.0])
    screen = io.StringIO()
    display = LiveDisplay(Console(file=screen, force_terminal=True, width=160), refresh_per_second=20)
    report = run_sweep(path, parallel=2, display=display)
    assert [r.status for r in report.runs] == ["done", "failed", "done"]
    out = screen.getvalue()
    assert "\x1b[" in out, "a terminal gets the live view"
    for text in (
        "[1/3] start sigma_w=0.5 on slot 1",
        "[2/3] FAILED (exit 3) sigma_w=-1.0",
        "[3/3] done  sigma_w=2.0",
    ):
        assert text in out
    assert "sweep: 2 done, 1 failed, 0 running, 0 queued in " in out
    assert "[2 done, 1 failed" not in out, "the counts are in the live view, not on the event lines"
