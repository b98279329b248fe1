"""SAM: the two-step update by hand, its limit on a quadratic, its state, Lightning and the CLI."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tdl_lightning.errors import ConfigError
from tdl_lightning.optim import SAM
from tdl_lightning.tasks import Regressor

A = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
B = torch.tensor([1.0, -2.0], dtype=torch.float64)
W_STAR = torch.linalg.solve(A, B)


def _quadratic_closure(optimizer, w):
    def closure():
        optimizer.zero_grad()
        loss = 0.5 * w @ A @ w - B @ w  # gradient A w - b
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_step_equals_the_two_step_update_by_hand(adaptive):
    """SGD with momentum 0.9 as the base, two steps: e = rho T^2 g / ||T g|| (T = I, or |w| for ASAM),
    then the momentum update with the gradient at w + e."""
    rho, lr, momentum = 0.3, 0.1, 0.9
    w = torch.nn.Parameter(torch.tensor([0.5, -1.5], dtype=torch.float64))
    optimizer = SAM([w], "SGD", rho=rho, adaptive=adaptive, lr=lr, momentum=momentum)
    closure = _quadratic_closure(optimizer, w)
    v, x = torch.zeros(2, dtype=torch.float64), w.detach().clone()
    for _ in range(2):
        g = A @ x - B
        t = x.abs() if adaptive else torch.ones(2, dtype=torch.float64)
        e = rho * t**2 * g / (t * g).norm()
        v = momentum * v + (A @ (x + e) - B)
        x = x - lr * v
        loss = optimizer.step(closure)
        assert torch.allclose(w.detach(), x, atol=1e-11, rtol=0)  # SAM divides by ||g|| + 1e-12
    assert float(loss) == pytest.approx(float(0.5 * (x + lr * v) @ A @ (x + lr * v) - B @ (x + lr * v)))


def test_on_a_quadratic_it_ends_in_the_bouncing_two_cycle():
    """Near the minimum e = rho g/||g|| keeps length rho, so SAM (lr 0.1) cannot settle: along the top
    eigenvector (lambda = 4) it bounces between +-lr lambda rho / (2 - lr lambda) = +-0.0125 around w*,
    and the other coordinate converges (Bartlett, Long & Bousquet 2022)."""
    w = torch.nn.Parameter(torch.tensor([3.0, 3.0], dtype=torch.float64))
    optimizer = SAM([w], rho=0.05, lr=0.1)
    closure = _quadratic_closure(optimizer, w)
    for _ in range(200):
        optimizer.step(closure)
    offsets = []
    for _ in range(2):
        optimizer.step(closure)
        offsets.append(w.detach() - W_STAR)
    amplitude = 0.1 * 4 * 0.05 / (2 - 0.1 * 4)
    assert abs(float(offsets[0][0])) < 1e-9 and abs(float(offsets[1][0])) < 1e-9
    assert sorted(float(o[1]) for o in offsets) == pytest.approx([-amplitude, amplitude], rel=1e-8)


def test_state_dict_holds_the_base_state_and_resumes_the_same_path():
    def run(split):
        w = torch.nn.Parameter(torch.tensor([3.0, 3.0], dtype=torch.float64))
        optimizer = SAM([w], "SGD", rho=0.05, lr=0.1, momentum=0.9)
        for step in range(6):
            if split and step == 3:
                saved = optimizer.state_dict()
                optimizer = SAM([w], "SGD", rho=0.05, lr=0.1, momentum=0.9)
                optimizer.load_state_dict(saved)
                assert "momentum_buffer" in optimizer.base_optimizer.state[w]
            optimizer.step(_quadratic_closure(optimizer, w))
        return w.detach().clone()

    assert torch.equal(run(False), run(True))


def test_misuse_gets_one_line():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="torch.optim optimizer"):
        SAM([w], base_optimizer="LBFGS")
    with pytest.raises(ConfigError, match="radius >= 0"):
        SAM([w], rho=-1.0)
    with pytest.raises(ConfigError, match="momentum"):
        SAM([w], base_optimizer="Adam", momentum=0.9)
    with pytest.raises(ConfigError, match="needs a closure"):
        SAM([w]).step()


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_lightning_drives_it_with_two_closure_calls_per_step(tiny_trainer_kwargs):
    calls = []

    class SAMRegressor(Regressor):
        def training_step(self, batch, batch_idx):
            calls.append(self.global_step)
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return SAM(self.parameters(), "SGD", rho=0.05, lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    task = SAMRegressor(torch.nn.Linear(3, 1))
    before = float(task.loss((x, y)).detach())
    L.Trainer(**dict(tiny_trainer_kwargs, max_steps=20)).fit(
        task, DataLoader(TensorDataset(x, y), batch_size=16)
    )
    assert calls == [s for s in range(20) for _ in range(2)]  # the closure twice per optimizer step
    assert float(task.loss((x, y)).detach()) < 0.05 * before


# the tdl command silences this notice (tdl_lightning.cli.main); TDLCLI built directly shows it
@pytest.mark.filterwarnings("ignore:.*configure_optimizers` will be overridden")
def test_the_cli_resolves_sam_by_name(in_tmp):
    from tdl_lightning.lightning_cli import TDLCLI

    cli = TDLCLI(
        args=[
            "--model=Regressor",
            "--model.model=torch.nn.Linear",
            "--model.model.in_features=4",
            "--model.model.out_features=1",
            "--data=TeacherStudent",
            "--data.input_dim=4",
            "--optimizer=SAM",
            "--optimizer.rho=0.1",
            "--optimizer.lr=0.05",
            "--optimizer.momentum=0.9",
            "--trainer.logger=false",
        ],
        run=False,
    )
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, SAM) and isinstance(optimizer.base_optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["rho"], group["lr"], group["momentum"], group["adaptive"]) == (0.1, 0.05, 0.9, False)
