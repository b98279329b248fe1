"""Per-example gradients of ``nn.Linear`` and ``nn.Conv2d`` layers from one backward pass of the batch.

A layer ``z = W a + b`` that sees example ``i`` only through its own input ``a_i`` gets from it the
gradient ``g_i = B delta_i a_i^T`` (``delta_i``: the gradient of the batch's mean loss with respect to
the layer's output for that example; ``B`` undoes the mean, so that ``g_i`` is the gradient of the
example's own loss). One forward and one backward of the whole batch, with forward hooks that keep
each layer's input ``a`` and ask autograd for the gradient of its output ``delta`` (no weight
gradient is formed), give every layer's per-example gradients without ``torch.func.vmap``
(Goodfellow 2015, "Efficient per-example gradient computations"):

- ``nn.Linear`` on a ``(B, in)`` input: the gradients are never formed; what the gradient noise
  needs is in closed form, in float64: ``|g_i|^2 = B^2 |delta_i|^2 |a_i|^2``, the mean
  ``m = delta^T a`` and ``sum_i |g_i - m|^2 = sum_i |g_i|^2 - B |m|^2`` (its cancellation costs
  about ``1e-16 |m|^2 / s^2`` of the result, ``s^2`` the spread per example: nothing a float32 model
  can see). The bias: ``g_i = B delta_i``.
- ``nn.Conv2d`` (zero padding): the per-example weight gradients are the weight gradient of one
  convolution whose groups are the examples (``torch.nn.grad.conv2d_weight`` on the batch laid out
  as the channels of one image), cheaper than unfolding the input into patches; a LeNet-5 layer's
  are a few thousand numbers an example. ``nn.Linear`` on ``(B, ..., in)``: ``g_i = B delta_i^T a_i``
  as one batched product.

Anything else is left to the caller (:attr:`LayerwiseGradients.rest`): parameters of other module
types, a layer called more than once in a forward, a layer whose input or output is changed in
place, a parameter that two modules share. The loss must be a mean over the batch of per-example
terms and the model must not couple the examples (eval mode: BatchNorm on its running statistics):
:class:`~plugins.gradient_noise.GradientNoise` checks both at its first probe against ``vmap``.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    >>> found = layerwise_gradients(model, mse, (torch.randn(8, 3), torch.randn(8, 1)))
    >>> sorted(found.moments), found.per_example, found.rest
    (['0.bias', '0.weight', '2.bias', '2.weight'], {}, [])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.grad import conv2d_weight

from plugins.batches import probe_inputs
from plugins.filter_grids import _evaluating
from plugins.protocol import LossFn, preserved_training_state

__all__ = ["LayerwiseGradients", "Moments", "layerwise_gradients", "linear_moments"]


@dataclass(frozen=True)
class Moments:
    """The per-example gradients ``g_i`` of one parameter, reduced: what the gradient noise needs.

    Attributes:
        deviation: ``sum_i |g_i - m|^2``, ``m`` the mean of the ``g_i``.
        mean_sq: ``|m|^2``.
        mean: ``m`` (float64, the parameter's shape): the batch's gradient.
        norms_sq: ``|g_i|^2`` per example (float64, ``(B,)``).

    Example:
        >>> Moments(2.0, 1.0, torch.ones(1), torch.ones(2)).deviation
        2.0
    """

    deviation: float
    mean_sq: float
    mean: Tensor
    norms_sq: Tensor


@dataclass(frozen=True)
class LayerwiseGradients:
    """What :func:`layerwise_gradients` finds on a batch of ``batch_size`` examples.

    Attributes:
        batch_size: ``B``, the number of examples.
        moments: ``{parameter name: Moments}`` for the weights (and biases) of ``nn.Linear`` layers on
            2-D inputs, whose per-example gradients are never formed.
        per_example: ``{parameter name: (B, *shape) tensor}``, the per-example gradients of the other
            layers served (``nn.Conv2d``, ``nn.Linear`` on inputs of more than two dimensions).
        rest: the trainable parameters served by neither, in ``named_parameters()`` order.
        batch_gradient: with ``batch_gradient=True``, autograd's gradient of the batch's loss for
            every trainable parameter (zeros where unused), to check the others against.

    Example:
        >>> LayerwiseGradients(2, {}, {}, ["scale"]).rest
        ['scale']
    """

    batch_size: int
    moments: dict[str, Moments]
    per_example: dict[str, Tensor]
    rest: list[str]
    batch_gradient: dict[str, Tensor] | None = None


def linear_moments(inputs: Tensor, output_grads: Tensor) -> tuple[Moments, Moments]:
    """The :class:`Moments` of the weight and the bias of a linear layer, in closed form.

    ``inputs`` ``a`` is ``(B, in)``; ``output_grads`` ``delta`` is ``(B, out)``, the gradient of the
    batch's *mean* loss with respect to the layer's output; example ``i``'s gradients are
    ``B delta_i a_i^T`` and ``B delta_i``. All in float64.

    Example:
        >>> a, delta = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.5], [0.5]])
        >>> weight, bias = linear_moments(a, delta)  # g_1 = [[1, 0]], g_2 = [[0, 2]]
        >>> weight.deviation, weight.mean_sq, weight.norms_sq.tolist(), bias.deviation
        (2.5, 1.25, [1.0, 4.0], 0.0)
    """
    n = len(inputs)
    a = inputs.detach().reshape(n, -1).double()
    d = output_grads.detach().reshape(n, -1).double() * n  # the per-example signal B delta_i
    input_sq, signal_sq = a.pow(2).sum(1), d.pow(2).sum(1)
    weight_norms = signal_sq * input_sq
    weight_mean = (d.T @ a) / n
    weight_mean_sq = float(weight_mean.pow(2).sum())
    weight_deviation = max(float(weight_norms.sum()) - n * weight_mean_sq, 0.0)
    bias_mean = d.mean(0)
    bias = Moments(float((d - bias_mean).pow(2).sum()), float(bias_mean.pow(2).sum()), bias_mean, signal_sq)
    return Moments(weight_deviation, weight_mean_sq, weight_mean, weight_norms), bias


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int] | None:
    """``F.pad``'s (left, right, top, bottom) zero padding of ``conv``; ``None``: not zero padding.

    Example:
        >>> _conv_padding(nn.Conv2d(1, 1, (3, 4), padding="same"))
        (1, 2, 1, 1)
    """
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # as torch pads it: the odd pixel of the total on the right/bottom
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    if isinstance(conv.padding, str):
        return None
    top, left = conv.padding
    return (left, left, top, top)


def _served(module: nn.Module) -> bool:
    """Whether ``module``'s per-example gradients follow from its input and output gradient here."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    if isinstance(module, nn.Conv2d):
        return type(module).forward is nn.Conv2d.forward and _conv_padding(module) is not None
    return False


