"""The model operators against their definitions on a small float64 classifier.

A per-layer block against the block of ``torch.func.hessian``; the GGN against ``J^T H_z J``; the
empirical Fisher against the mean outer product of per-sample gradients; the Monte-Carlo Fisher
against the same with its sampled labels, and its mean over many labels against the GGN.
Tolerances: 1e-10 (exact identities in float64); the Monte-Carlo mean within 0.1 relative.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from plugins.curvature import (
    CurvatureError,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    hessian_eigenvalues,
    lanczos_eigenvalues,
)

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    batch = (torch.randn(40, 4, dtype=D), torch.randint(0, 3, (40,)))
    return model, batch


def dense(op):
    return op.matmat(torch.eye(op.size, dtype=D))


def functional(model, names):
    """The model as a function of the flat values of the named parameters (the others fixed)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def call(flat, x):
        chosen = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return functional_call(model, {**{k: v.detach() for k, v in params.items()}, **chosen}, (x,))

    return theta, call


def per_sample_gradients(model, batch, labels):
    names = [n for n, _ in model.named_parameters()]
    theta, call = functional(model, names)
    loss = lambda flat, x, y: F.cross_entropy(call(flat, x[None]), y[None])  # noqa: E731
    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(theta, batch[0], labels)


LAST = ["2.weight", "2.bias"]


@pytest.mark.parametrize(
    ("choice", "chosen"),
    [(["2"], LAST), (["0.weight"], ["0.weight"]), (lambda name: name.startswith("2."), LAST)],
)
def test_a_layer_block_is_the_block_of_the_full_hessian(classifier, choice, chosen):
    model, batch = classifier
    names = [n for n, _ in model.named_parameters()]
    theta, call = functional(model, names)
    full = torch.func.hessian(lambda flat: F.cross_entropy(call(flat, batch[0]), batch[1]))(theta)
    sizes = [p.numel() for p in model.parameters()]
    spans = dict(zip(names, torch.arange(sum(sizes)).split(sizes), strict=True))
    index = torch.cat([spans[n] for n in chosen])
    block = full[index][:, index]
    op = HessianOperator(model, cross_entropy, batch, parameters=choice)
    assert op.names == chosen
    torch.testing.assert_close(dense(op), block, rtol=1e-10, atol=1e-12)
    top = lanczos_eigenvalues(HessianOperator(model, cross_entropy, batch, parameters=choice), 2, tol=1e-10)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(block).flip(0)[:2], rtol=1e-8, atol=0)
    # the wrapper takes the same choice
    wrapped = hessian_eigenvalues(model, cross_entropy, batch, k=1, tol=1e-10, parameters=choice)
    torch.testing.assert_close(wrapped, top[:1], rtol=1e-8, atol=0)


def test_ggn_is_jt_hz_j(classifier):
    model, (x, y) = classifier
    names = [n for n, _ in model.named_parameters()]
    theta, call = functional(model, names)
    jac = torch.func.jacrev(lambda flat: call(flat, x))(theta).reshape(-1, theta.numel())
    z = call(theta, x).detach()
    hz = torch.func.hessian(lambda out: F.cross_entropy(out.view_as(z), y))(z.reshape(-1))
    torch.testing.assert_close(
        dense(GGNOperator(model, cross_entropy, (x, y))), jac.T @ hz @ jac, rtol=1e-10, atol=1e-12
    )


def test_empirical_fisher_is_the_mean_outer_product_of_per_sample_gradients(classifier):
    model, batch = classifier
    g = per_sample_gradients(model, batch, batch[1])  # (N, P)
    expected = g.T @ g / len(g)
    torch.testing.assert_close(
        dense(FisherOperator(model, cross_entropy, batch)), expected, rtol=1e-10, atol=1e-12
    )
    # two batches of unequal size: the Fisher of their union
    x, y = batch
    pieces = [(x[:13], y[:13]), (x[13:], y[13:])]
    torch.testing.assert_close(
        dense(FisherOperator(model, cross_entropy, pieces)), expected, rtol=1e-10, atol=1e-12
    )


def test_mc_fisher_is_its_definition_with_the_sampled_labels_and_near_the_ggn(classifier):
    model, batch = classifier
    op = FisherOperator(model, cross_entropy, batch, kind="mc", mc_samples=3, seed=4)
    labels = op.sample_labels(model(batch[0]), 0)  # (N, 3), the labels the operator drew
    g = torch.stack([per_sample_gradients(model, batch, labels[:, m]) for m in range(3)])  # (3, N, P)
    expected = torch.einsum("mnp,mnq->pq", g, g) / (3 * len(batch[1]))
    torch.testing.assert_close(dense(op), expected, rtol=1e-10, atol=1e-12)
    many = dense(FisherOperator(model, cross_entropy, batch, kind="mc", mc_samples=4000))
    ggn = dense(GGNOperator(model, cross_entropy, batch))
    assert float((many - ggn).norm() / ggn.norm()) < 0.1  # Monte-Carlo error ~ 1/sqrt(4000) per sample


def test_operator_misuse_is_one_clear_error(classifier):
    model, batch = classifier
    with pytest.raises(CurvatureError, match="did you mean '0.weight'"):
        HessianOperator(model, cross_entropy, batch, parameters=["0.weigth"])
    with pytest.raises(CurvatureError, match="no parameter with requires_grad"):
        HessianOperator(model, cross_entropy, batch, parameters=lambda name: False)
    with pytest.raises(CurvatureError, match="kind='exact'"):
        FisherOperator(model, cross_entropy, batch, kind="exact")
    flat = nn.Sequential(nn.Linear(4, 6), nn.Flatten(0)).to(D)
    with pytest.raises(CurvatureError, match=r"\(N, C\) logits"):
        FisherOperator(flat, lambda m, b: m(b[0]).pow(2).mean(), batch, kind="mc")
    with pytest.raises(CurvatureError, match="exactly once"):
        GGNOperator(model, lambda m, b: cross_entropy(m, b) + m(b[0]).mean(), batch)
