"""The points of a sweep: every combination of a grid, or seeded draws of W&B's distributions.

These samplers are written here because W&B's own ``sweeps`` engine cannot be installed beside
mlxtend (sweeps 0.3.0 needs numpy<2, mlxtend needs numpy>=2.3.5).

``grid`` gives every combination (the last parameter varies fastest); ``random`` draws from
``random.Random(seed)``; ``bayes`` needs the W&B server, so it runs as ``random`` locally.

Example:
    >>> import random
    >>> sample_parameter({"distribution": "int_uniform", "min": 1, "max": 3}, random.Random(0)) in (1, 2, 3)
    True
    >>> sorted(DISTRIBUTIONS)[:3]
    ['beta', 'categorical', 'constant']
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep.commands import EXPERIMENT_KEY

if TYPE_CHECKING:
    from tdl_lightning.sweep.config import SweepConfig

__all__ = ["DISTRIBUTIONS", "expand_sweep", "sample_parameter"]

Spec = dict[str, Any]


def _q(value: float, spec: Spec) -> float:
    q = float(spec.get("q", 1))
    return round(value / q) * q


def _log_uniform_values(rng: random.Random, s: Spec) -> float:
    return math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))


def _normal(rng: random.Random, s: Spec) -> float:
    return rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))


def _beta(rng: random.Random, s: Spec) -> float:
    return rng.betavariate(s.get("a", 1.0), s.get("b", 1.0))


DISTRIBUTIONS: dict[str, Callable[[random.Random, Spec], Any]] = {
    "constant": lambda rng, s: s["value"],
    "categorical": lambda rng, s: rng.choices(s["values"], weights=s.get("probabilities"))[0],
    "int_uniform": lambda rng, s: rng.randint(int(s["min"]), int(s["max"])),
    "uniform": lambda rng, s: rng.uniform(s["min"], s["max"]),
    "q_uniform": lambda rng, s: _q(rng.uniform(s["min"], s["max"]), s),
    "log_uniform": lambda rng, s: math.exp(rng.uniform(s["min"], s["max"])),
    "q_log_uniform": lambda rng, s: _q(math.exp(rng.uniform(s["min"], s["max"])), s),
    "log_uniform_values": _log_uniform_values,
    "q_log_uniform_values": lambda rng, s: _q(_log_uniform_values(rng, s), s),
    "inv_log_uniform": lambda rng, s: 1.0 / math.exp(rng.uniform(s["min"], s["max"])),
    "inv_log_uniform_values": lambda rng, s: 1.0 / _log_uniform_values(rng, s),
    "normal": _normal,
    "q_normal": lambda rng, s: _q(_normal(rng, s), s),
    "log_normal": lambda rng, s: math.exp(_normal(rng, s)),
    "q_log_normal": lambda rng, s: _q(math.exp(_normal(rng, s)), s),
    "beta": _beta,
    "q_beta": lambda rng, s: _q(_beta(rng, s), s),
}
"""W&B's distributions by name: ``sampler(rng, spec) -> value``."""


def sample_parameter(spec: Spec, rng: random.Random) -> Any:
    """One draw of a checked parameter spec (W&B's distributions) from ``rng``.

    Example:
        >>> rng = random.Random(0)
        >>> 1e-4 <= sample_parameter({"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        ...                          rng) <= 0.1
        True
    """
    return DISTRIBUTIONS[spec["distribution"]](rng, spec)


def expand_sweep(sweep: SweepConfig, max_runs: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The points of a sweep: ``[{parameter: value}, ...]`` in the order they run.

    ``grid``: every combination (the last parameter varies fastest), cut at ``max_runs``;
    ``random``/``bayes``: ``max_runs`` (or ``run_cap``) draws from ``random.Random(seed)``, so the
    same seed gives the same points and an interrupted sweep resumes. Every point carries
    ``run.experiment`` (the sweep's name unless the sweep sets it).

    Example:
        >>> from tdl_lightning.sweep.config import SweepConfig
        >>> sweep = SweepConfig("s", "random", {"lr": {"distribution": "uniform", "min": 0, "max": 1}},
        ...                     ["${args}"])
        >>> expand_sweep(sweep, max_runs=3, seed=1) == expand_sweep(sweep, max_runs=3, seed=1)
        True
    """
    if max_runs is not None and max_runs < 1:
        raise ConfigError(f"--max-runs must be >= 1, got {max_runs}")
    limit = max_runs if max_runs is not None else sweep.run_cap
    keys = list(sweep.parameters)
    if sweep.method == "grid":
        axes = [_grid_values(sweep.parameters[k]) for k in keys]
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]
        points = points[:limit] if limit is not None else points
    else:
        if limit is None:
            raise ConfigError(
                f"sweep {sweep.name!r} is a {sweep.method} search, which never ends on its own: "
                "give --max-runs N (or run_cap: N in the config)"
            )
        rng = random.Random(seed)
        points = [{k: sample_parameter(sweep.parameters[k], rng) for k in keys} for _ in range(limit)]
    for point in points:
        point.setdefault(EXPERIMENT_KEY, sweep.name)
    return points


def _grid_values(spec: Spec) -> list[Any]:
    return [spec["value"]] if spec["distribution"] == "constant" else list(spec["values"])
