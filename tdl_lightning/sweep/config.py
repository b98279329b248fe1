"""The sweep YAML: a W&B sweep config, checked for what a local run needs.

Every mistake is reported before anything runs, in one line that says what to write instead.

Example:
    >>> sweep = SweepConfig.from_dict({"name": "demo", "method": "grid",
    ...     "command": ["tdl", "fit", "--config", "base.yaml", "${args}"],
    ...     "parameters": {"optimizer.lr": {"values": [0.1, 0.01]}}})
    >>> sweep.parameters["optimizer.lr"]["distribution"], sweep.experiment
    ('categorical', 'demo')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep.commands import EXPERIMENT_KEY
from tdl_lightning.sweep.sampling import DISTRIBUTIONS

__all__ = ["METHODS", "SweepConfig"]

METHODS = ("grid", "random", "bayes")
"""The search methods of a W&B sweep config."""
_DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_ARGS_MACROS = ("${args}", "${args_no_hyphens}", "${args_json}")


@dataclass
class SweepConfig:
    """A W&B sweep config, checked for what a local run needs.

    Attributes:
        name: the sweep's name (``name:``, else the file's stem): its runs' experiment.
        method: ``grid``, ``random`` or ``bayes``.
        parameters: ``name -> spec`` (``value``, ``values``, ``min``/``max``, ``distribution``, ...).
        command: the command, with W&B's macros (``${args}``, ``${program}``, ...).
        program: the ``program:`` key, if any.
        run_cap: the ``run_cap:`` key, if any (the number of runs W&B stops after).
        metric: the ``metric:`` key (``name``, ``goal``), if any.
        notes: what differs locally from the server (printed before the runs start).

    Example:
        >>> SweepConfig.from_dict({"method": "bayes", "parameters": {"lr": {"min": 0.1, "max": 1.0}},
        ...     "command": ["tdl", "fit", "${args}"]}, name="opt").notes[0][:40]
        'method bayes needs the W&B server: runni'
    """

    name: str
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    program: str | None = None
    run_cap: int | None = None
    metric: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read and check a sweep config YAML.

        Example:
            >>> SweepConfig.load("experiments/sweeps/edge_of_chaos.yaml").method  # doctest: +SKIP
            'grid'
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"sweep config {path} not found: give the path of a W&B sweep YAML, "
                "e.g. experiments/sweeps/edge_of_chaos.yaml"
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"sweep config {path} is not valid YAML: {err}") from None
        return cls.from_dict(raw, name=path.stem, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, name: str = "sweep", source: str = "the sweep config") -> SweepConfig:
        """Check a sweep config given as a dict (as loaded from YAML).

        Example:
            >>> SweepConfig.from_dict({"method": "grid", "parameters": {"lr": {"values": [1, 2]}},
            ...     "command": ["tdl", "fit", "${args}"]}).name
            'sweep'
        """
        if not isinstance(raw, dict) or "parameters" not in raw:
            raise ConfigError(
                f"{source} is not a W&B sweep config (it has no `parameters:` section); an "
                "experiment config runs with `tdl fit --config FILE`"
            )
        method = raw.get("method")
        if method not in METHODS:
            raise ConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
        notes = []
        if method == "bayes":
            notes.append(
                "method bayes needs the W&B server: running a seeded random search locally "
                "(`wandb sweep` + `wandb agent` run the Bayesian search)"
            )
        if raw.get("early_terminate"):
            notes.append("early_terminate is applied by the W&B server only: every local run goes to the end")
        parameters = raw["parameters"]
        if not isinstance(parameters, dict) or not parameters:
            raise ConfigError(f"{source}: `parameters:` must map each swept key to its values")
        checked = {str(k): _check_parameter(source, str(k), spec, method) for k, spec in parameters.items()}
        command = _check_command(source, raw.get("command") or list(_DEFAULT_COMMAND))
        program = raw.get("program")
        if any("${program}" in t for t in command) and not program:
            raise ConfigError(f"{source}: the command uses ${{program}} but there is no `program:` key")
        run_cap = raw.get("run_cap")
        if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
            raise ConfigError(f"{source}: run_cap must be a whole number >= 1, got {run_cap!r}")
        return cls(
            str(raw.get("name") or name),
            method,
            checked,
            command,
            program,
            run_cap,
            raw.get("metric"),
            notes,
        )

    @property
    def experiment(self) -> str:
        """The experiment its runs belong to: ``run.experiment`` if the sweep sets it, else its name.

        Example:
            >>> SweepConfig("eoc", "grid", {"lr": {"value": 1}}, ["${args}"]).experiment
            'eoc'
        """
        spec = self.parameters.get(EXPERIMENT_KEY, {})
        return str(spec.get("value", self.name))


def _check_command(source: str, command: Any) -> list[str]:
    if not isinstance(command, list) or not all(isinstance(t, str) for t in command):
        raise ConfigError(
            f"{source}: `command:` must be a list of strings, e.g. "
            "[tdl, fit, --config, experiments/x.yaml, ${args}]"
        )
    if not any(t in _ARGS_MACROS for t in command):
        raise ConfigError(
            f"{source}: `command:` has no ${{args}}, so the swept values would never "
            "reach the run: end it with ${args}"
        )
    return list(command)


def _check_parameter(source: str, key: str, spec: Any, method: str) -> dict[str, Any]:
    where = f"{source}: parameter {key!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{values: [1, 2]}} or {{value: 1}}")
    if "parameters" in spec:
        raise ConfigError(
            f"{where} nests parameters, which tdl sweep does not expand: use dotted names "
            f"such as {key}.init_args.<name>"
        )
    spec = dict(spec)
    if "distribution" not in spec:
        spec["distribution"] = _implied_distribution(where, spec)
    for bound in ("min", "max", "mu", "sigma", "q", "a", "b"):
        if isinstance(spec.get(bound), str):
            raise ConfigError(
                f"{where}: {bound} is the text {spec[bound]!r}, not a number: YAML reads 1e-4 as text, "
                "so write 1.0e-4"
            )
    distribution = spec["distribution"]
    if distribution not in DISTRIBUTIONS:
        known = ", ".join(DISTRIBUTIONS)
        raise ConfigError(f"{where}: unknown distribution {distribution!r}; W&B's are {known}")
    if distribution == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise ConfigError(f"{where}: `values` must be a non-empty list")
    if distribution == "constant" and "value" not in spec:
        raise ConfigError(f"{where}: a constant needs `value`")
    if method == "grid" and distribution not in ("constant", "categorical"):
        raise ConfigError(
            f"{where} has distribution {distribution!r}, which a grid cannot enumerate: "
            "give it `values: [...]`, or use method: random"
        )
    return spec


def _implied_distribution(where: str, spec: dict[str, Any]) -> str:
    """W&B's rule for a spec without ``distribution``: from its keys and the type of its bounds."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise ConfigError(f"{where} needs `value`, `values`, `min`/`max` or a `distribution`")
