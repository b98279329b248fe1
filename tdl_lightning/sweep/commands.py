"""A sweep point's command line: W&B's macros filled in, and what the command itself says.

``${args}`` becomes ``--key=value`` exactly as ``wandb agent`` writes it; the options and
``--config`` files of a command tell where its runs go (``run.root``) and what a finished run
of it must hold (:mod:`tdl_lightning.sweep.resume`).

Example:
    >>> sweep_arguments({"optimizer.lr": 0.1, "run.experiment": "demo"})
    ['--optimizer.lr=0.1', '--run.experiment=demo']
    >>> fixed_options(["tdl", "fit", "--config", "x.yaml", "--trainer.max_epochs", "3"])
    {'trainer.max_epochs': 3}
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tdl_lightning.errors import ConfigError

if TYPE_CHECKING:
    from tdl_lightning.sweep.config import SweepConfig

__all__ = [
    "EXPERIMENT_KEY",
    "build_command",
    "config_files",
    "executable",
    "fixed_options",
    "parse_value",
    "runs_root",
    "sweep_arguments",
]

EXPERIMENT_KEY = "run.experiment"
"""The ``tdl fit`` option naming a run's experiment: every sweep point sets it."""


def sweep_arguments(point: dict[str, Any]) -> list[str]:
    """``--key=value`` for every parameter of a point, formatted exactly as ``wandb agent`` does.

    Example:
        >>> sweep_arguments({"model.init_args.model.init_args.depth": 8, "trainer.logger": False})
        ['--model.init_args.model.init_args.depth=8', '--trainer.logger=False']
    """
    return [f"--{key}={value}" for key, value in point.items()]


def build_command(sweep: SweepConfig, point: dict[str, Any]) -> list[str]:
    """The command of one run: the sweep's ``command`` with W&B's macros filled in.

    ``${args}`` -> ``--key=value`` ..., ``${args_no_hyphens}`` -> ``key=value`` ...,
    ``${args_json}`` -> one JSON object, ``${interpreter}`` -> this Python, ``${program}`` -> the
    ``program:`` key, ``${env}`` -> dropped, ``${envvar:NAME}`` -> ``$NAME``.

    Example:
        >>> from tdl_lightning.sweep.config import SweepConfig
        >>> sweep = SweepConfig("s", "grid", {}, ["tdl", "fit", "--config", "x.yaml", "${args}"])
        >>> build_command(sweep, {"optimizer.lr": 0.1})
        ['tdl', 'fit', '--config', 'x.yaml', '--optimizer.lr=0.1']
    """
    command: list[str] = []
    for token in sweep.command:
        if token == "${args}":
            command += sweep_arguments(point)
        elif token == "${args_no_hyphens}":
            command += [arg[2:] for arg in sweep_arguments(point)]
        elif token == "${args_json}":
            command.append(json.dumps(point))
        elif token == "${env}":
            continue
        elif token == "${interpreter}":
            command.append(sys.executable)
        else:
            token = token.replace("${program}", str(sweep.program or ""))
            token = re.sub(r"\$\{envvar:([A-Za-z0-9_]+)\}", lambda m: os.environ.get(m[1], ""), token)
            if "${" in token:
                raise ConfigError(f"sweep {sweep.name!r}: unknown macro in command token {token!r}")
            command.append(token)
    return command


def executable(command: list[str]) -> list[str]:
    """``tdl ...`` runs as ``<this python> -m tdl_lightning.cli ...``: the same installation.

    Example:
        >>> executable(["tdl", "fit", "--x=1"])[1:]
        ['-m', 'tdl_lightning.cli', 'fit', '--x=1']
        >>> executable(["python", "train.py"])
        ['python', 'train.py']
    """
    if command and command[0] == "tdl":
        return [sys.executable, "-m", "tdl_lightning.cli", *command[1:]]
    return command


def fixed_options(command: list[str]) -> dict[str, Any]:
    """``--key=value`` / ``--key value`` options of a command (``--config`` excluded), values parsed.

    Example:
        >>> fixed_options(["tdl", "fit", "--config", "x.yaml", "--optimizer.lr=1e-05", "--fast"])
        {'optimizer.lr': 1e-05, 'fast': True}
    """
    options: dict[str, Any] = {}
    i = 0
    while i < len(command):
        token = command[i]
        if token.startswith("--") and len(token) > 2:
            if "=" in token:
                key, text = token[2:].split("=", 1)
            elif i + 1 < len(command) and not command[i + 1].startswith("--"):
                key, text = token[2:], command[i + 1]
                i += 1
            else:
                key, text = token[2:], "true"
            if key != "config":
                options[key] = parse_value(text)
        i += 1
    return options


def parse_value(text: str) -> Any:
    """A command-line value as LightningCLI reads it (YAML), with ``1e-05`` read as a number too.

    Example:
        >>> parse_value("1e-05"), parse_value("False"), parse_value("[1, 2]"), parse_value("SGD")
        (1e-05, False, [1, 2], 'SGD')
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_files(command: list[str]) -> list[Path]:
    """The ``--config`` files of a command, in order.

    Example:
        >>> config_files(["tdl", "fit", "--config", "a.yaml", "--config=b.yaml"])
        [PosixPath('a.yaml'), PosixPath('b.yaml')]
    """
    files = []
    for i, token in enumerate(command):
        if token == "--config" and i + 1 < len(command):
            files.append(Path(command[i + 1]))
        elif token.startswith("--config="):
            files.append(Path(token.split("=", 1)[1]))
    return files


def runs_root(command: list[str], options: dict[str, Any]) -> Path:
    """Where the runs go: ``run.root`` from the options, else from the config files, else ``runs``.

    Example:
        >>> runs_root(["tdl", "fit"], {"run.root": "/scratch/runs"}), runs_root(["tdl", "fit"], {})
        (PosixPath('/scratch/runs'), PosixPath('runs'))
    """
    if "run.root" in options:
        return Path(str(options["run.root"]))
    root = "runs"
    for file in config_files(command):
        loaded = yaml.safe_load(file.read_text()) if file.is_file() else None
        run_section = loaded.get("run") if isinstance(loaded, dict) else None
        if isinstance(run_section, dict) and run_section.get("root"):
            root = str(run_section["root"])
    return Path(root)
