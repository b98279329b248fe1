"""Which panels the comparison figure has: metric curves, a final metric against the swept value,
plugin scalars, and per-layer plugin families, with every theory twin drawn inside its quantity's panel.

Example:
    >>> from pathlib import Path
    >>> from tdl_lightning.compare.comparison import Comparison
    >>> run = RunRecord(Path("a"), "a", "s", {}, {}, curves={"val/acc": [(0, 0.1)]},
    ...                 plugin_curves={"ld/mode_0": [(0, 1.0)], "ld/theory_mode_0": [(0, 1.1)]})
    >>> [panel.title for panel in figure_panels(Comparison.of([run], ["val/acc"]))]
    ['val/acc', 'ld/mode_0 (dotted: theory)']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from tdl_lightning.compare.twins import is_theory_of_another, layer_family, theory_of, theory_twin
from tdl_lightning.compare.values import canonical, short_names
from tdl_lightning.runs.record import RunRecord, is_number

if TYPE_CHECKING:
    from tdl_lightning.compare.comparison import Comparison

__all__ = ["Panel", "figure_panels", "run_keys", "swept_axis"]

PanelKind = Literal["curve", "final", "layers"]


class Panel(NamedTuple):
    """One panel of the figure: its title, what it draws, and the metric, scalar or family it draws.

    ``kind`` is ``"curve"`` (values over steps), ``"final"`` (final values against the swept
    config value) or ``"layers"`` (a per-layer family against the layer).

    Example:
        >>> Panel("val/acc", "curve", "val/acc").kind
        'curve'
    """

    title: str
    kind: PanelKind
    key: str


def run_keys(run: RunRecord) -> set[str]:
    """Every metric and plugin scalar that ``run`` has a curve of.

    Example:
        >>> from pathlib import Path
        >>> sorted(run_keys(RunRecord(Path("r"), "r", "e", {}, {}, {"val/acc": []}, {"hessian/trace": []})))
        ['hessian/trace', 'val/acc']
    """
    return set(run.curves) | set(run.plugin_curves)


def swept_axis(comparison: Comparison) -> str | None:
    """The config key to draw a final metric against: a numeric key among at most two that differ.

    Needs three runs or more; of two numeric keys, the one with more distinct values (the first on a tie).

    Example:
        >>> from pathlib import Path
        >>> from tdl_lightning.compare.comparison import Comparison
        >>> runs = [RunRecord(Path(str(s)), str(s), "e", {"sigma_w": s}, {}) for s in (0.5, 1.0, 2.0)]
        >>> swept_axis(Comparison.of(runs, []))
        'sigma_w'
    """
    differences = comparison.config_differences
    numeric = [k for k, values in differences.items() if all(is_number(v) for v in values)]
    if not numeric or len(differences) > 2 or len(comparison.runs) < 3:
        return None
    return max(reversed(numeric), key=lambda k: len({canonical(v) for v in differences[k]}))


def figure_panels(comparison: Comparison, plugins: Sequence[str] | None = None) -> list[Panel]:
    """The panels of :func:`~tdl_lightning.compare.figure.plot_comparison`, in drawing order.

    First one per compared metric that has a curve, then (for a sweep along one numeric key) the
    first metric's final value against that key, then one per plugin scalar matching ``plugins``
    (globs; default all) and one per per-layer family (``init_statistics/q_layer_{l}``). A theory
    twin, spelled ``theory_<name>`` or ``<name>_theory``, gets no panel of its own where its
    quantity has one: it is drawn dotted there.

    Example:
        >>> from pathlib import Path
        >>> from tdl_lightning.compare.comparison import Comparison
        >>> curves = {f"s/q_layer_{l}": [(0, 1.0)] for l in (1, 2)}
        >>> curves |= {f"s/theory_q_layer_{l}": [(0, 1.0)] for l in (1, 2)}
        >>> run = RunRecord(Path("a"), "a", "e", {}, {}, plugin_curves=curves)
        >>> [panel.title for panel in figure_panels(Comparison.of([run], []))]
        ['s/q_layer_{l} over layers (solid: last probe, dashed: first, dotted: theory)']
    """
    runs = comparison.runs
    every_key = set().union(*(run_keys(r) for r in runs))
    drawn = [m for m in comparison.metrics if any(r.curve(m) for r in runs)]
    panels = [
        Panel(f"{m}{_theory_note(m, every_key)}", "curve", m)
        for m in drawn
        if not is_theory_of_another(m, drawn)
    ]
    axis = swept_axis(comparison)
    axis_name = short_names(list(comparison.config_differences))[axis] if axis is not None else ""
    if axis is not None and panels:
        metric = panels[0].key
        panels.insert(1, Panel(f"final {metric} against {axis_name}", "final", metric))
    plugin_keys = list(dict.fromkeys(k for r in runs for k in r.plugin_curves))
    if plugins is not None:
        plugin_keys = [k for k in plugin_keys if any(fnmatch.fnmatchcase(k, p) for p in plugins)]
    families: dict[str, list[str]] = {}
    for key in plugin_keys:
        found = layer_family(key)
        if found:
            families.setdefault(found[0], []).append(key)
    families = {f: keys for f, keys in families.items() if len(keys) > 1}
    layered = {k for keys in families.values() for k in keys}
    for key in plugin_keys:
        if key in layered or key in comparison.metrics or is_theory_of_another(key, plugin_keys):
            continue
        once = all(len(r.curve(key)) <= 1 for r in runs)
        if once and axis is not None:
            panels.append(Panel(f"{key} (probed once) against {axis_name}", "final", key))
        else:
            panels.append(Panel(f"{key}{_theory_note(key, every_key)}", "curve", key))
    every_family = {found[0] for found in map(layer_family, every_key) if found}
    for family in families:
        if is_theory_of_another(family, families):
            continue  # drawn dotted in the measured family's panel
        note = ", dotted: theory" if theory_twin(family, every_family) else ""
        title = f"{family} over layers (solid: last probe, dashed: first{note})"
        panels.append(Panel(title, "layers", family))
    return panels


def _theory_note(key: str, keys: set[str]) -> str:
    return " (dotted: theory)" if theory_of(key) is None and theory_twin(key, keys) else ""
