"""Mode connectivity: the Bezier curve's end points, its training, and ``tdl connect`` on two real runs."""

from __future__ import annotations

import json

import pytest
import torch

from tdl_lightning.cli import main
from tdl_lightning.connect import barrier, bezier_point, fit_bezier_curve, line_point
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Regressor

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(seed: int, x, y, steps: int = 300):
    torch.manual_seed(seed)
    task = Regressor(DeepMLP(input_dim=3, width=16, depth=1, output_dim=1, activation="tanh"))
    optimizer = torch.optim.Adam(task.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        task.loss((x, y)).backward()
        optimizer.step()
    return task, {name: p.detach().clone() for name, p in task.named_parameters()}


def test_the_curve_ends_at_the_solutions_exactly():
    torch.manual_seed(0)
    a, b, c = ({"w": torch.randn(5, 3), "b": torch.randn(5)} for _ in range(3))
    for name in a:
        assert torch.equal(bezier_point(a, c, b, 0.0)[name], a[name])
        assert torch.equal(bezier_point(a, c, b, 1.0)[name], b[name])
        assert torch.equal(line_point(a, b, 0.0)[name], a[name])
        assert torch.equal(line_point(a, b, 1.0)[name], b[name])


def test_training_the_curve_lowers_its_midpoint_loss_and_keeps_the_ends():
    """Two tanh nets fitted from different seeds: the straight line's midpoint is worse than either
    end; curve training brings the loss at phi(1/2) down, epoch after epoch."""
    torch.manual_seed(0)
    x = torch.randn(128, 3)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:]
    task, theta_a = _trained(1, x, y)
    _, theta_b = _trained(2, x, y)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    ends = [float(task.criterion(torch.func.functional_call(task, w, (x,)), y)) for w in (theta_a, theta_b)]
    control, midpoint = fit_bezier_curve(task, theta_a, theta_b, batches, epochs=30, lr=0.05)
    assert midpoint[0] > max(ends)  # the line's midpoint (the untrained curve's) is a barrier
    assert midpoint[-1] < 0.5 * midpoint[0]
    assert all(torch.equal(bezier_point(theta_a, control, theta_b, 1.0)[k], theta_b[k]) for k in theta_b)


def test_barrier_is_the_height_above_the_chord():
    assert barrier([0.0, 0.5, 1.0], [0.2, 0.2, 0.2]) == 0.0
    assert barrier([0.0, 0.25, 1.0], [1.0, 2.0, 0.0]) == pytest.approx(1.25)


def test_tdl_connect_on_two_runs(in_tmp, capsys):
    fit = [
        "fit",
        "--model=Regressor",
        "--model.model=DeepMLP",
        "--model.model.input_dim=4",
        "--model.model.width=8",
        "--model.model.depth=1",
        "--model.model.output_dim=1",
        "--data=TeacherStudent",
        "--data.num_samples=160",
        "--data.input_dim=4",
        "--data.batch_size=32",
        "--trainer.max_epochs=3",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--run.wandb=false",
        "--run.experiment=two",
    ]
    main([*fit, "--seed_everything=1"])
    main([*fit, "--seed_everything=2"])
    run_a, run_b = sorted((in_tmp / "runs" / "two").iterdir())
    main(["connect", str(run_a), str(run_b), "--epochs", "3", "--points", "5", "--output", "out"])
    report = json.loads((in_tmp / "out" / "connect.json").read_text())
    assert report["curve"]["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert report["line"]["train_loss"][0] == pytest.approx(report["curve"]["train_loss"][0], rel=1e-12)
    assert report["line"]["val_accuracy"] is None  # regression: no accuracy
    assert (in_tmp / "out" / "connect.png").is_file() and (in_tmp / "out" / "control_point.pt").is_file()
    assert "Bezier curve : barrier" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a run directory that is not one: one line, exit 2
        main(["connect", str(in_tmp), str(run_b)])
    assert capsys.readouterr().err.count("\n") == 1
    # a run of a class that cannot be imported here (a user's module off the path): one line, exit 2
    config = run_b / "config.yaml"
    config.write_text(config.read_text().replace("tdl_lightning.tasks.", "gone_module."))
    with pytest.raises(SystemExit) as info:
        main(["connect", str(run_a), str(run_b)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "cannot be rebuilt from config.yaml (No module named 'gone_module')" in err
