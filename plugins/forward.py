"""``forward_fn``: the input-to-output map of a plugin that runs the model's forward.

The plugins' pure functions call ``model(x)``. For a module whose ``forward`` takes more than the
inputs (Lightning's demo ``LightningTransformer`` takes ``(inputs, target)``) a plugin takes
``forward_fn(module, x) -> output`` beside ``loss_fn``; inside :func:`forward_through`,
``module(x)`` runs it, so every pure function honours it unchanged. At setup,
:func:`require_forward` refuses a module whose forward cannot take the inputs alone, with one line
that says to pass ``forward_fn=``.

Example:
    >>> import torch
    >>> class Seq2Seq(nn.Module):
    ...     def forward(self, inputs, target):
    ...         return inputs + target
    >>> model = Seq2Seq()
    >>> with forward_through(model, lambda m, x: m(x, x)):
    ...     model(torch.ones(2))
    tensor([2., 2.])
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import lightning as L
import torch
from torch import Tensor, nn

from plugins.checks import PluginConfigError

__all__ = [
    "recorded_calls",
    "ForwardFn",
    "forward_through",
    "module_forward_fn",
    "probes_through_forward_fn",
    "require_forward",
]

ForwardFn = Callable[[nn.Module, Tensor], Tensor]
ProbeMethod = TypeVar("ProbeMethod", bound=Callable[..., Any])


def module_forward_fn(pl_module: nn.Module, x: Tensor) -> Tensor:
    """The default ``forward_fn``: ``pl_module(x)``, the module's own forward on the inputs alone.

    Example:
        >>> import torch
        >>> module_forward_fn(nn.Linear(2, 1), torch.zeros(3, 2)).shape
        torch.Size([3, 1])
    """
    return pl_module(x)


def _forward_problem(pl_module: nn.Module) -> str | None:
    """Why ``pl_module(x)`` cannot run on the inputs alone, or ``None`` if it can (or cannot be told)."""
    forward = getattr(type(pl_module), "forward", None)
    if forward is None or forward in (nn.Module.forward, L.LightningModule.forward):
        return f"{type(pl_module).__name__} defines no forward"
    try:
        parameters = list(inspect.signature(pl_module.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: assume it takes the inputs
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and (p.kind in positional or p.kind is inspect.Parameter.KEYWORD_ONLY)
    ]
    takes_inputs = any(p.kind in (*positional, inspect.Parameter.VAR_POSITIONAL) for p in parameters)
    if len(required) > 1 or not takes_inputs:
        return f"{type(pl_module).__name__}.forward takes ({', '.join(required)})"
    return None


def require_forward(plugin: str, pl_module: nn.Module, forward_fn: ForwardFn | None) -> ForwardFn:
    """The input-to-output map to probe: ``forward_fn`` if given, else ``pl_module(x)`` if the module's
    forward takes the inputs alone; else a clear error that says to pass ``forward_fn=``.

    Example:
        >>> require_forward("Demo", nn.Linear(2, 2), None) is module_forward_fn
        True
        >>> class Seq2Seq(nn.Module):
        ...     def forward(self, inputs, target):
        ...         return inputs
        >>> require_forward("Demo", Seq2Seq(), None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: ... Seq2Seq.forward takes (inputs, target): pass `forward_fn=` ...
    """
    if forward_fn is not None:
        if not callable(forward_fn):
            raise PluginConfigError(
                f"{plugin}(forward_fn={forward_fn!r}): give a function (module, x) -> output"
            )
        return forward_fn
    problem = _forward_problem(pl_module)
    if problem is None:
        return module_forward_fn
    raise PluginConfigError(
        f"{plugin} runs the model on the probe inputs alone, as pl_module(x), and {problem}: pass "
        f"`forward_fn=` to {plugin}, a function (module, x) -> output such as "
        "`lambda module, x: module(x, x)`"
    )


@contextmanager
def forward_through(module: nn.Module, forward_fn: ForwardFn | None) -> Iterator[None]:
    """Inside, ``module(x)`` runs ``forward_fn(module, x)`` (nothing changes for ``None``).

    So a pure function that calls ``model(x)`` (directly, through hooks on its layers, or through
    ``torch.func``) probes a module whose forward takes more than the inputs. While ``forward_fn``
    runs, ``module(...)`` is the module's own forward again, so ``forward_fn`` may call it.

    Example:
        >>> import torch
        >>> net = nn.Linear(2, 1)
        >>> with forward_through(net, lambda m, x: 2 * m(x)):
        ...     doubled = net(torch.ones(1, 2))
        >>> torch.allclose(doubled, 2 * net(torch.ones(1, 2)))
        True
    """
    if forward_fn is None:
        yield
        return
    own = module.__dict__.get("forward")  # an instance's own forward, if it has one

    def restore() -> None:
        if own is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = own

    def forward(*args: Any, **kwargs: Any) -> Any:
        restore()
        try:
            return forward_fn(module, *args, **kwargs)
        finally:
            module.__dict__["forward"] = forward

    module.__dict__["forward"] = forward
    try:
        yield
    finally:
        restore()


def probes_through_forward_fn(probe: ProbeMethod) -> ProbeMethod:
    """Decorator of a plugin's :meth:`~DiagnosticCallback.probe`: it runs inside
    :func:`forward_through` with the plugin's ``forward_fn``, so the pure functions it calls honour it.

    Example:
        >>> import torch
        >>> from plugins.base import DiagnosticCallback, ProbeResult
        >>> class Outputs(DiagnosticCallback):
        ...     name = "outputs"
        ...     needs_forward = True
        ...     def __init__(self, forward_fn=None, **schedule):
        ...         super().__init__(**schedule)
        ...         self.forward_fn = forward_fn
        ...     @probes_through_forward_fn
        ...     def probe(self, pl_module, batch):
        ...         return ProbeResult(scalars={"mean": float(pl_module(batch).mean())})
        >>> Outputs(forward_fn=lambda m, x: m(x) + 1).probe(nn.Identity(), torch.zeros(3)).scalars
        {'mean': 1.0}
    """

    @functools.wraps(probe)
    def wrapped(self: Any, pl_module: L.LightningModule, batch: Any) -> Any:
        with forward_through(pl_module, self.forward_fn):
            return probe(self, pl_module, batch)

    return wrapped  # type: ignore[return-value]


def recorded_calls(
    module: nn.Module, x: Any, watched: Iterable[tuple[str, nn.Module]]
) -> list[tuple[str, nn.Module, Any]]:
    """One forward of ``module`` on ``x`` without gradients: ``(name, submodule, output)`` of every call
    of the ``watched`` submodules, in the order they ran (a module called twice appears twice).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> calls = recorded_calls(net, torch.ones(5, 3), net.named_children())
        >>> [(name, tuple(out.shape)) for name, _, out in calls]
        [('0', (5, 4)), ('1', (5, 4)), ('2', (5, 2))]
    """
    calls: list[tuple[str, nn.Module, Any]] = []

    def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        return lambda m, _inputs, out: calls.append((name, m, out))

    handles = [m.register_forward_hook(hook(name)) for name, m in watched]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls
