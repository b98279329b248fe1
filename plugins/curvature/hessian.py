"""The Hessian of the loss as an operator: ``H v`` by double backward on a kept graph.

Example:
    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(8, 2, dtype=torch.float64)
    >>> op = HessianOperator(nn.Linear(2, 1, bias=False).double(), lambda m, b: (m(b) ** 2).mean(), x)
    >>> torch.allclose(op @ torch.ones(2, dtype=torch.float64), (2 * x.T @ x / 8).sum(1))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plugins.curvature._checks import check_scalar_loss
from plugins.curvature.model import ModelOperator
from plugins.curvature.precision import Product

__all__ = ["HessianOperator"]


class HessianOperator(ModelOperator):
    """``H v``: the Hessian of the mean loss over ``data`` in the chosen parameters, times ``v``.

    One product costs one backward pass through the kept graph of the gradient (about one
    gradient's cost: 0.99x on LeNet-5 on a CPU, 1.84x on a GPU; ``docs/curvature.md``).

    Args:
        model, loss_fn, data, parameters, distributed, cuda_graph: see
            :class:`~plugins.curvature.model.ModelOperator`.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(3, 1)
        >>> mse = lambda m, b: (m(b) ** 2).mean()
        >>> op = HessianOperator(model, mse, torch.randn(4, 3), parameters=["bias"])
        >>> op.size, float(op @ torch.ones(1))
        (1, 2.0)
    """

    keeps_tanh_factors = True  # a product differentiates the gradient in tanh's output too

    def _graph(self, batch: Any) -> Product:
        loss = check_scalar_loss(self.loss_fn(self.model, batch))
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def product(vs: list[Tensor]) -> list[Tensor]:
            if not live:
                return self._zeros()
            hv = torch.autograd.grad(
                [grads[i] for i in live],
                self.params,
                grad_outputs=[vs[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            return [torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv, strict=True)]

        return product
