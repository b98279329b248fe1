"""Per-example gradients by ``torch.func``: ``vmap`` of ``grad`` of the loss on a batch of one.

The loss protocol: ``loss_fn(model, batch)`` is the *mean over the batch's examples of a
per-example loss*, so that on a batch of one it is that example's loss. Each example is cut out of
the batch (every tensor of a tuple, list or dict along its first dimension), given back a batch
dimension of one, and differentiated inside ``vmap``; the model is in ``eval()`` mode meanwhile and
restored afterwards. ``method="loop"`` is the reference: one ``torch.autograd.grad`` per example.

Example:
    >>> from torch import nn
    >>> model = nn.Linear(3, 1)
    >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    >>> grads = per_sample_gradients(model, mse, (torch.randn(8, 3), torch.randn(8, 1)))
    >>> {name: tuple(g.shape) for name, g in grads.items()}
    {'weight': (8, 1, 3), 'bias': (8, 1)}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from plugins.batches import probe_inputs
from plugins.checks import PluginConfigError, check_whole_number
from plugins.protocol import LossFn, preserved_training_state

__all__ = ["per_sample_gradients"]


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _example_dims(batch: Any, n: int) -> Any:
    """``vmap``'s ``in_dims`` for a batch: 0 for every tensor with ``n`` rows, ``None`` for the rest."""
    if isinstance(batch, Tensor):
        return 0 if batch.dim() > 0 and len(batch) == n else None
    if isinstance(batch, (tuple, list)):
        return type(batch)(_example_dims(item, n) for item in batch)
    if isinstance(batch, dict):
        return {key: _example_dims(value, n) for key, value in batch.items()}
    return None


def _batch_of_one(example: Any, dims: Any) -> Any:
    """An example (as ``vmap`` hands it over, its batch dimension removed) as a batch of one."""
    if isinstance(example, Tensor):
        return example.unsqueeze(0) if dims == 0 else example
    if isinstance(example, (tuple, list)):
        return type(example)(_batch_of_one(e, d) for e, d in zip(example, dims, strict=True))
    if isinstance(example, dict):
        return {key: _batch_of_one(value, dims[key]) for key, value in example.items()}
    return example


def _select(batch: Any, dims: Any, index: slice) -> Any:
    if isinstance(batch, Tensor):
        return batch[index] if dims == 0 else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_select(b, d, index) for b, d in zip(batch, dims, strict=True))
    if isinstance(batch, dict):
        return {key: _select(value, dims[key], index) for key, value in batch.items()}
    return batch


class _LossOf(nn.Module):
    """``model`` and ``loss_fn`` as one module, so that ``torch.func.functional_call`` can swap the
    model's parameters for the ones being differentiated, whatever ``loss_fn`` calls inside."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    @override
    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    chunk_size: int | None = 32,
    method: str = "vmap",
) -> dict[str, Tensor]:
    """One gradient per example: ``{parameter name: tensor (batch, *parameter shape)}``.

    ``method="vmap"``: ``torch.func.vmap`` of ``torch.func.grad`` of ``loss_fn`` on a batch of one,
    ``chunk_size`` examples at a time (``None``: all at once); ``method="loop"``: the reference, one
    ``torch.autograd.grad`` per example, for losses that ``vmap`` cannot run. Only trainable
    parameters (``requires_grad``) are differentiated. The model is differentiated in ``eval()``
    mode and left as it was; no ``.grad`` is written. See the module docstring for the protocol
    ``loss_fn`` must keep.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 1, bias=False)
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> grads = per_sample_gradients(model, lambda m, b: (m(b[0]) - b[1]).pow(2).mean(), (x, y))
        >>> exact = 2 * (x @ model.weight.detach().T - y) * x  # d/dw (w.x - y)^2 per example
        >>> torch.allclose(grads["weight"][:, 0], exact, atol=1e-6)
        True
    """
    if method not in ("vmap", "loop"):
        raise PluginConfigError(
            f"method must be 'vmap' (batched torch.func) or 'loop' (reference), got {method!r}"
        )
    check_whole_number("", "chunk_size", chunk_size, none_means="all examples at once")
    params = _trainable(model)
    if not params:
        raise PluginConfigError(
            f"{type(model).__name__} has no trainable parameter (requires_grad) to differentiate"
        )
    return _vmap_gradients(model, loss_fn, batch, list(params), chunk_size, method)


def _vmap_gradients(
    model: nn.Module, loss_fn: LossFn, batch: Any, names: list[str], chunk_size: int | None, method: str
) -> dict[str, Tensor]:
    """:func:`per_sample_gradients` of the trainable parameters ``names`` only (the others held fixed)."""
    n = len(probe_inputs(batch))
    dims = _example_dims(batch, n)
    all_params = _trainable(model)
    params = {name: all_params[name] for name in names}
    with preserved_training_state(model):
        model.eval()
        if method == "loop":
            rows = []
            for i in range(n):
                with torch.enable_grad():
                    loss = loss_fn(model, _select(batch, dims, slice(i, i + 1)))
                    rows.append(torch.autograd.grad(loss, list(params.values()), allow_unused=True))
            return {
                name: torch.stack([torch.zeros_like(p) if row[j] is None else row[j] for row in rows])
                for j, (name, p) in enumerate(params.items())
            }
        if chunk_size is not None and chunk_size >= n:  # one chunk: vmap's unchunked path, no concatenation
            chunk_size = None
        wrapper = _LossOf(model, loss_fn)
        detached = {f"model.{name}": p.detach() for name, p in params.items()}
        fixed = {f"model.{name}": p.detach() for name, p in all_params.items() if name not in params}

        def example_loss(weights: dict[str, Tensor], example: Any) -> Tensor:
            return torch.func.functional_call(wrapper, {**fixed, **weights}, (_batch_of_one(example, dims),))

        per_example = torch.func.vmap(
            torch.func.grad(example_loss), in_dims=(None, dims), chunk_size=chunk_size
        )
        try:
            grads = per_example(detached, batch)
        except (RuntimeError, ValueError, TypeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PluginConfigError(
                "per-example gradients: loss_fn(model, batch) cannot run on one example inside "
                f"torch.func.vmap ({type(err).__name__}: {reason[:200]}); the loss must be a mean of "
                "per-example terms in plain torch ops (no .item(), no data-dependent Python branches, "
                "no batch statistics), or use method='loop'"
            ) from err
    return {name: grads[f"model.{name}"] for name in params}
