"""The Fisher information of a classifier as an operator: empirical or Monte-Carlo.

With ``z_n`` the model's output for sample ``n`` of ``N``, ``J_n`` its Jacobian in the parameters
and ``g_n`` a gradient of the per-sample loss in ``z_n``:

- ``kind="empirical"``: ``F = (1/N) sum_n J_n^T g_n g_n^T J_n`` with ``g_n`` the gradient at the
  true label, i.e. the mean outer product of the per-sample gradients of the loss. It needs
  ``loss_fn`` to be the *mean* of per-sample terms, term ``n`` depending on row ``n`` of ``z`` only
  (``F.cross_entropy``, ``F.mse_loss`` with their default reduction), so that
  ``N dL/dz_n = g_n``;
- ``kind="mc"``: the same with labels drawn from the model's own predictive distribution,
  ``y ~ softmax(z_n)`` (``mc_samples`` of them per sample, drawn once, from ``seed``), and
  ``g_n = softmax(z_n) - onehot(y)``: an unbiased estimate of the true Fisher, which for
  cross-entropy equals the GGN. It needs ``(N, C)`` logits of a classifier trained with cross-entropy.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.nn import functional as F
    >>> batch = (torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,)))
    >>> ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])
    >>> op = FisherOperator(nn.Linear(3, 2).double(), ce, batch, kind="mc", mc_samples=4)
    >>> v = torch.randn(op.size, dtype=torch.float64)
    >>> bool(v @ (op @ v) >= 0), op.size
    (True, 8)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from plugins.base import LossFn
from plugins.curvature._checks import FISHER_KINDS, CurvatureError
from plugins.curvature.ggn import jacobian_products, loss_and_output
from plugins.curvature.model import ModelOperator, ParameterChoice
from plugins.curvature.precision import Product

__all__ = ["FisherOperator"]


class FisherOperator(ModelOperator):
    """``F v`` for the empirical (``kind="empirical"``) or Monte-Carlo (``kind="mc"``) Fisher.

    Args:
        model, loss_fn, data, parameters, distributed, cuda_graph: see
            :class:`~plugins.curvature.model.ModelOperator`; ``loss_fn`` must call ``model`` once.
        kind: ``"empirical"`` (gradients at the data's labels) or ``"mc"`` (at sampled labels).
        mc_samples: labels drawn per sample for ``kind="mc"``.
        seed: seed of the sampled labels (batch ``i`` draws from ``seed + i``).

    Raises:
        CurvatureError: an unknown ``kind``; for ``"mc"``, an output that is not ``(N, C)``.

    Example:
        >>> from torch.nn import functional as F
        >>> x, y = torch.randn(6, 2, dtype=torch.float64), torch.randint(0, 3, (6,))
        >>> model = nn.Linear(2, 3, bias=False).double()
        >>> op = FisherOperator(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x, y))
        >>> per_sample = torch.func.grad(lambda w, xi, yi: F.cross_entropy(xi @ w.T, yi))
        >>> g = torch.func.vmap(per_sample, in_dims=(None, 0, 0))(model.weight.detach(), x, y)
        >>> dense = g.reshape(6, -1).T @ g.reshape(6, -1) / 6
        >>> torch.allclose(op.matmat(torch.eye(6, dtype=torch.float64)), dense)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        kind: Literal["empirical", "mc"] = "empirical",
        mc_samples: int = 1,
        seed: int = 0,
        parameters: ParameterChoice = None,
        distributed: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        if kind not in FISHER_KINDS:
            raise CurvatureError(f"FisherOperator(kind={kind!r}): use 'empirical' or 'mc'")
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise CurvatureError(f"FisherOperator(mc_samples={mc_samples!r}): use a whole number >= 1")
        self.kind, self.mc_samples, self.seed, self._index = kind, mc_samples, seed, 0
        super().__init__(
            model, loss_fn, data, parameters=parameters, distributed=distributed, cuda_graph=cuda_graph
        )

    def sample_labels(self, logits: Tensor, index: int = 0) -> Tensor:
        """The ``(N, mc_samples)`` labels ``kind="mc"`` draws for batch ``index`` from ``softmax(logits)``.

        Example:
            >>> op = FisherOperator.__new__(FisherOperator)
            >>> op.mc_samples, op.seed = 3, 0
            >>> op.sample_labels(torch.tensor([[0.0, 50.0]])).tolist()
            [[1, 1, 1]]
        """
        probs = torch.softmax(logits.detach().double(), dim=-1).cpu()
        generator = torch.Generator().manual_seed(self.seed + index)
        labels = torch.multinomial(probs, self.mc_samples, replacement=True, generator=generator)
        return labels.to(logits.device)

    def _build(self, batch: Any, index: int) -> Product:
        self._index = index
        return super()._build(batch, index)

    def _graph(self, batch: Any) -> Product:
        loss, z = loss_and_output(self.model, self.loss_fn, batch, "Fisher")
        n = z.shape[0]
        if self.kind == "empirical":
            (dz,) = torch.autograd.grad(loss, z, retain_graph=True)
            g = (dz * n).unsqueeze(0)  # the per-sample gradients in z, one "draw"
        else:
            if z.dim() != 2:
                raise CurvatureError(
                    f"FisherOperator(kind='mc') samples labels from softmax over (N, C) logits; the model "
                    f"gave shape {tuple(z.shape)}: use kind='empirical' or the GGN for other outputs"
                )
            labels = self.sample_labels(z, self._index)  # (N, M)
            onehot = nn.functional.one_hot(labels.T, z.shape[1]).to(z.dtype)  # (M, N, C)
            g = torch.softmax(z.detach(), dim=-1).unsqueeze(0) - onehot
        scale = 1.0 / (n * g.shape[0])
        u, jtu, live = jacobian_products(z, self.params)

        def product(vs: list[Tensor]) -> list[Tensor]:
            if not live:
                return self._zeros()
            (jv,) = torch.autograd.grad(jtu, u, grad_outputs=[vs[i] for i in live], retain_graph=True)
            along = (g * jv.unsqueeze(0)).flatten(2).sum(2)  # (M, N): g_mn . (J v)_n
            w = (g * along.reshape(*along.shape, *[1] * (g.dim() - 2))).sum(0) * scale
            out = torch.autograd.grad(z, self.params, grad_outputs=w, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if o is None else o for p, o in zip(self.params, out, strict=True)]

        return product
