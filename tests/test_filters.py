"""FilterVisualisation: the callback, the pure functions leaving the model untouched, the experiments.

The pure functions have their own tests: tests/test_filter_grids.py, test_activation_maximisation.py,
test_saliency.py and test_filter_pictures.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn

from plugins.filters import (
    FilterVisualisation,
    activation_maps,
    activation_maximisation,
    filter_grid,
    saliency,
)
from tdl_lightning.data import MNIST5k
from tdl_lightning.models import DeepMLP, LeNet5
from tdl_lightning.tasks import Classifier
from tests.harness import assert_same_weights, fit_and_collect, quiet_trainer_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- untouched model


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state()[1].copy(),
    }


def _assert_same_snapshot(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), f"{key} changed"
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb)), "a .grad changed"
    assert a["requires_grad"] == b["requires_grad"]
    assert a["modes"] == b["modes"], "train/eval mode changed"
    assert torch.equal(a["torch_rng"], b["torch_rng"]), "torch RNG consumed"
    assert a["py_rng"] == b["py_rng"] and np.array_equal(a["np_rng"], b["np_rng"])


def _bn_cnn() -> nn.Module:
    """A CNN with BatchNorm and dropout, in train mode, with gradients already present."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 10 * 10, 5),
    ).train()
    net[1].eval()  # mixed modes must come back as they were
    net(torch.randn(8, 1, 12, 12)).sum().backward()
    net[4].requires_grad_(False)
    return net


@pytest.mark.parametrize(
    "call",
    [
        lambda net, x: filter_grid(net[0]),
        lambda net, x: activation_maps(net, x, "1"),
        lambda net, x: activation_maximisation(net, "0", [0, 2], 5, input_shape=(1, 12, 12)),
        lambda net, x: saliency(net, x),
    ],
    ids=["filter_grid", "activation_maps", "activation_maximisation", "saliency"],
)
def test_pure_functions_leave_the_model_untouched(call):
    net = _bn_cnn()
    x = torch.randn(3, 1, 12, 12)
    before = _snapshot(net)
    call(net, x)
    _assert_same_snapshot(before, _snapshot(net))


def test_maximise_at_names_probes():
    assert FilterVisualisation().maximise_at == ["init", "end"]
    with pytest.raises(MisconfigurationException, match="maximise_at"):
        FilterVisualisation(maximise_at=["sometimes"])


# --------------------------------------------------------------------------- callback


def test_setup_errors_name_the_missing_piece():
    with pytest.raises(MisconfigurationException, match="probes Conv2d layers"):
        FilterVisualisation().check_module(Classifier(DeepMLP(input_dim=784, width=8, depth=1)))
    with pytest.raises(
        MisconfigurationException, match=r"'model.act1' is a Tanh.*\['model.conv1', 'model.conv2'\]"
    ):
        FilterVisualisation(layers=["act1"]).check_module(Classifier(LeNet5()))
    with pytest.raises(MisconfigurationException, match="no layer is named 'conv7'"):
        FilterVisualisation(layers=["conv7"]).check_module(Classifier(LeNet5()))


def _lenet_task() -> Classifier:
    return Classifier(LeNet5())


def _mnist() -> MNIST5k:
    return MNIST5k(batch_size=32)


def test_callback_leaves_training_untouched(tmp_path):
    cb = FilterVisualisation(
        layers=["conv1", "conv2"],
        every_n_steps=2,
        maximise=True,
        maximise_channels=2,
        maximise_steps=3,
        maximise_at=["end"],
        saliency=True,
    )
    with_plugin = fit_and_collect(_lenet_task, _mnist, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_lenet_task, _mnist, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 2, 4]
    assert [s for s, _ in cb.strip] == [0, 2, 4]
    # activation maximisation at the end only (the last step's probe stands for the end probe)
    gains = [h for h in cb.history if "filters/model.conv2/act_max_gain" in h]
    assert [h["step"] for h in gains] == [4]


@pytest.mark.slow  # about 20 s of wall time on the shared cores: starting W&B's service dominates
def test_callback_logs_images_to_offline_wandb_and_png(tmp_path):
    cb = FilterVisualisation(
        every_n_steps=2,
        every_n_epochs=None,
        at_end=True,
        maximise=True,
        maximise_channels=4,
        maximise_steps=4,
        maximise_at=["init", "end"],
    )
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="tdl-test")
    loggers = [CSVLogger(str(tmp_path / "csv"), name="", version=""), wandb_logger]  # not W&B's folder
    trainer = L.Trainer(
        **quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, enable_checkpointing=None, logger=loggers),
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    trainer.fit(_lenet_task(), _mnist())
    run_dir = Path(wandb_logger.experiment.dir).parent
    import wandb

    wandb.finish()
    assert [(h["when"], h["step"]) for h in cb.history] == [("init", 0), ("step", 2), ("end", 3)]

    out = tmp_path / "csv" / "plugins" / "filters"
    for figure in ("filter_grid", "activation_maps", "filter_strip"):
        for step in (0, 2, 3):
            assert (out / f"{figure}_model.conv1_step{step:07d}.png").stat().st_size > 500, (figure, step)
    maximised = sorted(p.name for p in out.glob("activation_maximisation_*.png"))
    assert maximised == [f"activation_maximisation_model.conv1_step{s:07d}.png" for s in (0, 3)]  # init, end
    arrays = np.load(out / "step0000003.npz")
    assert arrays["filter_grid_model.conv1"].shape == (1, 13, 19)
    assert arrays["act_max_images_model.conv1"].shape == (4, 1, 28, 28)

    media = sorted((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 11, media  # 3 figures x 3 probes + activation maximisation at init and end
    records = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    history = [json.loads(line) for line in records.splitlines() if '"history"' in line]
    logged = json.dumps(history)
    for key in (
        "filter_grid_model.conv1",
        "activation_maps_model.conv1",
        "activation_maximisation_model.conv1",
    ):
        assert f"filters/{key}" in logged, key
    assert "image-file" in logged and "init, step 0" in logged and "end, step 3" in logged

    fresh = FilterVisualisation()
    fresh.load_state_dict(cb.state_dict())
    assert [s for s, _ in fresh.strip] == [0, 2, 3] and fresh.history == cb.history


# --------------------------------------------------------------------------- experiments

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("config", ["cnn_filters.yaml", "cnn_filters_cifar10.yaml"])
def test_experiment_configs_resolve_the_callback(config, capsys):
    from tdl_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / config), "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    (callback,) = resolved["trainer"]["callbacks"]
    assert callback["class_path"] in ("plugins.FilterVisualisation", "plugins.filters.FilterVisualisation")
    assert callback["init_args"]["layers"] == ["model.conv1", "model.conv2"]
    if config == "cnn_filters.yaml":  # the cheap schedule that keeps it under 10% of training
        assert callback["init_args"]["maximise_at"] == ["end"]
        assert callback["init_args"]["maximise_steps"] == 64


def test_cifar10_experiment_without_the_data_is_one_clear_message(in_tmp, capsys):
    from tdl_lightning.cli import main

    args = ["--data.data_dir=nowhere", "--data.download=false", "--run.wandb=false"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / "cnn_filters_cifar10.yaml"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "tdl: error: CIFAR10 is not in" in err and "pass data_dir" in err and "Traceback" not in err
