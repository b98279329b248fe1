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

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

import plugins  # importing registers the plugins' class names for the config
import tdl_lightning.data  # ... the data modules' names
import tdl_lightning.models  # ... the architectures' names
import tdl_lightning.tasks  # ... the tasks' names
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import Run, RunSettings, default_loggers, find_wandb_logger, wandb_mode

__all__ = ["ConfigLogger", "TDLArgumentParser", "TDLCLI", "known_classes"]

_CKPT_ALIASES = ("last", "best", "hpc", "registry")
PROGRESS_BAR_REFRESH_STEPS = 10  # see _default_progress_bar
# no prefix matching: a misspelt key such as --trainer.max_epoch is an error, not max_epochs
_STRICT_PARSERS: dict[str, Any] = {
    "allow_abbrev": False,
    **{cmd: {"allow_abbrev": False} for cmd in ("fit", "validate", "test", "predict")},
}


def known_classes() -> dict[str, list[str]]:
    """The class names ``tdl`` resolves by short name, by kind.

    Example:
        >>> "LeNet5" in known_classes()["architectures"]
        True
    """

    def classes(module: Any, base: type) -> list[str]:
        found = (getattr(module, name) for name in module.__all__)
        return sorted(c.__name__ for c in found if isinstance(c, type) and issubclass(c, base))

    return {
        "tasks": classes(tdl_lightning.tasks, L.LightningModule),
        "architectures": classes(tdl_lightning.models, torch.nn.Module),
        "data": classes(tdl_lightning.data, L.LightningDataModule),
        "callbacks": classes(plugins, L.Callback) + classes(tdl_lightning.tasks, L.Callback),
    }


def _hint(message: str, options: list[str]) -> str:
    """A line that says what to do about a parser error, or an empty string."""
    unknown_class = re.search(r"Expected a dot import path string: (\S+)", message)
    if unknown_class:
        kinds = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in known_classes().items() if names)
        return (
            f"'{unknown_class.group(1)}' is not a known class name. Known names are {kinds} "
            "(plus Lightning's callbacks and loggers, torch.optim optimizers and LR schedulers, "
            "or any full import path)."
        )
    unknown_key = re.search(r"unrecognized arguments: (--[^\s=]+)", message) or re.search(
        r"does not accept option '([\w.]+)'", message
    )
    if unknown_key:
        key = unknown_key.group(1)
        close = difflib.get_close_matches(key if key.startswith("--") else f"--{key}", options, n=3)
        if close:
            return f"did you mean {' or '.join(close)}?"
    return ""


class TDLArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with short error messages that say what to do.

    Instead of the full usage, an error prints the problem, a hint (the known class names for an
    unknown class, the closest keys for a misspelt one) and where to find the accepted options.

    Example:
        >>> TDLArgumentParser(prog="tdl").exit_on_error
        True
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("TDL_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = _hint(message, [o for o in parser._option_string_actions if o.startswith("--")])
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"tdl: error: {message}\n")
        if hint:
            sys.stderr.write(f"hint: {hint}\n")
        sys.stderr.write(f"tip: `{prog} --help` lists the accepted options\n")
        raise SystemExit(2)


