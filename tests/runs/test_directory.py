"""``tdl_lightning.runs.directory``: run ids, the lock, claiming and discarding a run, strict JSON files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import (
    Run,
    RunSettings,
    write_json,
)


def test_a_reused_run_id_is_refused_and_leaves_the_run_alone(tmp_path):
    settings = RunSettings(id="r1", root=str(tmp_path))
    first = Run.create(settings, "demo")
    first.claim()
    (first.dir / "metrics.csv").write_text("step\n0\n")
    first.release()
    before = {p: p.read_bytes() for p in first.dir.iterdir()}
    with pytest.raises(ConfigError, match=r"already exists .* `tdl fit --resume"):
        Run.create(settings, "demo").claim()
    assert {p: p.read_bytes() for p in first.dir.iterdir()} == before
    again = Run.create(settings, "demo")
    again.claim(resume=True)
    assert again.resumed
    again.release()


def test_a_live_lock_refuses_a_second_fit_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = Run.create(RunSettings(id="busy", root=str(tmp_path)), "demo")
    run.dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run.dir / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(ConfigError, match=f"being written by process {sleeper.pid}"):
            run.claim(resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    run.claim(resume=True)  # the holder is gone (as after kill -9): its lock does not block
    assert (run.dir / ".lock").read_text() == str(os.getpid())
    run.release()
    assert not (run.dir / ".lock").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_is_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="pick a writable folder with --run.root"):
            Run.create(RunSettings(root=str(tmp_path / "runs")), "demo").claim()
    finally:
        tmp_path.chmod(0o700)


def test_a_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ConfigError, match="pick a writable folder with --run.root"):
        Run.create(RunSettings(root=str(tmp_path / "runs")), "demo").claim()


def test_bad_run_ids_are_refused():
    with pytest.raises(ConfigError, match="not a valid run id"):
        Run.create(RunSettings(id="../elsewhere"), "demo")


def test_discard_removes_only_what_this_process_made(tmp_path):
    (tmp_path / "runs" / "other" / "old").mkdir(parents=True)
    run = Run.create(RunSettings(id="new", root=str(tmp_path / "runs")), "demo")
    run.claim()
    run.discard()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]


def test_summaries_are_strict_json(tmp_path):
    path = write_json(tmp_path / "summary.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None,
        "b": [None, 1.5],
    }


def test_plugin_history_json_is_strict(tmp_path):
    from plugins.base import DiagnosticCallback, ProbeResult

    class Probe(DiagnosticCallback):
        name = "probe"

        def probe(self, pl_module, batch):
            return ProbeResult()

    plugin = Probe()
    plugin.out_dir = tmp_path
    plugin.history = [{"step": 0, "theory_variance": float("nan"), "chi_1": float("inf")}]
    plugin._write_files(ProbeResult(), step=0)
    text = (tmp_path / "history.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == [
        {"step": 0, "theory_variance": None, "chi_1": None}
    ]
