"""FilterVisualisation: filter grids, activation maps, activation maximisation, saliency, callback.

Tolerances: grids and maps are compared exactly (same float32 operations); saliency is checked
against central finite differences in float64 with step 1e-5, to a relative error of 1e-6; the
activation-maximisation images must reach at least 10x the root-mean-square response of random
inputs of the same L2 norm, for every one of conv2's 16 channels of a LeNet-5 trained for 150 steps.
"""

from __future__ import annotations

import copy
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

from plugins import filters
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
from tests.harness import assert_same_weights, fit_and_collect

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    dm = MNIST5k()
    dm.setup()
    return dm.splits["train"]


@pytest.fixture(scope="module")
def trained_lenet(mnist) -> LeNet5:
    """Classic LeNet-5 (tanh, average pooling), 150 Adam steps on MNIST5k: about 92% val accuracy."""
    x, y = mnist
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = LeNet5()
        optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(150):
            idx = torch.randint(0, len(x), (64,), generator=order)
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert (net(x[:500]).argmax(1) == y[:500]).float().mean() > 0.85, "the LeNet fixture did not train"
    return net


# --------------------------------------------------------------------------- filter_grid


@pytest.mark.parametrize(
    ("in_c", "out_c", "k", "shape"),
    [
        (1, 6, 5, (1, 13, 19)),  # 6 grey tiles, 3 a row, 2 rows
        (3, 8, 3, (3, 13, 13)),  # 8 RGB tiles, 3 a row, 3 rows
        (6, 16, 5, (1, 97, 37)),  # 16 rows (filters) of 6 tiles (input channels)
    ],
)
def test_filter_grid_shapes_and_values(in_c, out_c, k, shape):
    conv = nn.Conv2d(in_c, out_c, k)
    grid = filter_grid(conv)
    assert tuple(grid.shape) == shape
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
    # the first tile is the first filter, stretched to [0, 1] on its own
    w = conv.weight.detach()[0]
    expected = (w - w.min()) / (w.max() - w.min())
    tile = grid[:, 1 : 1 + k, 1 : 1 + k]
    if in_c in (1, 3):
        torch.testing.assert_close(tile, expected, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(tile[0], expected[0], rtol=0, atol=1e-6)
    # every filter spans [0, 1]; padding is white
    assert torch.all(grid[:, 0, :] == 1.0) and torch.all(grid[:, :, 0] == 1.0)
    tiles = [
        grid[:, 1 + r * (k + 1) : 1 + r * (k + 1) + k] for r in range(out_c if in_c not in (1, 3) else 1)
    ]
    for row in tiles:
        assert float(row.min()) == 0.0 and float(row.max()) == 1.0


def test_filter_grid_layer_scale_keeps_filters_comparable():
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight[1] *= 0.01  # a weak filter
    grid = filter_grid(conv, scale="layer", padding=0, ncols=2)
    assert tuple(grid.shape) == (1, 3, 6)
    assert float(grid[:, :, 3:].max() - grid[:, :, 3:].min()) < 0.05  # weak filter stays flat
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0


def test_filter_grid_refuses_what_is_not_a_conv_weight():
    with pytest.raises(MisconfigurationException, match="nn.Conv2d or a weight"):
        filter_grid(torch.zeros(3, 3))
    with pytest.raises(MisconfigurationException, match="'filter' or 'layer'"):
        filter_grid(nn.Conv2d(1, 1, 3), scale="global")


# --------------------------------------------------------------------------- activation maps, layer names


def test_activation_maps_are_the_layer_responses(trained_lenet, mnist):
    x = mnist[0][:5]
    net = trained_lenet
    with torch.no_grad():
        expected = net.conv2(net.pool1(net.act1(net.conv1(x))))
    torch.testing.assert_close(activation_maps(net, x, "conv2"), expected, rtol=0, atol=0)
    task = Classifier(net)
    torch.testing.assert_close(activation_maps(task, x, "model.conv2"), expected, rtol=0, atol=0)
    torch.testing.assert_close(activation_maps(task, x, "conv2"), expected, rtol=0, atol=0)  # unique suffix


def test_wrong_layer_name_lists_the_conv_layers(trained_lenet):
    task = Classifier(trained_lenet)
    with pytest.raises(
        MisconfigurationException, match=r"no layer is named 'conv3'.*'model.conv1', 'model.conv2'"
    ):
        activation_maps(task, torch.zeros(1, 1, 28, 28), "conv3")
    with pytest.raises(MisconfigurationException, match="'model.conv1', 'model.conv2'"):
        activation_maximisation(task, "features.0", 0, 1, input_shape=(1, 28, 28))


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


# --------------------------------------------------------------------------- maximisation, saliency


def test_activation_maximisation_is_tenfold_above_random_inputs(trained_lenet):
    channels = list(range(16))
    result = activation_maximisation(
        trained_lenet, "conv2", channels, 128, input_shape=(1, 28, 28), objective="channel"
    )
    assert result.images.shape == (16, 1, 28, 28) and result.layer == "conv2"
    # measured: min 11.1, median 17.4 (CPU, 1 thread); random inputs have the image's own L2 norm.
    # (The "neuron" objective gives min 10.6 here, too close to 10 to assert.)
    assert torch.all(result.gain >= 10.0), result.gain
    # and the images are specific: image k drives channel k harder than the other channels' images do
    responses = activation_maps(trained_lenet, result.images, "conv2").mean(dim=(2, 3))
    assert torch.equal(responses.argmax(dim=0), torch.arange(16))


def test_activation_maximisation_refuses_bad_channels(trained_lenet):
    with pytest.raises(MisconfigurationException, match="has 6 channels"):
        activation_maximisation(trained_lenet, "conv1", [6], 1, input_shape=(1, 28, 28))


def test_saliency_matches_finite_differences(trained_lenet, mnist):
    net = copy.deepcopy(trained_lenet).double()
    x, y = mnist[0][:3].double(), mnist[1][:3]
    grad = saliency(net, x, y)
    assert grad.shape == x.shape
    eps = 1e-5

    def score(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(inputs).gather(1, y[:, None]).squeeze(1)

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # directional derivatives along random directions, one per image
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fd = (score(x + eps * v) - score(x - eps * v)) / (2 * eps)
        exact = (grad * v).flatten(1).sum(1)
        torch.testing.assert_close(fd, exact, rtol=1e-6, atol=1e-8)
    for pixel in [(0, 0, 14, 14), (1, 0, 10, 20), (2, 0, 5, 5)]:  # single pixels
        e = torch.zeros_like(x)
        e[pixel] = 1.0
        fd = (score(x + eps * e) - score(x - eps * e))[pixel[0]] / (2 * eps)
        torch.testing.assert_close(fd, grad[pixel], rtol=1e-6, atol=1e-8)
    predicted = net(x).argmax(1)
    torch.testing.assert_close(saliency(net, x), saliency(net, x, predicted), rtol=0, atol=0)


def test_activation_maximisation_ascends_with_adam():
    """The written-out update is torch.optim.Adam's: the same images as an ascent driven by it."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 5, 3)).eval()
    kwargs = dict(lr=0.05, l2=1e-2, jitter=1, blur_every=4, blur_sigma=0.5, init_std=0.1)
    found = activation_maximisation(
        net, "2", [1, 4], 9, input_shape=(1, 10, 10), pixel_range=(-1.0, 1.0), seed=3, **kwargs
    )
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 1, 10, 10, generator=gen) * kwargs["init_std"]).requires_grad_(True)
    adam = torch.optim.Adam([x], lr=kwargs["lr"])
    for step in range(9):
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        out = net[:3](torch.roll(x, shifts=(dy, dx), dims=(-2, -1)))
        score = out[[0, 1], [1, 4], 3, 3].sum() - kwargs["l2"] * x.pow(2).flatten(1).mean(1).sum()
        adam.zero_grad()
        (-score).backward()
        adam.step()
        with torch.no_grad():
            if (step + 1) % 4 == 0:
                x.copy_(filters._gaussian_blur(x, kwargs["blur_sigma"]))
            x.clamp_(-1.0, 1.0)
    torch.testing.assert_close(found.images, x.detach(), rtol=1e-5, atol=1e-6)


def test_pictures_are_the_pixels_enlarged_under_a_title():
    image = torch.rand(3, 5, 7)
    pixels = filters._picture(image, "a title")
    factor = 12  # min(12, 640 // 7, 480 // 5)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[0] == 16 + 5 * factor  # one title line above
    body = torch.from_numpy(pixels[16:, : 7 * factor].copy()).permute(2, 0, 1)
    expected = (image * 255).round().to(torch.uint8).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    assert torch.equal(body, expected)
    title = pixels[:16]
    assert title.min() < 100 and title.max() == 255  # dark text on white
    labelled = filters._strip_picture([torch.rand(1, 4, 4)] * 3, [0, 5, 10], "strip")
    assert labelled.shape[0] == 16 + 4 * 12 + 2 * 16  # title, strip, step labels and "training step"
    # the colormaps are matplotlib's own
    from matplotlib import colormaps

    values = torch.rand(2, 1, 3, 4)
    values[0, 0, 0, :2] = torch.tensor([0.0, 1.0])
    for cmap in ("RdBu_r", "hot"):
        mapped = torch.from_numpy(colormaps[cmap](values[:, 0].numpy())[..., :3]).permute(0, 3, 1, 2)
        torch.testing.assert_close(filters._rgb(values, cmap), mapped.float(), rtol=0, atol=0)


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
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
        logger=[CSVLogger(str(tmp_path / "csv"), name="", version=""), wandb_logger],  # not W&B's folder
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
