"""The input-output Jacobian of a network and its singular values, as pure functions (Pennington 2017/18).

:func:`input_output_jacobians` computes ``J = d f(x) / d x`` per input with ``torch.func``
(``vmap`` of ``jacrev``, chunked to a memory budget), :func:`jacobian_singular_values` its
spectrum, :func:`spectrum_statistics` the numbers logged from it, and
:func:`jacobian_spectrum_moments` the free-probability prediction of its first two moments.
:class:`plugins.jacobian.JacobianSpectrum` logs them during a fit.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh())
    >>> jacobian_singular_values(net, torch.randn(3, 8)).shape
    torch.Size([3, 8])
    >>> jacobian_spectrum_moments("linear", 1.0, 0.0, depth=10, weights="orthogonal").variance
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from plugins.checks import PluginConfigError, misuse
from plugins.signal_propagation import (
    ActivationLike,
    derivative_moments,
    q_map_iterates,
    reference_q,
)

__all__ = [
    "SpectrumMoments",
    "auto_chunk_size",
    "check_chunk_size",
    "check_submodule",
    "input_output_jacobians",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
    "spectrum_statistics",
]

WEIGHTS = ("gaussian", "orthogonal")
AUTO_CHUNK_BYTES = 2**30
"""The memory ``chunk_size="auto"`` plans for: inputs per ``vmap`` chunk such that their estimated
Jacobian work (see :func:`auto_chunk_size`) fits in 1 GiB."""

ChunkSize = int | None | Literal["auto"]


def check_submodule(model: nn.Module, name: str | None, argument: str, owner: str = "") -> nn.Module | None:
    """The submodule ``name`` of ``model`` (``None`` for ``None``), or a :class:`PluginConfigError`
    that lists the names there are.

    Example:
        >>> check_submodule(nn.Sequential(nn.Linear(2, 2)), "0", "output_layer")
        Linear(in_features=2, out_features=2, bias=True)
    """
    if name is None:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        ends = "output" if argument == "output_layer" else "inputs"
        fix = (
            f"{type(model).__name__} has no submodule {name!r} (no such submodule among {names[:40]}); "
            f"choose one of them, or None for the module's {ends}"
        )
        raise misuse(owner, argument, name, fix) from None


def _single_input_map(
    model: nn.Module, output_layer: str | None, input_layer: str | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(v_i, x_i) ->`` the flattened output of ``model`` (or of its submodule ``output_layer``) for
    one input ``x_i``, as a function of ``v_i``: ``x_i`` itself, or the output of ``input_layer``
    (which ``v_i`` replaces)."""
    target = check_submodule(model, output_layer, "output_layer")
    source = check_submodule(model, input_layer, "input_layer")

    def f(vi: Tensor, xi: Tensor) -> Tensor:
        seen: list[Tensor] = []
        handles = []
        if source is not None:
            handles.append(source.register_forward_hook(lambda _m, _i, _out: vi.unsqueeze(0)))
        if target is not None:
            handles.append(target.register_forward_hook(lambda _m, _i, out: seen.append(out)))
        try:
            out = model((vi if source is None else xi).unsqueeze(0))
        finally:
            for handle in handles:
                handle.remove()
        return (out if target is None else seen[-1]).reshape(-1)

    return f


def _variables(model: nn.Module, x: Tensor, input_layer: str | None) -> Tensor:
    """What the Jacobian differentiates with respect to: ``x``, or ``input_layer``'s output on it."""
    if input_layer is None:
        if not x.is_floating_point():
            raise PluginConfigError(
                f"the inputs are {x.dtype} (token ids?), and a Jacobian needs real-valued inputs: name the "
                "layer whose output it differentiates with respect to, e.g. input_layer='embedding'"
            )
        return x
    source = check_submodule(model, input_layer, "input_layer")
    assert source is not None
    seen: list[Tensor] = []
    handle = source.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0], Tensor) or len(seen[0]) != len(x):
        raise PluginConfigError(
            f"input_layer={input_layer!r} is not called on the inputs once with a batch of outputs "
            "(batch, ...): choose the layer that first turns the inputs into vectors"
        )
    return seen[0].detach()


