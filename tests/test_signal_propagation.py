"""Signal propagation measured in wide random nets beside the mean-field theory, and InitStatistics.

Tolerances: measured q^l of width-1000 nets within 3% of the q-map iterates, c^l within 0.02 of the
covariance map. The theory itself is tested in tests/test_mean_field.py.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.signal_propagation import (
    InitStatistics,
    c_map_iterates,
    c_star,
    correlation_propagation,
    describe_init,
    preactivation_variances,
    q_map_iterates,
)
from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights, fit_and_collect


# --------------------------------------------------------------------------- measurement
@pytest.fixture(scope="module")
def wide_net():
    torch.manual_seed(0)
    return DeepMLP(
        input_dim=200, width=1000, depth=6, output_dim=None, activation="tanh", sigma_w=1.5, sigma_b=0.3
    )


def test_wide_net_q_follows_the_q_map(wide_net):
    x = torch.randn(128, 200) * 0.8
    measured = preactivation_variances(wide_net, x).numpy()
    theory = q_map_iterates("tanh", 1.5, 0.3, float((x.double() ** 2).mean()), 6)
    assert np.max(np.abs(measured / theory - 1)) < 0.03  # "within a few percent" at width 1000


def test_wide_net_c_follows_the_c_map(wide_net):
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(64, 200, generator=g)
    x_b = 0.2 * x_a + math.sqrt(1 - 0.2**2) * torch.randn(64, 200, generator=g)
    measured = correlation_propagation(wide_net, x_a, x_b).numpy()
    q0 = float(torch.cat([x_a, x_b]).double().pow(2).mean())
    c0 = float(nn.functional.cosine_similarity(x_a.double(), x_b.double()).mean())
    theory = c_map_iterates("tanh", 1.5, 0.3, c0, 6, q0)
    assert np.max(np.abs(measured - theory)) < 0.02
    target = c_star("tanh", 1.5, 0.3)  # 0.767: sigma_b > 0 correlates, c^l climbs towards c*
    assert theory[0] < theory[-1] < target


def test_preactivations_measure_every_linear_layer():
    net = DeepMLP(input_dim=5, width=7, depth=3, output_dim=2)
    assert preactivation_variances(net, torch.randn(4, 5)).shape == (4,)
    assert describe_init(net) == {"activation": "tanh", "sigma_w": 1.0, "sigma_b": 0.0, "init": "gaussian"}
    with pytest.raises(ValueError, match="no Linear layer"):
        preactivation_variances(nn.Tanh(), torch.randn(2, 3))


# --------------------------------------------------------------------------- callback
def _task():
    return Regressor(DeepMLP(input_dim=8, width=32, depth=3, output_dim=1, sigma_w=1.2, sigma_b=0.1))


def _data():
    return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)


def test_init_statistics_leaves_training_untouched(tmp_path):
    cb = InitStatistics(every_n_steps=1, probe_size=32)
    with_plugin = fit_and_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4]


def test_init_statistics_files_theory_and_checkpoint(tmp_path):
    cb = InitStatistics(at_init=True, every_n_epochs=1, probe_size=64)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    trainer.fit(_task(), _data())
    init = cb.history[0]
    assert init["when"] == "init" and "init_statistics/q_layer_04_theory" in init  # 3 hidden + readout
    assert init["init_statistics/q_max_rel_error"] < 0.5  # width 32: a loose sanity bound
    out = tmp_path / "plugins" / "init_statistics"
    arrays = np.load(out / "step0000000.npz")
    assert arrays["q"].shape == (4,) and arrays["q_theory"].shape == (4,)
    assert (out / "q_c_step0000000.png").stat().st_size > 1000
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=False)
    assert ckpt["callbacks"][cb.state_key]["history"] == cb.history


def test_init_statistics_refuses_a_module_without_linear_layers():
    with pytest.raises(MisconfigurationException, match="Linear"):
        InitStatistics().check_module(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(MisconfigurationException, match="probe_size >= 2"):
        InitStatistics(probe_size=1)
