"""The constructor and setup side of every plugin: schedule arguments declared once (and seen by
LightningCLI), state keys that tell instances apart, one error family, one name per idea, and
``forward_fn`` for modules whose forward takes more than the inputs."""

from __future__ import annotations

import inspect
import warnings

import jsonargparse
import lightning as L
import pytest
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos import LightningTransformer, Transformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import plugins
from plugins import (
    FilterVisualisation,
    GradientNoise,
    HessianEigenvalues,
    InformationPlane,
    InitStatistics,
    IntrinsicDimension,
    JacobianSpectrum,
    LinearDynamics,
    LinearRegions,
    LossLandscape,
    NeuralTangentKernel,
)
from plugins.base import DiagnosticCallback
from plugins.checks import PluginConfigError
from plugins.forward import forward_through, require_forward
from plugins.information_plane import mutual_information_binned
from plugins.jacobian import input_output_jacobians
from plugins.loss_landscape import random_directions
from tdl_lightning.models import DeepMLP
from tests.harness import quiet_trainer_kwargs

SCHEDULE = ("at_init", "every_n_steps", "every_n_epochs", "at_end", "probe_size", "probe_seed")
# each plugin's schedule defaults, as its own signature stated them before they were declared once
DEFAULTS = {
    FilterVisualisation: (True, None, 1, True, None, 0),
    GradientNoise: (True, None, 1, False, 256, 0),
    HessianEigenvalues: (True, None, None, True, 256, 0),
    InformationPlane: (True, None, 10, True, 4096, 0),
    InitStatistics: (True, None, None, False, 256, 0),
    IntrinsicDimension: (True, None, None, True, 1000, 0),
    JacobianSpectrum: (True, None, None, False, 32, 0),
    LinearDynamics: (True, 1, None, True, 4096, 0),
    LinearRegions: (True, None, None, True, 32, 0),
    LossLandscape: (False, None, None, True, 128, 0),
    NeuralTangentKernel: (True, None, None, True, 64, 0),
}
FORWARD_PLUGINS = (
    FilterVisualisation,
    InformationPlane,
    InitStatistics,
    IntrinsicDimension,
    JacobianSpectrum,
    LinearDynamics,
    LinearRegions,
    NeuralTangentKernel,
)
TRAINER = quiet_trainer_kwargs(limit_val_batches=None, enable_checkpointing=None)  # Lightning's defaults


# --------------------------------------------------------------------------- 1. schedule, once
def _cli_defaults(plugin: type) -> dict:
    """The plugin's arguments and defaults as LightningCLI's parser (jsonargparse) sees them."""
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(plugin, "callback")
    return dict(parser.parse_args([]).callback)


def test_every_plugin_with_a_schedule_is_listed():
    classes = [getattr(plugins, name) for name in plugins.__all__]
    scheduled = {c for c in classes if issubclass(c, DiagnosticCallback) and "probe_seed" in _cli_defaults(c)}
    assert scheduled == set(DEFAULTS)


@pytest.mark.parametrize("plugin", list(DEFAULTS), ids=lambda c: c.__name__)
def test_schedule_is_declared_once_and_keeps_each_plugins_defaults(plugin):
    own = inspect.signature(plugin.__init__).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values())
    assert not set(SCHEDULE) <= set(own), "the six schedule arguments are the base class's"
    parsed = _cli_defaults(plugin)
    assert tuple(parsed[k] for k in SCHEDULE) == DEFAULTS[plugin]  # what LightningCLI shows
    instance = plugin()
    made = tuple(getattr(instance, k) for k in SCHEDULE)
    expected = DEFAULTS[plugin]
    if plugin is FilterVisualisation:  # probe_size None: num_images
        expected = (*expected[:4], instance.num_images, expected[5])
    assert made == expected
    changed = plugin(every_n_steps=7, probe_seed=3)
    assert (changed.every_n_steps, changed.probe_seed) == (7, 3)