def _claimed(model: nn.Module) -> dict[str, tuple[nn.Module, dict[str, str]]]:
    """``{module name: (module, {"weight"/"bias": parameter name})}`` for the served layers whose
    trainable ``weight``/``bias`` no other module shares."""
    owners: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    claimed: dict[str, tuple[nn.Module, dict[str, str]]] = {}
    for module_name, module in model.named_modules():
        if not _served(module):
            continue
        own = {}
        for role in ("weight", "bias"):
            p = getattr(module, role, None)
            if isinstance(p, nn.Parameter) and id(p) in names and owners.get(id(p)) == 1:
                own[role] = names[id(p)]
        if own:
            claimed[module_name] = (module, own)
    return claimed


@contextmanager
def _recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[tuple[Any, Any, int, int]]]]:
    """Forward hooks that keep each call's (input, output, input version, output version)."""
    calls: dict[str, list[tuple[Any, Any, int, int]]] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():

        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any, _name: str = name) -> None:
            a = args[0] if len(args) == 1 else None
            version = a._version if isinstance(a, Tensor) else -1
            calls[_name].append((a, output, version, output._version if isinstance(output, Tensor) else -1))

        handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _conv_weight_gradients(conv: nn.Conv2d, inputs: Tensor, output_grads: Tensor) -> Tensor:
    """``(B, *weight shape)``: each example's share of the weight gradient of ``conv``.

    The examples become the groups of one convolution (``B * groups`` of them) on one image whose
    channels are the batch's, so that its weight gradient holds one block per example.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3, padding=1)
        >>> x, delta = torch.randn(4, 2, 5, 5), torch.randn(4, 3, 5, 5)
        >>> shares = _conv_weight_gradients(conv, x, delta)
        >>> whole = torch.nn.grad.conv2d_weight(x, conv.weight.shape, delta, padding=1)
        >>> shares.shape, torch.allclose(shares.sum(0), whole, atol=1e-4)
        (torch.Size([4, 3, 2, 3, 3]), True)
    """
    n = len(inputs)
    pad = _conv_padding(conv)
    assert pad is not None
    left, right, top, bottom = pad
    padding: tuple[int, int] = (top, left)
    if left != right or top != bottom:  # "same" with an even kernel: pad the odd pixel first
        inputs, padding = F.pad(inputs, pad), (0, 0)
    shape = conv.weight.shape
    grads = conv2d_weight(
        inputs.reshape(1, -1, *inputs.shape[2:]),
        (n * shape[0], *shape[1:]),
        output_grads.reshape(1, -1, *output_grads.shape[2:]),
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation,
        groups=n * conv.groups,
    )
    return grads.reshape(n, *shape)


