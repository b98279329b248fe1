"""PINN task and PDE problems: references, residuals, samplers, bad configs, a run through ``tdl``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tdl_lightning.data.pde import (
    Burgers,
    Heat1D,
    PDECollocation,
    Poisson2D,
    burgers_cole_hopf,
    make_problem,
    partial_derivatives,
    sample_box,
)
from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DeepMLP
from tdl_lightning.optim import BFGS
from tdl_lightning.tasks import PINN

NU = 0.01 / math.pi
REPO = Path(__file__).resolve().parents[1]


def _burgers_fd_residual(nu_solution: float, nu_equation: float) -> float:
    """Max |u_t + u u_x - nu u_xx| by central differences (h = 1e-4) away from the shock."""
    h = 1e-4
    x = np.concatenate([np.linspace(-0.9, -0.2, 15), np.linspace(0.2, 0.9, 15)])[:, None]
    t = np.linspace(0.1, 0.9, 9)[None, :]

    def u(dx: float = 0.0, dt: float = 0.0) -> np.ndarray:
        return burgers_cole_hopf(x + dx, t + dt, nu_solution)

    u0 = u()
    u_t = (u(dt=h) - u(dt=-h)) / (2 * h)
    u_x = (u(dx=h) - u(dx=-h)) / (2 * h)
    u_xx = (u(dx=h) - 2 * u0 + u(dx=-h)) / h**2
    return float(np.abs(u_t + u0 * u_x - nu_equation * u_xx).max())


def test_cole_hopf_satisfies_burgers_away_from_the_shock():
    # FD truncation ~h^2 |u'''| and round-off ~eps/h^2 |u| are both below 1e-6 at |x| >= 0.2
    assert _burgers_fd_residual(NU, NU) < 1e-6
    # the check can fail: the same solution does not satisfy Burgers with another viscosity
    assert _burgers_fd_residual(NU, 2 * NU) > 1e-3


def test_cole_hopf_initial_and_boundary_values():
    x = np.linspace(-1, 1, 101)
    assert np.abs(burgers_cole_hopf(x, np.full_like(x, 1e-9), NU) + np.sin(np.pi * x)).max() < 1e-6
    t = np.linspace(0.01, 1, 50)
    for edge in (-1.0, 1.0):
        assert np.abs(burgers_cole_hopf(np.full_like(t, edge), t, NU)).max() < 1e-12


def test_cole_hopf_matches_adaptive_quadrature_at_the_shock():
    integrate = pytest.importorskip("scipy.integrate")

    def direct(x: float, t: float) -> float:
        def kernel(e: float) -> float:
            return math.exp(-math.cos(math.pi * (x - e)) / (2 * math.pi * NU) - 50 - e**2 / (4 * NU * t))

        opts = dict(limit=500, epsabs=0, epsrel=1e-13, points=[x - 1, x, x + 1])
        num = integrate.quad(lambda e: -math.sin(math.pi * (x - e)) * kernel(e), -1.5, 1.5, **opts)[0]
        return num / integrate.quad(kernel, -1.5, 1.5, **opts)[0]

    for x, t in [(0.005, 0.99), (0.03, 0.9), (-0.5, 0.3)]:
        assert abs(float(burgers_cole_hopf(np.array(x), np.array(t), NU)) - direct(x, t)) < 1e-12


@pytest.mark.parametrize("problem", [Poisson2D(kx=1, ky=2), Poisson2D(kx=3, ky=1), Heat1D(alpha=0.1)])
def test_manufactured_solutions_have_zero_residual(problem):
    x = problem.sample_interior(256, "sobol", seed=3).requires_grad_(True)
    u = problem.solution(x)
    residual = problem.residual(x, u, partial_derivatives(u, x, problem.derivatives, problem.coords))
    assert residual.abs().max() < 1e-10
    # the check can fail: a perturbed solution leaves a residual
    v = u + 0.01 * torch.sin(3 * x[:, :1]) * x[:, 1:2]
    wrong = problem.residual(x, v, partial_derivatives(v, x, problem.derivatives, problem.coords))
    assert wrong.abs().max() > 1e-3


@pytest.mark.parametrize("problem", [Burgers(), Poisson2D(), Heat1D()])
def test_hard_constraint_meets_the_conditions_exactly(problem):
    n = torch.randn(64, 1, dtype=torch.float64)
    xb = problem.sample_boundary(64, "uniform", seed=1)
    assert torch.allclose(problem.hard_constraint(xb, n), problem.boundary_value(xb), atol=1e-12)
    if problem.time_dependent:
        x0 = problem.sample_initial(64, "uniform", seed=1)
        assert torch.allclose(problem.hard_constraint(x0, n), problem.initial_value(x0), atol=1e-12)


def test_samplers():
    bounds = [(-1.0, 1.0), (0.0, 2.0)]
    for method in ("uniform", "lhs", "sobol"):
        pts = sample_box(128, bounds, method, seed=0)
        assert pts.shape == (128, 2) and pts.dtype == torch.float64
        assert (pts[:, 0] >= -1).all() and (pts[:, 0] <= 1).all() and (pts[:, 1] <= 2).all()
        assert torch.equal(pts, sample_box(128, bounds, method, seed=0))
        assert not torch.equal(pts, sample_box(128, bounds, method, seed=1))
    lhs = sample_box(50, bounds, "lhs", seed=2)
    strata = ((lhs[:, 1] / 2) * 50).floor().long()
    assert sorted(strata.tolist()) == list(range(50))


def test_collocation_batches_resample_until_frozen():
    dm = PDECollocation(
        "heat1d", n_interior=32, n_initial=4, n_boundary=4, steps_per_epoch=2, resample_every_n_epochs=1
    )
    loader = dm.train_dataloader()
    first = [b["x"] for b in loader]
    assert torch.equal(first[0], first[1])
    second = next(iter(loader))["x"]
    assert not torch.equal(first[0], second)
    dm.stop_resampling()
    assert torch.equal(next(iter(loader))["x"], second)


def _rad(**kwargs):
    args = dict(n_interior=400, candidates=8000, resample_every_n_epochs=1, adaptive="rad") | kwargs
    return PDECollocation("burgers", **args)


def test_rad_gathers_points_where_the_residual_is_large():
    """Residual 1 on the band |x| < 0.05 (5% of the domain), 0 elsewhere: with rad_c = 1 the density is
    20 + 1 inside and 1 outside, so about (21 * 0.05) / (21 * 0.05 + 0.95) = 53% of the points fall in the
    band (a uniform draw: 5%); with rad_c = 0 all of them do."""

    def band(x):
        return (x[:, :1].abs() < 0.05).double()

    dm = _rad()
    dm.attach_residual(band)
    share = float((dm.make_batch(epoch=1)["x"][:, 0].abs() < 0.05).double().mean())
    assert 0.40 < share < 0.65
    plain = float((dm.make_batch(epoch=0)["x"][:, 0].abs() < 0.05).double().mean())  # first draw: plain
    assert plain < 0.1
    only = _rad(rad_c=0.0)
    only.attach_residual(band)
    assert bool((only.make_batch(epoch=3)["x"][:, 0].abs() < 0.05).all())
    assert torch.equal(only.make_batch(epoch=3)["x"], only.make_batch(epoch=3)["x"])  # seeded


def test_rad_misuse_gets_clear_errors():
    with pytest.raises(ConfigError, match="adaptive 'mcmc'"):
        _rad(adaptive="mcmc")
    with pytest.raises(ConfigError, match="at least as many candidates"):
        _rad(candidates=100)
    with pytest.raises(ConfigError, match="resample_every_n_epochs >= 1"):
        _rad(resample_every_n_epochs=0)
    with pytest.raises(ConfigError, match="needs the PINN's residual"):
        _rad().make_batch(epoch=1)
    dead = _rad(rad_c=0.0)
    dead.attach_residual(lambda x: torch.zeros(len(x), 1))
    with pytest.raises(ConfigError, match="no usable density"):
        dead.make_batch(epoch=1)
    few = _rad(rad_c=0.0)  # 10 of 8,000 candidates carry weight: 400 cannot be drawn without replacement
    few.attach_residual(lambda x: (torch.arange(len(x)) < 10).double().unsqueeze(1))
    with pytest.raises(ConfigError, match="fewer than n_interior=400"):
        few.make_batch(epoch=1)


def test_reference_grids():
    points, values = Burgers().reference_grid()
    assert points.shape == (25600, 2) and values.shape == (25600, 1)
    assert float(points[:, 1].max()) == pytest.approx(0.99)
    points, values = Heat1D(amplitudes=[1.0]).reference_grid()
    assert torch.allclose(
        values[:, 0], torch.exp(-0.1 * math.pi**2 * points[:, 1]) * torch.sin(math.pi * points[:, 0])
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: make_problem("wave"), "unknown PDE problem 'wave'"),
        (lambda: make_problem("burgers", nu=-0.1), "nu must be a finite number > 0"),
        (lambda: make_problem("burgers", t_max=0.0), "domain of t is empty"),
        (lambda: make_problem("heat1d", length=-1.0), "domain of x is empty"),
        (lambda: make_problem("burgers", viscosity=0.1), "its parameters are ['nu', 't_max'"),
        (lambda: make_problem("poisson2d", kx=0.5), "whole number >= 1"),
        (lambda: PDECollocation("burgers", sampler="grid"), "unknown collocation sampler 'grid'"),
        (lambda: PDECollocation("burgers", n_interior=0), "n_interior must be a whole number >= 1"),
        (lambda: PINN(nn.Linear(2, 1), constraint="exact"), "unknown PINN constraint"),
        (lambda: PINN(nn.Linear(2, 1), loss_weights={"data": 1.0}), "loss_weights"),
        (lambda: PINN(nn.Linear(2, 1), adam_steps=0, lbfgs_steps=0), "nothing to train"),
        (lambda: PINN(nn.Linear(2, 1)).loss({"x": torch.zeros(2, 2)}), "PINN has no PDE problem"),
    ],
)
def test_bad_pde_config_gets_a_clear_error(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    assert words in str(info.value)


def _tiny_pinn(problem, constraint="soft", width=6, depth=2):
    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=width, depth=depth, output_dim=1, activation="tanh", init="xavier")
    return PINN(net, problem=problem, constraint=constraint)


def test_loss_terms_and_forward():
    dm = PDECollocation("burgers", n_interior=64, n_initial=16, n_boundary=16)
    batch = dm.make_batch()
    soft, hard = _tiny_pinn(dm.problem), _tiny_pinn(dm.problem, "hard")
    total = soft.loss(batch)
    assert sorted(soft._terms) == ["bc", "ic", "pde"]
    assert torch.isclose(total, sum(soft._terms.values()))
    hard.loss(batch)
    assert sorted(hard._terms) == ["pde"]
    assert torch.allclose(hard(batch["x_initial"]), batch["u_initial"])


class _LossOf(nn.Module):
    """``forward(batch) = task.loss(batch)``, so that ``functional_call`` can swap the parameters."""

    def __init__(self, task: PINN) -> None:
        super().__init__()
        self.task = task

    def forward(self, batch):
        return self.task.loss(batch)


def test_hessian_of_the_pinn_loss_matches_the_dense_hessian():
    hessian = pytest.importorskip("plugins.hessian")
    task = _tiny_pinn(Heat1D(), "soft", width=4, depth=1)  # 17 parameters
    batch = PDECollocation("heat1d", n_interior=16, n_initial=4, n_boundary=4).make_batch()
    wrapper = _LossOf(task)
    params = dict(wrapper.named_parameters())
    shapes = [p.shape for p in params.values()]

    def loss_of(flat):
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        state = {n: c.reshape(s) for n, c, s in zip(params, chunks, shapes, strict=True)}
        return torch.func.functional_call(wrapper, state, (batch,))

    dense = torch.autograd.functional.hessian(
        loss_of, torch.cat([p.detach().reshape(-1) for p in params.values()])
    )
    exact = torch.linalg.eigvalsh(dense).flip(0)[:2]
    values = hessian.hessian_eigenvalues(task, lambda m, b: m.loss(b), batch, k=2, tol=1e-8, max_iter=17)
    assert torch.allclose(values, exact, rtol=1e-6)


def _tdl(args, capsys):
    from tdl_lightning.cli import main

    main(args)
    return capsys.readouterr()


TINY = [
    "--model.init_args.adam_steps", "6",
    "--model.init_args.lbfgs_steps", "2",
    "--model.init_args.lbfgs_iters_per_step", "3",
    "--model.init_args.model.init_args.depth", "2",
    "--data.init_args.n_interior", "64",
    "--data.init_args.n_initial", "16",
    "--data.init_args.n_boundary", "16",
    "--data.init_args.steps_per_epoch", "4",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip


def _fit_heat(in_tmp, capsys, *extra):
    _tdl(["fit", "--config", str(REPO / "experiments/pinn_heat.yaml"), *TINY, *extra], capsys)
    (run_dir,) = list((in_tmp / "runs" / "pinn_heat").iterdir())
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_pinn_trains_through_the_cli_and_logs_rel_l2(in_tmp, capsys):
    run_dir, summary = _fit_heat(in_tmp, capsys, "--run.wandb", "false")
    assert summary["global_step"] == 8  # 6 Adam steps + 2 L-BFGS steps, then the task stops the trainer
    metrics = summary["metrics"]
    assert 0 < metrics["val/rel_l2"] < 2 and math.isfinite(metrics["train/loss"])
    assert {"train/loss_pde", "train/loss_ic", "train/loss_bc", "train/lbfgs_iterations"} <= set(metrics)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/rel_l2" in header and "train/loss" in header
    pictures = run_dir / "plugins" / "pinn"  # every figure of a run under plugins/<name>/
    assert summary["figures"] == ["plugins/pinn/"]  # the end-of-run report says where they went
    assert (pictures / "solution_step0000008.png").stat().st_size > 10_000
    saved = np.load(pictures / "step0000008.npz")
    rel = np.linalg.norm(saved["prediction"] - saved["reference"]) / np.linalg.norm(saved["reference"])
    assert rel == pytest.approx(metrics["val/rel_l2"], rel=1e-6)  # the final validation saw the final weights


@pytest.mark.slow
def test_pinn_pictures_reach_wandb(in_tmp, capsys):
    run_dir, summary = _fit_heat(in_tmp, capsys)
    assert summary["wandb"]["mode"] in ("offline", "dryrun")
    assert list(run_dir.glob("wandb/offline-run-*/files/media/images/pinn/solution_*.png"))


def test_cli_refuses_an_optimizer_section(in_tmp, capsys):
    args = ["fit", "--config", str(REPO / "experiments/pinn_poisson.yaml"), *TINY, "--run.wandb", "false"]
    with pytest.raises(SystemExit) as info:
        _tdl([*args, "--optimizer", "SGD", "--optimizer.lr", "0.1"], capsys)
    assert info.value.code == 2
    assert "PINN chooses its optimisers itself" in capsys.readouterr().err


@pytest.mark.parametrize("problem", [Burgers(), Poisson2D(kx=2, ky=1), Heat1D()])
@pytest.mark.parametrize("constraint", ["soft", "hard"])
def test_taylor_derivatives_match_autograd(problem, constraint):
    """The forward (Taylor-mode) residual equals the nested-autograd one, loss and weight gradients."""
    dm = PDECollocation(problem.name, n_interior=48, n_initial=8, n_boundary=8)
    dm.problem = problem
    batch = dm.make_batch()
    task = _tiny_pinn(problem, constraint, width=7, depth=3)
    assert task.use_taylor
    values, grads = [], []
    for use_taylor in (True, False):
        task.use_taylor = use_taylor
        loss = task.loss(batch)
        values.append(loss.detach())
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, task.parameters())]))
    assert torch.allclose(values[0], values[1], rtol=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_taylor_mode_is_chosen_only_where_it_applies():
    relu = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    assert not PINN(relu, problem=Burgers()).use_taylor  # auto falls back to autograd
    with pytest.raises(ConfigError, match="derivatives='taylor' needs an MLP"):
        PINN(relu, problem=Burgers(), derivatives="taylor")
    with pytest.raises(ConfigError, match="unknown PINN derivatives"):
        PINN(nn.Linear(2, 1), derivatives="jet")

    class Squared(Burgers):  # a hard constraint that is not affine in the network output
        def hard_constraint(self, x, n):
            return super().hard_constraint(x, n * n)

    net = DeepMLP(input_dim=2, width=4, depth=1, output_dim=1, activation="tanh", init="xavier")
    assert not PINN(net, problem=Squared(), constraint="hard").use_taylor
    assert PINN(net, problem=Squared(), constraint="soft").use_taylor
    with pytest.raises(ConfigError, match="affine in n"):
        PINN(net, problem=Squared(), constraint="hard", derivatives="taylor")


def test_hard_constraint_parts_are_cached_per_point_set():
    task = _tiny_pinn(Burgers(), "hard")
    x = Burgers().sample_interior(32)
    first = task.pde_residual(x)
    parts = task._parts[2]
    assert torch.equal(task.pde_residual(x), first) and task._parts[2] is parts
    task.pde_residual(x.clone())
    assert task._parts[2] is not parts
    y = task._parts[0]
    y[0, 0] = 0.5  # changed in place: computed afresh
    parts = task._parts[2]
    task.pde_residual(y)
    assert task._parts[2] is not parts


def test_benchmark_arguments_and_no_wandb():
    import subprocess
    import sys

    code = (
        "import sys; sys.argv = ['x']; import benchmarks.pinn_burgers as b; "
        "a = b.parse_args(['--accelerator', 'gpu', '--skip-peer', '--seeds', '0', '1', '2']); "
        "print(a.accelerator, a.skip_peer, a.seeds, b._resolve_accelerator('cpu'), 'wandb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["gpu", "True", "[0,", "1,", "2]", "cpu", "False"], out.stderr


def test_benchmark_merges_reports_of_both_sides(tmp_path, monkeypatch):
    """--merge runs nothing: the two sides' reports become one, with the per-seed ratios."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import pinn_burgers

    machine = {"load_average_at_start": [1.0, 1.0, 1.0]}
    ours = {"tdl_lightning": [dict(seed=s, seconds=10.0, cpu_seconds=9.0, rel_l2=1e-4) for s in (1, 0)]}
    peer = {"deepxde": [dict(seed=s, seconds=20.0, cpu_seconds=18.0, rel_l2=1e-3) for s in (0, 1)]}
    for name, runs in (("ours", ours), ("peer", peer)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"machine": machine, "runs": runs}))
    out = tmp_path / "merged.json"
    argv = ["--merge", str(tmp_path / "ours.json"), str(tmp_path / "peer.json"), "--output", str(out)]
    report = pinn_burgers.main(argv)
    assert json.loads(out.read_text())["runs"] == report["runs"]
    assert [r["seed"] for r in report["runs"]["tdl_lightning"]] == [0, 1]
    assert report["ratios"] == [
        {
            "seed": s,
            "time_ratio_ours_over_deepxde": 0.5,
            "cpu_time_ratio_ours_over_deepxde": 0.5,
            "error_ratio_ours_over_deepxde": pytest.approx(0.1),
        }
        for s in (0, 1)
    ]
    assert report["goal_met"] and len(report["merged_from"]) == 2