def test_schedule_arguments_are_keyword_only_in_plugins():
    with pytest.raises(TypeError):
        JacobianSpectrum(None, "auto", None, None, 64)  # probe_size is no longer a positional


def test_tdl_config_shows_and_takes_the_schedule(capsys):
    from tdl_lightning.cli import main

    edge = "experiments/edge_of_chaos.yaml"
    added = ["--trainer.callbacks+=HessianEigenvalues", "--trainer.callbacks.every_n_epochs=1"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", edge, *added, "--print_config"])
    assert exit_info.value.code == 0
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    shown = {c["class_path"]: {k: c["init_args"][k] for k in SCHEDULE} for c in callbacks}
    assert shown["plugins.InitStatistics"] == dict(zip(SCHEDULE, (True, None, 1, False, 256, 0), strict=True))
    assert shown["plugins.JacobianSpectrum"] == dict(
        zip(SCHEDULE, (True, None, 1, False, 32, 0), strict=True)
    )
    assert shown["plugins.HessianEigenvalues"] == dict(
        zip(SCHEDULE, (True, None, 1, True, 256, 0), strict=True)
    )

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.callbacks.help", "HessianEigenvalues"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for key in SCHEDULE:
        assert f"--trainer.callbacks.{key}" in help_text
    assert "probe once before the first optimizer step" in help_text  # the base class's own help

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", edge, added[0], "--trainer.callbacks.every_n_epoch=1", "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hint: HessianEigenvalues has no argument 'every_n_epoch': did you mean every_n_epochs" in err


# --------------------------------------------------------------------------- 2. state keys
class TinyCNN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.Tanh(),
            nn.Conv2d(3, 4, 3),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 2),
        )

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=4)


def test_default_state_keys_are_the_old_ones():
    assert (
        HessianEigenvalues().state_key == "HessianEigenvalues{'every_n_steps': None, 'every_n_epochs': None}"
    )
    assert FilterVisualisation(layers=None).state_key == FilterVisualisation().state_key
    assert JacobianSpectrum().state_key == "JacobianSpectrum{'every_n_steps': None, 'every_n_epochs': None}"


