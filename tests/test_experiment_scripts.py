"""Every script in ``experiments/`` answers ``--help`` with its usage and runs nothing."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_help_prints_the_usage_and_runs_nothing(script, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # a script that ran would write its outputs here
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script.name}")
    assert not list(tmp_path.iterdir())
