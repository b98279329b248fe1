"""``tdl_lightning.runs.resume`` and real runs through ``tdl``: resume in place, interrupts, a reused id,
bad input, kill -9."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tdl_lightning.cli import main
from tdl_lightning.data import MNIST5k
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import unfinished_runs, write_json
from tdl_lightning.runs.resume import check_training_left, latest_checkpoint, resolve_last, resume_arguments

REPO = Path(__file__).resolve().parents[2]
LENET = str(REPO / "experiments" / "lenet_mnist.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
FAST = ["--config", LENET, "--trainer.max_epochs=1", "--trainer.limit_train_batches=6",
        "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=1", *QUIET]  # fmt: skip
TDL = [sys.executable, "-m", "tdl_lightning.cli"]
EPOCHS, BATCHES = 5, 40  # of the subprocess runs
STEPS = EPOCHS * BATCHES


def _env() -> dict[str, str]:
    env = dict(
        os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true"
    )
    env.pop("WANDB_SERVICE", None)  # each run its own W&B service
    env.pop("WANDB_RUN_ID", None)
    return env


def _files(run_dir: Path) -> dict[str, str]:
    """Every file's hash, but W&B's service log: this test process's W&B service writes it while alive."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "debug-core.log"
    }


def _train_steps(run_dir: Path) -> list[int]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return [int(r["step"]) for r in rows if r.get("train/loss_step")]


def _wandb_train_steps(offline_run: Path) -> list[int]:
    """The ``trainer/global_step`` of every W&B history record with a training loss, in order."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
        capture_output=True, text=True, check=True, env=_env(),
    ).stdout  # fmt: skip
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    items = [r["history"]["item"] for r in records if r.get("type") == "history"]
    return [int(item["trainer/global_step"]) for item in items if "train/loss_step" in item]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished 6-step run, id ``base``, in a module-wide folder."""
    root = tmp_path_factory.mktemp("resume")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", *FAST, "--run.id=base"])
    finally:
        os.chdir(cwd)
    return root / "runs" / "lenet_mnist" / "base"


def test_the_wandb_service_is_shut_down_when_main_returns(base_run):
    # wandb.finish only informs the service, which closes the run's files after it has returned:
    # main() waits for the service to stop, so nothing writes into the run directory after it
    from wandb.sdk import wandb_setup

    assert (base_run / "summary.json").is_file()
    assert wandb_setup._singleton is None


def test_a_reused_run_id_is_refused_and_changes_no_file(base_run, capsys, monkeypatch):
    monkeypatch.chdir(base_run.parents[2])
    before = _files(base_run)
    for how in (["--run.id=base"], []):
        if not how:
            monkeypatch.setenv("WANDB_RUN_ID", "base")
        with pytest.raises(SystemExit) as info:
            main(["fit", *FAST, *how])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert (
            "tdl: error: run base already exists" in err
            and "tdl fit --resume" in err
            and "Traceback" not in err
        )
    assert _files(base_run) == before