def _sizes(
    model: nn.Module, f: Callable[[Tensor, Tensor], Tensor], v: Tensor, x: Tensor
) -> tuple[int, int, int]:
    """Input and output sizes of ``f`` for one input, and the summed sizes of the outputs of the
    model's leaf modules on the way (the intermediates a Jacobian's vectors pass through)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    sizes: list[int] = []

    def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
        sizes.append(out.numel() if isinstance(out, Tensor) else 0)

    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            n_out = f(v[0], x[0]).numel()
    finally:
        for handle in handles:
            handle.remove()
    return v[0].numel(), n_out, sum(sizes)


def auto_chunk_size(n_inputs: int, n_in: int, n_out: int, intermediates: int, itemsize: int = 4) -> int:
    """Inputs per ``vmap`` chunk for ``chunk_size="auto"``: as many as fit in :data:`AUTO_CHUNK_BYTES`.

    Per input, the estimate counts its Jacobian (``n_out * n_in`` numbers) and one vector per
    Jacobian row (or column, in forward mode) through every intermediate: ``min(n_out, n_in) *
    intermediates``, an upper bound of what the batched transforms hold at once.

    Example:
        >>> auto_chunk_size(64, n_in=256, n_out=256, intermediates=16 * 2 * 256)  # the benchmark MLP
        64
        >>> auto_chunk_size(64, n_in=3072, n_out=10, intermediates=5_000_000)  # a big CNN's logits
        5
    """
    per_input = itemsize * (n_out * n_in + min(n_out, n_in) * max(intermediates, n_out + n_in))
    return max(1, min(n_inputs, AUTO_CHUNK_BYTES // per_input))


def input_output_jacobians(
    model: nn.Module,
    x: Tensor,
    output_layer: str | None = None,
    chunk_size: ChunkSize = "auto",
    method: str = "vmap",
    input_layer: str | None = None,
) -> Tensor:
    """The Jacobians ``d model(x_i) / d x_i``, shape ``(batch, n_out, n_in)`` (inputs flattened).

    ``method="vmap"``: ``torch.func.vmap`` of ``jacrev`` (``jacfwd`` when the output is larger than
    the input, unless an op lacks a forward-mode derivative, as attention kernels do), ``chunk_size``
    inputs at a time so memory stays bounded: ``"auto"`` takes as many as :func:`auto_chunk_size`
    estimates to fit in 1 GiB (all 64 inputs of the depth-16, width-256
    benchmark MLP: 3.7x faster than chunks of 16 on an H100, about the same on a CPU), ``None`` all
    at once. ``method="loop"``: the naive reference, one forward per input and one ``backward`` per
    Jacobian row. ``output_layer``
    (a submodule name) differentiates that layer's output instead of the model's; ``input_layer``
    differentiates with respect to that layer's output instead of ``x_i`` (e.g. the embedding of
    token inputs, which have no Jacobian). The model is used
    in its current mode: put models with BatchNorm or dropout in ``eval()`` first. No ``.grad`` is
    written.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        >>> x = torch.randn(2, 4)
        >>> fast, slow = input_output_jacobians(net, x), input_output_jacobians(net, x, method="loop")
        >>> fast.shape, torch.allclose(fast, slow, atol=1e-6)
        (torch.Size([2, 3, 4]), True)
    """
    if x.dim() < 2 or len(x) == 0:
        raise PluginConfigError(f"x must be a batch of inputs (batch, ...), got shape {tuple(x.shape)}")
    check_chunk_size(chunk_size)
    if method not in ("vmap", "loop"):
        raise PluginConfigError(
            f"method must be 'vmap' (batched torch.func) or 'loop' (reference), got {method!r}"
        )
    f = _single_input_map(model, output_layer, input_layer)
    x = x.detach()
    v = _variables(model, x, input_layer)
    n_in, n_out, intermediates = _sizes(model, f, v, x)
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(len(x), n_in, n_out, intermediates, v.element_size())
    if chunk_size is not None and chunk_size >= len(x):
        chunk_size = None  # one chunk: vmap's chunked path would copy the Jacobians once more (torch.cat)
    if method == "loop":
        jacobians = []
        for vi, xi in zip(v, x, strict=True):
            vi = vi.clone().requires_grad_(True)
            with torch.enable_grad():
                out = f(vi, xi)
                rows = [
                    torch.autograd.grad(out[k], vi, retain_graph=k < n_out - 1)[0].reshape(-1)
                    for k in range(n_out)
                ]
            jacobians.append(torch.stack(rows))
        return torch.stack(jacobians)
    forward = n_out > n_in  # forward mode pays per input dimension, reverse mode per output
    with torch.no_grad():  # the transforms still differentiate; no graph to the parameters is kept
        try:
            jacobians = torch.func.vmap(
                torch.func.jacfwd(f) if forward else torch.func.jacrev(f), chunk_size=chunk_size
            )(v, x)
        except NotImplementedError as err:  # an op with no forward-mode derivative (attention kernels)
            if not forward or "forward AD" not in str(err):
                raise
            jacobians = torch.func.vmap(torch.func.jacrev(f), chunk_size=chunk_size)(v, x)
    return jacobians.reshape(len(x), n_out, n_in)


def check_chunk_size(chunk_size: Any, owner: str = "") -> None:
    """``chunk_size`` is a whole number >= 1, ``"auto"`` or ``None``; else a :class:`PluginConfigError`
    (``owner`` names the callback whose argument it is).

    Example:
        >>> check_chunk_size("auto")
        >>> check_chunk_size(0, "JacobianSpectrum")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: JacobianSpectrum(chunk_size=0): use a whole number >= 1, 'auto' ...
    """
    if chunk_size in (None, "auto") or (
        isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1
    ):
        return
    fix = "use a whole number >= 1, 'auto' (as many as fit in 1 GiB) or None (one chunk)"
    raise misuse(owner, "chunk_size", chunk_size, fix)


def jacobian_singular_values(
    model: nn.Module,
    x: Tensor,
    output_layer: str | None = None,
    chunk_size: ChunkSize = "auto",
    method: str = "vmap",
    input_layer: str | None = None,
) -> Tensor:
    """Singular values of ``d model(x_i) / d x_i`` for every input, each row sorted descending.

    The Jacobians come from :func:`input_output_jacobians` (batched ``torch.func``, chunked; the
    arguments mean the same there) and ``torch.linalg.svdvals`` gives ``min(n_out, n_in)`` values
    per input, exact to float precision.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(3, 2, bias=False)
        >>> _ = nn.init.eye_(net.weight)
        >>> jacobian_singular_values(net, torch.randn(4, 3))[0]
        tensor([1., 1.])
    """
    return _svdvals(input_output_jacobians(model, x, output_layer, chunk_size, method, input_layer))


def _svdvals(jacobians: Tensor) -> Tensor:
    """``torch.linalg.svdvals`` of a batch of matrices, each row descending.

    Single (or lower) precision Jacobians: the square roots of the eigenvalues of their Gram matrices
    ``J J^T`` (or ``J^T J``, the smaller) formed in double precision: every singular value within
    ``1e-7`` of the largest, rounding to single precision included (single precision's own SVD is off
    by up to ``5e-7`` of it; ``tests/test_jacobian.py`` checks both against the double-precision SVD),
    in half the time of single precision's QR and SVD (32 Jacobians of 128 x 784 on a CPU).
    Double precision ones: a wide or tall one (one side at least twice the other) goes through the
    triangular factor of its QR decomposition first, which has the same singular values (a
    backward-stable step), then ``svdvals``.
    """
    rows, cols = jacobians.shape[-2:]
    if jacobians.dtype != torch.float64 and jacobians.is_floating_point():
        wide = jacobians.double()
        gram = wide @ wide.mT if rows <= cols else wide.mT @ wide
        eigenvalues = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0)  # descending, rounding off 0
        return eigenvalues.sqrt().to(jacobians.dtype)
    if max(rows, cols) >= 2 * min(rows, cols):
        tall = jacobians.mT if rows < cols else jacobians
        jacobians = torch.linalg.qr(tall, mode="r")[1]
    return torch.linalg.svdvals(jacobians)


@dataclass(frozen=True)
class SpectrumMoments:
    """Mean and variance of the squared singular values ``lambda = s^2`` of ``J`` (of ``J J^T``).

    Example:
        >>> SpectrumMoments(1.0, 0.0).mean_squared_singular_value
        1.0
    """

    mean_squared_singular_value: float
    variance: float


def jacobian_spectrum_moments(
    activation: ActivationLike,
    sigma_w: float,
    sigma_b: float,
    depth: int,
    weights: str = "gaussian",
    q0: float | None = None,
) -> SpectrumMoments:
    """Free-probability moments of ``J J^T`` for a depth-``L`` network of square layers, wide limit.

    With ``mu_k^l = E[phi'(h^l)^(2k)]`` at the layer's pre-activation variance ``q^l``, the mean
    squared singular value is ``prod_l sigma_w^2 mu_1^l`` (``chi_1^L`` at ``q*``), and normalised
    variances add over the freely independent factors (Pennington, Schoenholz, Ganguli 2018)::

        var / mean^2 = sum_l (mu_2^l / (mu_1^l)^2 - 1) + L * (1 if gaussian else 0)

    The Gaussian ``W W^T`` is Marchenko-Pastur (normalised variance 1), the orthogonal one has none;
    orthogonal deep linear nets therefore have every singular value equal to ``sigma_w^L``.

    Args:
        activation: a name (``tanh``, ``relu``, ...) or a callable, as in :mod:`plugins.signal_propagation`.
        sigma_w, sigma_b: the weight scale and bias standard deviation.
        depth: number of layers ``L`` (each ``W`` followed by ``phi``).
        weights: ``gaussian`` or ``orthogonal``.
        q0: the inputs' mean squared feature; the layers then sit at the q-map iterates from ``q0``.
            ``None``: every layer at ``q*`` (the inputs are on the fixed point).

    Example:
        >>> m = jacobian_spectrum_moments("linear", 1.0, 0.0, depth=4, weights="gaussian", q0=1.0)
        >>> m.mean_squared_singular_value, m.variance  # a product of 4 Wisharts: Fuss-Catalan
        (1.0, 4.0)
    """
    if weights not in WEIGHTS:
        raise PluginConfigError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    if not isinstance(depth, int) or depth < 1:
        raise PluginConfigError(f"depth must be a whole number >= 1, got {depth!r}")
    if q0 is None:
        qs = np.full(depth, reference_q(activation, sigma_w, sigma_b))
    else:
        qs = q_map_iterates(activation, sigma_w, sigma_b, q0, depth)
    log_mean, normalised_variance = 0.0, 0.0
    for q in qs:
        mu1, mu2 = derivative_moments(activation, float(q))
        if mu1 <= 0:
            return SpectrumMoments(0.0, 0.0)
        log_mean += math.log(sigma_w**2 * mu1)
        normalised_variance += mu2 / mu1**2 - 1.0 + (1.0 if weights == "gaussian" else 0.0)
    mean = math.exp(log_mean)
    return SpectrumMoments(mean, mean**2 * normalised_variance)


def spectrum_statistics(singular_values: Tensor) -> dict[str, float]:
    """Summary numbers of a ``(batch, k)`` array of singular values.

    ``mean_squared_singular_value`` (the mean of ``s^2`` over all inputs and values),
    ``variance_squared_singular_value``, ``max_singular_value``, ``min_singular_value`` and
    ``condition_number`` (the median over inputs of ``s_max / s_min``; ``inf`` if singular).

    Example:
        >>> spectrum_statistics(torch.tensor([[2.0, 1.0]]))["condition_number"]
        2.0
    """
    s = singular_values.double()
    lam = s**2
    ratio = s[:, 0] / s[:, -1]
    return {
        "mean_squared_singular_value": float(lam.mean()),
        "variance_squared_singular_value": float(lam.var(unbiased=False)),
        "max_singular_value": float(s.max()),
        "min_singular_value": float(s.min()),
        "condition_number": float(ratio.median()),
    }
