"""saliency (plugins.saliency).

Tolerances: checked against central finite differences in float64 with step 1e-5, to a relative
error of 1e-6.
"""

from __future__ import annotations

import copy

import pytest
import torch

from plugins.saliency import saliency

pytestmark = pytest.mark.usefixtures("one_thread")


def test_saliency_matches_finite_differences(trained_lenet, mnist):
    net = copy.deepcopy(trained_lenet).double()
    x, y = mnist[0][:3].double(), mnist[1][:3]
    grad = saliency(net, x, y)
    assert grad.shape == x.shape
    eps = 1e-5

    def score(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(inputs).gather(1, y[:, None]).squeeze(1)

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # directional derivatives along random directions, one per image
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fd = (score(x + eps * v) - score(x - eps * v)) / (2 * eps)
        exact = (grad * v).flatten(1).sum(1)
        torch.testing.assert_close(fd, exact, rtol=1e-6, atol=1e-8)
    for pixel in [(0, 0, 14, 14), (1, 0, 10, 20), (2, 0, 5, 5)]:  # single pixels
        e = torch.zeros_like(x)
        e[pixel] = 1.0
        fd = (score(x + eps * e) - score(x - eps * e))[pixel[0]] / (2 * eps)
        torch.testing.assert_close(fd, grad[pixel], rtol=1e-6, atol=1e-8)
    predicted = net(x).argmax(1)
    torch.testing.assert_close(saliency(net, x), saliency(net, x, predicted), rtol=0, atol=0)
