"""``tdl_lightning.runs.report``: the end-of-run report."""

from __future__ import annotations


def test_the_report_lists_the_folders_that_hold_figures(tmp_path):
    from tdl_lightning.runs.directory import figure_folders
    from tdl_lightning.runs.report import report_lines

    for name, files in {"pinn": ["solution_step0000008.png", "step0000008.npz"], "gradient_noise": [
        "history.json"], "samples": ["grid_step0000002.png"]}.items():  # fmt: skip
        (tmp_path / "plugins" / name).mkdir(parents=True)
        for file in files:
            (tmp_path / "plugins" / name / file).write_bytes(b"")
    figures = figure_folders(tmp_path)
    assert figures == ["plugins/pinn/", "plugins/samples/"]  # gradient_noise drew nothing
    summary = {"subcommand": "fit", "experiment": "x", "run_id": "r", "run_dir": str(tmp_path),
               "status": "finished", "metrics": {"val/acc": 0.5}, "figures": figures}  # fmt: skip
    lines = report_lines(summary).splitlines()
    assert lines[2] == "  figures       : plugins/pinn/, plugins/samples/ (in the run directory)"
    assert all("figures" not in line for line in report_lines({**summary, "figures": []}).splitlines())
    assert figure_folders(tmp_path / "nothing") == []