def _fit_weights(tiny_trainer_kwargs, **task_kwargs):
    import lightning as L

    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    task = PINN(net, constraint="hard", adam_steps=3, lbfgs_steps=2, lbfgs_iters_per_step=5, **task_kwargs)
    data = PDECollocation("burgers", n_interior=64, n_initial=8, n_boundary=8, steps_per_epoch=10)
    kwargs = dict(tiny_trainer_kwargs, max_steps=-1, max_epochs=-1, limit_val_batches=0)
    L.Trainer(**kwargs).fit(task, data)
    return task, torch.cat([p.detach().reshape(-1) for p in task.model.parameters()])


@pytest.mark.parametrize("own", [False, True])
def test_pinn_pictures_go_through_the_plugin_base(tiny_trainer_kwargs, tmp_path, own):
    """The task attaches SolutionPictures (every plot_every_n_epochs epochs and at the end) unless the
    trainer has one; its figures and arrays land in plugins/pinn/ like every plugin's."""
    import lightning as L

    from plugins.pinn_pictures import SolutionPictures

    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    task = PINN(net, constraint="hard", adam_steps=4, plot_every_n_epochs=2)
    data = PDECollocation("heat1d", n_interior=32, n_initial=8, n_boundary=8, steps_per_epoch=1)
    callbacks = [SolutionPictures(every_n_epochs=3)] if own else []
    trainer = L.Trainer(**dict(tiny_trainer_kwargs, max_steps=-1, max_epochs=-1), callbacks=callbacks)
    trainer.fit(task, data)
    (pictures,) = [cb for cb in trainer.callbacks if isinstance(cb, SolutionPictures)]
    assert pictures.every_n_epochs == (3 if own else 2)
    folder = tmp_path / "plugins" / "pinn"
    steps = [3, 4] if own else [2, 4]
    assert sorted(p.name for p in folder.glob("*.png")) == [f"solution_step{s:07d}.png" for s in steps]
    saved = np.load(folder / "step0000004.npz")
    axes, u, reference = task.grid_prediction()
    assert np.allclose(saved["prediction"], u) and np.array_equal(saved["reference"], reference)
    assert np.array_equal(saved["axis0"], axes[0]) and np.array_equal(saved["axis1"], axes[1])