def test_a_fit_with_nothing_left_to_train_is_refused_and_changes_no_file(base_run, capsys, monkeypatch):
    # base_run finished its max_epochs=1: resuming it as it is, or starting a new run from its
    # checkpoint with the same limit, would train nothing and end with no metrics; Lightning would
    # say so only after the run's summary and W&B files were rewritten
    monkeypatch.chdir(base_run.parents[2])
    before = _files(base_run)
    checkpoint = latest_checkpoint(base_run)
    for argv in (
        ["fit", "--resume", str(base_run)],
        ["fit", *FAST, "--run.id=fresh", f"--ckpt_path={checkpoint}"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "has trained 1 epoch (step 6) and trainer.max_epochs is 1" in err
        assert "give a larger --trainer.max_epochs (e.g. 2)" in err
    assert _files(base_run) == before and not (base_run.parent / "fresh").exists()


def test_tdl_test_reports_the_checkpoint_it_evaluated(base_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the test run's own directory goes here
    checkpoint = base_run / "checkpoints" / "last.ckpt"  # the fit's best is another file
    assert checkpoint.is_file() and _summary(base_run)["best_checkpoint"] != str(checkpoint)
    main(["test", "--config", LENET, f"--ckpt_path={checkpoint}", "--trainer.limit_test_batches=2", *QUIET])
    assert f"checkpoint    : {checkpoint} (evaluated)" in capsys.readouterr().out
    (tested,) = (tmp_path / "runs" / "lenet_mnist").iterdir()
    summary = _summary(tested)
    assert (summary["subcommand"], summary["checkpoint"]) == ("test", str(checkpoint))
    assert "best_checkpoint" not in summary and "test/acc" in summary["metrics"]


def test_evaluations_take_last_and_best_from_the_experiments_runs(base_run, tmp_path, capsys, monkeypatch):
    # an evaluation is a run of its own with no checkpoint: Lightning's `last` tested the untrained
    # weights (with a warning) and `best` failed with a traceback
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["test", "--config", LENET, "--ckpt_path=best", *QUIET])
    assert info.value.code == 2
    assert "--ckpt_path best: no finished fit of lenet_mnist" in capsys.readouterr().err
    copy = tmp_path / "runs" / "lenet_mnist" / "base"
    shutil.copytree(base_run, copy, ignore=shutil.ignore_patterns(".lock"))
    for alias, expected in (("best", _summary(base_run)["best_checkpoint"]), ("last", "last.ckpt")):
        main(["test", "--config", LENET, f"--ckpt_path={alias}", "--trainer.limit_test_batches=2", *QUIET])
        assert f"--ckpt_path {alias}: " in capsys.readouterr().err
        (tested,) = (p for p in (tmp_path / "runs" / "lenet_mnist").iterdir() if p.name != "base")
        evaluated = _summary(tested)["checkpoint"]
        assert evaluated.endswith(Path(expected).name) and "/base/checkpoints/" in evaluated
        assert _summary(tested)["metrics"]["test/acc"] > 0.3  # trained weights (the initial ones: 0.15)
        shutil.rmtree(tested)
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, "--ckpt_path=best"])
    assert info.value.code == 2 and "for tdl fit give `last`" in capsys.readouterr().err


def test_tdl_predict_writes_what_the_checkpoint_predicts(base_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = base_run / "checkpoints" / "last.ckpt"
    main(["predict", "--config", LENET, f"--ckpt_path={checkpoint}", *QUIET])
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs" / "lenet_mnist").iterdir()
    summary = _summary(run_dir)
    assert (summary["subcommand"], summary["status"]) == ("predict", "finished")
    assert summary["checkpoint"] == str(checkpoint)
    assert summary["predictions"]["rows"] == 500 and "predictions.pt (500 rows)" in out
    written = torch.load(run_dir / "predictions.pt", weights_only=True)
    assert written["predictions"].shape == (500,) and sorted(written["indices"].tolist()) == list(range(500))
    # the predict split is the test split: the predicted classes score what `tdl test` reports
    data = MNIST5k(val_fraction=0.1, test_fraction=0.1)
    data.setup()
    labels = data.splits["test"][1][written["indices"]]
    accuracy = (written["predictions"] == labels).double().mean().item()
    main(["test", "--config", LENET, f"--ckpt_path={checkpoint}", *QUIET])
    (tested,) = (p for p in (tmp_path / "runs" / "lenet_mnist").iterdir() if p != run_dir)
    assert _summary(tested)["metrics"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)


def test_training_left_counts_as_lightning_does():
    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 4}}}}
    at = {"loops": loops, "global_step": 120}
    check_training_left(at, "c.ckpt", 5, -1)
    check_training_left(at, "c.ckpt", None, -1)  # Lightning's default: 1000 epochs
    check_training_left(at, "c.ckpt", None, 121)  # max_steps set: no epoch limit
    check_training_left(at, "c.ckpt", -1, -1)
    check_training_left({"state_dict": {}}, "c.ckpt", 1, 1)  # no loops: Lightning decides
    with pytest.raises(ConfigError, match=r"max_epochs is 4: .* --trainer.max_epochs \(e.g. 6\)"):
        check_training_left(at, "c.ckpt", 4, -1)
    with pytest.raises(ConfigError, match=r"max_steps is 100: .* --trainer.max_steps \(e.g. 220\)"):
        check_training_left(at, "c.ckpt", None, 100)


