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
import functools
import inspect
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import PIL.Image
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from torch import Tensor, nn
from torch.utils.data import TensorDataset, default_collate

from plugins.checks import PluginConfigError, check_whole_number
from plugins.forward import ForwardFn, require_forward

__all__ = [
    "DiagnosticCallback",
    "LossFn",
    "ProbeFailure",
    "ProbeResult",
    "agree_on_failure",
    "find_layers",
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

LossFn = Callable[[nn.Module, Any], Tensor]
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")
Layer = TypeVar("Layer", bound=nn.Module)  # find_layers(module, nn.Conv2d) lists Conv2d layers
TIMEOUT_WARNING_FRACTION = 0.5  # a probe longer than this share of the process-group timeout is warned of


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
    raise PluginConfigError(
        f"{plugin} needs a loss: give {type(pl_module).__name__} a method `loss(batch) -> Tensor` "
        f"(the objective its training_step uses), or pass `loss_fn=` to {plugin}"
    )


def find_layers(module: nn.Module, types: type[Layer] | tuple[type[Layer], ...]) -> list[tuple[str, Layer]]:
    """``(name, layer)`` for every submodule of the given type(s), in ``named_modules()`` order.

    Example:
        >>> [n for n, _ in find_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Linear)]
        ['0']
    """
    return [(name, m) for name, m in module.named_modules() if isinstance(m, types)]


def require_layers(
    plugin: str, module: nn.Module, types: type[Layer] | tuple[type[Layer], ...]
) -> list[tuple[str, Layer]]:
    """Like :func:`find_layers`, but a module with none of them gets a clear error.

    Example:
        >>> len(require_layers("Demo", nn.Sequential(nn.Linear(2, 2)), nn.Linear))
        1
    """
    layers = find_layers(module, types)
    if not layers:
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise PluginConfigError(
            f"{plugin} probes {names} layers, and {type(module).__name__} has none: attach it to a "
            f"model built from {names} layers"
        )
    return layers


# --------------------------------------------------------------------------- work shared across ranks
class ProbeFailure(RuntimeError):
    """A probe failed on some rank; raised on every rank, which all agreed on it, so each one ends.

    Example:
        >>> str(ProbeFailure("LossLandscape's probe failed on rank 1: ValueError: no loss"))
        "LossLandscape's probe failed on rank 1: ValueError: no loss"
    """


_ALONE = [False]  # True while global rank zero probes alone: its share_work then does all the work


def probe_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` process group, else ``(0, 1)``;
    also ``(0, 1)`` inside the probe of a plugin that global rank zero runs alone.

    Example:
        >>> probe_world()  # one process
        (0, 1)
    """
    dist = torch.distributed
    if not _ALONE[0] and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def work_share(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The ``rank``-th of ``world_size`` contiguous shares of ``items``: sizes differ by at most one,
    and the shares in rank order are ``items`` again, each item once.

    Example:
        >>> [work_share(range(5), r, 2) for r in (0, 1)]
        [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _to_cpu(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        )
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def agree_on_failure(error: BaseException | None, what: str) -> None:
    """Every rank calls this at the same point: if any rank failed, every rank raises
    :class:`ProbeFailure` naming the first failed rank and its error, instead of the others
    waiting in their next collective until the process group's timeout.

    One ``all_gather_object`` of each rank's error line (``None`` for success); one process raises
    its own error as it is.

    Example:
        >>> agree_on_failure(None, "Demo's probe")  # one process, no failure: nothing happens
    """
    rank, world = probe_world()
    if world == 1:
        if error is not None:
            raise error
        return
    if isinstance(error, ProbeFailure):  # already agreed on by every rank (an inner share_work)
        raise error
    lines: list[str | None] = [None] * world
    torch.distributed.all_gather_object(lines, None if error is None else f"{type(error).__name__}: {error}")
    failed = next(((r, line) for r, line in enumerate(lines) if line is not None), None)
    if failed is not None:
        raise ProbeFailure(f"{what} failed on rank {failed[0]}: {failed[1]}") from error


def share_work(
    items: Sequence[Item], compute: Callable[[list[Item]], Sequence[Outcome]], what: str = "a probe"
) -> list[Outcome] | None:
    """``compute`` over ``items``, each rank of ``torch.distributed`` taking its :func:`work_share`.

    ``compute(share)`` returns one outcome per item of its share and makes no collective. Every
    rank then agrees on success (:func:`agree_on_failure`: a failure on any rank raises
    :class:`ProbeFailure` on all) and the outcomes, moved to the CPU, are gathered: global rank
    zero gets all of them in the order of ``items``, the other ranks ``None`` (rank zero alone logs
    and writes). Every rank must call it with the same ``items``. In one process, and inside the
    probe of a plugin that global rank zero runs alone (``distributed = False``), it is simply
    ``list(compute(list(items)))``, with no collective.

    Example:
        >>> share_work([1, 2, 3], lambda share: [x * x for x in share])
        [1, 4, 9]
    """
    rank, world = probe_world()
    if world == 1:
        return list(compute(list(items)))
    mine = work_share(items, rank, world)
    error, outcomes = None, []
    try:
        outcomes = _to_cpu(list(compute(mine))) if mine else []
        if len(outcomes) != len(mine):
            raise ValueError(
                f"compute returned {len(outcomes)} outcomes for {len(mine)} items: give one per item"
            )
    except Exception as err:  # every rank must reach the agreement below
        error = err
    agree_on_failure(error, what)
    parts: list[list[Outcome] | None] = [None] * world
    torch.distributed.all_gather_object(parts, outcomes)
    return [outcome for part in parts for outcome in part or []] if rank == 0 else None


def require_strategy(plugin: str, trainer: L.Trainer, pl_module: nn.Module, runs_train_mode: bool) -> None:
    """Refuse, with one line, a strategy under which ``plugin``'s probes would hang or mislead.

    Supported: one device and the DDP family (``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``, SLURM,
    torchrun), whose every rank holds the whole model. FSDP, DeepSpeed and model-parallel strategies
    shard the model, so a forward on some ranks only waits for the others' parameters forever.
    ``sync_batchnorm`` (``nn.SyncBatchNorm`` layers) is refused for a probe that runs the model in
    train mode (``runs_train_mode``), whose every forward would be a collective.

    Example:
        >>> trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
        >>> require_strategy("Demo", trainer, nn.Linear(2, 2), runs_train_mode=True)  # one device: fine
    """
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy) or not isinstance(
        strategy, (SingleDeviceStrategy, DDPStrategy)
    ):
        raise MisconfigurationException(
            f"{plugin} supports one device and DDP (strategy='auto', 'ddp', 'ddp_spawn', 'ddp_fork'), not "
            f"{type(strategy).__name__}, which shards the model so that a probe would hang: train with "
            f"strategy='ddp' or remove {plugin}"
        )
    synced = getattr(strategy, "_layer_sync", None) is not None or any(
        isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()
    )
    if runs_train_mode and synced and trainer.world_size > 1:
        raise MisconfigurationException(
            f"{plugin} runs the model in train mode, where SyncBatchNorm makes every forward a "
            f"collective of all ranks: train with sync_batchnorm=False, or remove {plugin}"
        )


@functools.cache
def _init_defaults(plugin: type) -> dict[str, Any]:
    """The defaults of the ``__init__`` arguments of ``plugin`` and of its plugin base classes (read once:
    Lightning reads ``state_key`` at every hook call)."""
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

    def end_figures(self) -> dict[str, Figure]:
        """Figures drawn from the history when training ends, saved and sent to W&B on rank zero."""
        return {}

    # ----------------------------------------------------------------- Lightning hooks
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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_strategy(type(self).__name__, trainer, pl_module, self.runs_train_mode)
        if self.needs_forward:
            require_forward(type(self).__name__, pl_module, self.forward_fn)
        self.check_module(pl_module)
        namesakes = [
            cb
            for cb in trainer.callbacks
            if isinstance(cb, DiagnosticCallback) and type(cb).name == type(self).name
        ]
        place = next((i for i, cb in enumerate(namesakes) if cb is self), 0)
        if place > 0:  # a second instance of the plugin: its own keys and folder, in attach order
            self.name = f"{type(self).name}_{place + 1}"
        root = trainer.log_dir or trainer.default_root_dir  # a collective: every rank calls it
        self.out_dir = Path(root) / "plugins" / self.name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probe_batch = _to_device(self.take_batch(trainer), pl_module.device)
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
        figures = self.end_figures() if trainer.is_global_zero and self.out_dir is not None else {}
        if figures and self.out_dir is not None:  # the subclass's end_figures
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for fig_name, figure in figures.items():
                self._save_figure(figure, fig_name, trainer.global_step)
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if figures and wandb_logger is not None:
            self._log_media(wandb_logger, ProbeResult(figures=figures), "end", trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "last_probe_step": self.last_probe_step}

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
        if self._last_seconds > self.announce_after_seconds:
            rank_zero_info(
                f"{type(self).__name__}: probing at step {step} (the last probe took "
                f"{self._last_seconds:.1f} s)"
            )
        start, result, error = time.perf_counter(), None, None
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