@pytest.mark.parametrize("quasi_newton", ["lbfgs", "bfgs"])
def test_lbfgs_on_a_cpu_copy_follows_the_same_path(tiny_trainer_kwargs, quasi_newton):
    """lbfgs_device='cpu' (the GPU path: (L-)BFGS on a CPU copy of the weights) takes the same steps."""
    plain, w_plain = _fit_weights(tiny_trainer_kwargs, lbfgs_device="model", quasi_newton=quasi_newton)
    shadow, w_shadow = _fit_weights(tiny_trainer_kwargs, lbfgs_device="cpu", quasi_newton=quasi_newton)
    assert shadow._shadow and not plain._shadow
    assert plain.lbfgs_iterations == shadow.lbfgs_iterations == 10
    assert torch.allclose(w_plain, w_shadow, rtol=1e-10, atol=1e-12)
    torch.manual_seed(0)
    start = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    assert (w_plain - torch.cat([p.reshape(-1) for p in start.double().parameters()])).abs().max() > 1e-3


@pytest.mark.parametrize("freeze_points", [True, False])
def test_bfgs_phase_trains_on_fresh_or_frozen_points(tiny_trainer_kwargs, freeze_points):
    """quasi_newton='bfgs' runs its iterations; freeze_points=False keeps the data module resampling
    (here residual-weighted, adaptive='rad')."""
    import lightning as L

    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    task = PINN(
        net, constraint="hard", adam_steps=0, lbfgs_steps=3, lbfgs_iters_per_step=5, quasi_newton="bfgs",
        freeze_points=freeze_points, problem=Burgers(),
    )  # fmt: skip
    data = PDECollocation(
        "burgers", n_interior=64, steps_per_epoch=1, resample_every_n_epochs=1, adaptive="rad", candidates=512
    )
    first = data.make_batch()["x"]
    before = float(task.loss({"x": first}).detach())
    L.Trainer(**dict(tiny_trainer_kwargs, max_steps=-1, max_epochs=-1, limit_val_batches=0)).fit(task, data)
    assert isinstance(task.optimizers()[1].optimizer, BFGS)
    assert task.lbfgs_iterations == 15 and float(task.loss({"x": first}).detach()) < before
    loader = data.train_dataloader()
    assert data.residual == task.residual_at  # the PINN handed its residual over at setup
    assert loader.frozen is freeze_points
    assert torch.equal(loader.batch["x"], first) is freeze_points


