"""Keys that belong together: a measured scalar and its theory twin, a metric and its ``_step`` twin.

Plugins log the theory's value of a quantity beside the measurement as ``<plugin>/<name>_theory``
(``init_statistics/q_layer_03_theory``, ``linear_dynamics/mode_0_theory``). Every function here
also accepts the prefix spelling ``<plugin>/theory_<name>`` (``linear_dynamics/theory_mode_0``), which
runs written by earlier versions and other tools may hold, for single scalars and for per-layer
families such as ``init_statistics/q_layer_{l}``.

Example:
    >>> theory_of("linear_dynamics/theory_mode_0"), theory_of("init_statistics/q_layer_03_theory")
    ('linear_dynamics/mode_0', 'init_statistics/q_layer_03')
    >>> theory_twin("jacobian/variance", ["jacobian/variance", "jacobian/theory_variance"])
    'jacobian/theory_variance'
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = [
    "is_theory_of_another",
    "layer_family",
    "step_twin_of",
    "theory_of",
    "theory_spellings",
    "theory_twin",
]

THEORY_PREFIX = "theory_"
THEORY_SUFFIX = "_theory"
# a per-layer plugin scalar: init_statistics/q_layer_03, init_stats/q_l3, init_statistics/q_layer_03_theory
_LAYER_KEY = re.compile(r"^(?P<head>.*?[a-z_])(?P<layer>\d+)(?P<tail>(_[a-z]+)*)$")


def theory_spellings(key: str) -> tuple[str, str]:
    """The two names under which a plugin logs the theory of ``key``: ``theory_<name>``, ``<name>_theory``.

    ``key`` may be a per-layer family (``init_statistics/q_layer_{l}``).

    Example:
        >>> theory_spellings("init_statistics/q_layer_{l}")
        ('init_statistics/theory_q_layer_{l}', 'init_statistics/q_layer_{l}_theory')
    """
    head, slash, name = key.rpartition("/")
    return f"{head}{slash}{THEORY_PREFIX}{name}", f"{head}{slash}{name}{THEORY_SUFFIX}"


def theory_of(key: str) -> str | None:
    """The measured quantity whose theory ``key`` holds (either spelling); ``None`` for a measurement.

    Example:
        >>> theory_of("jacobian/theory_variance"), theory_of("init_statistics/q_layer_{l}_theory")
        ('jacobian/variance', 'init_statistics/q_layer_{l}')
        >>> theory_of("hessian/lambda_max") is None
        True
    """
    head, slash, name = key.rpartition("/")
    if name.startswith(THEORY_PREFIX) and len(name) > len(THEORY_PREFIX):
        return f"{head}{slash}{name[len(THEORY_PREFIX) :]}"
    if name.endswith(THEORY_SUFFIX) and len(name) > len(THEORY_SUFFIX):
        return f"{head}{slash}{name[: -len(THEORY_SUFFIX)]}"
    return None


def theory_twin(key: str, keys: Collection[str]) -> str | None:
    """The key among ``keys`` that holds the theory of ``key`` (``theory_<name>`` first), else ``None``.

    Example:
        >>> theory_twin("init_statistics/q_layer_03", {"init_statistics/q_layer_03_theory"})
        'init_statistics/q_layer_03_theory'
        >>> theory_twin("hessian/lambda_max", {"hessian/trace"}) is None
        True
    """
    return next((twin for twin in theory_spellings(key) if twin in keys), None)


def is_theory_of_another(key: str, keys: Collection[str]) -> bool:
    """Whether ``key`` is the theory twin of another key in ``keys`` (and so drawn inside its panel).

    Example:
        >>> keys = ["ld/mode_0", "ld/theory_mode_0", "ld/theory_tau"]
        >>> [is_theory_of_another(k, keys) for k in keys]
        [False, True, False]
    """
    measured = theory_of(key)
    return measured is not None and measured in keys


def step_twin_of(name: str) -> str | None:
    """The metric that ``name`` is the ``_step``/``_epoch`` twin of (Lightning's ``on_step`` and
    ``on_epoch`` copies), else ``None``.

    Example:
        >>> step_twin_of("train/loss_step"), step_twin_of("train/loss_epoch"), step_twin_of("val/acc")
        ('train/loss', 'train/loss', None)
    """
    for suffix in ("_step", "_epoch"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def layer_family(key: str) -> tuple[str, int] | None:
    """``("init_statistics/q_layer_{l}", 3)`` for ``init_statistics/q_layer_03``; ``None`` with no layer.

    Example:
        >>> layer_family("init_statistics/q_layer_03"), layer_family("init_statistics/q_layer_03_theory")
        (('init_statistics/q_layer_{l}', 3), ('init_statistics/q_layer_{l}_theory', 3))
        >>> layer_family("hessian/lambda_max") is None
        True
    """
    match = _LAYER_KEY.match(key)
    if match is None:
        return None
    return f"{match['head']}{{l}}{match['tail']}", int(match["layer"])
