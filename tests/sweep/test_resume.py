"""``tdl_lightning.sweep.resume``: which finished runs stand for which points."""

from __future__ import annotations

from tdl_lightning.sweep import (
    config_matches,
)
from tests.sweep.helpers import (
    SIGMA_KEY,
)


def test_config_matching_reads_lightning_cli_configs():
    config = {
        "model": {
            "class_path": "tdl_lightning.tasks.Classifier",
            "init_args": {"model": {"init_args": {"sigma_w": 1.5}}},
        },
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 1e-05}},
        "trainer": {"enable_progress_bar": False},
    }
    assert config_matches(config, {SIGMA_KEY: 1.5, "optimizer": "SGD", "optimizer.lr": "1e-05"})
    assert config_matches(config, {"trainer.enable_progress_bar": "False"})
    assert not config_matches(config, {SIGMA_KEY: 1.0})
    assert not config_matches(config, {"optimizer": "Adam"})
    assert not config_matches(config, {"model.init_args.model.init_args.depth": 4})  # absent