def test_state_key_tells_instances_apart():
    a, b = HessianEigenvalues(parameters=["net.0"]), HessianEigenvalues(parameters=["net.2"])
    assert len({a.state_key, b.state_key, HessianEigenvalues().state_key}) == 3
    assert "'parameters': ['net.0']" in a.state_key
    assert HessianEigenvalues(curvature="ggn").state_key != HessianEigenvalues().state_key
    assert JacobianSpectrum(output_layer="model.act3").state_key != JacobianSpectrum().state_key
    assert LossLandscape(direction_seed=1).state_key != LossLandscape().state_key
    assert InitStatistics(probe_seed=1).state_key != InitStatistics().state_key
    predicate = HessianEigenvalues(parameters=lambda name: "weight" in name)  # type: ignore[arg-type]
    assert "0x" not in predicate.state_key  # no memory address: the same key in the resumed process


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the resumed fit's
def test_two_instances_checkpoint_and_resume_each_its_own_history(tmp_path):
    def callbacks():
        return [
            FilterVisualisation(layers=["net.0"], every_n_steps=1, every_n_epochs=None, at_end=False),
            FilterVisualisation(layers=["net.2"], every_n_steps=2, every_n_epochs=None, at_end=False),
            HessianEigenvalues(parameters=["net.0"], at_end=False, every_n_steps=2, probe_size=8),
            HessianEigenvalues(parameters=["net.5"], at_end=False, every_n_steps=2, probe_size=8),
        ]

    def fit(plugins, max_steps, **fit_kwargs):
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = L.Trainer(
            **dict(TRAINER, max_steps=max_steps, callbacks=[*plugins, checkpoint], default_root_dir=tmp_path)
        )
        trainer.fit(TinyCNN(), **fit_kwargs)

    first = callbacks()
    fit(first, 4)  # one epoch of 4 batches
    assert [len(cb.history) for cb in first] == [5, 3, 3, 3]  # init + steps 1-4 / init + steps 2, 4
    assert "filters/net.0/filter_norm" in first[0].history[-1]
    assert "filters_2/net.2/filter_norm" in first[1].history[-1]  # the second instance's own keys
    assert "hessian/lambda_max" in first[2].history[-1] and "hessian_2/lambda_max" in first[3].history[-1]
    assert first[2].history[-1]["hessian/lambda_max"] != first[3].history[-1]["hessian_2/lambda_max"]
    assert (tmp_path / "plugins" / "filters_2" / "history.json").is_file()
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert len([key for key in saved if key.startswith(("FilterVisualisation", "HessianEigenvalues"))]) == 4

    resumed = callbacks()
    fit(resumed, 8, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for before, after in zip(first, resumed, strict=True):
        assert after.history[: len(before.history)] == before.history  # each resumed its own curve
    assert [len(cb.history) for cb in resumed] == [9, 5, 5, 5]
    assert [s for s, _ in resumed[1].strip] == [0, 2, 4, 6, 8]
    assert resumed[1].name == "filters_2" and resumed[3].name == "hessian_2"


# --------------------------------------------------------------------------- 3. one error family
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: JacobianSpectrum(every_n_steps=0), r"JacobianSpectrum\(every_n_steps=0\)"),
        (lambda: InitStatistics(probe_size=0), r"InitStatistics\(probe_size=0\)"),
        (lambda: JacobianSpectrum(chunk_size=0), r"JacobianSpectrum\(chunk_size=0\)"),
        (lambda: GradientNoise(chunk_size=0), r"GradientNoise\(chunk_size=0\)"),
        (lambda: NeuralTangentKernel(chunk_size=-1), r"NeuralTangentKernel\(chunk_size=-1\)"),
        (lambda: InformationPlane(bins=0), r"InformationPlane\(bins=0\)"),
        (lambda: InformationPlane(kde_noise_variance=0.0), r"kde_noise_variance=0.0"),
        (lambda: IntrinsicDimension(discard_fraction=1.0), r"IntrinsicDimension\(discard_fraction=1.0\)"),
        (lambda: IntrinsicDimension(k=1), r"IntrinsicDimension: k must be"),
        (lambda: LossLandscape(steps=1), r"LossLandscape\(steps=1\)"),
        (lambda: LossLandscape(normalization="unit"), r"LossLandscape\(normalization='unit'\)"),
        (lambda: LinearDynamics(modes=0), r"LinearDynamics\(modes=0\)"),
        (lambda: LinearRegions(plane_resolution=-1), r"plane_resolution=-1"),
        (lambda: HessianEigenvalues(k=0), r"k=0"),
        (lambda: HessianEigenvalues(density_at=["later"]), r"HessianEigenvalues\(density_at="),
        (lambda: FilterVisualisation(maximise_at=["later"]), r"FilterVisualisation\(maximise_at="),
        (lambda: FilterVisualisation(num_images=0), r"num_images=0"),
    ],
)
def test_every_plugin_misuse_is_a_plugin_config_error(make, match):
    with pytest.raises(PluginConfigError, match=match) as caught:
        make()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MisconfigurationException)


def test_pure_function_and_callback_share_one_check():
    x = torch.randn(3, 4)
    net = nn.Linear(4, 2)
    pairs = [
        (lambda: input_output_jacobians(net, x, chunk_size=0), lambda: JacobianSpectrum(chunk_size=0)),
        (lambda: random_directions(net, normalization="unit"), lambda: LossLandscape(normalization="unit")),
        (
            lambda: mutual_information_binned(x, torch.zeros(3), torch.zeros(3), bins=0),
            lambda: InformationPlane(bins=0),
        ),
    ]
    for pure, callback in pairs:
        with pytest.raises(PluginConfigError) as from_pure:
            pure()
        with pytest.raises(PluginConfigError) as from_callback:
            callback()
        # the same message, the callback's prefixed with its class: "Owner(arg=value): fix"
        assert str(from_callback.value).endswith(str(from_pure.value).split(": ", 1)[1])
        assert str(from_callback.value).split("(", 1)[1].startswith(str(from_pure.value).split(":", 1)[0])


