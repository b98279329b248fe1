"""The ``tdl`` command's parser and its early checks: short class names, one-line errors with hints.

- :class:`TDLArgumentParser` prints a parser error as the problem, a hint (the known class names for
  an unknown class, the closest keys for a misspelt one) and where the accepted options are listed;
- :func:`known_classes` lists the names ``tdl`` resolves by short name;
- :func:`check_optimizer` builds a ``torch.optim`` optimizer on a dummy parameter, so that a bad
  value fails before anything starts, and :func:`trainer_option_error` turns Lightning's refusal of a
  ``Trainer`` option into one line.

Example:
    >>> "LeNet5" in _hint("Expected a dot import path string: LeNet", [])
    True
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, instantiate_class

import plugins  # importing registers the plugins' class names for the config
import tdl_lightning.data  # ... the data modules' names
import tdl_lightning.models  # ... the architectures' names
import tdl_lightning.tasks  # ... the tasks' names
from tdl_lightning.errors import ConfigError

__all__ = ["TDLArgumentParser", "check_optimizer", "known_classes", "trainer_option_error"]


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
        "callbacks": classes(plugins, L.Callback),
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
    unknown_init_arg = re.search(r"class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", message)
    if unknown_init_arg:  # a misspelt argument of a class given by name (a callback's, a model's)
        path, key = unknown_init_arg.groups()
        close = difflib.get_close_matches(key, _init_arguments(path), n=3)
        if close:
            return f"{path.rsplit('.', 1)[-1]} has no argument {key!r}: did you mean {' or '.join(close)}?"
    return ""


def _init_arguments(class_path: str) -> list[str]:
    """The arguments the config accepts for ``class_path`` (those of its base classes that it passes
    ``**kwargs`` on to as well), or none if it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = LightningArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "init_args")
        return list(vars(parser.parse_args([]).init_args))
    except Exception:  # a hint is a courtesy: never a second error
        return []


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


def check_optimizer(optimizer: Any) -> None:
    """Build a ``torch.optim`` optimizer on a dummy parameter, so a bad value fails now, in one line.

    Example:
        >>> check_optimizer({"class_path": "torch.optim.SGD", "init_args": {"lr": -1.0}})
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: optimizer SGD: Invalid learning rate: -1.0: ...
    """
    if optimizer is None or not str(optimizer.get("class_path", "")).startswith("torch.optim."):
        return
    init = optimizer.as_dict() if hasattr(optimizer, "as_dict") else dict(optimizer)
    try:
        instantiate_class(([torch.nn.Parameter(torch.zeros(1))],), init)
    except (ValueError, TypeError) as err:
        name = init["class_path"].rsplit(".", 1)[-1]
        raise ConfigError(f"optimizer {name}: {err}: fix the value (--optimizer.init_args.<name>)") from None


def trainer_option_error(err: Exception) -> Exception:
    """``err`` from Lightning's checks of the ``Trainer``'s options (a strategy that needs a GPU, an
    unknown strategy, ``devices=-5``, a missing package) as one ``ConfigError`` line; any other as it is.

    Example:
        >>> try:
        ...     L.Trainer(num_nodes=0)
        ... except ValueError as err:
        ...     print(trainer_option_error(err))
        trainer: `num_nodes` must be a positive integer, but got 0.
    """
    frames = traceback.extract_tb(err.__traceback__)
    lightning_dir = str(Path(L.__file__).parent)
    if not frames or not frames[-1].filename.startswith(lightning_dir):  # raised deeper: a failure
        return err
    return ConfigError(f"trainer: {' '.join(str(err).split())}")
