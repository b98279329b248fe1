"""Where a plugin's results go: :class:`ProbeResult`, and the files and W&B media of each probe.

:class:`PluginOutputs` is the output half of :class:`~plugins.base.DiagnosticCallback` (which
re-exports :class:`ProbeResult`): in the plugin's folder ``<run dir>/plugins/<name>/`` it writes
each probe's arrays (``step<N>.npz``), its figures and images as ``<figure>_step<N>.png`` and the
scalar history (``history.json``, strict JSON), and sends the figures, images and histograms to W&B
under ``<name>/<figure>``, once per probe.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = PluginOutputs()
    >>> out.name, out.out_dir, out.history = "demo", Path(tempfile.mkdtemp()), []
    >>> out._write_files(ProbeResult(scalars={"x": 1.0}), step=3)
    >>> sorted(p.name for p in out.out_dir.iterdir())
    ['history.json', 'step0000003.npz']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import PIL.Image
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from plugins.drawing import FigureJob
from plugins.figures import PNG_COMPRESS_LEVEL, FigureMaker, _pixels, _to_numpy, draw_figure

__all__ = ["PluginOutputs", "ProbeResult"]


@dataclass
class ProbeResult:
    """What one probe produced.

    Attributes:
        scalars: numbers logged to every logger as ``<plugin>/<key>`` and kept in the history.
        arrays: raw arrays saved in ``step_<N>.npz`` in the plugin's folder.
        histograms: arrays sent to W&B as ``wandb.Histogram`` (and saved with the arrays).
        figures: matplotlib figures, saved as PNG and sent to W&B as ``wandb.Image``; either a
            ``Figure``, drawn and saved when the probe ends, or a *figure maker*: a function of no
            argument that returns the figure (``functools.partial(draw, values)``), which the plugin
            calls when it draws the figure (:meth:`~plugins.base.DiagnosticCallback.figures_at`): at
            the end of training by default, so that drawing never holds training up. The maker should
            hold CPU copies of what it draws (NumPy arrays, CPU tensors).
        images: pictures that need no axes, saved as PNG straight from their pixels (no matplotlib:
            a few milliseconds instead of tens) and sent to W&B as ``wandb.Image`` like figures:
            ``(3, H, W)`` or ``(1, H, W)`` floats in ``[0, 1]``, or ``(H, W, 3)`` / ``(H, W)`` ``uint8``.

    Example:
        >>> import torch
        >>> ProbeResult(scalars={"lambda_max": 3.2}).scalars["lambda_max"]
        3.2
        >>> ProbeResult(images={"grid": torch.rand(3, 8, 8)}).images["grid"].shape
        torch.Size([3, 8, 8])
        >>> from plugins.figures import fixed_layout_figure
        >>> later = ProbeResult(figures={"curve": lambda: fixed_layout_figure(4, 3)[0]})
        >>> from matplotlib.figure import Figure
        >>> isinstance(draw_figure(later.figures["curve"]), Figure)
        True
    """

    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)
    histograms: dict[str, Any] = field(default_factory=dict)
    figures: Mapping[str, Figure | FigureMaker] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)


class PluginOutputs:
    """The files and W&B media of a plugin's probes, in ``out_dir`` (``None``: before setup, no files).

    A mixin of :class:`~plugins.base.DiagnosticCallback`, which sets ``name``, ``out_dir`` and
    ``history`` (the scalars of every probe so far, written as ``history.json``).

    Example:
        >>> PluginOutputs()._png_path("grid", 7)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: PluginOutputs has no run directory before setup: nothing to save
    """

    name: str = "diagnostic"
    out_dir: Path | None = None
    history: list[dict[str, Any]]
    _pending: list[FigureJob] | None = None  # figures not yet saved and sent to W&B

    def _output_figure(
        self, trainer: L.Trainer, name: str, figure: Figure | FigureMaker, when: str, step: int
    ) -> None:
        """Draw one figure, save it as PNG and send it to W&B under ``step``, then free it."""
        if self.out_dir is None:
            return
        drawn = draw_figure(figure)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._save_figure(drawn, name, step)
        wandb_logger = _wandb_logger(trainer)
        if wandb_logger is not None:
            self._log_media(wandb_logger, ProbeResult(figures={name: drawn}), when, step)
        drawn.clear()

    def _png_path(self, figure_name: str, step: int) -> Path:
        if self.out_dir is None:
            raise RuntimeError(f"{type(self).__name__} has no run directory before setup: nothing to save")
        return self.out_dir / f"{figure_name}_step{step:07d}.png"

    def _figure_job(self, name: str, maker: FigureMaker, when: str, step: int) -> FigureJob:
        """The job of drawing ``maker`` as this plugin's figure ``name`` of the probe at ``step``."""
        path = self._png_path(name, step)
        return FigureJob(name, maker, when, step, path, save=self._save_png, kind=f"{self.name}/{name}")

    def _log_drawn(self, trainer: L.Trainer) -> None:
        """Send the pending figures that a drawing process has saved to W&B, each under its probe's
        step, and forget them (the others stay pending)."""
        mine = [job for job in self._pending or [] if job.drawn]
        if not mine:
            return
        self._pending = [job for job in self._pending or [] if not job.drawn]
        wandb_logger = _wandb_logger(trainer)
        if wandb_logger is None:
            return
        for job in mine:
            self._log_media(wandb_logger, ProbeResult(figures={job.name: job.maker}), job.when, job.step)

    def _save_figure(self, figure: Figure | FigureMaker, figure_name: str, step: int) -> None:
        """The figure as PNG in the plugin's folder (:meth:`_save_png`)."""
        self._save_png(draw_figure(figure), self._png_path(figure_name, step))

    @staticmethod
    def _save_png(figure: Figure, path: Path) -> None:
        """``figure`` as PNG at ``path``, in one draw for a :func:`fixed_layout_figure`; one without a
        layout engine is laid out "tight" first, which costs a second draw."""
        engine = figure.get_layout_engine()
        if engine is None:
            figure.set_layout_engine("tight")
        elif isinstance(engine, PlaceHolderLayoutEngine):
            # fixed margins: with no layout engine savefig draws once, not once to lay out and again
            figure.set_layout_engine(None)
        try:
            figure.savefig(path, format="png", dpi=100, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
        finally:
            if isinstance(engine, PlaceHolderLayoutEngine):
                figure.set_layout_engine(engine)

    def _write_files(self, result: ProbeResult, step: int) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {**result.arrays, **{f"hist_{k}": v for k, v in result.histograms.items()}}
        arrays.update({f"scalar_{k}": np.asarray(v) for k, v in result.scalars.items()})
        saved: dict[str, Any] = {k: _to_numpy(v) for k, v in arrays.items()}  # Any: savez's keyword typing
        np.savez(self.out_dir / f"step{step:07d}.npz", **saved)
        for fig_name, figure in result.figures.items():
            self._save_figure(figure, fig_name, step)
        for image_name, image in result.images.items():
            PIL.Image.fromarray(_pixels(image)).save(
                self._png_path(image_name, step), compress_level=PNG_COMPRESS_LEVEL
            )
        # strict JSON: NaN and infinities become null (the round trip maps them through parse_constant)
        strict = json.loads(json.dumps(self.history), parse_constant=lambda _: None)
        (self.out_dir / "history.json").write_text(json.dumps(strict, indent=1, allow_nan=False))

    def _log_media(self, logger: WandbLogger, result: ProbeResult, when: str, step: int) -> None:
        import wandb

        media: dict[str, Any] = {}
        for fig_name in [*result.figures, *result.images]:
            path = self._png_path(fig_name, step)
            if path.is_file():
                media[f"{self.name}/{fig_name}"] = wandb.Image(str(path), caption=f"{when}, step {step}")
        for hist_name, values in result.histograms.items():
            flat: Any = _to_numpy(values).ravel()  # wandb's stubs say a Sequence; it takes arrays
            media[f"{self.name}/{hist_name}"] = wandb.Histogram(flat)
        if media:
            logger.experiment.log({**media, "trainer/global_step": step})


def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