# --------------------------------------------------------------------------- 4. one name per idea
def test_maximise_at_is_the_name_and_maximise_on_still_works():
    assert FilterVisualisation(maximise_at=["end"]).maximise_at == ["end"]
    with pytest.deprecated_call(match="maximise_at"):
        old = FilterVisualisation(maximise_on=["end"])
    assert old.maximise_at == old.maximise_on == ["end"]
    with pytest.raises(PluginConfigError, match="maximise_at only"):
        FilterVisualisation(maximise_at=["end"], maximise_on=["init"])
    assert HessianEigenvalues(density_at="end").density_at == ["end"]


def test_theory_keys_end_in_theory_everywhere():
    torch.manual_seed(0)
    mlp = DeepMLP(input_dim=8, width=8, depth=3, output_dim=8, activation="tanh", init="orthogonal")
    x = torch.randn(16, 8)
    keys = set(InitStatistics().probe(mlp, (x, torch.zeros(16))).scalars)
    keys |= set(JacobianSpectrum(probe_size=4).probe(mlp, x[:4]).scalars)
    linear = nn.Sequential(nn.Linear(3, 8, bias=False), nn.Linear(8, 3, bias=False))
    xs = torch.eye(3) * 3**0.5
    keys |= set(LinearDynamics(tau=10.0).probe(linear, (xs, xs * 2)).scalars)
    theory = sorted(k for k in keys if "theory" in k)
    assert "mean_squared_singular_value_theory" in theory and "mode_0_theory" in theory
    assert "q_layer_01_theory" in theory
    assert all(k.endswith("_theory") and not k.startswith("theory") for k in theory), theory
    for key in theory:  # each twin sits beside the measured key of the same name
        assert key.removesuffix("_theory") in keys


# --------------------------------------------------------------------------- 5. forward_fn
class TwoInputs(nn.Module):
    """A model whose forward takes the inputs and a second argument (like a seq2seq model)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, scale):
        return self.net(x) * scale


def _probe_cases():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    linear = nn.Sequential(nn.Linear(3, 6, bias=False), nn.Linear(6, 3, bias=False))
    xs = torch.eye(3) * 3**0.5
    cnn = TinyCNN().net
    images = torch.randn(4, 1, 8, 8)
    return [
        (InitStatistics, {}, mlp, (x, y)),
        (JacobianSpectrum, {"probe_size": 4}, mlp, x[:4]),
        (LinearRegions, {"num_lines": 2, "plane_resolution": 8}, mlp, x[:4]),
        (IntrinsicDimension, {"k": 3}, mlp, (x, y)),
        (NeuralTangentKernel, {"probe_size": 8}, mlp, (x[:8], y[:8].float())),
        (InformationPlane, {"bins": 4}, mlp, ((x > 0).float(), y)),
        (LinearDynamics, {"tau": 10.0}, linear, (xs, 2 * xs)),
        (FilterVisualisation, {}, cnn, (images, y[:4])),
    ]


def test_every_forward_plugin_takes_forward_fn():
    assert {case[0] for case in _probe_cases()} == set(FORWARD_PLUGINS)
    for plugin in FORWARD_PLUGINS:
        assert plugin.needs_forward and "forward_fn" in inspect.signature(plugin.__init__).parameters
    for plugin in set(DEFAULTS) - set(FORWARD_PLUGINS):
        assert not plugin.needs_forward  # these run a loss only: loss_fn=


@pytest.mark.parametrize("case", range(len(FORWARD_PLUGINS)), ids=[c.__name__ for c in FORWARD_PLUGINS])
def test_forward_fn_probes_a_two_input_model_as_the_plain_one(case):
    plugin, kwargs, net, batch = _probe_cases()[case]
    wrapped = TwoInputs(net)
    with pytest.raises(PluginConfigError, match=r"TwoInputs.forward takes \(x, scale\): pass `forward_fn=`"):
        require_forward(plugin.__name__, wrapped, None)
    plain = plugin(**kwargs).probe(net, batch)
    through = plugin(forward_fn=lambda m, x: m(x, 1.0), **kwargs).probe(wrapped, batch)
    expected = {k: v for k, v in plain.scalars.items() if k != "probe_seconds"}
    got = {k.replace("net.", "", 1): v for k, v in through.scalars.items() if k != "probe_seconds"}
    assert got.keys() == expected.keys() and expected
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    assert "forward" not in vars(wrapped)  # the module's own forward is back


def test_forward_through_restores_the_forward_after_an_error():
    net = nn.Linear(2, 2)

    def broken(module, x):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError), forward_through(net, broken):
        net(torch.zeros(1, 2))
    assert "forward" not in vars(net) and net(torch.zeros(1, 2)).shape == (1, 2)


class TinyTransformer(LightningTransformer):
    """Lightning's demo Transformer (``forward(inputs, target)``), tiny, on random tokens offline."""

    def __init__(self):
        super().__init__(vocab_size=16)
        self.model = Transformer(vocab_size=16, ninp=8, nhead=2, nhid=16, nlayers=1, dropout=0.0)

    def prepare_data(self):
        pass  # the demo downloads WikiText-2 here

    def train_dataloader(self):
        tokens = torch.randint(0, 16, (32, 6), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens, tokens.roll(-1, dims=1)), batch_size=8)


