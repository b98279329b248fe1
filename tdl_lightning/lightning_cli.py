"""``tdl fit|validate|test|predict``: Lightning's CLI with the project's defaults.

``tdl fit --config experiments/lenet_mnist.yaml`` trains LeNet-5 on the bundled MNIST subset,
logs to W&B (offline unless ``WANDB_API_KEY`` or ``WANDB_MODE`` say otherwise) and to a CSV,
and prints where the run went. Models, data modules, callbacks, loggers, optimisers and LR
schedulers are chosen by class name in YAML or on the command line
(``--optimizer SGD --optimizer.lr 0.1 --optimizer.momentum 0.9``).

The ``tdl`` entry point (:func:`tdl_lightning.cli.main`) imports this module only for these
subcommands, so that ``tdl compare`` and ``tdl sweep`` start without loading Lightning.

Example:
    >>> TDLCLI(args=["fit", "--config", "experiments/lenet_mnist.yaml", "--print_config"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
    _InstantiatorFn,  # private: the hyperparameters of linked values
)
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from typing_extensions import override

from tdl_lightning.data_links import DATA_LINKS, DataLink
from tdl_lightning.errors import ConfigError
from tdl_lightning.parsing import TDLArgumentParser, check_optimizer, known_classes, trainer_option_error
from tdl_lightning.runs import Run, RunSettings, default_loggers
from tdl_lightning.runs.checkpoints import AtomicCheckpointIO, check_checkpoint, checkpoint_callbacks
from tdl_lightning.runs.directory import CHECKPOINTS, METRICS
from tdl_lightning.runs.lifecycle import RunLifecycle
from tdl_lightning.runs.loggers import keep_metrics_before, metrics_rows, resume_step
from tdl_lightning.runs.predictions import RunPredictions
from tdl_lightning.runs.quiet import RunModelSummary, RunProgressBar
from tdl_lightning.runs.report import report_lines, run_summary
from tdl_lightning.runs.resume import (
    check_training_left,
    evaluated_checkpoint,
    latest_checkpoint,
    resolve_last,
    resume_arguments,
)

__all__ = ["ConfigLogger", "TDLArgumentParser", "TDLCLI", "known_classes"]

_CKPT_ALIASES = ("last", "best", "hpc", "registry")
PROGRESS_BAR_REFRESH_STEPS = 10  # see _default_progress_bar
# no prefix matching: a misspelt key such as --trainer.max_epoch is an error, not max_epochs
_STRICT_PARSERS: dict[str, Any] = {
    "allow_abbrev": False,
    **{cmd: {"allow_abbrev": False} for cmd in ("fit", "validate", "test", "predict")},
}


class _SetLinksOnly(_InstantiatorFn):
    """LightningCLI's instantiator, told only of the links whose target the chosen class has.

    LightningCLI records every applied link in the task's hyperparameters (the checkpoint's
    ``hyper_parameters``, from which ``--ckpt_path`` rebuilds the task); a link into a key the
    class lacks (``num_classes`` of a ``Regressor``) would come back as an unexpected argument.
    """

    def __call__(self, class_type: Any, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        config, subcommand = self.cli.config, self.cli.config.get("subcommand")
        config = config[subcommand] if subcommand else config
        applied = {k: v for k, v in applied_instantiation_links.items() if k in config}
        return super().__call__(class_type, *args, applied_instantiation_links=applied, **kwargs)


class ConfigLogger(SaveConfigCallback):
    """Saves ``config.yaml`` into the run directory and the full resolved config to every logger.

    The values linked from the data module into the model (``num_classes``, input sizes) are written
    out, so that the saved config states the model that was trained.

    Example:
        >>> issubclass(ConfigLogger, SaveConfigCallback)
        True
    """

    _log_dir: str | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's own setup first writes config.yaml with a validated dump of the whole config,
        # which save_config then rewrites: one dump, of a config validated when it was parsed, is
        # enough (a reused run directory is refused earlier, by its run id)
        if self.already_saved:
            return
        self._log_dir = trainer.log_dir  # on every rank: under DDP reading log_dir is a collective
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_validation=True))
        for link in getattr(getattr(self.parser, "_links_group", None), "_group_actions", []):
            value = getattr(link, "applied_value", None)
            if isinstance(value, (int, float, str, list)) and link.target[0] in self.config:
                _set_dotted(config, link.target[0], value)  # what the data module said: num_classes, sizes
        if self._log_dir is not None:  # config.yaml states them too: `tdl connect` and `tdl compare` read it
            Path(self._log_dir, self.config_filename).write_text(yaml.safe_dump(config, sort_keys=False))
        config.pop("config", None)  # the config files' paths, not settings
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class TDLCLI(LightningCLI):
    """LightningCLI with run directories, default loggers, resume, interrupts and a report at the end.

    Everything LightningCLI offers works: ``fit``/``validate``/``test``/``predict``, repeated
    ``--config``, ``--print_config`` and dotted overrides such as ``--trainer.max_epochs 3``.
    The ``run:`` section (see :class:`~tdl_lightning.runs.RunSettings`) names the experiment, tags
    and run id; ``tdl fit --resume runs/<experiment>/<run id>`` continues a run in place, and
    ``--ckpt_path last`` continues the newest unfinished run of the experiment. Ctrl-C, SIGTERM
    and SIGUSR1 save a checkpoint, write ``summary.json`` with ``status: interrupted`` and exit
    130 / 143 / 138 (128 + the signal's number). Loggers given as ``trainer.logger`` are added to the
    run's ``metrics.csv`` and W&B loggers (``--trainer.logger false``: no logger at all).

    Example:
        >>> cli = TDLCLI(args=["fit", "--config", "experiments/lenet_mnist.yaml",
        ...                    "--trainer.fast_dev_run", "true"])  # doctest: +SKIP
    """

    run: Run | None = None

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        given = sys.argv[1:] if args is None else list(args)
        argv, self._resume_dir = resume_arguments(given)
        self._lifecycle = RunLifecycle()
        self._checkpoint: dict[str, Any] | None = None
        try:
            super().__init__(
                model_class=L.LightningModule,
                datamodule_class=L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=ConfigLogger,
                seed_everything_default=0,
                parser_kwargs=_STRICT_PARSERS,
                parser_class=TDLArgumentParser,
                args=None if args is None and argv == given else argv,
                run=run,
            )
        except BaseException as err:
            self._end(err)
            raise
        self._end(None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunSettings, "run", instantiate=True)
        for target, read in DATA_LINKS:
            link = DataLink(target, read, self._config_value)
            parser.link_arguments("data", target, link, apply_on="instantiate")

    @override
    def _add_instantiators(self) -> None:
        for key, base, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(_SetLinksOnly(cli=self, key=key), base, subclasses=subclasses)

    def _config_value(self, key: str) -> Any:
        """The parsed config's value of ``key`` (before links), or ``None``."""
        config = getattr(self, "config", None)
        if config is None:
            return None
        subcommand = config.get("subcommand")
        return config.get(f"{subcommand}.{key}" if subcommand else key)

    def before_instantiate_classes(self) -> None:
        trainer = self._get(self.config, "trainer")
        accelerator = str(trainer.get("accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator is {accelerator!r} but this machine has no CUDA GPU "
                "(torch.cuda.is_available() is False): use --trainer.accelerator auto (or cpu), "
                "or run on a machine with a GPU"
            )
        check_optimizer(self._get(self.config, "optimizer"))

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (and resolve ``last``) before LightningCLI reads its hyperparameters."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or "ckpt_path" not in config:
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last" and subcommand == "fit" and self._resume_dir is None:
            ckpt_path = str(self._resume_last(config))
        elif ckpt_path in ("last", "best") and subcommand != "fit":  # this run has no checkpoints
            settings = config["run"]
            root, experiment = Path(settings.get("root") or "runs"), self._config_experiment(config)
            found, run_dir = evaluated_checkpoint(root, experiment, ckpt_path)
            print(f"tdl: --ckpt_path {ckpt_path}: {found} (of run {run_dir.name})", file=sys.stderr)
            ckpt_path = config["ckpt_path"] = str(found)
        elif ckpt_path == "best":
            raise ConfigError(
                "--ckpt_path best names a finished run's checkpoint: for tdl fit give `last` (continue the "
                "newest unfinished run), `tdl fit --resume RUN_DIR`, or the path of a .ckpt file"
            )
        if ckpt_path is None or ckpt_path in _CKPT_ALIASES:
            return
        if not str(ckpt_path).strip() or not Path(ckpt_path).is_file():
            raise ConfigError(f"ckpt_path {ckpt_path!r} is not a file: give the path of a .ckpt file")
        trusted = config.get("weights_only") is False
        self._checkpoint = check_checkpoint(ckpt_path, trusted=trusted)
        if subcommand == "fit":
            limits = config.get("trainer") or {}
            epochs, steps, time = limits.get("max_epochs"), limits.get("max_steps"), limits.get("max_time")
            check_training_left(self._checkpoint, ckpt_path, epochs, steps, time)  # before the run is touched
        if not trusted:
            config["weights_only"] = True
            super()._parse_ckpt_path()

    @staticmethod
    def _config_experiment(config: Any) -> str:
        """The experiment a subcommand's config names (``run.experiment``, else its last config file)."""
        configs = config.get("config") or []
        return str(config["run"].get("experiment") or (Path(str(configs[-1])).stem if configs else "run"))

    def _resume_last(self, config: Any) -> Path:
        """``--ckpt_path last``: continue the newest unfinished run of the experiment, in its directory."""
        settings = config["run"]
        experiment = self._config_experiment(config)
        run_dir, others = resolve_last(Path(settings.get("root") or "runs"), experiment)
        note = f" (the newest; also unfinished: {', '.join(p.name for p in others)})" if others else ""
        print(f"tdl: --ckpt_path last: continuing run {run_dir}{note}", file=sys.stderr, flush=True)
        config["run.id"], config["run.experiment"] = run_dir.name, experiment
        self._resume_dir = run_dir
        checkpoint = latest_checkpoint(run_dir)
        config["ckpt_path"] = str(checkpoint)
        return checkpoint  # type: ignore[return-value]

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        settings: RunSettings = self._get(self.config_init, "run")
        run = Run.create(settings, experiment=self._experiment_name())
        run.tags += [type(self.model).__name__, type(self.datamodule).__name__]
        architecture = getattr(self.model, "model", None)
        if architecture is not None:
            run.tags.append(type(architecture).__name__)
        run.claim(resume=self._resume_dir is not None)
        self.run = run
        if run.resumed and self._checkpoint is not None:
            keep_metrics_before(run.dir / METRICS, resume_step(self._checkpoint))
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") is not False:  # False: no logger at all, as in Lightning
            kwargs["logger"] = self._loggers(trainer.get("logger"), settings, run)
        if trainer.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run.dir)
        kwargs["callbacks"] = self._callbacks(trainer, settings, run)
        progress_bar = _default_progress_bar(trainer)
        if progress_bar is not None:
            kwargs["callbacks"].append(progress_bar)
        plugins = _as_list(trainer.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, TypeError, ImportError) as err:
            raise trainer_option_error(err) from err

    def _loggers(self, given: Any, settings: RunSettings, run: Run) -> list[Logger]:
        """The run's CSV and W&B loggers first, then the ones the config gives (``trainer.logger``).

        The CSV comes first, so the run directory stays the trainer's ``log_dir``. A ``WandbLogger``
        the config gives takes the place of the run's own (one W&B run per process).
        """
        extra = [] if given is None or given is True else _as_list(given)
        if any(isinstance(logger, WandbLogger) for logger in extra):
            settings = dataclasses.replace(settings, wandb=False)
        loggers = default_loggers(run, settings, job_type=self.subcommand or "fit")
        if run.resumed and run.wandb_mode is not None and run.wandb_mode.mode in ("offline", "dryrun"):
            self._lifecycle.replay = metrics_rows(run.dir / METRICS)  # the new offline run: all of it
        return [*loggers, *extra]

    def _callbacks(self, trainer: dict[str, Any], settings: RunSettings, run: Run) -> list[L.Callback]:
        callbacks = _as_list(trainer.get("callbacks"))
        self._lifecycle.checkpoint_dir = run.dir / CHECKPOINTS
        callbacks.append(self._lifecycle)
        if trainer.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks
        ):
            callbacks.append(RunModelSummary())  # Lightning's, without its column of zero FLOPs
        checkpointing = trainer.get("enable_checkpointing") is not False
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks += checkpoint_callbacks(
                run.dir / CHECKPOINTS, settings.checkpoint_minutes, settings.checkpoint_seconds
            )
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(RunPredictions(run.dir))  # predictions.pt in the run directory
        return callbacks

    def _experiment_name(self) -> str:
        configs = self._get(self.config, "config") or []
        if configs:
            return Path(str(configs[-1])).stem
        model = getattr(self, "model", None)
        if model is None:
            return "run"
        architecture = getattr(model, "model", None)
        parts = [type(model).__name__] + ([type(architecture).__name__] if architecture else [])
        return "_".join(parts).lower()

    def after_fit(self) -> None:
        self._report()

    def after_validate(self) -> None:
        self._report()

    def after_test(self) -> None:
        self._report()

    def after_predict(self) -> None:
        self._report()

    def _report(self, status: str = "finished", error: BaseException | None = None) -> None:
        """Write ``summary.json`` and print where the run went and its metrics."""
        if self.run is None:
            return
        summary = run_summary(self.trainer, self.run, self.subcommand, status)
        if not self.trainer.is_global_zero:
            return
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {error}"[:500]
        if Path(summary["run_dir"]).resolve() == self.run.dir.resolve():
            self.run.write_summary(summary)
        print(report_lines(summary), flush=True)

    def _end(self, error: BaseException | None) -> None:
        """Close W&B and the run directory; on an interrupt, exit 128 + the signal's number."""
        run, trainer = self.run, getattr(self, "trainer", None)
        if error is None or run is None:
            _finish_wandb(exit_code=0 if error is None else 1)
            if run is not None:
                run.release()
            return
        signum = self._lifecycle.interrupted_by
        if signum is None and isinstance(error, KeyboardInterrupt):
            signum = signal.SIGINT
        useful = trainer is not None and trainer.global_step > 0
        if useful and trainer is not None:
            self._report("interrupted" if signum else "failed", None if signum else error)
        _finish_wandb(exit_code=0 if signum else 1)
        if useful or run.resumed:
            run.release()
        else:
            run.discard()  # nothing worth keeping: no run directory left behind
        if signum:
            raise SystemExit(128 + int(signum)) from None


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config["a"]["b"] = value`` for ``key="a.b"``.

    Example:
        >>> config = {"model": {"init_args": {}}}
        >>> _set_dotted(config, "model.init_args.num_classes", 10)
        >>> config
        {'model': {'init_args': {'num_classes': 10}}}
    """
    *parents, leaf = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = value


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _default_progress_bar(trainer: dict[str, Any]) -> RunProgressBar | None:
    """Lightning's progress bar redrawn every ``PROGRESS_BAR_REFRESH_STEPS`` steps, not every step,
    and at most twice a second (:class:`~tdl_lightning.runs.quiet.RunProgressBar`), unless the
    trainer config turns the bar off or brings its own (``None`` then).

    Each redraw reads every progress-bar metric back from the device (an ``.item()``, a sync on a
    GPU) and formats the bar: redrawn at every step, that cost about 5% of a LeNet-5 epoch on the CPU.
    The last step of each epoch is always drawn, so the bar ends on the same numbers.

    Example:
        >>> _default_progress_bar({}).refresh_rate
        10
        >>> _default_progress_bar({"enable_progress_bar": False}) is None
        True
    """
    if trainer.get("enable_progress_bar") is False or any(
        isinstance(c, ProgressBar) for c in _as_list(trainer.get("callbacks"))
    ):
        return None
    return RunProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS)


def _finish_wandb(exit_code: int) -> None:
    """Close the W&B run (if one is open), so its files are complete when ``tdl`` returns.

    ``wandb.finish`` only tells W&B's service that the run is over; the service closes the run's
    files after it has returned (seen under load: ``run-<id>.wandb`` rewritten after ``main``
    returned). Shutting the service down waits for that; it is left running while another run of
    the process still uses it (a fresh one starts with the next ``wandb.init``).
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    wandb.finish(exit_code=exit_code)
    from wandb.sdk import wandb_setup

    if wandb_setup.singleton().most_recent_active_run is None:
        wandb.teardown()
