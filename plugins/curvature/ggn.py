"""The generalised Gauss-Newton matrix ``G = J^T H_z J`` as an operator.

``z`` is the output of the model (its one call inside ``loss_fn``), ``J`` the Jacobian of ``z`` in
the parameters and ``H_z`` the Hessian of the loss in ``z``. For convex losses (cross-entropy,
squared error) ``G`` is positive semi-definite, and it is what many papers call "the Hessian".

Example:
    >>> import torch
    >>> from torch import nn
    >>> x = torch.randn(8, 2, dtype=torch.float64)
    >>> op = GGNOperator(nn.Linear(2, 1, bias=False).double(), lambda m, b: (m(b) ** 2).mean(), x)
    >>> torch.allclose(op.matmat(torch.eye(2, dtype=torch.float64)), 2 * x.T @ x / 8)  # linear: G = H
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plugins.base import LossFn
from plugins.curvature._checks import CurvatureError, check_scalar_loss
from plugins.curvature.model import ModelOperator
from plugins.curvature.precision import Product

__all__ = ["GGNOperator", "loss_and_output"]


def loss_and_output(model: nn.Module, loss_fn: LossFn, batch: Any, who: str) -> tuple[Tensor, Tensor]:
    """The loss and the model's output ``z`` inside it (caught by a forward hook on ``model``).

    Example:
        >>> loss, z = loss_and_output(nn.Linear(2, 3), lambda m, b: m(b).sum(), torch.ones(4, 2), "GGN")
        >>> tuple(z.shape)
        (4, 3)
    """
    outputs: list[Any] = []
    handle = model.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        loss = check_scalar_loss(loss_fn(model, batch))
    finally:
        handle.remove()
    if len(outputs) != 1 or not isinstance(outputs[0], Tensor):
        raise CurvatureError(
            f"the {who} needs loss_fn to call the model exactly once on a tensor output (it was "
            f"called {len(outputs)} times): it is built on J, the Jacobian of z = model(x)"
        )
    return loss, outputs[0]


def jacobian_products(z: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor], list[int]]:
    """``(u, J^T u, live)``: a dummy ``u`` shaped like ``z`` and ``J^T u`` with its graph, so that
    ``J v = d(J^T u . v)/du`` costs one backward pass (the double-backward trick); ``live`` indexes
    the parameters that ``z`` depends on, and ``J^T u`` holds their parts only.

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> u, jtu, live = jacobian_products(3 * w, [w])
        >>> torch.autograd.grad(jtu, u, grad_outputs=torch.tensor([1.0, 2.0]))[0].tolist()
        [3.0, 6.0]
    """
    u = torch.zeros_like(z, requires_grad=True)
    jtu = torch.autograd.grad(z, params, grad_outputs=u, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
    return u, [g for g in jtu if g is not None and g.requires_grad], live


class GGNOperator(ModelOperator):
    """``G v = J^T H_z J v`` of the mean loss over ``data``, three autograd passes on a kept graph.

    Args:
        model, loss_fn, data, parameters, distributed, cuda_graph: see
            :class:`~plugins.curvature.model.ModelOperator`; ``loss_fn`` must call ``model`` once.

    Example:
        >>> from torch.nn import functional as F
        >>> model = nn.Linear(3, 4)
        >>> batch = (torch.randn(10, 3), torch.randint(0, 4, (10,)))
        >>> op = GGNOperator(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batch)
        >>> v = torch.randn(op.size)
        >>> bool(v @ (op @ v) >= 0)  # PSD
        True
    """

    def _graph(self, batch: Any) -> Product:
        loss, z = loss_and_output(self.model, self.loss_fn, batch, "GGN")
        (dz,) = torch.autograd.grad(loss, z, create_graph=True)
        u, jtu, live = jacobian_products(z, self.params)

        def product(vs: list[Tensor]) -> list[Tensor]:
            if not live or not dz.requires_grad:
                return self._zeros()
            (jv,) = torch.autograd.grad(jtu, u, grad_outputs=[vs[i] for i in live], retain_graph=True)
            (hjv,) = torch.autograd.grad(dz, z, grad_outputs=jv, retain_graph=True)
            out = torch.autograd.grad(z, self.params, grad_outputs=hjv, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, out, strict=True)]

        return product