def test_training_left_counts_the_time_of_lightnings_timer():
    # a run stopped by --trainer.max_time saves its Timer's training seconds: a fit from it with the
    # same limit would stop at once (and rewrite the summary with no metrics)
    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 10}}}}
    timer = {"Timer": {"time_elapsed": {"train": 5.03, "validate": 0.02}}}
    at = {"loops": loops, "global_step": 675, "callbacks": timer}
    check_training_left(at, "c.ckpt", 20, -1)  # no max_time: the epochs decide
    check_training_left(at, "c.ckpt", 20, -1, "00:00:00:06")
    check_training_left(at, "c.ckpt", 20, -1, {"minutes": 1})
    check_training_left({**at, "callbacks": {}}, "c.ckpt", 20, -1, "00:00:00:05")  # no timer saved
    check_training_left(at, "c.ckpt", 20, -1, "5 seconds")  # not a duration: Lightning says so later
    for limit in ("00:00:00:05", {"seconds": 3}, timedelta(seconds=5)):
        with pytest.raises(ConfigError) as info:
            check_training_left(at, "c.ckpt", 20, -1, limit)
        message = str(info.value)
        assert "c.ckpt has trained for 00:00:00:05 (step 675) and trainer.max_time is 00:00:00:0" in message
        assert message.endswith("give a larger --trainer.max_time (e.g. 00:00:01:08)")


# the copied run's checkpoint names the original folder, so Lightning says its dirpath changed
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_ckpt_path_last_continues_the_unfinished_run_in_place(base_run, monkeypatch, capsys):
    root = base_run.parents[2]
    monkeypatch.chdir(root)
    run_dir = base_run.parent / "cut"
    shutil.copytree(base_run, run_dir, ignore=shutil.ignore_patterns(".lock"))
    (run_dir / "summary.json").unlink()  # as a run killed after its first checkpoint
    main(["fit", *FAST, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert "--ckpt_path last: continuing run" in capsys.readouterr().err
    assert sorted(p.name for p in base_run.parent.iterdir()) == ["base", "cut"]  # no new run directory
    assert _train_steps(run_dir) == list(range(12))  # appended, each step once
    summary = _summary(run_dir)
    assert (summary["status"], summary["global_step"], summary["run_id"]) == ("finished", 12, "cut")
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # the resumed W&B run holds all of the history
    assert len(list((run_dir / "wandb" / "superseded").glob("offline-run-*"))) == 1  # the first, kept aside
    assert _wandb_train_steps(offline) == list(range(12))
    assert not (run_dir / ".lock").exists()
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, "--ckpt_path=last"])
    assert info.value.code == 2 and "no unfinished run of lenet_mnist" in capsys.readouterr().err


def _truncated(tmp: Path, base_run: Path) -> str:
    (checkpoint,) = (base_run / "checkpoints").glob("epoch=*.ckpt")
    (tmp / "cut.ckpt").write_bytes(checkpoint.read_bytes()[:5000])
    return str(tmp / "cut.ckpt")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_ckpt", "is not a tdl checkpoint"),
        ("text_ckpt", "is not a tdl checkpoint"),
        ("truncated_ckpt", "is not a tdl checkpoint"),
        ("blank_ckpt_path", "is not a file"),
        ("negative_lr", "optimizer AdamW: Invalid learning rate: -1.0"),
        ("root_is_a_file", "pick a writable folder with --run.root"),
        ("resume_nothing", "not a run directory"),
        # Lightning's own checks of the Trainer's options, raised inside Trainer(...)
        ("fsdp_on_cpu", "trainer: The strategy `fsdp` requires a GPU accelerator"),
        ("unknown_strategy", "trainer: You selected an invalid strategy name: `strategy='nonsense'`"),
        ("negative_devices", "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
        ("no_nodes", "trainer: `num_nodes` must be a positive integer, but got 0"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_directory(case, message, base_run, in_tmp, capsys):
    (in_tmp / "empty.ckpt").write_bytes(b"")
    (in_tmp / "notes.ckpt").write_text("not a checkpoint\n")
    (in_tmp / "afile").write_text("x")
    args = {
        "empty_ckpt": ["--ckpt_path", str(in_tmp / "empty.ckpt")],
        "text_ckpt": ["--ckpt_path", str(in_tmp / "notes.ckpt")],
        "truncated_ckpt": ["--ckpt_path", _truncated(in_tmp, base_run)] if case == "truncated_ckpt" else [],
        "blank_ckpt_path": ["--ckpt_path", ""],
        "negative_lr": ["--optimizer.lr", "-1"],
        "root_is_a_file": ["--run.root", str(in_tmp / "afile")],
        "resume_nothing": ["--resume", str(in_tmp)],
        "fsdp_on_cpu": ["--trainer.strategy=fsdp", "--trainer.accelerator=cpu"],
        "unknown_strategy": ["--trainer.strategy=nonsense"],
        "negative_devices": ["--trainer.devices=-5", "--trainer.accelerator=cpu"],
        "no_nodes": ["--trainer.num_nodes=0"],
    }[case]
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, *args])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert message in err and "Traceback" not in err and "weights_only=False" not in err
    assert err.count("tdl: error:") == 1
    assert not (in_tmp / "runs").exists()


