"""Figures drawn beside training: figure makers drawn in a forked child, and each fallback to this process."""

from __future__ import annotations

import os
import signal

import numpy as np
import PIL.Image
import pytest
from lightning.pytorch.loggers import WandbLogger

from plugins import drawing
from plugins.drawing import BackgroundDrawing, FigureJob, drawing_in_background
from plugins.figures import fixed_layout_figure
from tests.test_plugin_base import Curves, _fit

pytestmark = pytest.mark.skipif(not drawing_in_background(), reason="figures are drawn in a child on Linux")

STEPS = (0, 3, 6)  # Curves probes at init and at both epoch ends of _fit


@pytest.fixture(autouse=True)
def _warm_drawing(monkeypatch):
    """The process's drawing with every job sent to a child (none drawn here first)."""
    monkeypatch.setattr(drawing.DRAWING, "child_cost", 0.0)


def _pixels(path):
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _curves_fit(tmp_path, background: bool, **kwargs):
    cb = Curves(at_init=True, every_n_epochs=1, probe_size=8)
    cb.background_figures = background
    _fit(tmp_path, [cb], **kwargs)
    return cb, tmp_path / "plugins" / "curves"


def test_figure_makers_are_drawn_in_a_child_with_the_same_pixels(tmp_path):
    cb, out = _curves_fit(tmp_path / "background", background=True)
    # Curves notes each draw in its own memory: the init probe's figure was drawn in a child; the
    # later ones too, unless training ended before a child was free for them (then here, meanwhile)
    assert 0 not in cb.drawn and set(cb.drawn) <= {3, 6}
    in_process, out_here = _curves_fit(tmp_path / "here", background=False)
    assert in_process.drawn == list(STEPS)
    for step in STEPS:
        name = f"curve_step{step:07d}.png"
        assert np.array_equal(_pixels(out / name), _pixels(out_here / name))
    assert not list(out.glob(".*.part")) and cb._pending == [] and not drawing.DRAWING.busy


def test_a_figure_whose_child_fails_is_drawn_in_the_training_process(tmp_path):
    parent = os.getpid()

    class FailsInChild(Curves):
        def probe(self, pl_module, batch):
            result = super().probe(pl_module, batch)
            draw = result.figures["curve"]

            def maker():
                if os.getpid() != parent:  # in the drawing process only
                    raise RuntimeError("only in the drawing process")
                return draw()

            return type(result)(arrays=result.arrays, figures={"curve": maker})

    cb = FailsInChild(at_init=True, every_n_epochs=1, probe_size=8)
    _fit(tmp_path, [cb])
    assert sorted(cb.drawn) == list(STEPS)  # all three drawn again here, at the end of training
    for step in STEPS:
        assert (tmp_path / "plugins" / "curves" / f"curve_step{step:07d}.png").stat().st_size > 500


def test_a_stalled_child_is_killed_and_its_figures_drawn_here(tmp_path, monkeypatch):
    monkeypatch.setattr(drawing, "_STALL_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(drawing, "SECONDS_PER_FIGURE", 0.0)
    parent = os.getpid()

    def maker():
        if os.getpid() != parent:
            signal.pause()  # a child that never finishes (SIGKILL ends it)
        figure, (ax,) = fixed_layout_figure(3, 2)
        ax.plot([0, 1])
        return figure

    path = tmp_path / "stall.png"
    job = FigureJob("stall", maker, "epoch", 1, path, save=lambda fig, to: fig.savefig(to, format="png"))
    background = BackgroundDrawing(child_cost=0.0)
    background.submit([job])
    with pytest.warns(UserWarning, match="drawn in the training process"):
        background.wait([job])
    assert not job.drawn and not path.exists() and not background.busy


def _save(figure, to):
    figure.savefig(to, format="png")


def test_queued_jobs_of_a_plugin_are_left_to_it(tmp_path):
    jobs = [
        FigureJob(
            f"f{i}", lambda: fixed_layout_figure(3, 2)[0], "step", i, tmp_path / f"f{i}.png", save=_save
        )
        for i in range(3)
    ]
    background = BackgroundDrawing(child_cost=0.0)
    background.submit(jobs[:1])  # a child starts on the first
    background.submit(jobs[1:])  # queued while it draws
    background.wait(jobs[1:])  # out of the queue: the caller draws them
    assert not any(job.drawn for job in jobs[1:]) and background.busy == (background._child is not None)
    background.wait(jobs[:1])
    assert not background.busy


def _where_drawn(tmp_path, child_cost: float, kinds: list[str]) -> list[bool]:
    """Whether each job (one per entry of ``kinds``, submitted one at a time) was drawn here."""
    parent, where = os.getpid(), []

    def maker():
        where.append(os.getpid() == parent)  # a child's note stays in the child
        return fixed_layout_figure(3, 2)[0]

    background = BackgroundDrawing(child_cost=child_cost)
    tmp_path.mkdir(exist_ok=True)
    jobs = [
        FigureJob(f"f{i}", maker, "step", i, tmp_path / f"f{i}.png", save=_save, kind=kind)
        for i, kind in enumerate(kinds)
    ]
    here = []
    for job in jobs:
        background.submit([job])
        here.append(job.drawn)  # drawn on return: here
        background.wait([job])
    assert all(job.drawn and job.path.stat().st_size > 500 for job in jobs)
    assert where == [True] * sum(here) and set(background.costs) == set(kinds)
    return here


def test_the_first_figure_of_each_kind_is_drawn_here_and_timed(tmp_path):
    # any draw costs more than a nanosecond: a kind goes to children once timed here (the very first
    # draw, which fills matplotlib's caches, is not timed: the next of its kind is drawn here again)
    kinds = ["a", "a", "b", "a", "b"]
    assert _where_drawn(tmp_path / "costly", 1e-9, kinds) == [True, True, True, False, False]


def test_a_kind_cheaper_to_draw_than_a_child_stays_in_the_training_process(tmp_path):
    assert _where_drawn(tmp_path, 1e9, ["a", "a", "a"]) == [True, True, True]


def test_figures_drawn_beside_training_reach_wandb(tmp_path):
    logger = WandbLogger(project="drawing", save_dir=str(tmp_path), offline=True)
    cb = Curves(at_init=True, every_n_epochs=1, probe_size=8)
    try:
        _fit(tmp_path, [cb], logger=logger)
    finally:
        logger.experiment.finish()
    images = sorted(tmp_path.glob("wandb/offline-run-*/files/media/images/curves/curve_*.png"))
    assert len(images) == len(STEPS) and 0 not in cb.drawn


def test_the_environment_can_keep_figures_in_process(monkeypatch):
    monkeypatch.setenv("TDL_FIGURES_IN_PROCESS", "1")
    assert not drawing_in_background() and not BackgroundDrawing().enabled