@pytest.mark.filterwarnings("ignore:.*batching rule.*:UserWarning")
@pytest.mark.filterwarnings("ignore:.*enable_nested_tensor.*:UserWarning")
def test_lightning_demo_transformer_with_forward_fn(tmp_path):
    def fit(callbacks):
        trainer = L.Trainer(**dict(TRAINER, max_steps=2, callbacks=callbacks, default_root_dir=tmp_path))
        trainer.fit(TinyTransformer())

    for plugin in (InitStatistics, JacobianSpectrum):  # no usable forward: one line at setup
        with pytest.raises(PluginConfigError, match=r"TinyTransformer.forward takes \(inputs, target\)"):
            fit([plugin(probe_size=8)])
    with pytest.raises(PluginConfigError, match="input_layer='embedding'"):  # token ids: no Jacobian
        fit([JacobianSpectrum(probe_size=4, forward_fn=lambda m, x: m(x, x))])

    both = lambda m, x: m(x, x)  # noqa: E731
    statistics = InitStatistics(probe_size=8, every_n_steps=1, forward_fn=both)
    spectrum = JacobianSpectrum(probe_size=4, every_n_steps=2, forward_fn=both, input_layer="model.embedding")
    fit([statistics, spectrum])
    assert [h["step"] for h in statistics.history] == [0, 1, 2]
    assert "init_statistics/q_layer_01" in statistics.history[0]
    assert [h["step"] for h in spectrum.history] == [0, 2]
    assert spectrum.history[-1]["jacobian_spectrum/max_singular_value"] > 0

    model = TinyTransformer().eval()
    tokens = model.train_dataloader().dataset.tensors[0][:2]
    with forward_through(model, both), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = input_output_jacobians(model, tokens, input_layer="model.embedding")
        slow = input_output_jacobians(model, tokens, input_layer="model.embedding", method="loop")
    assert fast.shape == (2, 6 * 16, 6 * 8)  # d log-probabilities / d embedding vectors
    assert torch.allclose(fast, slow, atol=1e-5)


def test_a_module_without_forward_is_told_what_to_pass():
    class NoForward(L.LightningModule):
        pass

    with pytest.raises(PluginConfigError, match="NoForward defines no forward: pass `forward_fn=`"):
        require_forward("IntrinsicDimension", NoForward(), None)