def test_a_failed_start_leaves_no_run_directory(in_tmp, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated: out of memory in the first step")

    monkeypatch.setattr("tdl_lightning.tasks.Classifier.training_step", broken)
    with pytest.raises(torch.OutOfMemoryError):
        main(["fit", *FAST])
    assert not (in_tmp / "runs").exists()


def _start(run_id: str, cwd: Path, *extra: str) -> subprocess.Popen[bytes]:
    # 5 epochs of 40 steps: long enough that a signal sent at the first checkpoint finds it training
    args = [
        *FAST,
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={BATCHES}",
        f"--run.id={run_id}",
        *extra,
    ]
    log = (cwd / f"{run_id}.log").open("wb")
    return subprocess.Popen([*TDL, "fit", *args], cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(process: subprocess.Popen[bytes], run_dir: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists():
        assert process.poll() is None, (run_dir.parent.parent.parent / f"{run_dir.name}.log").read_text()[
            -2000:
        ]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)


def _resume(run_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TDL, "fit", "--resume", str(run_dir.relative_to(cwd))],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip


@pytest.mark.slow  # two `tdl` processes: ~95 s on the loaded 2-core machine
def test_ctrl_c_saves_a_checkpoint_and_resume_continues_in_place(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "lenet_mnist" / "ctrlc"
    process = _start("ctrlc", tmp_path)
    try:
        _wait_for_checkpoint(process, run_dir)
        # a second fit with the same id while the first runs: refused, the first untouched
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as info:
            main(["fit", *FAST, "--run.id=ctrlc"])
        assert info.value.code == 2 and f"being written by process {process.pid}" in capsys.readouterr().err
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    log = (tmp_path / "ctrlc.log").read_text()
    summary = _summary(run_dir)
    assert (
        summary["status"] == "interrupted"
        and summary["resume"] == f"tdl fit --resume {run_dir.relative_to(tmp_path)}"
    )
    assert "resume with   : tdl fit --resume" in log and "Traceback" not in log
    stopped = summary["global_step"]
    assert BATCHES <= stopped < STEPS
    assert _train_steps(run_dir) == list(range(stopped))  # every step up to the interrupt, once
    assert not (run_dir / ".lock").exists()

    done = _resume(run_dir, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-5].startswith("  final metrics")  # the report ends the output
    summary = _summary(run_dir)
    assert (summary["status"], summary["global_step"], summary["run_id"]) == ("finished", STEPS, "ctrlc")
    steps = _train_steps(run_dir)
    assert len(steps) == len(set(steps)) and set(range(stopped)) <= set(steps) and max(steps) == STEPS - 1
    (offline,) = run_dir.glob("wandb/offline-run-*")
    assert _wandb_train_steps(offline) == steps
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["ctrlc"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_slurm_signals_stop_at_a_batch_with_a_checkpoint(signum, tmp_path):
    run_dir = tmp_path / "runs" / "lenet_mnist" / "sig"
    process = _start("sig", tmp_path)
    try:
        _wait_for_checkpoint(process, run_dir)
        process.send_signal(signum)
        assert process.wait(timeout=120) == 128 + signum
    finally:
        process.kill()
    summary = _summary(run_dir)
    assert summary["status"] == "interrupted"
    assert _train_steps(run_dir) == list(range(summary["global_step"]))


@pytest.mark.slow
def test_kill_9_then_resume_keeps_every_step_once(tmp_path):
    run_dir = tmp_path / "runs" / "lenet_mnist" / "killed"
    process = _start("killed", tmp_path)
    _wait_for_checkpoint(process, run_dir)
    process.kill()  # at once: the steps it logs after the checkpoint are lost with it
    assert process.wait() == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    (killed_wandb,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    killed_size = killed_wandb.stat().st_size
    done = _resume(run_dir, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(_train_steps(run_dir)) == _train_steps(run_dir) == list(range(STEPS))
    assert _summary(run_dir)["global_step"] == STEPS
    (offline,) = run_dir.glob("wandb/offline-run-*")  # the killed one's is under wandb/superseded/
    assert _wandb_train_steps(offline) == list(range(STEPS))
    print(f"W&B file of the killed process: {killed_size} bytes")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_spawn_keeps_wandb_media_inside_the_run_folder(tmp_path):
    """A 2-process ``ddp_spawn`` fit with every plugin (the script of ``tests/test_ddp_plugins.py``)."""
    cmd = [sys.executable, "-m", "tests.test_ddp_plugins", str(tmp_path / "runs"), "2", "dataloader"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "wandb").exists()  # nothing in the working directory
    (run_dir,) = (tmp_path / "runs" / "all_plugins").iterdir()
    assert len(list((run_dir / "wandb").rglob("media/images/**/*.png"))) > 0


NOISE = {
    "FLOPs": "the model summary's column of zeros",
    "W&B syncing is set to": "W&B's offline banner",
    "Run data is saved locally": "W&B's offline banner",
    "wandb leet`": "W&B's offline banner",
    "resuming from a checkpoint that ended before the epoch ended": "Lightning's mid-epoch resume warning",
    "LightningCLI's args parameter": "LightningCLI's note on --resume's arguments",
    "Trainer already configured with model summary": "Lightning's note on tdl's model summary",
}


@pytest.mark.slow  # three `tdl` processes: ~45 s on the loaded 2-core machine
def test_a_fit_and_its_mid_epoch_resume_print_no_known_noise_unless_tdl_debug(tmp_path):
    env = {k: v for k, v in _env().items() if k not in ("WANDB_SILENT", "WANDB_QUIET", "TDL_DEBUG")}
    first = [*TDL, "fit", "--config", LENET, "--trainer.limit_train_batches=6",
             "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=1",
             "--trainer.enable_progress_bar=false", "--run.id=quiet", "--trainer.max_steps=3"]  # fmt: skip
    run_dir = Path("runs/lenet_mnist/quiet")
    outputs = []
    for args in (first, [*TDL, "fit", "--resume", str(run_dir), "--trainer.max_steps=5"]):
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(proc.stdout + proc.stderr)
    for output in outputs:
        assert "Total params" in output and "  final metrics :" in output
        shown = {what for text, what in NOISE.items() if text in output}
        assert not shown, shown
    debug = subprocess.run(
        [*TDL, "fit", "--resume", str(run_dir), "--trainer.max_steps=7"],
        cwd=tmp_path, env={**env, "TDL_DEBUG": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert debug.returncode == 0, debug.stderr[-3000:]
    for text in ("W&B syncing is set to", "resuming from a checkpoint that ended before the epoch ended"):
        assert text in debug.stdout + debug.stderr  # what TDL_DEBUG=1 shows
    assert _summary(tmp_path / run_dir)["global_step"] == 7


def test_resume_arguments_and_last(tmp_path):
    run_dir = tmp_path / "runs" / "lenet" / "r7"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed_everything: 0\n")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        resume_arguments(["fit", "--resume", str(run_dir)])
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    argv, found = resume_arguments(["fit", f"--resume={run_dir}", "--trainer.max_epochs", "5"])
    assert found == run_dir
    assert argv[:5] == ["fit", "--config", str(run_dir / "config.yaml"), "--trainer.max_epochs", "5"]
    assert argv[-2:] == ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    assert "r7" in argv and str(tmp_path / "runs") in argv
    assert unfinished_runs(run_dir.parent) == [run_dir]
    assert resolve_last(tmp_path / "runs", "lenet") == (run_dir, [])
    write_json(run_dir / "summary.json", {"status": "finished"})
    with pytest.raises(ConfigError, match="no unfinished run of lenet"):
        resolve_last(tmp_path / "runs", "lenet")
