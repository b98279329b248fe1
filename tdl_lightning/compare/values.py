"""Config values as ``tdl compare`` compares, orders and shows them, and short names for dotted keys.

Example:
    >>> short_names(["model.model.sigma_w", "optimizer.lr"])
    {'model.model.sigma_w': 'sigma_w', 'optimizer.lr': 'lr'}
    >>> display_value("tdl_lightning.models.DeepMLP"), display_value(0.123456789)
    ('DeepMLP', '0.1235')
"""

from __future__ import annotations

import json
from typing import Any

from tdl_lightning.runs.record import is_number

__all__ = ["canonical", "display_value", "short_names", "sort_key"]


def canonical(value: Any) -> str:
    """``value`` as canonical JSON, so that equal configs compare equal (``{"a": 1, "b": 2}`` in any order).

    Example:
        >>> canonical({"b": 2, "a": 1}) == canonical({"a": 1, "b": 2})
        True
    """
    return json.dumps(value, sort_keys=True, default=str)


def sort_key(value: Any) -> tuple[int, float, str]:
    """A key that orders numbers by value, before anything else (ordered by its JSON).

    Example:
        >>> sorted([16, "relu", 4, None], key=sort_key)
        [4, 16, 'relu', None]
    """
    if is_number(value):
        return (0, float(value), "")
    return (1, 0.0, canonical(value))


def display_value(value: Any) -> str:
    """A short cell text: a class path's last part, floats to 4 significant digits, lists joined by ``,``.

    Example:
        >>> display_value(None), display_value([1, 2]), display_value(1.5)
        ('–', '1,2', '1.5')
    """
    if value is None:
        return "–"
    if isinstance(value, str) and "." in value and value.replace(".", "").replace("_", "").isalnum():
        return value.rsplit(".", 1)[-1] if value[0].isalpha() else value
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 7 else f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(display_value(v) for v in value)
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with.

    Example:
        >>> short_names(["model.depth", "data.depth", "optimizer.lr"])
        {'model.depth': 'model.depth', 'data.depth': 'data.depth', 'optimizer.lr': 'lr'}
    """
    short = {}
    for key in keys:
        parts = key.split(".")
        candidate = key
        for n in range(1, len(parts) + 1):
            candidate = ".".join(parts[-n:])
            if not any(
                other != key and (other == candidate or other.endswith("." + candidate)) for other in keys
            ):
                break
        short[key] = candidate
    return short