def test_unknown_quasi_newton_and_too_many_weights_get_clear_errors():
    with pytest.raises(ConfigError, match="quasi_newton 'adam'.*lbfgs"):
        PINN(nn.Linear(2, 1), problem=Burgers(), quasi_newton="adam")
    wide = DeepMLP(input_dim=2, width=200, depth=2, output_dim=1, activation="tanh")
    task = PINN(wide, problem=Burgers(), quasi_newton="bfgs", lbfgs_steps=1)
    with pytest.raises(ConfigError, match="use quasi_newton: lbfgs"):
        task.configure_optimizers()


@pytest.mark.slow  # ~11 s on 2 CPU cores (torch.compile)
def test_compiled_training_follows_the_eager_path(tiny_trainer_kwargs):
    """compile=True: the same Adam and L-BFGS steps as eager evaluation (float64, to rounding)."""
    import pickle

    eager, w_eager = _fit_weights(tiny_trainer_kwargs)
    compiled, w_compiled = _fit_weights(tiny_trainer_kwargs, compile=True)
    assert callable(compiled._compiled)  # it compiled (no fallback)
    assert eager.lbfgs_iterations == compiled.lbfgs_iterations == 10
    assert torch.allclose(w_eager, w_compiled, rtol=1e-9, atol=1e-12)
    assert pickle.loads(pickle.dumps(compiled))._compiled is None  # what ddp_spawn sends: no compiled code


