"""Saliency maps: the gradient of a class score with respect to the input (Simonyan et al. 2014).

Lecture 11: which pixels, changed a little, would change the class score most. The function is
pure: the model's parameters, gradients, train/eval mode and the global random number generators
are as they were.

Example:
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> saliency(net, torch.randn(2, 1, 2, 2)).shape
    torch.Size([2, 1, 2, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plugins.checks import PluginConfigError
from plugins.filter_grids import _evaluating

__all__ = ["saliency"]


def saliency(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """Input-gradient maps (Simonyan et al. 2014): ``d score[i, target_i] / d x[i]``, shaped like ``x``.

    The score is the model's raw output (the logit, before any softmax), in eval mode. The paper's
    saliency map of image ``i`` is ``saliency(...)[i].abs().amax(dim=0)`` (largest over colour channels).

    Args:
        model: maps ``x`` to scores of shape ``(N, classes)``.
        x: a batch of inputs.
        target: one class for all images, a tensor of ``N`` classes, or ``None`` for each image's
            predicted class.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.randn(2, 1, 2, 2)
        >>> torch.allclose(saliency(net, x, target=1), net[1].weight[1].reshape(1, 2, 2).expand(2, 1, 2, 2))
        True
    """
    with _evaluating(model), torch.inference_mode(False), torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        scores = model(inputs)
        if scores.dim() != 2:
            raise PluginConfigError(
                f"saliency needs scores of shape (batch, classes), got {tuple(scores.shape)}"
            )
        if target is None:
            classes = scores.detach().argmax(dim=1)
        else:
            classes = torch.as_tensor(target, device=scores.device).long().expand(len(scores))
        if int(classes.min()) < 0 or int(classes.max()) >= scores.shape[1]:
            raise PluginConfigError(
                f"saliency target must lie in [0, {scores.shape[1]}), got {classes.tolist()}"
            )
        picked = scores.gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, inputs)
    return grad.detach()
