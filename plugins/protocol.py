"""What a plugin needs of the module it probes, and its promise to leave that module as it found it.

A plugin works on any LightningModule through a small protocol: a loss on a batch
(``pl_module.loss(batch)``, or a ``loss_fn``), and layers found by type through ``named_modules()``
(the forward lives in :mod:`plugins.forward`). :func:`preserved_training_state` is the promise:
whatever a probe does to the module, training goes on exactly as before.

Example:
    >>> from torch import nn
    >>> [name for name, _ in find_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Linear)]
    ['0']
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from plugins.checks import PluginConfigError

__all__ = [
    "LossFn",
    "check_loss_on_parameters",
    "checked_loss",
    "find_layers",
    "module_loss_fn",
    "preserved_training_state",
    "require_layers",
    "require_loss",
]

LossFn = Callable[[nn.Module, Any], Tensor]
Layer = TypeVar("Layer", bound=nn.Module)  # find_layers(module, nn.Conv2d) lists Conv2d layers


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
                if grad is not None and saved is not None:
                    grad.copy_(saved)
            for b, value in buffers:
                b.copy_(value)
        for m, mode in modes:
            m.training = mode


def module_loss_fn(pl_module: nn.Module, batch: Any) -> Tensor:
    """The default ``loss_fn``: ``pl_module.loss(batch)``, the task's own objective.

    Example:
        >>> class Task(nn.Linear):
        ...     def loss(self, batch):
        ...         return self(batch[0]).pow(2).mean()
        >>> module_loss_fn(Task(2, 1), (torch.zeros(3, 2),)).shape
        torch.Size([])
    """
    loss = cast("Callable[[Any], Tensor]", pl_module.loss)  # nn.Module's __getattr__ types it a Tensor
    return loss(batch)


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


def checked_loss(loss: Any, who: str = "", error: type[PluginConfigError] = PluginConfigError) -> Tensor:
    """``loss`` (what a ``loss_fn`` returned) as a 0-d tensor, if it is a scalar that depends on trainable
    parameters; else ``error`` (prefixed by ``who``), one line that says what to fix.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> checked_loss(net(torch.ones(3, 2)).pow(2).mean()).shape
        torch.Size([])
        >>> checked_loss(torch.ones(3, 2).mean(), "Demo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: Demo: the loss does not depend on any trainable parameter ...
    """
    prefix = f"{who}: " if who else ""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, Tensor) else ''}"
        raise error(
            f"{prefix}loss_fn(model, batch) must return a scalar tensor, got {shape}: reduce it with .mean()"
        )
    if not loss.requires_grad:
        raise error(
            f"{prefix}the loss does not depend on any trainable parameter (it has no grad_fn): check that "
            "loss_fn (default: the module's loss(batch)) runs the model on the batch and that its parameters "
            "have requires_grad=True"
        )
    return loss.reshape(())


def check_loss_on_parameters(plugin: str, pl_module: nn.Module, loss_fn: LossFn, batch: Any) -> None:
    """Refuse, with one clear line, a loss that is no scalar or does not depend on the module's
    trainable parameters (:func:`checked_loss` of one forward of ``batch`` with gradients on; call it
    inside :func:`preserved_training_state`, as a probe is).

    A ``loss(batch)`` that the module does not compute from its weights (Lightning's ``BoringModel``
    has ``loss(preds, labels)``, a loss of given predictions) would otherwise fail deep inside
    autograd, or give a flat landscape.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> check_loss_on_parameters("Demo", net, lambda m, b: m(b).pow(2).mean(), torch.ones(3, 2))
    """
    with torch.enable_grad():
        checked_loss(loss_fn(pl_module, batch), plugin)


def find_layers(module: nn.Module, types: type[Layer] | tuple[type[Layer], ...]) -> list[tuple[str, Layer]]:
    """``(name, layer)`` for every submodule of the given type(s), in ``named_modules()`` order.

    Example:
        >>> [n for n, _ in find_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Linear)]
        ['0']
    """
    return [(name, m) for name, m in module.named_modules() if _is_instance(m, types)]


def _is_instance(module: nn.Module, types: type | tuple[type, ...]) -> bool:
    return isinstance(module, types)


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