def test_compile_needs_the_taylor_residual():
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh")
    with pytest.raises(ConfigError, match="compile: false"):
        PINN(net, problem=Burgers(), derivatives="autograd", compile=True)
    relu = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="relu")
    with pytest.raises(ConfigError, match="not a tanh MLP"):
        PINN(relu, problem=Burgers(), compile=True)


def test_a_failed_compile_warns_and_trains_uncompiled(monkeypatch):
    def no_backend(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", no_backend)
    task = _tiny_pinn(Burgers(), "hard")
    task.compile_residual = True
    batch = {"x": Burgers().sample_interior(32)}
    eager = task.loss(batch)
    with task._optimiser_evaluations(), pytest.warns(UserWarning, match="InvalidCxxCompiler.*uncompiled"):
        assert torch.equal(task.loss(batch), eager)
    with task._optimiser_evaluations():  # no second attempt, no second warning
        assert torch.equal(task.loss(batch), eager) and task._compiled is False


def test_burgers_recipe_config_trains_through_the_cli(in_tmp, capsys):
    args = ["fit", "--config", str(REPO / "experiments/pinn_burgers.yaml"), *TINY, "--run.wandb", "false"]
    _tdl(args, capsys)
    (run_dir,) = list((in_tmp / "runs" / "pinn_burgers").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 8 and 0 < summary["metrics"]["val/rel_l2"] < 2


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_quasi_newton_progress_reaches_the_progress_bar(tiny_trainer_kwargs, capsys, bar):
    """One L-BFGS step runs many iterations: meanwhile the progress bar shows ``qn_iter`` and ``qn_loss``
    (TQDM: in its postfix, here written to a captured stdout, no terminal; Rich: in its metrics column),
    shown at the first evaluation and then at most every 0.1 s; the counts rise to the phase's total."""
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    task = PINN(
        net, constraint="hard", adam_steps=2, lbfgs_steps=1, lbfgs_iters_per_step=20, problem=Burgers()
    )
    drawn, shown_loss = [], []
    draw = task._progress_bar

    def recording(trainer, module, iterations, loss):
        drawn.append((iterations, loss, draw(trainer, module, iterations, loss)))
        if bar == "rich" and drawn[-1][2]:
            shown_loss.append(trainer.progress_bar_callback._metric_component._metrics["qn_loss"])
        return drawn[-1][2]

    task._progress_bar = recording
    data = PDECollocation("burgers", n_interior=64, n_initial=8, n_boundary=8, steps_per_epoch=10)
    callback = TQDMProgressBar() if bar == "tqdm" else RichProgressBar()
    kwargs = dict(
        tiny_trainer_kwargs, enable_progress_bar=True, max_steps=-1, max_epochs=-1, callbacks=[callback]
    )
    kwargs["limit_val_batches"] = 0
    L.Trainer(**kwargs).fit(task, data)
    out = capsys.readouterr().out
    if bar == "tqdm":
        assert "qn_iter=" in out and "qn_loss=" in out
    else:
        assert "qn_iter" in out and shown_loss and shown_loss[0] == f"{drawn[0][1]:.3e}"
    iterations = [i for i, _, _ in drawn]
    assert drawn[0][2] and len(drawn) > task.lbfgs_iterations >= 10  # one call per loss evaluation
    assert iterations == sorted(iterations) and iterations[-1] == task.lbfgs_iterations
    assert all(math.isfinite(loss) for _, loss, _ in drawn)
    assert drawn[-1][1] < drawn[0][1]  # the loss the bar shows falls


def test_optimiser_phases_stop_on_convergence_or_when_another_process_stops():
    """A quasi-Newton step that makes no iteration (converged) ends training; under DDP the decision goes
    through ``stop_together``, so a stop taken by another process ends this one's training too."""
    from tdl_lightning.tasks.pinn_phases import OptimiserPhases, make_quasi_newton

    w = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))

    def evaluate():
        loss = (w - 1).square().sum()
        loss.backward()
        return loss

    adam = torch.optim.Adam([w], lr=0.1)
    lbfgs = make_quasi_newton("lbfgs", [w], iters_per_step=3, history=5, dtype=torch.float64)
    asked = []
    phases = OptimiserPhases(1, 5, stop_together=lambda stop: asked.append(stop) or stop)
    assert phases.step(0, adam, lbfgs, evaluate) is False and asked == []  # Adam: nothing to agree on
    assert phases.step(1, adam, lbfgs, evaluate) is False and asked == [False]
    done = phases.iterations
    assert 1 <= done <= 3
    with torch.no_grad():
        w.fill_(1.0)  # at the minimum: the next step makes no iteration
    assert phases.step(2, adam, lbfgs, evaluate) is True and asked == [False, True]
    assert phases.iterations == done
    w2 = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    lbfgs2 = make_quasi_newton("lbfgs", [w2], iters_per_step=1, history=5, dtype=torch.float64)
    elsewhere = OptimiserPhases(0, 5, stop_together=lambda stop: True)  # another process converged

    def evaluate2():
        loss = (w2 - 1).square().sum() + w2.pow(4).sum()
        loss.backward()
        return loss

    assert elsewhere.step(0, None, lbfgs2, evaluate2) is True and elsewhere.iterations == 1
