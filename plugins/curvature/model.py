"""The base of the operators built from a model, a loss and data: parameter blocks, batches, DDP.

:class:`ModelOperator` turns a per-batch product (a subclass's :meth:`~ModelOperator._graph`) into
the product of the curvature of the *mean loss over the union of the data*:

- one batch: its autograd graph is built once and reused by every product (one product = one
  double-backward pass), or captured in a CUDA graph (``cuda_graph=True``); graphs are built
  inside :func:`~plugins.curvature.convolution.weight_only_convolutions` (a convolution of the
  data itself costs no gradient of the data in a product) and
  :func:`~plugins.curvature.pooling.strided_pools` (average pools as strided sums, bit for bit);
- several batches (a list, a ``DataLoader``): each product recomputes batch by batch, batch ``i``
  always under the random seed ``i`` (the same dropout masks at every product), each weighted by
  its number of samples; the global RNG is forked, never advanced;
- ``distributed=True``: the local sum ``sum_b n_b C_b v`` and ``sum_b n_b`` are all-reduced, so
  every rank holds the product of the whole data set and algorithms run in lockstep;
- ``parameters=``: the block of the chosen parameters (the others are held fixed): names of
  parameters or of modules (all the parameters under them), or a predicate on the parameter name.

A model in train mode updates BatchNorm statistics at every forward: build operators inside
:func:`plugins.base.preserved_training_state` (as the functions and the callback do) when that matters.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from plugins.curvature.hessian import HessianOperator
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> selected_parameters(model, ["2"])[0]
    ['2.weight', '2.bias']
    >>> op = HessianOperator(model, lambda m, b: m(b).pow(2).mean(), torch.randn(8, 3), parameters=["2"])
    >>> op.size
    5
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from plugins.base import LossFn, iterate_batches
from plugins.curvature._checks import (
    check_autograd,
    check_distributed,
    check_parameter_names,
    check_same_dtype_device,
)
from plugins.curvature.activations import tanh_factors
from plugins.curvature.convolution import weight_only_convolutions
from plugins.curvature.operator import CurvatureOperator
from plugins.curvature.pooling import strided_pools
from plugins.curvature.precision import Product, ieee_float32, replayed

__all__ = ["ModelOperator", "ParameterChoice", "flatten", "selected_parameters"]

ParameterChoice = Sequence[str] | Callable[[str], bool] | None


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Tensors as one flat vector in their logical order (``parameters_to_vector``; channels-last
    tensors are made contiguous first, which its ``view`` needs).

    Example:
        >>> flatten([torch.ones(2, 2), torch.zeros(1)]).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    return parameters_to_vector(t.contiguous() for t in tensors)


def selected_parameters(
    model: nn.Module, parameters: ParameterChoice = None
) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the trainable parameters that ``parameters`` chooses (all: ``None``).

    Example:
        >>> selected_parameters(nn.Linear(2, 1), lambda name: name.endswith("bias"))[0]
        ['bias']
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if parameters is None:
        chosen = named
    elif callable(parameters):
        chosen = [(n, p) for n, p in named if parameters(n)]
    else:
        wanted = [parameters] if isinstance(parameters, str) else list(parameters)
        check_parameter_names(wanted, [n for n, _ in named], type(model).__name__)
        chosen = [(n, p) for n, p in named if any(n == w or n.startswith(w + ".") for w in wanted)]
    check_same_dtype_device([p for _, p in chosen], type(model).__name__)
    return [n for n, _ in chosen], [p for _, p in chosen]


def _only_batch(data: Any) -> tuple[Any, int] | None:
    """``(batch, samples)`` if ``data`` holds exactly one batch (its graph is then kept), else None."""
    batches = iterate_batches(data)
    first = next(batches)
    return first if next(batches, None) is None else None


class ModelOperator(CurvatureOperator):
    """The curvature of ``loss_fn(model, batch)``, averaged over ``data``, in the chosen parameters.

    Subclasses implement :meth:`_graph`: the product on one batch, with the graph kept.

    Args:
        model: the network; its trainable parameters (``requires_grad``) are the variables.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (a mean over the batch's samples).
        data: one batch, or a re-iterable of batches (mean over their union).
        parameters: restrict to a block: parameter or module names, or a predicate on the name.
        distributed: all-reduce every product over the ranks of ``torch.distributed``.
        cuda_graph: on a GPU with one batch, capture the product in a CUDA graph and replay it.

    Example:
        >>> from plugins.curvature.hessian import HessianOperator
        >>> x = torch.randn(16, 2, dtype=torch.float64)
        >>> op = HessianOperator(nn.Linear(2, 1, bias=False).double(), lambda m, b: m(b).pow(2).mean(), x)
        >>> torch.allclose(op.matmat(torch.eye(2, dtype=torch.float64)), 2 * x.T @ x / 16)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        parameters: ParameterChoice = None,
        distributed: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        check_autograd()
        check_distributed(distributed)
        self.model, self.loss_fn, self.data, self.distributed = model, loss_fn, data, distributed
        self.names, self.params = selected_parameters(model, parameters)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.size = sum(p.numel() for p in self.params)
        self.num_matvecs = 0
        only = _only_batch(data)
        self._cached: tuple[Callable[[list[Tensor]], Tensor], int] | None = None
        if only is not None and cuda_graph and self.device.type == "cuda":
            self._cached = (replayed(lambda: self._build(only[0], 0), self.params), only[1])
        elif only is not None:
            product = self._build(only[0], 0)
            self._cached = (lambda vs: flatten(product(vs)), only[1])

    keeps_tanh_factors = False
    """Build the graphs inside :func:`~plugins.curvature.activations.tanh_factors` (products that
    differentiate the gradient: the Hessian's)."""

    def _graph(self, batch: Any) -> Product:
        """The product on one batch (a list of tensors shaped like the parameters, in and out)."""
        raise NotImplementedError

    def _build(self, batch: Any, index: int) -> Product:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), ieee_float32():
            torch.manual_seed(index)  # the same dropout masks at every product
            # a first convolution's products skip the data's gradient (and on a CPU multiply its
            # unfolded data); average pools as strided sums; tanh's constant factors kept (Hessian)
            factors = tanh_factors() if self.keeps_tanh_factors else contextlib.nullcontext()
            with weight_only_convolutions(columns=True), strided_pools(), factors:
                return self._graph(batch)

    def _zeros(self) -> list[Tensor]:
        return [torch.zeros_like(p) for p in self.params]

    def split(self, v: Tensor) -> list[Tensor]:
        """A flat vector as views shaped like the parameters (``vector_to_parameters`` would write
        into the parameters themselves).

        Example:
            >>> from plugins.curvature.hessian import HessianOperator
            >>> op = HessianOperator(nn.Linear(2, 3), lambda m, b: m(b).sum() ** 2, torch.ones(1, 2))
            >>> [tuple(t.shape) for t in op.split(torch.zeros(op.size))]
            [(3, 2), (3,)]
        """
        sizes = [p.numel() for p in self.params]
        return [c.view_as(p) for c, p in zip(v.split(sizes), self.params, strict=True)]

    def _matvec(self, v: Tensor) -> Tensor:
        vs = self.split(v.detach())
        with ieee_float32():
            if self._cached is not None and not self.distributed:
                return self._cached[0](vs)
            if self._cached is not None:
                product, samples = self._cached
                total, count = product(vs) * samples, float(samples)
            else:
                total, count = torch.zeros_like(v), 0.0
                for index, (batch, n) in enumerate(iterate_batches(self.data)):
                    total += flatten(self._build(batch, index)(vs)) * n
                    count += n
        if self.distributed:
            packed = torch.cat([total, total.new_tensor([count])])
            torch.distributed.all_reduce(packed)
            total, count = packed[:-1], float(packed[-1])
        return total / count
