"""The ``tdl`` command end to end: run directories, W&B offline files, config, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tdl_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
LENET = str(REPO / "experiments" / "lenet_mnist.yaml")
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


def _fit(*extra: str) -> Path:
    """Run ``tdl fit`` in the current directory and return the new run directory."""
    before = set(Path("runs").glob("*/*")) if Path("runs").exists() else set()
    main(["fit", "--config", LENET, *FAST, *extra])
    (new,) = set(Path("runs").glob("*/*")) - before
    return new


def _wandb_inspect(run_dir: Path, *flags: str) -> dict | list:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *flags, "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out) if "--summary" in flags else [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))
    try:
        yield _fit().resolve()
    finally:
        os.chdir(cwd)


def test_run_directory_holds_everything(lenet_run):
    assert lenet_run.parent.name == "lenet_mnist"
    for name in ("config.yaml", "metrics.csv", "summary.json", "hparams.yaml"):
        assert (lenet_run / name).is_file(), name
    assert list((lenet_run / "checkpoints").glob("*.ckpt"))
    assert list((lenet_run / "wandb").glob("offline-run-*/run-*.wandb"))
    summary = json.loads((lenet_run / "summary.json").read_text())
    assert summary["wandb"]["mode"] == "offline" and summary["global_step"] == 6
    rows = list(csv.DictReader((lenet_run / "metrics.csv").open()))
    logged = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert logged and logged[-1] == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)


def test_offline_wandb_run_reads_back_config_and_metrics(lenet_run):
    info = _wandb_inspect(lenet_run, "--summary")
    summary = json.loads((lenet_run / "summary.json").read_text())
    assert info["project"] == "tdl-lightning"
    assert info["name"] == f"lenet_mnist-{summary['run_id']}"
    assert {"lenet", "mnist", "Classifier", "LeNet5", "MNIST5k"} <= set(info["tags"])
    config = info["config"]
    assert config["model"]["class_path"] == "tdl_lightning.tasks.Classifier"
    assert config["model"]["init_args"]["model"]["class_path"] == "tdl_lightning.models.LeNet5"
    assert config["optimizer"]["init_args"]["lr"] == 0.003
    assert config["run"]["experiment"] == "lenet_mnist"
    assert info["summary"]["val/acc"] == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)
    records = _wandb_inspect(lenet_run)
    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["run_group"] == "lenet_mnist" and run_record["job_type"] == "fit"


def test_second_run_never_overwrites_the_first_and_repeats_its_metrics(lenet_run, in_tmp):
    again = _fit()
    assert again.resolve() != lenet_run and again.parent.name == lenet_run.parent.name
    first = json.loads((lenet_run / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    assert first["run_id"] != second["run_id"]
    assert first["metrics"] == second["metrics"]  # same seed, same metrics on CPU


def test_print_config_shows_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["fit", "--config", LENET, "--model.init_args.model.init_args.activation=relu", "--print_config"]
        )
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["model"]["init_args"]["activation"] == "relu"
    assert config["data"]["class_path"] == "tdl_lightning.data.MNIST5k"


def test_classes_by_short_name_and_lr_scheduler(in_tmp):
    run = _fit(
        "--model.init_args.model=DeepMLP",
        "--model.init_args.model.init_args.depth=3",
        "--model.init_args.model.init_args.width=64",
        "--optimizer=SGD",
        "--optimizer.lr=0.05",
        "--optimizer.momentum=0.9",
        "--lr_scheduler=StepLR",
        "--lr_scheduler.step_size=1",
        "--run.experiment=mlp_check",
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert run.parent.name == "mlp_check"
    assert config["model"]["init_args"]["model"]["class_path"] == "tdl_lightning.models.DeepMLP"
    assert config["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["optimizer"]["init_args"]["momentum"] == 0.9
    assert config["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.StepLR"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.max_epoch=3"], "did you mean --trainer.max_epochs"),
        (
            ["--config", str(REPO / "tests" / "data" / "misspelt_key.yaml")],
            "did you mean --trainer.max_epochs",
        ),
        (["--trainer.callbacks=NoSuchCallback"], "NoSuchCallback"),
        (["--model.init_args.model=LeNet7"], "'LeNet7' is not a known class name"),
        (["--model.init_args.model=DeepMLP", "--model.init_args.model.init_args.depth=-2"], "depth must be"),
        (
            ["--model.init_args.model=DeepMLP", "--model.init_args.model.init_args.init=he"],
            "derived for ReLU",
        ),
        (
            ["--data=MNIST", "--data.data_dir=nowhere", "--data.download=false"],
            "use the bundled offline subset",
        ),
        (["--trainer.accelerator=gpu"], "no CUDA GPU"),
        (["--ckpt_path=missing.ckpt"], "is not a file"),
    ],
)
def test_bad_input_is_one_clear_message(args, message, in_tmp, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", LENET, *FAST, *args])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tdl_command_exits_nonzero_without_traceback(in_tmp):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdl_lightning.cli",
            "fit",
            "--config",
            LENET,
            "--model.init_args.model=DeepMLP",
            "--model.init_args.model.init_args.width=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "tdl: error: DeepMLP width must be a whole number >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path("runs").exists()  # nothing was written for a run that could not start


EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
# model keys that come from the data module (TDLCLI's DATA_LINKS): no experiment states them
LINKED = {"num_classes", "input_dim", "in_channels", "input_size", "image_size", "input_shape", "problem"}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_prints_its_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


def _model_keys(section: dict) -> set[str]:
    keys = set((section.get("init_args") or {}).keys())
    inner = (section.get("init_args") or {}).get("model")
    return keys | (_model_keys(inner) if isinstance(inner, dict) else set())


@pytest.mark.parametrize(
    "config",
    [*EXPERIMENTS, *sorted((REPO / "experiments" / "sweeps" / "base").glob("*.yaml"))],
    ids=lambda p: p.stem,
)
def test_no_experiment_states_a_value_the_data_gives(config):
    model = yaml.safe_load(config.read_text())["model"]
    assert not _model_keys(model) & LINKED, f"{config.name}: state these in the data section only"


def _built(*args: str, tmp: Path):
    from tdl_lightning.lightning_cli import TDLCLI

    return TDLCLI(args=[*args, "--run.root", str(tmp), "--trainer.logger=false"], run=False)


@pytest.mark.filterwarnings("ignore:.*configure_optimizers` will be overridden")  # as `tdl` does
def test_the_data_module_sets_the_models_sizes_and_wins_over_a_stated_value(tmp_path):
    import torch

    cifar = str(REPO / "experiments" / "cnn_filters_cifar10.yaml")
    cli = _built("--config", cifar, "--model.init_args.model.init_args.in_channels=1", tmp=tmp_path)
    assert cli.model.model.conv1.in_channels == 3 and cli.model.num_classes == 10  # CIFAR-10: 3 x 32 x 32
    cli = _built("--config", cifar, "--data=MNIST5k", tmp=tmp_path)
    assert cli.model.model.conv1.in_channels == 1  # the same YAML on MNIST: 1 x 28 x 28
    ib = str(REPO / "experiments" / "information_plane.yaml")
    model = _built("--config", ib, tmp=tmp_path).model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (linears[0].in_features, linears[-1].out_features) == (12, 2)
    teacher = str(REPO / "experiments" / "linear_dynamics.yaml")
    sizes = ["--data.init_args.input_dim=5", "--data.init_args.output_dim=4"]
    cli = _built("--config", teacher, *sizes, tmp=tmp_path)
    linears = [m for m in cli.model.modules() if isinstance(m, torch.nn.Linear)]
    assert (linears[0].in_features, linears[-1].out_features) == (5, 4)
    pinn = _built("--config", str(REPO / "experiments" / "pinn_poisson.yaml"), tmp=tmp_path).model
    assert type(pinn.problem).__name__ == "Poisson2D" and pinn.model.fc1.in_features == 2


def test_saved_config_states_the_linked_values(lenet_run):
    config = yaml.safe_load((lenet_run / "config.yaml").read_text())
    assert config["model"]["init_args"]["num_classes"] == 10
    lenet = config["model"]["init_args"]["model"]["init_args"]
    assert (lenet["num_classes"], lenet["in_channels"], lenet["input_size"]) == (10, 1, 28)


def test_help_lists_every_subcommand_in_one_line_each(capsys):
    import re

    from lightning.pytorch.cli import LightningCLI

    from tdl_lightning.cli import _TOOLS

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in [*LightningCLI.subcommands(), *_TOOLS]:
        assert len(re.findall(rf"^  {name} +\S.+$", out, re.M)) == 1, name
    code = "import sys\nfrom tdl_lightning.cli import main\ntry:\n    main([])\nexcept SystemExit as e:\n"
    code += "    print(e.code, 'lightning' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.split() == ["2", "False"] and "compare" in proc.stderr  # no Lightning import for help


def test_a_logger_the_user_gives_is_added_to_the_runs_own(in_tmp):
    run = _fit("--trainer.logger=CSVLogger", "--trainer.logger.save_dir=mine", "--trainer.logger.name=extra")
    assert (run / "metrics.csv").is_file() and list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    (extra,) = Path("mine/extra").glob("version_*/metrics.csv")
    own = [r["val/acc"] for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/acc")]
    theirs = [r["val/acc"] for r in csv.DictReader(extra.open()) if r.get("val/acc")]
    assert own and own == theirs  # the same metrics reach both
    assert (run / "config.yaml").is_file() and (run / "checkpoints").is_dir()  # the run dir stays log_dir


def test_logger_false_turns_every_logger_off_and_the_run_still_reports(in_tmp, capsys):
    run = _fit("--trainer.logger=false")
    assert not (run / "metrics.csv").exists() and not (run / "wandb").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "val/acc" in summary["metrics"] and "wandb" not in summary
    assert "final metrics" in capsys.readouterr().out


from plugins.base import DiagnosticCallback, ProbeResult  # noqa: E402


class PickyProbe(DiagnosticCallback):
    """A plugin of a user's own that refuses a setting the way plain Python code does (ValueError)."""

    name = "picky"

    def __init__(self, threshold: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def probe(self, pl_module, batch) -> ProbeResult:
        loss = float(pl_module.loss(batch).detach())
        if loss > self.threshold:
            raise ValueError(f"the loss {loss:.2f} is above threshold={self.threshold}: raise the threshold")
        return ProbeResult(scalars={"loss": loss})


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("tdl:", "Traceback"))]


