"""Resuming a sweep: which finished runs already stand for which points.

A point counts as finished when a run folder holds a ``summary.json`` (written when training
ends) beside a ``config.yaml`` whose resolved settings include the point's values and the base
config's settings, so a run made before the base config changed is run again.

Example:
    >>> config = {"trainer": {"max_epochs": 3}, "run": {"experiment": "eoc"}}
    >>> config_matches(config, expected_settings(["tdl", "fit", "--trainer.max_epochs=3"]))
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from tdl_lightning.runs.reading import finished_run_configs, flatten_config
from tdl_lightning.sweep.commands import config_files, fixed_options, parse_value

__all__ = ["config_matches", "expected_settings", "find_finished_runs"]


def _normal_key(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "init_args")


def _same_class(wanted: Any, class_path: Any) -> bool:
    return str(class_path) == str(wanted) or str(class_path).endswith(f".{wanted}")


def _same_value(wanted: Any, actual: Any) -> bool:
    if isinstance(wanted, str) and not isinstance(actual, str):
        wanted = parse_value(wanted)
    numbers = (int, float)
    if isinstance(wanted, numbers) and isinstance(actual, numbers) and not isinstance(wanted, bool):
        return not isinstance(actual, bool) and math.isclose(wanted, actual, rel_tol=1e-9, abs_tol=1e-12)
    return wanted == actual or str(wanted).lower() == str(actual).lower()


def config_matches(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a run's resolved config (``config.yaml``) holds every ``wanted`` dotted key's value.

    Keys may be written with or without LightningCLI's ``init_args`` levels; a class given by
    name (``optimizer: SGD``) matches its ``class_path``; a list or mapping (``trainer.callbacks``)
    matches when the run's holds at least what it says.

    Example:
        >>> config = {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}}
        >>> config_matches(config, {"optimizer": "SGD", "optimizer.init_args.lr": 0.1})
        True
        >>> config_matches(config, {"optimizer.lr": 0.2})
        False
        >>> config_matches(config, {"optimizer": {"class_path": "SGD", "init_args": {"lr": 0.1}}})
        True
        >>> config_matches(config, {"optimizer": {"class_path": "SGD", "lr": 0.2}})
        False
    """
    flat = flatten_config(config)
    for key, value in wanted.items():
        key = _normal_key(key)
        if isinstance(value, dict) and key not in flat:  # a swept mapping: each of its dotted keys
            same = config_matches(config, {f"{key}.{k}": v for k, v in value.items()})
        elif key in flat:
            same = (
                _same_class(value, flat[key])
                if key.split(".")[-1] == "class_path"
                else _contains(flat[key], value)
            )
        elif f"{key}.class_path" in flat:
            same = _same_class(value, flat[f"{key}.class_path"])
        else:
            same = False
        if not same:
            return False
    return True


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` (a resolved config value) holds everything ``wanted`` (as written) says."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return False
        init_args = actual.get("init_args")
        inner: dict[str, Any] = init_args if isinstance(init_args, dict) else {}
        for key, value in wanted.items():
            if key == "class_path":
                same = _same_class(value, actual.get("class_path"))
            elif key in actual:
                same = _contains(actual[key], value)
            else:
                same = key in inner and _contains(inner[key], value)
            if not same:
                return False
        return True
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    if isinstance(actual, dict) and "class_path" in actual:
        return _same_class(wanted, actual["class_path"])
    return _same_value(wanted, actual)


def expected_settings(command: list[str]) -> dict[str, Any]:
    """What a finished run of ``command`` must hold: its config files' settings, then its options.

    Settings of later ``--config`` files and of ``--key=value`` options replace earlier ones, so a
    run made before the base config changed does not count as finished.

    Example:
        >>> expected_settings(["tdl", "fit", "--trainer.max_epochs=3", "--run.experiment=eoc"])
        {'trainer.max_epochs': 3, 'run.experiment': 'eoc'}
    """
    settings: dict[str, Any] = {}
    options = {_normal_key(k): v for k, v in fixed_options(command).items()}
    for file in config_files(command):
        loaded = yaml.safe_load(file.read_text()) if file.is_file() else None
        if isinstance(loaded, dict):
            settings.update(flatten_config(loaded))
    overridden = [k for k in settings if any(k == o or k.startswith(f"{o}.") for o in options)]
    for key in overridden:
        del settings[key]
    settings.update(options)
    return settings


def find_finished_runs(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(run dir, resolved config)`` of every finished run (with ``summary.json``) in ``runs_dir``
    (:func:`~tdl_lightning.runs.reading.finished_run_configs`).

    Example:
        >>> find_finished_runs(Path("/nonexistent"))
        []
    """
    return finished_run_configs(runs_dir)
