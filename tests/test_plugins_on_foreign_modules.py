"""Every diagnostic plugin on modules the project never saw: torchvision's ResNet-18 in a user's own
LightningModule, and Lightning's demo ``BoringModel``. Each either probes (its history written) or
refuses with one ``PluginConfigError`` line that names what is missing; none fails inside torch,
matplotlib or Lightning."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.demos.boring_classes import BoringModel

import plugins as P
from plugins.checks import PluginConfigError
from tests.harness import quiet_trainer_kwargs


class ResNetTask(L.LightningModule):
    """A user's classifier: ``forward`` on images, ``loss(batch)``, SGD; no tdl task underneath."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


# the cheapest settings that still probe: the contract is tested, not the numbers (each has its own tests)
PLUGINS = {
    "HessianEigenvalues": lambda: P.HessianEigenvalues(probe_size=4, max_iter=3, at_end=False),
    "LossLandscape": lambda: P.LossLandscape(probe_size=4, steps=3, interpolation_steps=3),
    "InitStatistics": lambda: P.InitStatistics(probe_size=4),
    "JacobianSpectrum": lambda: P.JacobianSpectrum(probe_size=2, at_end=False),
    "FilterVisualisation": lambda: P.FilterVisualisation(),
    "GradientNoise": lambda: P.GradientNoise(probe_size=4, at_end=False),
    "IntrinsicDimension": lambda: P.IntrinsicDimension(probe_size=24, k=4, at_end=False),
    "NeuralTangentKernel": lambda: P.NeuralTangentKernel(probe_size=2, at_end=False),
    "InformationPlane": lambda: P.InformationPlane(),
    # refused, with the reason
    "LinearDynamics": lambda: P.LinearDynamics(),
    "LinearRegions": lambda: P.LinearRegions(num_lines=1, plane_resolution=0),
}
REFUSED = {
    "LinearDynamics": "has a Conv2d at 'net.conv1': the exact solutions do not hold there",
    # the first ReLU alone meets thousands of regions on a segment between two images
    "LinearRegions": "linear regions on the segment by 'net.relu' already",
}


@pytest.mark.parametrize("name", list(PLUGINS))
def test_each_plugin_probes_a_torchvision_resnet_or_says_why_not(name, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    callback = PLUGINS[name]()
    trainer = L.Trainer(
        callbacks=[callback], default_root_dir=str(tmp_path), **quiet_trainer_kwargs(max_steps=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on few workers and the tiny data
        if name in REFUSED:
            with pytest.raises(PluginConfigError, match=REFUSED[name]):
                trainer.fit(ResNetTask(), data)
            return
        trainer.fit(ResNetTask(), data)
    assert callback.history, f"{name} never probed"
    assert all(f"{callback.name}/probe_seconds" in h for h in callback.history)


# BoringModel has loss(preds, labels): called as loss(batch) it is a loss of the batch, not of the weights
BORING_REFUSED = {
    "HessianEigenvalues": "the loss does not depend on any trainable parameter",
    "GradientNoise": "GradientNoise: the loss does not depend on any trainable parameter",
    "LossLandscape": "LossLandscape: the loss does not depend on any trainable parameter",
    "FilterVisualisation": "BoringModel has none: attach it to a model built from Conv2d layers",
    "InformationPlane": r"needs \(inputs, labels\) batches",
    "LinearDynamics": r"needs \(inputs, targets\) batches",
}


@pytest.mark.parametrize("name", list(PLUGINS))
def test_each_plugin_probes_lightnings_boring_model_or_says_why_not(name, tmp_path):
    callback = PLUGINS[name]()
    trainer = L.Trainer(
        callbacks=[callback], default_root_dir=str(tmp_path), **quiet_trainer_kwargs(max_steps=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in BORING_REFUSED:
            with pytest.raises(PluginConfigError, match=BORING_REFUSED[name]):
                trainer.fit(BoringModel())
            return
        trainer.fit(BoringModel())
    assert callback.history and all(f"{callback.name}/probe_seconds" in h for h in callback.history)