class ConfigLogger(SaveConfigCallback):
    """Saves ``config.yaml`` into the run directory and the full resolved config to every logger.

    Example:
        >>> issubclass(ConfigLogger, SaveConfigCallback)
        True
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        config.pop("config", None)  # the config files' paths, not settings
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class TDLCLI(LightningCLI):
    """LightningCLI with run directories, default loggers and a report at the end.

    Everything LightningCLI offers works: ``fit``/``validate``/``test``/``predict``, repeated
    ``--config``, ``--print_config`` and dotted overrides such as ``--trainer.max_epochs 3``.
    The ``run:`` section (see :class:`~tdl_lightning.runs.RunSettings`) names the experiment and tags.

    Example:
        >>> cli = TDLCLI(args=["fit", "--config", "experiments/lenet_mnist.yaml",
        ...                    "--trainer.fast_dev_run", "true"])  # doctest: +SKIP
    """

    run: Run | None = None

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
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
                args=args,
                run=run,
            )
        except BaseException:
            _finish_wandb(exit_code=1)
            raise
        _finish_wandb(exit_code=0)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunSettings, "run", instantiate=True)

    def before_instantiate_classes(self) -> None:
        trainer = self._get(self.config, "trainer")
        accelerator = str(trainer.get("accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator is {accelerator!r} but this machine has no CUDA GPU "
                "(torch.cuda.is_available() is False): use --trainer.accelerator auto (or cpu), "
                "or run on a machine with a GPU"
            )
        ckpt_path = self._get(self.config, "ckpt_path")
        if ckpt_path and ckpt_path not in _CKPT_ALIASES and not Path(ckpt_path).is_file():
            raise ConfigError(f"ckpt_path {ckpt_path!r} is not a file: give the path of a .ckpt file")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        settings: RunSettings = self._get(self.config_init, "run")
        self.run = Run.create(settings, experiment=self._experiment_name())
        self.run.tags += [type(self.model).__name__, type(self.datamodule).__name__]
        architecture = getattr(self.model, "model", None)
        if architecture is not None:
            self.run.tags.append(type(architecture).__name__)
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") is None:
            kwargs["logger"] = default_loggers(self.run, settings, job_type=self.subcommand or "fit")
        if trainer.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(self.run.dir)
        progress_bar = _default_progress_bar(trainer)
        if progress_bar is not None:
            kwargs["callbacks"] = [*_as_list(trainer.get("callbacks")), progress_bar]
        return super().instantiate_trainer(**kwargs)

    def _experiment_name(self) -> str:
        configs = self._get(self.config, "config") or []
        if configs:
            return Path(str(configs[-1])).stem
        architecture = getattr(self.model, "model", None)
        parts = [type(self.model).__name__] + ([type(architecture).__name__] if architecture else [])
        return "_".join(parts).lower()

    def after_fit(self) -> None:
        self._report()

    def after_validate(self) -> None:
        self._report()

    def after_test(self) -> None:
        self._report()

    def _report(self) -> None:
        """Write ``summary.json`` and print where the run went and its final metrics."""
        trainer = self.trainer
        # both are collectives under DDP: every rank reads them, rank zero alone reports
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        log_dir = str(Path(trainer.log_dir or self.run.dir)) if self.run is not None else None
        if not trainer.is_global_zero or self.run is None:
            return
        # "x_step"/"x_epoch" are Lightning's copies of "x": report "x" (the epoch value) once
        metrics = {
            k: v
            for k, v in logged.items()
            if not (k.endswith(("_step", "_epoch")) and k.rsplit("_", 1)[0] in logged)
        }
        summary: dict[str, Any] = {
            "run_id": self.run.id,
            "experiment": self.run.experiment,
            "subcommand": self.subcommand,
            "run_dir": log_dir,
            "metrics": metrics,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
        }
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
            summary["best_checkpoint"] = trainer.checkpoint_callback.best_model_path
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is not None:
            experiment = wandb_logger.experiment
            summary["wandb"] = {
                "name": experiment.name,
                "id": experiment.id,
                "mode": wandb_mode(),
                "dir": str(Path(experiment.dir).parent) if experiment.dir else None,
            }
        if Path(summary["run_dir"]).resolve() == self.run.dir.resolve():
            self.run.write_summary(summary)
        _print_report(summary)


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _default_progress_bar(trainer: dict[str, Any]) -> TQDMProgressBar | None:
    """Lightning's progress bar redrawn every ``PROGRESS_BAR_REFRESH_STEPS`` steps, not every step,
    unless the trainer config turns the bar off or brings its own (``None`` then).

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
    return TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS)


def _print_report(summary: dict[str, Any]) -> None:
    lines = [
        f"tdl: {summary['subcommand']} finished: experiment {summary['experiment']}, run {summary['run_id']}",
        f"  run directory : {summary['run_dir']}",
    ]
    if "best_checkpoint" in summary:
        lines.append(f"  checkpoint    : {summary['best_checkpoint']}")
    wandb_info = summary.get("wandb")
    if wandb_info:
        lines.append(f"  W&B run       : {wandb_info['name']} ({wandb_info['mode']})")
        lines.append(f"  W&B files     : {wandb_info['dir']}")
        if wandb_info["mode"] in ("offline", "dryrun"):
            lines.append(f"  upload later  : wandb sync {wandb_info['dir']}")
    lines.append("  final metrics :")
    for key, value in sorted(summary["metrics"].items()):
        lines.append(f"    {key:<24} {value:.4f}")
    print("\n".join(lines), flush=True)


def _finish_wandb(exit_code: int) -> None:
    """Close the W&B run (if one is open), so its files are complete when ``tdl`` returns."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
