"""What every diagnostic plugin shares: schedule, probe batch, untouched training state, outputs.

A plugin subclasses :class:`DiagnosticCallback`, names itself (``name``, the prefix of its
logged keys and its folder in the run directory) and implements :meth:`~DiagnosticCallback.probe`,
which computes a :class:`ProbeResult` from the module and the fixed probe batch by calling the
plugin's pure functions. The base class decides *when* to probe, takes the probe batch once,
protects the training state, and sends the results everywhere:

- scalars to every logger (key ``<name>/<scalar>``, at the trainer's global step);
- figures, images and histograms to W&B (``wandb.Image`` / ``wandb.Histogram``);
- raw arrays as ``step_<N>.npz``, figures and images as PNG and the scalar history as ``history.json`` in
  ``<run dir>/plugins/<name>/``, so a run can be re-plotted with no server;
- its history into the checkpoint, so a resumed run continues its curves.

The protocol a probed module may offer (each plugin states which parts it needs):
``pl_module.loss(batch) -> Tensor`` (or a ``loss_fn`` argument), ``pl_module(x)``, and layers
found by type through ``named_modules()``.

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

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import PIL.Image
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import WandbLogger
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from torch import Tensor, nn
from torch.utils.data import TensorDataset, default_collate

__all__ = [
    "DiagnosticCallback",
    "LossFn",
    "ProbeResult",
    "find_layers",
    "fixed_layout_figure",
    "iterate_batches",
    "module_loss_fn",
    "preserved_training_state",
    "probe_inputs",
    "require_layers",
    "require_loss",
    "take_probe_batch",
]

LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass
class ProbeResult:
    """What one probe produced.

    Attributes:
        scalars: numbers logged to every logger as ``<plugin>/<key>`` and kept in the history.
        arrays: raw arrays saved in ``step_<N>.npz`` in the plugin's folder.
        histograms: arrays sent to W&B as ``wandb.Histogram`` (and saved with the arrays).
        figures: matplotlib figures, saved as PNG and sent to W&B as ``wandb.Image``.
        images: pictures that need no axes, saved as PNG straight from their pixels (no matplotlib:
            a few milliseconds instead of tens) and sent to W&B as ``wandb.Image`` like figures:
            ``(3, H, W)`` or ``(1, H, W)`` floats in ``[0, 1]``, or ``(H, W, 3)`` / ``(H, W)`` ``uint8``.

    Example:
        >>> ProbeResult(scalars={"lambda_max": 3.2}).scalars["lambda_max"]
        3.2
        >>> ProbeResult(images={"grid": torch.rand(3, 8, 8)}).images["grid"].shape
        torch.Size([3, 8, 8])
    """

    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)
    histograms: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _pixels(image: Any) -> np.ndarray:
    """An image of :attr:`ProbeResult.images` as ``(H, W)`` or ``(H, W, 3)`` ``uint8`` pixels."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        pixels = image
    else:
        values = torch.as_tensor(_to_numpy(image), dtype=torch.float32)
        if values.dim() != 3 or values.shape[0] not in (1, 3):
            raise ValueError(
                f"an image is (3, H, W) or (1, H, W) floats in [0, 1]; got shape {tuple(values.shape)}"
            )
        pixels = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"a uint8 image is (H, W, 3) or (H, W); got shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def fixed_layout_figure(
    width: float,
    height: float,
    ncols: int = 1,
    *,
    left: float = 0.8,
    right: float = 0.2,
    bottom: float = 0.55,
    top: float = 0.35,
    gap: float = 0.8,
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` axes side by side, its margins fixed in inches (tick labels, axis labels,
    a title fit in the defaults), and the axes.

    Such a figure is saved as it is; a figure without a layout engine gets matplotlib's "tight"
    layout, which costs one more draw: about 40% of saving a small figure (0.14 of 0.35 s here).

    Example:
        >>> figure, (ax_q, ax_c) = fixed_layout_figure(8, 3.2, ncols=2)
        >>> round(figure.subplotpars.left * 8, 6), len(figure.axes)
        (0.8, 2)
    """
    if width <= left + right + gap * (ncols - 1) or height <= bottom + top:
        raise ValueError(f"a {width} x {height} inch figure leaves no room for axes inside its margins")
    figure = Figure(figsize=(width, height), layout=PlaceHolderLayoutEngine(True, True))
    axes_width = (width - left - right - gap * (ncols - 1)) / ncols
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap / axes_width,
    )
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:  # tick labels stay narrow enough for the margin: 120000 -> 1.2 and "1e5" above
        ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    return figure, list(axes)


@contextmanager
def preserved_training_state(module: nn.Module) -> Iterator[None]:
    """Restore, on exit, everything a probe could disturb in ``module``.

    Restored: each submodule's train/eval mode, each parameter's value, ``requires_grad`` and
    ``.grad``, every buffer (BatchNorm running statistics), and the Python, NumPy, torch and CUDA
    random number generators.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with preserved_training_state(net):
        ...     _ = net(torch.randn(8, 2))  # updates the running statistics
        ...     _ = net.eval()
        >>> net.training, float(net[1].running_mean.abs().sum())
        (True, 0.0)
    """
    modes = [(m, m.training) for m in module.modules()]
    params = [(p, p.detach().clone(), p.requires_grad, p.grad) for p in module.parameters()]
    grads = [None if g is None else g.detach().clone() for _, _, _, g in params]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        with torch.no_grad():
            for (p, value, requires_grad, grad), saved in zip(params, grads, strict=True):
                p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = grad
                if grad is not None:
                    grad.copy_(saved)
            for b, value in buffers:
                b.copy_(value)
        for m, mode in modes:
            m.training = mode


def probe_inputs(batch: Any) -> Tensor:
    """The inputs of a batch: the tensor itself, the first item of a tuple, or ``batch["x"]``.

    Example:
        >>> probe_inputs((torch.ones(2, 3), torch.zeros(2))).shape
        torch.Size([2, 3])
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "image", "images"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise MisconfigurationException(
        f"cannot find the inputs in a batch of type {type(batch).__name__}: batches must be a "
        "tensor, a tuple/list whose first item is the input tensor, or a dict with key 'x'"
    )


def take_probe_batch(loader: Any, size: int, seed: int = 0) -> Any:
    """A fixed batch of ``size`` samples drawn from a loader's data set with its own seed.

    From a map-style data set (``loader.dataset`` with ``__len__``/``__getitem__``, or the in-memory
    tensors ``loader.tensors`` of a loader that slices them itself, such as on-device data) a
    seeded random subset is collated, consuming no random numbers and leaving the loader's order
    untouched; so under DDP every rank draws the same batch, the one a single process draws, and
    not its own shard. From any other iterable the first batches are taken (with the global RNG
    state restored).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.arange(100.0)), batch_size=10, shuffle=True)
        >>> a, b = take_probe_batch(loader, 16, seed=3), take_probe_batch(loader, 16, seed=3)
        >>> a[0].shape, torch.equal(a[0], b[0])
        (torch.Size([16]), True)
    """
    dataset = getattr(loader, "dataset", None)
    tensors = getattr(loader, "tensors", None)
    if dataset is None and isinstance(tensors, (tuple, list)) and all(isinstance(t, Tensor) for t in tensors):
        dataset = TensorDataset(*tensors)
    if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        n = len(dataset)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]
        collate = getattr(loader, "collate_fn", None) or default_collate
        return collate([dataset[int(i)] for i in idx])
    batches, count = [], 0
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            batches.append(batch)
            count += len(probe_inputs(batch))
            if count >= size:
                break
    if not batches:
        raise MisconfigurationException("the training data loader yielded no batch to probe")
    joined = batches[0] if len(batches) == 1 else _concat(batches)
    return _truncate(joined, size)


def _is_one_batch(data: Any) -> bool:
    if isinstance(data, (Tensor, dict)):
        return True
    return isinstance(data, (tuple, list)) and bool(data) and isinstance(data[0], Tensor)


def iterate_batches(data: Any) -> Iterator[tuple[Any, int]]:
    """``(batch, number of samples)`` for ``data`` = one batch or a re-iterable of batches.

    One batch is a tensor, a dict, or a tuple/list whose first item is a tensor; anything else
    (a list of batches, a ``DataLoader``) is iterated. Probes that average over ``data`` weight
    each batch by its number of samples, so the result is the mean over the union of the data.
    A one-shot iterator (a generator) is refused, because probes pass over the data many times.

    Example:
        >>> one = (torch.zeros(4, 2), torch.zeros(4))
        >>> [n for _, n in iterate_batches(one)], [n for _, n in iterate_batches([one, one])]
        ([4], [4, 4])
    """
    if _is_one_batch(data):
        yield data, _num_samples(data)
        return
    if iter(data) is data:
        raise ValueError(
            f"data is a one-shot iterator ({type(data).__name__}): pass one batch, a list of "
            "batches or a DataLoader, which can be read more than once"
        )
    count = 0
    for batch in data:
        count += 1
        yield batch, _num_samples(batch)
    if count == 0:
        raise ValueError("data holds no batch: pass one batch, or a non-empty list/DataLoader of batches")


def _num_samples(batch: Any) -> int:
    try:
        return len(probe_inputs(batch))
    except MisconfigurationException:
        return 1


def _concat(batches: list[Any]) -> Any:
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {k: _concat([b[k] for b in batches]) for k in first}
    return type(first)(_concat(list(items)) for items in zip(*batches, strict=True))


def _truncate(batch: Any, size: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[:size]
    if isinstance(batch, dict):
        return {k: _truncate(v, size) for k, v in batch.items()}
    return type(batch)(_truncate(v, size) for v in batch)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.detach().clone().to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def module_loss_fn(pl_module: nn.Module, batch: Any) -> Tensor:
    """The default ``loss_fn``: ``pl_module.loss(batch)``, the task's own objective.

    Example:
        >>> class Task(nn.Linear):
        ...     def loss(self, batch):
        ...         return self(batch[0]).pow(2).mean()
        >>> module_loss_fn(Task(2, 1), (torch.zeros(3, 2),)).shape
        torch.Size([])
    """
    return pl_module.loss(batch)


def require_loss(plugin: str, pl_module: nn.Module, loss_fn: LossFn | None) -> LossFn:
    """The loss function to probe: ``loss_fn`` if given, else ``pl_module.loss``; else a clear error.

    Example:
        >>> require_loss("Demo", nn.Linear(2, 2), lambda m, b: m(b).sum()) is not None
        True
    """
    if loss_fn is not None:
        return loss_fn
    if callable(getattr(pl_module, "loss", None)):
        return module_loss_fn
    raise MisconfigurationException(
        f"{plugin} needs a loss: give {type(pl_module).__name__} a method `loss(batch) -> Tensor` "
        f"(the objective its training_step uses), or pass `loss_fn=` to {plugin}"
    )


def find_layers(module: nn.Module, types: type | tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every submodule of the given type(s), in ``named_modules()`` order.

    Example:
        >>> [n for n, _ in find_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Linear)]
        ['0']
    """
    return [(name, m) for name, m in module.named_modules() if isinstance(m, types)]


def require_layers(
    plugin: str, module: nn.Module, types: type | tuple[type, ...]
) -> list[tuple[str, nn.Module]]:
    """Like :func:`find_layers`, but a module with none of them gets a clear error.

    Example:
        >>> len(require_layers("Demo", nn.Sequential(nn.Linear(2, 2)), nn.Linear))
        1
    """
    layers = find_layers(module, types)
    if not layers:
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise MisconfigurationException(
            f"{plugin} probes {names} layers, and {type(module).__name__} has none: attach it to a "
            f"model built from {names} layers"
        )
    return layers


class DiagnosticCallback(L.Callback):
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
    probe in lockstep (for probes that run collectives); otherwise global rank zero probes alone.
    While :meth:`probe` runs, ``self.probe_when`` says why: ``"init"``, ``"step"``, ``"epoch"`` or
    ``"end"`` (e.g. to compute something costly only at init and at the end).

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

    def __init__(
        self,
        at_init: bool = True,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_end: bool = False,
        probe_size: int = 256,
        probe_seed: int = 0,
    ) -> None:
        for arg, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MisconfigurationException(
                    f"{type(self).__name__}({arg}={value!r}): use a whole number >= 1, or None to turn it off"
                )
        if probe_size < 1:
            raise MisconfigurationException(
                f"{type(self).__name__}(probe_size={probe_size}): the probe batch needs >= 1 sample"
            )
        self.at_init, self.at_end = at_init, at_end
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.probe_size, self.probe_seed = probe_size, probe_seed
        self.history: list[dict[str, Any]] = []
        self.last_probe_step = -1
        self.probe_batch: Any = None
        self.probe_when: str | None = None
        self.out_dir: Path | None = None

    # ----------------------------------------------------------------- to implement
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Compute this plugin's measurements on ``batch``. Subclasses implement this."""
        raise NotImplementedError

    def check_module(self, pl_module: L.LightningModule) -> None:
        """Raise a clear ``MisconfigurationException`` if ``pl_module`` lacks what the probe needs."""

    # ----------------------------------------------------------------- Lightning hooks
    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, every_n_epochs=self.every_n_epochs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_module(pl_module)
        root = trainer.log_dir or trainer.default_root_dir  # a collective: every rank calls it
        self.out_dir = Path(root) / "plugins" / self.name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        batch = take_probe_batch(loader, self.probe_size, self.probe_seed)
        self.probe_batch = _to_device(batch, pl_module.device)
        if self.at_init and trainer.global_step == 0:
            self._probe(trainer, pl_module, "init")

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

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe(trainer, pl_module, "epoch")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._probe(trainer, pl_module, "end")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "last_probe_step": self.last_probe_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.last_probe_step = int(state_dict.get("last_probe_step", -1))

    # ----------------------------------------------------------------- machinery
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        step = trainer.global_step
        if step == self.last_probe_step or self.probe_batch is None:
            return
        self.last_probe_step = step
        if not (self.distributed or trainer.is_global_zero):
            return
        self.probe_when = when  # readable in probe(): "init", "step", "epoch" or "end"
        with preserved_training_state(pl_module):
            result = self.probe(pl_module, self.probe_batch)
        if trainer.is_global_zero:
            self._record(trainer, result, when, step)

    def _record(self, trainer: L.Trainer, result: ProbeResult, when: str, step: int) -> None:
        scalars = {f"{self.name}/{k}": float(v) for k, v in result.scalars.items()}
        self.history.append({"step": step, "epoch": trainer.current_epoch, "when": when, **scalars})
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=step)
        self._write_files(result, step)
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is not None:
            self._log_media(wandb_logger, result, when, step)
        for figure in result.figures.values():
            figure.clear()

    def _png_path(self, figure_name: str, step: int) -> Path:
        assert self.out_dir is not None
        return self.out_dir / f"{figure_name}_step{step:07d}.png"

    def _save_figure(self, figure: Figure, figure_name: str, step: int) -> None:
        """The figure as PNG in the plugin's folder; one without a layout engine is laid out "tight"
        (see :func:`fixed_layout_figure` for figures that skip that extra draw)."""
        if figure.get_layout_engine() is None:
            figure.set_layout_engine("tight")
        figure.savefig(self._png_path(figure_name, step), dpi=100)

    def _write_files(self, result: ProbeResult, step: int) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {**result.arrays, **{f"hist_{k}": v for k, v in result.histograms.items()}}
        arrays.update({f"scalar_{k}": np.asarray(v) for k, v in result.scalars.items()})
        np.savez(self.out_dir / f"step{step:07d}.npz", **{k: _to_numpy(v) for k, v in arrays.items()})
        for fig_name, figure in result.figures.items():
            self._save_figure(figure, fig_name, step)
        for image_name, image in result.images.items():
            PIL.Image.fromarray(_pixels(image)).save(self._png_path(image_name, step), compress_level=1)
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
            media[f"{self.name}/{hist_name}"] = wandb.Histogram(_to_numpy(values).ravel())
        if media:
            logger.experiment.log({**media, "trainer/global_step": step})
