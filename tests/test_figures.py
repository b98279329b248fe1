"""The figure pipeline of plugins/figures.py: shared Agg renderers and the cheap clear."""

from __future__ import annotations

import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from plugins.figures import FixedLayoutFigure, SharedRendererCanvas, fixed_layout_figure


def _draw(values: np.ndarray, log: bool) -> FixedLayoutFigure:
    figure, (ax_left, ax_right) = fixed_layout_figure(6, 3, ncols=2)
    ax_left.plot(np.arange(1, len(values) + 1), values, "o", label="measured")
    ax_left.set_ylabel("$q^l$")
    if log:
        ax_left.set_yscale("log")
    ax_right.stairs(values[:-1], np.arange(len(values)), fill=True, label="a histogram")
    ax_right.legend(fontsize=8)
    assert isinstance(figure, FixedLayoutFigure)
    return figure


def _pixels(figure: FixedLayoutFigure, canvas: type[FigureCanvasAgg]) -> np.ndarray:
    canvas(figure).draw()
    return np.asarray(figure.canvas.buffer_rgba()).copy()


def test_a_shared_renderer_draws_the_pixels_of_a_fresh_one():
    rng = np.random.default_rng(0)
    for i, values in enumerate([rng.lognormal(size=12), rng.lognormal(size=12) * 100, rng.random(12)]):
        shared = _pixels(_draw(values, log=i < 2), SharedRendererCanvas)  # after other figures drawn
        fresh = _pixels(_draw(values, log=i < 2), FigureCanvasAgg)
        assert shared.shape == fresh.shape == (300, 600, 4)
        assert np.array_equal(shared, fresh)


def test_figures_of_one_size_share_a_renderer_per_thread_and_others_do_not():
    first, second = fixed_layout_figure(4, 3)[0], fixed_layout_figure(4, 3)[0]
    assert first.canvas.get_renderer() is second.canvas.get_renderer()
    assert fixed_layout_figure(5, 3)[0].canvas.get_renderer() is not first.canvas.get_renderer()
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(second.canvas.get_renderer()))
    thread.start()
    thread.join()
    assert elsewhere[0] is not first.canvas.get_renderer()


def test_clear_detaches_the_axes_and_the_figure_draws_again():
    figure = _draw(np.linspace(1, 2, 5), log=True)
    axes = list(figure.axes)
    figure.clear()
    assert figure.axes == [] and all(ax.figure is figure for ax in axes)  # detached, not reset
    ax = figure.add_subplot()
    ax.plot([0, 1], [1, 0])
    figure.canvas.draw()
    assert figure.axes == [ax]


def _fresh_pixels(maker, *args) -> np.ndarray:
    """The pixels of the figure ``maker`` draws on a new figure (nothing pooled to reuse)."""
    from plugins import figures

    pooled = dict(figures._POOL)
    figures._POOL.clear()
    try:
        figure = maker(*args)
        figure.canvas.draw()
        return np.asarray(figure.canvas.buffer_rgba()).copy()
    finally:
        figures._POOL.clear()
        figures._POOL.update(pooled)


def test_reused_figures_draw_the_pixels_of_new_ones():
    import torch

    from plugins.jacobian import _density_figure, _spectrum_figure
    from plugins.signal_propagation import _q_c_figure

    rng = np.random.default_rng(1)
    cases = []
    for scale in (1.0, 30.0, 0.01, 1.0):
        q, c = np.exp(rng.normal(0, 1, 17)) * scale, rng.random(17)
        cases.append((_q_c_figure, q, c, q * 1.1, np.linspace(0.1, 0.9, 17)))
        cases.append((_q_c_figure, q, c, None, None))
        cases.append((_spectrum_figure, torch.tensor(rng.lognormal(0, scale, (8, 10))), scale))
        cases.append((_spectrum_figure, torch.tensor(rng.lognormal(0, 1, (8, 10))), None))
        grid = np.linspace(0, 4 * scale, 50)
        cases.append((_density_figure, torch.tensor(rng.random((8, 10))) * 2 * scale, grid, np.exp(-grid)))
    reused, last = 0, {}
    for maker, *args in cases:
        figure = maker(*args)
        reused += figure is last.get(maker)  # the one this maker drew last, handed back by clear()
        last[maker] = figure
        figure.canvas.draw()
        assert np.array_equal(np.asarray(figure.canvas.buffer_rgba()), _fresh_pixels(maker, *args))
        figure.clear()  # hands it back: the next figure of its name is this one
    assert reused >= len(cases) - 3  # all but the first of each kind


def plugins_pool() -> list:
    from plugins import figures

    return [f for pooled in figures._POOL.values() for f in pooled]


def test_a_figure_with_more_than_its_axes_is_not_reused():
    from plugins import figures

    figures._POOL.clear()
    figure, (ax,) = fixed_layout_figure(4, 3, reuse="test/colourbar")
    figure.colorbar(ax.scatter([0, 1], [0, 1], c=[0, 1]), ax=ax)
    figure.clear()
    assert figure.axes == [] and plugins_pool() == []
    first, _ = fixed_layout_figure(4, 3, reuse="test/plain")
    first.clear()
    assert plugins_pool() == [first] and fixed_layout_figure(4, 3, reuse="test/plain")[0] is first
    assert fixed_layout_figure(4, 3, reuse="test/plain")[0] is not first  # taken: a new one


def test_the_pool_of_a_name_stays_small():
    from plugins import figures

    figures._POOL.clear()
    made = [fixed_layout_figure(4, 3, reuse="test/many")[0] for _ in range(figures._MAX_POOLED + 3)]
    for figure in made:
        figure.clear()
    assert len(plugins_pool()) == figures._MAX_POOLED
    assert made[-1].axes == []  # past the limit: freed as any other figure
    figures._POOL.clear()
