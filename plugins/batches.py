"""The probe batch: the inputs of a batch, a fixed seeded batch from a loader, and iteration over data.

A plugin probes one fixed batch taken once when training starts (:func:`take_probe_batch`), so
that every probe of a run, on every rank, sees the same samples; its pure functions accept one
batch or a re-iterable of batches (:func:`iterate_batches`), and find the inputs in a batch with
:func:`probe_inputs`.

Example:
    >>> import torch
    >>> batch = (torch.ones(4, 3), torch.zeros(4))
    >>> probe_inputs(batch).shape, [n for _, n in iterate_batches(batch)]
    (torch.Size([4, 3]), [4])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.data import TensorDataset, default_collate

from plugins.checks import PluginConfigError

__all__ = ["iterate_batches", "probe_inputs", "take_probe_batch"]


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
            value = batch.get(key)
            if isinstance(value, Tensor):
                return value
    raise PluginConfigError(
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
    batches: list[Any] = []
    count = 0
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            batches.append(batch)
            count += len(probe_inputs(batch))
            if count >= size:
                break
    if not batches:
        raise PluginConfigError("the training data loader yielded no batch to probe")
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
        raise PluginConfigError(
            f"data is a one-shot iterator ({type(data).__name__}): pass one batch, a list of "
            "batches or a DataLoader, which can be read more than once"
        )
    count = 0
    for batch in data:
        count += 1
        yield batch, _num_samples(batch)
    if count == 0:
        raise PluginConfigError(
            "data holds no batch: pass one batch, or a non-empty list/DataLoader of batches"
        )


def _num_samples(batch: Any) -> int:
    try:
        return len(probe_inputs(batch))
    except PluginConfigError:
        return 1


def _concat(batches: list[Any]) -> Any:
    """Batches of one structure joined sample-wise (tensors concatenated, dicts and tuples by item)."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {k: _concat([b[k] for b in batches]) for k in first}
    return type(first)(_concat(list(items)) for items in zip(*batches, strict=True))


def _truncate(batch: Any, size: int) -> Any:
    """The first ``size`` samples of every tensor in ``batch``."""
    return apply_to_collection(batch, Tensor, lambda t: t[:size])


def _to_device(batch: Any, device: torch.device | str) -> Any:
    """A copy of ``batch`` on ``device``: every tensor detached and copied (never a view of the
    training data, nor a tensor made under inference mode), anything else left as it is."""
    return apply_to_collection(batch, Tensor, lambda t: t.detach().to(device, copy=True))
