"""What every diagnostic plugin shares: schedule, probe batch, untouched training state, outputs.

A plugin subclasses :class:`DiagnosticCallback`, names itself (``name``, the prefix of its
logged keys and its folder in the run directory) and implements :meth:`~DiagnosticCallback.probe`,
which computes a :class:`ProbeResult` from the module and the fixed probe batch by calling the
plugin's pure functions. The base class decides *when* to probe, takes the probe batch once,
protects the training state, and sends the results everywhere:

- scalars to every logger (key ``<name>/<scalar>``, at the trainer's global step);
- figures, images and histograms to W&B (``wandb.Image`` / ``wandb.Histogram``);
- raw arrays as ``step_<N>.npz``, figures and images as PNG and the scalar history as ``history.json`` in
  ``<run dir>/plugins/<name>/``, so a run can be re-plotted with no server (the files and media:
  :mod:`plugins.outputs`);
- its history into the checkpoint, so a resumed run continues its curves.

The protocol a probed module may offer (each plugin states which parts it needs):
``pl_module.loss(batch) -> Tensor`` (or a ``loss_fn`` argument), ``pl_module(x)`` (or a
``forward_fn`` argument: :mod:`plugins.forward`), and layers found by type through
``named_modules()``. Every misuse raises :class:`~plugins.checks.PluginConfigError`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class WeightNorm(DiagnosticCallback):
    ...     name = "weight_norm"
    ...     def probe(self, pl_module, batch):
    ...         norm = sum(p.norm() ** 2 for p in pl_module.parameters()) ** 0.5
    ...         return ProbeResult(scalars={"l2": float(norm.detach())})
    >>> cb = WeightNorm(every_n_steps=100)
    >>> cb.probe(nn.Linear(2, 2), None).scalars.keys()
    dict_keys(['l2'])
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.figure import Figure
from typing_extensions import override

from plugins import distributed as _distributed
from plugins.batches import _concat as _concat
from plugins.batches import _num_samples as _num_samples
from plugins.batches import _to_device as _to_device
from plugins.batches import _truncate as _truncate
from plugins.batches import iterate_batches, probe_inputs, take_probe_batch
from plugins.checks import check_whole_number
from plugins.distributed import (
    ProbeFailure,
    agree_on_failure,
    probe_world,
    require_strategy,
    share_work,
    work_share,
)
from plugins.distributed import _to_cpu as _to_cpu
from plugins.drawing import DRAWING, FigureJob
from plugins.figures import FigureMaker, draw_figure, fixed_layout_figure
from plugins.figures import _pixels as _pixels
from plugins.forward import ForwardFn, require_forward
from plugins.outputs import PluginOutputs, ProbeResult, _wandb_logger
from plugins.protocol import (
    LossFn,
    check_loss_on_parameters,
    find_layers,
    module_loss_fn,
    preserved_training_state,
    require_layers,
    require_loss,
)

_ALONE = _distributed._ALONE  # the same flag object: setting _ALONE[0] here sets it for share_work

__all__ = [
    "DiagnosticCallback",
    "FigureMaker",
    "LossFn",
    "ProbeFailure",
    "ProbeResult",
    "agree_on_failure",
    "check_loss_on_parameters",
    "find_layers",
    "draw_figure",
    "fixed_layout_figure",
    "iterate_batches",
    "module_loss_fn",
    "preserved_training_state",
    "probe_inputs",
    "probe_world",
    "require_layers",
    "require_loss",
    "require_strategy",
    "share_work",
    "take_probe_batch",
    "work_share",
]

TIMEOUT_WARNING_FRACTION = 0.5  # a probe longer than this share of the process-group timeout is warned of


_INIT_DEFAULTS: dict[str, dict[str, Any]] = {}  # by class: Lightning reads state_key at every hook call


def _init_defaults(plugin: type) -> dict[str, Any]:
    """The defaults of the ``__init__`` arguments of ``plugin`` and of its plugin base classes (read once)."""
    key = f"{plugin.__module__}.{plugin.__qualname__}"
    if key not in _INIT_DEFAULTS:
        _INIT_DEFAULTS[key] = _read_init_defaults(plugin)
    return _INIT_DEFAULTS[key]


def _read_init_defaults(plugin: type) -> dict[str, Any]:
    return {
        name: p.default
        for cls in reversed(plugin.__mro__)
        if "__init__" in vars(cls) and issubclass(cls, DiagnosticCallback)
        for name, p in inspect.signature(vars(cls)["__init__"]).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _equal(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) or (default is None and isinstance(value, (list, tuple)) and not value)
    except Exception:  # a comparison that does not reduce to a bool (tensors)
        return False


def _stable(value: Any) -> Any:
    """``value`` with the same ``repr`` in every process: a function by its qualified name."""
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    if isinstance(value, (tuple, list)):
        return [_stable(v) for v in value]
    return value


class DiagnosticCallback(PluginOutputs, L.Callback):
    """Base of the diagnostic plugins: when to probe, on which data, and where results go.

    Args:
        at_init: probe once before the first optimizer step.
        every_n_steps: probe every ``n`` optimizer steps (``None``: never).
        every_n_epochs: probe at the end of every ``n``-th training epoch (``None``: never).
        at_end: probe when training ends.
        probe_size: samples in the fixed probe batch, drawn once from the training data.
        probe_seed: seed of the probe batch's draw (its own generator; training's RNG is untouched).

    Subclasses set ``name`` and implement :meth:`probe`; :meth:`check_module` may refuse, at
    setup, a module that lacks what the plugin needs. ``distributed = True`` makes every rank
    probe in lockstep (for probes that share their work through :func:`share_work`, or run
    collectives); otherwise global rank zero probes alone, while the others wait for it. Either way
    every rank then agrees on the probe's success (:func:`agree_on_failure`), so an error on one
    rank ends all of them at once, and a probe that takes more than half the process group's
    timeout gets one warning. At setup, strategies that shard the model are refused
    (:func:`require_strategy`), and so is ``sync_batchnorm`` unless ``runs_train_mode = False``
    (the probe puts the model in eval mode). ``<name>/probe_seconds`` is logged at every probe
    (the probe's own measurement if it gives one).
    While :meth:`probe` runs, ``self.probe_when`` says why: ``"init"``, ``"step"``, ``"epoch"`` or
    ``"end"`` (e.g. to compute something costly only at init and at the end).

    The six arguments above are declared here only: a subclass passes them on as ``**schedule``
    (LightningCLI follows it, so they stay in its configs and ``--help``), and declares again, as
    keyword-only arguments, only those whose default differs from the one here, e.g.
    ``def __init__(self, k: int = 1, *, at_end: bool = True, **schedule: Any)``. A misuse of any
    argument raises :class:`PluginConfigError` at construction.

    ``state_key_args`` names the arguments (stored as attributes of the same name) that tell two
    instances apart, e.g. ``("layers",)``: the ones that differ from their defaults join the
    ``state_key`` (beside ``every_n_steps`` and ``every_n_epochs``), so two instances that probe
    different layers can be attached to one Trainer and each resumes its own history.
    Of several instances of one plugin in a Trainer, the second logs as ``<name>_2/...`` and writes
    to ``plugins/<name>_2/`` (the third ``<name>_3``, in the order they are attached).
    ``needs_forward = True`` (a plugin that runs ``pl_module(x)``) checks at setup that the
    module's forward takes the inputs alone, unless the plugin's ``forward_fn`` is given
    (:func:`require_forward`).

    Example:
        >>> class Zero(DiagnosticCallback):
        ...     name = "zero"
        ...     def probe(self, pl_module, batch):
        ...         return ProbeResult(scalars={"zero": 0.0})
        >>> Zero(every_n_epochs=1).state_dict()
        {'history': [], 'last_probe_step': -1}
    """

    name: str = "diagnostic"
    distributed: bool = False
    runs_train_mode: bool = True
    state_key_args: tuple[str, ...] = ()
    needs_forward: bool = False
    forward_fn: ForwardFn | None = None  # a plugin that runs the model's forward takes it as an argument
    announce_after_seconds: float = (
        5.0  # a probe longer than this says so when it ends, and the next when it starts
    )

    def __init__(
        self,
        at_init: bool = True,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_end: bool = False,
        probe_size: int = 256,
        probe_seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_whole_number(owner, "every_n_steps", every_n_steps, none_means="never")
        check_whole_number(owner, "every_n_epochs", every_n_epochs, none_means="never")
        check_whole_number(owner, "probe_size", probe_size)
        self.at_init, self.at_end = at_init, at_end
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.probe_size, self.probe_seed = probe_size, probe_seed
        self.history: list[dict[str, Any]] = []
        self.last_probe_step = -1
        self.probe_batch: Any = None
        self.probe_when: str | None = None
        self.out_dir: Path | None = None
        self._warned_timeout = False
        self._last_seconds = 0.0

    # ----------------------------------------------------------------- to implement
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Compute this plugin's measurements on ``batch``. Subclasses implement this."""
        raise NotImplementedError

    def check_module(self, pl_module: L.LightningModule) -> None:
        """Raise a clear :class:`PluginConfigError` if ``pl_module`` lacks what the probe needs."""

    def take_batch(self, trainer: L.Trainer) -> Any:
        """The fixed probe batch, taken once when training starts (and moved to the module's device).

        Default: ``probe_size`` samples of the training data drawn with ``probe_seed``
        (:func:`take_probe_batch`). A plugin that probes other data (the validation split, or
        none: a sampler's noise seed) overrides this; every rank calls it.
        """
        return take_probe_batch(trainer.train_dataloader, self.probe_size, self.probe_seed)

    def repeats_probe(self, when: str) -> bool:
        """Whether a probe for ``when`` runs again at a step already probed (default: no)."""
        return False

    def end_figures(self) -> Mapping[str, Figure | FigureMaker]:
        """Figures drawn from the history when training ends, saved and sent to W&B on rank zero
        (at the last step; figures or figure makers, see :attr:`ProbeResult.figures`)."""
        return {}

    def figures_at(self, when: str) -> bool:
        """Whether the figure makers of the probe in progress are drawn as soon as it ends.

        ``when`` is why the probe runs (``"init"``, ``"step"``, ``"epoch"``, ``"end"``);
        :attr:`probe_step` and :attr:`probe_is_last` say more. Default: no, so that drawing never
        holds training up for longer than it must: each probe's arrays are saved at once, and its
        figure makers go to :mod:`plugins.drawing`, which draws a kind of figure cheaper than a child
        process in this process at once and the others beside training, in a child (with
        :attr:`background_figures` off, or where that cannot be, all in this process when training
        ends), each saved and sent to W&B under the step of its own probe, so every figure is still
        there. A plugin whose figures should be drawn in the
        training process as soon as the probe ends returns ``True`` for those probes (e.g.
        ``when == "init"``). Figures given as ``Figure`` objects are always drawn at once.

        Example:
            >>> class Live(DiagnosticCallback):
            ...     def figures_at(self, when):
            ...         return when == "init"
            >>> Live().figures_at("init"), Live().figures_at("epoch")
            (True, False)
        """
        return False

    #: The global step of the probe in progress (``None`` outside a probe of a fit).
    probe_step: int | None = None
    #: Whether the probe in progress is the fit's last after training began: the end probe, or a
    #: probe at the step where training stops (the last epoch's, or at ``max_steps``), at which the
    #: end probe is then skipped unless :meth:`repeats_probe` asks for it. Never the init probe.
    probe_is_last: bool = False
    #: Whether figure makers left for later (:meth:`figures_at`) are drawn in a child process while
    #: training goes on (:mod:`plugins.drawing`); ``False``: in this process when training ends.
    background_figures: bool = True

    # ----------------------------------------------------------------- Lightning hooks
    @override
    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: its class, schedule and the
        ``state_key_args`` that differ from their defaults (a default instance keeps the key that
        checkpoints written before those joined it hold).

        Example:
            >>> class Layered(DiagnosticCallback):
            ...     state_key_args = ("layer",)
            ...     def __init__(self, layer: str = "0", **schedule):
            ...         super().__init__(**schedule)
            ...         self.layer = layer
            >>> Layered().state_key
            "Layered{'every_n_steps': None, 'every_n_epochs': None}"
            >>> Layered(layer="2", every_n_epochs=1).state_key
            "Layered{'every_n_steps': None, 'every_n_epochs': 1, 'layer': '2'}"
        """
        return self._generate_state_key(
            every_n_steps=self.every_n_steps, every_n_epochs=self.every_n_epochs, **self._distinguishing()
        )

    def _distinguishing(self) -> dict[str, Any]:
        """The ``state_key_args`` (and ``probe_seed``) whose values differ from their defaults."""
        defaults = _init_defaults(type(self))
        found: dict[str, Any] = {}
        for name in (*self.state_key_args, "probe_seed"):
            value = getattr(self, name, None)
            if name in defaults and _equal(value, defaults[name]):
                continue
            found[name] = _stable(value)
        return found

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_strategy(type(self).__name__, trainer, pl_module, self.runs_train_mode)
        if self.needs_forward:
            require_forward(type(self).__name__, pl_module, self.forward_fn)
        self.check_module(pl_module)
        namesakes = [
            cb
            for cb in cast(list[L.Callback], trainer.callbacks)  # type: ignore[attr-defined]
            if isinstance(cb, DiagnosticCallback) and type(cb).name == type(self).name
        ]
        place = next((i for i, cb in enumerate(namesakes) if cb is self), 0)
        if place > 0:  # a second instance of the plugin: its own keys and folder, in attach order
            self.name = f"{type(self).name}_{place + 1}"
        root = trainer.log_dir or trainer.default_root_dir  # a collective: every rank calls it
        self.out_dir = Path(root) / "plugins" / self.name

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probe_batch = _to_device(self.take_batch(trainer), pl_module.device)
        if self.at_init and trainer.global_step == 0:
            self._probe(trainer, pl_module, "init")

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._probe(trainer, pl_module, "step")
        if self._pending and DRAWING.busy:  # figures drawn beside training go to W&B as they are saved
            DRAWING.poll()
            self._log_drawn(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe(trainer, pl_module, "epoch")

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._probe(trainer, pl_module, "end")
        self.draw_pending_figures(trainer)
        figures = self.end_figures() if trainer.is_global_zero and self.out_dir is not None else {}
        for fig_name, figure in figures.items():  # the subclass's end_figures, at the last step
            self._output_figure(trainer, fig_name, figure, "end", trainer.global_step)

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.draw_pending_figures(trainer)  # the probes so far keep their figures

    def draw_pending_figures(self, trainer: L.Trainer) -> None:
        """Send to W&B, each under its own probe's step, the figures left for later (:meth:`figures_at`):
        those a drawing process saved, once it has exited, and the rest drawn and saved here; called
        at ``on_train_end`` (and when training stops on an error), on global rank zero, which alone
        holds them.

        Example:
            >>> DiagnosticCallback().draw_pending_figures(L.Trainer(logger=False))  # none pending
        """
        pending = self._pending or []
        here = DRAWING.withdraw(pending)  # no child began them: drawn here while a child draws the others
        self._pending = [job for job in pending if job not in here]
        for job in here:
            self._output_figure(trainer, job.name, job.maker, job.when, job.step)
        DRAWING.wait(self._pending)
        self._log_drawn(trainer)  # those a drawing process saved
        left, self._pending = self._pending, []
        for job in left:  # their drawing process failed
            self._output_figure(trainer, job.name, job.maker, job.when, job.step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "last_probe_step": self.last_probe_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.last_probe_step = int(state_dict.get("last_probe_step", -1))

    # ----------------------------------------------------------------- machinery
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        step = trainer.global_step
        if (step == self.last_probe_step and not self.repeats_probe(when)) or self.probe_batch is None:
            return
        self.last_probe_step = step
        self.probe_when = when  # readable in probe(): "init", "step", "epoch" or "end"
        self.probe_step, self.probe_is_last = step, _is_last_probe(trainer, when)
        if self._last_seconds > self.announce_after_seconds:
            rank_zero_info(
                f"{type(self).__name__}: probing at step {step} (the last probe took "
                f"{self._last_seconds:.1f} s)"
            )
        start = time.perf_counter()
        result: ProbeResult | None = None
        error: Exception | None = None
        if self.distributed or trainer.is_global_zero:
            world = probe_world()[1]
            _ALONE[0] = not self.distributed  # a share_work inside then does every item on rank zero
            try:
                with preserved_training_state(pl_module):
                    result = self.probe(pl_module, self.probe_batch)
            except Exception as err:
                if world == 1:
                    raise
                error = err
            finally:
                _ALONE[0] = False
        seconds = time.perf_counter() - start
        agree_on_failure(error, f"{type(self).__name__}'s probe")  # every rank, even one that waited
        self._last_seconds = seconds
        if seconds > self.announce_after_seconds:
            rank_zero_info(f"{type(self).__name__}: the probe at step {step} ({when}) took {seconds:.1f} s")
        self._warn_if_near_timeout(trainer, seconds)
        if trainer.is_global_zero and result is not None:
            result.scalars.setdefault("probe_seconds", seconds)
            self._record(trainer, result, when, step)
        self.probe_step = None

    def _warn_if_near_timeout(self, trainer: L.Trainer, seconds: float) -> None:
        timeout = getattr(trainer.strategy, "_timeout", None)
        if self._warned_timeout or trainer.world_size == 1 or timeout is None:
            return
        if seconds > TIMEOUT_WARNING_FRACTION * timeout.total_seconds():
            self._warned_timeout = True
            rank_zero_warn(
                f"{type(self).__name__}'s probe took {seconds:.0f} s, more than half the process group's "
                f"timeout ({timeout.total_seconds():.0f} s), after which every rank is killed: raise it "
                "with Trainer(strategy=DDPStrategy(timeout=datetime.timedelta(hours=2))), or probe less "
                "often (a sparser schedule) or on a smaller probe_size"
            )

    def _record(self, trainer: L.Trainer, result: ProbeResult, when: str, step: int) -> None:
        """Log the scalars, write the files and send the media of one probe (on global rank zero);
        figure makers are drawn later (beside training, or at its end) unless :meth:`figures_at`
        says now."""
        scalars = {f"{self.name}/{k}": float(v) for k, v in result.scalars.items()}
        self.history.append({"step": step, "epoch": trainer.current_epoch, "when": when, **scalars})
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=step)
        now = self.figures_at(when)
        jobs: list[FigureJob] = []
        if self.out_dir is not None:
            later = {k: f for k, f in result.figures.items() if not isinstance(f, Figure) and not now}
            jobs = [self._figure_job(name, maker, when, step) for name, maker in later.items()]
            self._pending = [*(self._pending or []), *jobs]
            result = dataclasses.replace(
                result, figures={k: draw_figure(f) for k, f in result.figures.items() if k not in later}
            )
        else:  # no run directory: nothing to save, the figures are not drawn
            result = dataclasses.replace(
                result, figures={k: f for k, f in result.figures.items() if isinstance(f, Figure)}
            )
        self._write_files(result, step)
        wandb_logger = _wandb_logger(trainer)
        if wandb_logger is not None:
            self._log_media(wandb_logger, result, when, step)
        for figure in result.figures.values():
            if isinstance(figure, Figure):
                figure.clear()
        if self.background_figures:  # once the plugin's folder is there
            DRAWING.submit(jobs)
            self._log_drawn(trainer)  # the figures drawn here at once (new or cheap kinds)


def _is_last_probe(trainer: L.Trainer, when: str) -> bool:
    """Whether a probe for ``when`` at the trainer's current step is the fit's last one."""
    if when == "end":
        return True
    if when == "init":  # the probe before training, even of a fit that stops at once
        return False
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    last_epoch = when == "epoch" and max_epochs is not None and trainer.current_epoch + 1 >= max_epochs
    return bool(trainer.should_stop or 0 < max_steps <= trainer.global_step or last_epoch)