def _layer_gradients(
    module: nn.Module, own: dict[str, str], a: Tensor, delta: Tensor, n: int
) -> tuple[dict[str, Moments], dict[str, Tensor]]:
    """One served layer's moments (linear on 2-D inputs) or per-example gradients (the others)."""
    if isinstance(module, nn.Linear) and a.dim() == 2:
        weight, bias = linear_moments(a, delta)
        return {name: weight if role == "weight" else bias for role, name in own.items()}, {}
    a, delta = a.detach(), delta.detach()
    conv = isinstance(module, nn.Conv2d)
    # (B, positions, out): the output gradient at each output position (pixel, or sequence element)
    signal = delta.flatten(2).transpose(1, 2) if conv else delta.reshape(n, -1, delta.shape[-1])
    grads: dict[str, Tensor] = {}
    for role, name in own.items():
        if role == "bias":
            grads[name] = signal.sum(1) * n
        elif isinstance(module, nn.Conv2d):
            grads[name] = _conv_weight_gradients(module, a, delta) * n
        else:  # a linear layer on (B, ..., in): the sum over positions of delta_t a_t^T
            grads[name] = torch.bmm(signal.transpose(1, 2), a.reshape(n, -1, a.shape[-1])) * n
    return {}, grads


def layerwise_gradients(
    model: nn.Module, loss_fn: LossFn, batch: Any, *, batch_gradient: bool = False, preserve: bool = True
) -> LayerwiseGradients:
    """Per-example gradients of the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` on ``batch``,
    from one forward and one backward of the whole batch (see the module docstring).

    ``loss_fn(model, batch)`` must be the mean over the batch of per-example losses. The model runs
    in ``eval()`` mode and is left as it was (:func:`~plugins.protocol.preserved_training_state`;
    ``preserve=False``: only the train/eval modes are restored, for a caller that restores the rest
    itself, as a plugin's probe does); no ``.grad`` is written. ``batch_gradient=True`` also returns
    autograd's gradient of the batch's loss for every trainable parameter.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1))
        >>> mse = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
        >>> found = layerwise_gradients(model, mse, (torch.randn(5, 1, 4, 4), torch.randn(5, 1)))
        >>> {name: tuple(g.shape) for name, g in found.per_example.items()}
        {'0.weight': (5, 2, 1, 3, 3), '0.bias': (5, 2)}
        >>> sorted(found.moments)
        ['2.bias', '2.weight']
    """
    n = len(probe_inputs(batch))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    claimed = _claimed(model)
    with (
        preserved_training_state(model) if preserve else nullcontext(),
        _evaluating(model),
        torch.enable_grad(),
    ):
        with _recording({name: module for name, (module, _) in claimed.items()}) as calls:
            loss = loss_fn(model, batch)
        layers = []  # (module, its parameter names, input, output): layers called once, unchanged since
        for name, (module, own) in claimed.items():
            if len(calls[name]) != 1:
                continue
            a, out, a_version, out_version = calls[name][0]
            if (
                isinstance(a, Tensor)
                and isinstance(out, Tensor)
                and out.requires_grad
                and len(a) == n
                and a.dim() >= 2
                and (a.dim() == 4 or not isinstance(module, nn.Conv2d))
                and a._version == a_version
                and out._version == out_version
            ):
                layers.append((module, own, a, out))
        wanted = [out for _, _, _, out in layers] + (list(params.values()) if batch_gradient else [])
        found = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ()
    moments: dict[str, Moments] = {}
    per_example: dict[str, Tensor] = {}
    for (module, own, a, out), delta in zip(layers, found, strict=False):
        layer_moments, layer_grads = _layer_gradients(
            module, own, a, torch.zeros_like(out) if delta is None else delta, n
        )
        moments.update(layer_moments)
        per_example.update(layer_grads)
    gradient = None
    if batch_gradient:
        gradient = {
            name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(params.items(), found[len(layers) :], strict=True)
        }
    rest = [name for name in params if name not in moments and name not in per_example]
    return LayerwiseGradients(n, moments, per_example, rest, gradient)
