"""Work shared across the ranks of ``torch.distributed``, and the strategies a probe can serve.

A plugin whose probe splits (grid points, inputs, layers) hands its items to :func:`share_work`:
each rank computes its :func:`work_share`, every rank agrees on success
(:func:`agree_on_failure`: a failure on one rank ends all of them at once, as a
:class:`ProbeFailure`), and global rank zero gets every outcome. In one process, and inside the
probe of a plugin that rank zero runs alone, all of it is a plain loop with no collective.
:func:`require_strategy` refuses at setup the strategies under which a probe would hang.

Example:
    >>> probe_world()
    (0, 1)
    >>> share_work([1, 2, 3], lambda share: [x + 1 for x in share])
    [2, 3, 4]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from plugins.checks import PluginConfigError

__all__ = [
    "ProbeFailure",
    "agree_on_failure",
    "probe_world",
    "require_strategy",
    "share_work",
    "work_share",
]

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


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
    """``value`` with every tensor in it (in dicts, lists, tuples, dataclasses) detached, on the CPU."""
    return apply_to_collection(value, Tensor, lambda t: t.detach().cpu())


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
    error: Exception | None = None
    outcomes: list[Outcome] = []
    try:
        outcomes = _to_cpu(list(compute(mine))) if mine else []
        if len(outcomes) != len(mine):
            raise PluginConfigError(
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
        raise PluginConfigError(
            f"{plugin} supports one device and DDP (strategy='auto', 'ddp', 'ddp_spawn', 'ddp_fork'), not "
            f"{type(strategy).__name__}, which shards the model so that a probe would hang: train with "
            f"strategy='ddp' or remove {plugin}"
        )
    synced = getattr(strategy, "_layer_sync", None) is not None or any(
        isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()
    )
    if runs_train_mode and synced and trainer.world_size > 1:
        raise PluginConfigError(
            f"{plugin} runs the model in train mode, where SyncBatchNorm makes every forward a "
            f"collective of all ranks: train with sync_batchnorm=False, or remove {plugin}"
        )
