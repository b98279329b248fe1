"""The comparison figure: every run's curves, plugin probes and per-layer profiles, in one file.

Example:
    >>> from pathlib import Path
    >>> from tdl_lightning.compare.comparison import Comparison
    >>> run = RunRecord(Path("a"), "a", "s", {}, {}, curves={"val/acc": [(0, 0.1), (10, 0.8)]})
    >>> plot_comparison(Comparison.of([run], ["val/acc"]), "/tmp/compare_figure.png").suffix
    '.png'
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdl_lightning.compare.panels import figure_panels, run_keys, swept_axis
from tdl_lightning.compare.twins import layer_family, theory_spellings, theory_twin
from tdl_lightning.compare.values import display_value, short_names
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.record import Curve, RunRecord

if TYPE_CHECKING:
    from tdl_lightning.compare.comparison import Comparison

__all__ = ["plot_comparison"]


def plot_comparison(comparison: Comparison, output: str | Path, plugins: Sequence[str] | None = None) -> Path:
    """Draw the runs' curves into one figure and save it at ``output`` (PNG, PDF or SVG).

    One panel per compared metric (value over steps), one per plugin scalar (its probes over
    steps; against the swept config value when each run probed it once), and one per per-layer
    plugin family such as ``init_statistics/q_layer_{l}``, drawn against the layer ``l`` (solid:
    last probe, dashed: first probe). A quantity's theory twin (``theory_<name>`` or
    ``<name>_theory``, either spelling) is drawn dotted in its panel. ``plugins`` (globs) chooses
    the plugin scalars; default all. Each run keeps its colour; values spanning decades get a log axis.

    Example:
        >>> from tdl_lightning.compare.comparison import Comparison
        >>> run = RunRecord(Path("a"), "a", "s", {}, {}, curves={"val/acc": [(0, 0.1), (10, 0.8)]})
        >>> plot_comparison(Comparison.of([run], ["val/acc"]), "/tmp/compare.png").name
        'compare.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = figure_panels(comparison, plugins)
    if not panels:
        raise ConfigError("none of the runs has a curve to draw: choose metrics with --metric")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = comparison.labels()
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.kind == "final":
            _draw_final_against_config(ax, comparison, panel.key, plt.get_cmap("viridis"))
        for i, run in enumerate(comparison.runs if panel.kind != "final" else []):
            color = colors[i % len(colors)]
            if panel.kind == "layers":
                _draw_layers(ax, run, panel.key, color, labels[i])
            else:
                _draw_curves(ax, run, panel.key, color, labels[i])
        _log_scale_if_needed(ax)
        ax.set_title(textwrap.fill(panel.title, 60), fontsize=9)
        if panel.kind != "final":
            ax.set_xlabel("layer l" if panel.kind == "layers" else "step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    first = next((i for i, panel in enumerate(panels) if panel.kind != "final"), 0)
    handles, names = axes.flat[first].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(4, max(1, len(names))),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(names) / 4), 1, 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _draw_curves(ax: Any, run: RunRecord, key: str, color: str, label: str) -> None:
    """``key`` over steps (solid) and, where the run logged one, its theory twin (dotted)."""
    twin = theory_twin(key, run_keys(run))
    for curve_key, style in ((key, "-"), (twin, ":")):
        curve = run.curve(curve_key) if curve_key else []
        if curve:
            xs, ys = zip(*curve, strict=True)
            ax.plot(
                xs,
                ys,
                linestyle=style,
                marker="." if len(curve) < 30 else None,
                color=color,
                label=label if style == "-" else None,
            )


def _log_scale_if_needed(ax: Any) -> None:
    values = [float(y) for line in ax.get_lines() for y in line.get_ydata()]
    values = [v for v in values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")


def _draw_final_against_config(ax: Any, comparison: Comparison, metric: str, cmap: Any) -> None:
    axis = swept_axis(comparison)
    assert axis is not None
    short = short_names(list(comparison.config_differences))
    other = next((k for k in comparison.config_differences if k != axis), None)
    groups: dict[str, list[tuple[float, float]]] = {}
    for i, run in enumerate(comparison.runs):
        value = run.value(metric, "final")
        if value is None:
            continue
        group = metric
        if other is not None:
            group = f"{short[other]}={display_value(comparison.config_differences[other][i])}"
        groups.setdefault(group, []).append((float(comparison.config_differences[axis][i]), value))
    for j, (group, points) in enumerate(groups.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="s", color=cmap(0.85 * j / max(1, len(groups) - 1)), label=group)
    ax.set_xlabel(short[axis])
    ax.legend(fontsize=8)


def _per_layer(run: RunRecord, family: str) -> dict[int, Curve]:
    per_layer = {}
    for key, curve in run.plugin_curves.items():
        found = layer_family(key)
        if found and found[0] == family and curve:
            per_layer[found[1]] = curve
    return per_layer


def _draw_layers(ax: Any, run: RunRecord, family: str, color: str, label: str) -> None:
    per_layer = _per_layer(run, family)
    if not per_layer:
        return
    layers = sorted(per_layer)
    ax.plot(layers, [per_layer[l][-1][1] for l in layers], marker=".", color=color, label=label)
    if any(len(per_layer[l]) > 1 for l in layers):
        ax.plot(layers, [per_layer[l][0][1] for l in layers], linestyle="--", color=color, alpha=0.6)
    theory: dict[int, Curve] = {}
    for spelling in theory_spellings(family):  # theory_<family> or <family>_theory
        theory = theory or _per_layer(run, spelling)
    if theory:
        layers = sorted(theory)
        ax.plot(layers, [theory[l][-1][1] for l in layers], linestyle=":", color=color, alpha=0.8)
