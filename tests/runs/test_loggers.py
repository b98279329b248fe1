"""``tdl_lightning.runs.loggers``: the resumed run's ``metrics.csv``."""

from __future__ import annotations

from tdl_lightning.runs.loggers import keep_metrics_before, resume_step


def test_metrics_after_the_checkpoint_are_cut_for_the_resumed_run(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/acc\n0,0,\n0,1,\n0,1,0.5\n1,2,\n1,3,\n")
    assert keep_metrics_before(path, resume_step({"global_step": 2})) == 2
    assert path.read_text().splitlines() == ["epoch,step,val/acc", "0,0,", "0,1,", "0,1,0.5"]