def test_a_plugin_refusing_its_setup_is_one_line_and_leaves_no_run(in_tmp, capsys):
    layer = ["--trainer.callbacks+=JacobianSpectrum", "--trainer.callbacks.output_layer=model.fc9"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", LENET, *FAST, *layer])
    assert exit_info.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith(
        "tdl: error: JacobianSpectrum(output_layer='model.fc9'): Classifier has no submodule 'model.fc9'"
    )
    assert not Path("runs").exists()


@pytest.mark.parametrize("plugin", ["LinearRegions", "tests.test_cli.PickyProbe"])
def test_a_plugin_failing_in_a_probe_is_one_line_and_marks_the_run_failed(plugin, in_tmp, capsys):
    if plugin == "LinearRegions":  # a segment of length zero: refused when it is probed
        settings = {"segments": [[[0.5] * 784, [0.5] * 784]], "plane_resolution": 0, "probe_size": 8}
        message, config = "LinearRegions: start and end are the same point", "expressivity_mnist.yaml"
    else:  # a ValueError raised by the plugin's own code
        settings, message, config = {"threshold": 0.0}, "PickyProbe: the loss", "lenet_mnist.yaml"
    settings.update(at_init=False, every_n_steps=3)
    Path("plugin.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": plugin, "init_args": settings}]}}))  # fmt: skip
    args = ["fit", "--config", str(REPO / "experiments" / config), "--config", "plugin.yaml", *FAST]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    (line,) = _stderr_lines(capsys)
    assert line.startswith(f"tdl: error: {message}")
    (run,) = Path("runs").glob("*/*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["global_step"] == 3
    assert message.split(": ")[1] in summary["error"]
    assert summary["resume"].startswith("tdl fit --resume") and not (run / ".lock").exists()


def test_tdl_debug_shows_a_plugins_value_error_with_its_traceback(in_tmp, monkeypatch):
    Path("plugin.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "tests.test_cli.PickyProbe", "init_args": {"threshold": -1.0}}]}}))  # fmt: skip
    monkeypatch.setenv("TDL_DEBUG", "1")
    with pytest.raises(ValueError, match="above threshold=-1.0"):
        main(["fit", "--config", LENET, "--config", "plugin.yaml", *FAST])
