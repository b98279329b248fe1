"""``tdl compare`` on the command line: the table, ``--json``, and bad run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tdl_lightning import cli
from tdl_lightning.compare import compare_runs, main
from tdl_lightning.errors import TDLError
from tests.sweep_runs import SIGMA, run_dirs, summary


def test_json_and_table_output(runs, capsys):
    main([str(runs), "--metric", "val/acc", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"] == ["val/acc"]
    assert list(data["config_differences"]) == [SIGMA]
    for entry in data["runs"]:
        assert entry["final"]["val/acc"] == summary(Path(entry["path"]))["metrics"]["val/acc"]
        assert entry["config"][SIGMA] in (0.5, 2.0)
    main([str(runs), "-m", "val/*"])
    table = capsys.readouterr().out
    assert "sigma_w" in table and "val/acc" in table and "val/loss" in table
    for path in run_dirs(runs):
        assert path.name in table
        assert f"{summary(path)['metrics']['val/acc']:.4g}" in table


def test_tdl_compare_dispatches_to_the_package(runs, capsys):
    main([str(runs), "--json"])
    direct = json.loads(capsys.readouterr().out)
    cli.main(["compare", str(runs), "--json"])
    assert json.loads(capsys.readouterr().out) == direct
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(runs), "--metric", "val/accuracy"])
    assert exit_info.value.code == 2
    assert "'val/accuracy' is in none of the runs" in capsys.readouterr().err


def test_bad_run_directories_are_named_and_the_others_still_compared(runs, tmp_path, capsys):
    good, second = run_dirs(runs)
    killed = runs / "killed"
    shutil.copytree(second, killed, symlinks=True)
    (killed / "summary.json").unlink()
    cut = runs / "cut"
    shutil.copytree(second, cut, symlinks=True)
    (cut / "summary.json").write_text('{"run_id": ')
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    missing = tmp_path / "no_such_run"

    comparison = compare_runs([good, killed, cut, empty, missing])
    assert [r.path for r in comparison.runs] == [good]
    reasons = {p.path: p.reason for p in comparison.problems}
    assert set(reasons) == {killed, cut, empty, missing}
    assert "half-written run, no summary.json" in reasons[killed]
    assert "not valid JSON" in reasons[cut]
    assert "not a run directory" in reasons[empty]
    assert "no such file or directory" in reasons[missing]

    main([str(runs)])  # the folder: the killed and cut runs are skipped, the others compared
    out, err = capsys.readouterr()
    assert f"skipped {killed}: half-written" in err and f"skipped {cut}:" in err
    assert good.name in out and second.name in out and "killed" not in out

    with pytest.raises(TDLError, match="no run to compare.*no_such_run"):
        main([str(missing)])
