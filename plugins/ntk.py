"""The neural tangent kernel: measured, predicted at infinite width, and its drift in training.

For a network ``f(x; theta)`` with ``K`` outputs the (empirical) NTK is
``Theta(x, x') = J(x) J(x')^T``, ``J = d f / d theta`` over all trainable parameters (Jacot,
Gabriel & Hongler 2018). In the NTK parameterisation it converges, as the width grows, to a
deterministic kernel that stays fixed during training, and the trained net equals its
linearisation around the initial parameters (Lee et al. 2019); its relative change shrinks like
``1/sqrt(width)``. Large output scales make any net lazy (Chizat, Oyallon & Bach 2019); the
mean-field scaling makes it learn features.

:func:`empirical_ntk` measures the kernel with ``torch.func``, :func:`analytic_ntk` gives the
infinite-width one by the layer recursion (closed forms for ReLU and erf through the Gaussian
integrals of :mod:`plugins.signal_propagation`, quadrature otherwise),
:func:`linearised_predictions` the linearised model's outputs under gradient descent, and
:class:`NeuralTangentKernel` follows the kernel and the weights over a fit.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    >>> kernel = empirical_ntk(net, torch.randn(5, 3))
    >>> kernel.shape, bool(torch.allclose(kernel, kernel.T, atol=1e-5))
    (torch.Size([5, 5]), True)
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from typing_extensions import override

from plugins.base import (
    DiagnosticCallback,
    ProbeResult,
    fixed_layout_figure,
    preserved_training_state,
    probe_inputs,
)
from plugins.checks import PluginConfigError, check_whole_number
from plugins.forward import ForwardFn, probes_through_forward_fn
from plugins.gaussian_moments import ActivationLike, _activation

__all__ = [
    "NeuralTangentKernel",
    "analytic_ntk",
    "empirical_ntk",
    "kernel_distance",
    "kernel_target_alignment",
    "linearised_predictions",
    "parameter_vector",
]

OUTPUTS = ("trace", "full")


def parameter_vector(model: nn.Module) -> Tensor:
    """All trainable parameters of ``model`` flattened into one vector (a detached copy).

    Example:
        >>> parameter_vector(nn.Linear(3, 2)).shape
        torch.Size([8])
    """
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def _jacobian_rows(model: nn.Module, x: Tensor, chunk_size: int | None) -> tuple[Tensor, int]:
    """``J`` of the flattened outputs for each input: ``(n * K, P)`` rows ordered ``(input, output)``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def f(theta: dict[str, Tensor], xi: Tensor) -> Tensor:
        return torch.func.functional_call(model, {**theta, **frozen, **buffers}, (xi.unsqueeze(0),)).reshape(
            -1
        )

    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    n, k = len(x), jac[names[0]].shape[1]
    return torch.cat([jac[name].reshape(n * k, -1) for name in names], dim=1), k


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    outputs: str = "trace",
    chunk_size: int | None = 64,
) -> Tensor:
    """The empirical NTK ``Theta(x, x') = J(x) J(x')^T`` of ``model`` at its current parameters.

    ``J`` is the Jacobian of the outputs with respect to every parameter with ``requires_grad``,
    computed per input with ``torch.func.vmap(jacrev)``, ``chunk_size`` inputs at a time (memory:
    ``(n1 + n2) * K * P`` numbers for ``K`` outputs and ``P`` parameters). The model is evaluated
    in ``eval()`` mode and everything about its training state is restored afterwards.

    Args:
        model: any module mapping a batch ``(n, ...)`` to outputs ``(n, ...)``.
        x1, x2: batches of inputs; ``x2=None`` means ``x2 = x1`` (then the kernel is symmetric PSD).
        outputs: ``"trace"``: the ``(n1, n2)`` kernel summed over the ``K`` outputs;
            ``"full"``: the ``(n1 * K, n2 * K)`` kernel, rows ordered ``(input, output)``.
        chunk_size: inputs per ``vmap`` chunk (``None``: all at once).

    Example:
        >>> net = nn.Linear(2, 3)  # J(x) = [x^T (x) I, I]: Theta = (x . x' + 1) I
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
        >>> empirical_ntk(net, x)
        tensor([[ 6.,  6.],
                [ 6., 18.]])
        >>> empirical_ntk(net, x, outputs="full").shape
        torch.Size([6, 6])
    """
    if outputs not in OUTPUTS:
        raise PluginConfigError(
            f"outputs must be 'trace' (summed over outputs) or 'full' (every output pair), got {outputs!r}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise PluginConfigError(
            f"{type(model).__name__} has no trainable parameters: the NTK differentiates with respect to them"
        )
    check_whole_number("", "chunk_size", chunk_size, none_means="one chunk")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and (x.dim() < 2 or len(x) == 0):
            raise PluginConfigError(
                f"{name} must be a batch of inputs (batch, ...), got shape {tuple(x.shape)}"
            )
    with preserved_training_state(model):
        model.eval()
        j1, k = _jacobian_rows(model, x1.detach(), chunk_size)
        j2 = j1 if x2 is None else _jacobian_rows(model, x2.detach(), chunk_size)[0]
    kernel = j1 @ j2.T
    if x2 is None:
        kernel = 0.5 * (kernel + kernel.T)  # exactly symmetric, not only to rounding
    if outputs == "full":
        return kernel
    n1, n2 = len(j1) // k, len(j2) // k
    return kernel.reshape(n1, k, n2, k).diagonal(dim1=1, dim2=3).sum(-1)


def kernel_distance(a: Tensor, b: Tensor) -> float:
    """``1 - <a, b>_F / (|a|_F |b|_F)``: 0 for kernels equal up to scale (Fort et al. 2020).

    Example:
        >>> kernel_distance(torch.eye(2), 3 * torch.eye(2))
        0.0
        >>> round(kernel_distance(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])), 6)
        1.0
    """
    if a.shape != b.shape:
        raise PluginConfigError(
            f"kernels of different shapes {tuple(a.shape)} and {tuple(b.shape)} have no distance"
        )
    a, b = a.double(), b.double()
    return max(0.0, float(1.0 - (a * b).sum() / (a.norm() * b.norm())))  # >= 0 also after rounding


def _target_matrix(targets: Tensor) -> Tensor:
    """Targets as an ``(n, K)`` float matrix: integer class labels one-hot, a vector a column."""
    if (
        targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool)
        and targets.dim() == 1
    ):
        return nn.functional.one_hot(targets.long()).double()
    y = targets.double()
    return y.unsqueeze(1) if y.dim() == 1 else y.reshape(len(y), -1)


def kernel_target_alignment(kernel: Tensor, targets: Tensor) -> float:
    """``<K, Y Y^T>_F / (|K|_F |Y Y^T|_F)`` (Cristianini et al. 2001): 1 when the kernel sees only the labels.

    ``targets``: class labels ``(n,)`` (one-hot encoded) or real targets ``(n,)`` / ``(n, K)``.

    Example:
        >>> y = torch.tensor([1.0, -1.0, 1.0])
        >>> kernel_target_alignment(torch.outer(y, y), y)
        1.0
    """
    y = _target_matrix(targets)
    if kernel.shape != (len(y), len(y)):
        raise PluginConfigError(f"a kernel of shape {tuple(kernel.shape)} does not pair {len(y)} targets")
    yy = y @ y.T
    k = kernel.double()
    return float((k * yy).sum() / (k.norm() * yy.norm()))


def linearised_predictions(
    kernel_train: Tensor,
    kernel_test_train: Tensor,
    f0_train: Tensor,
    f0_test: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    continuous: bool = False,
) -> Tensor:
    """The linearised model's outputs on the test inputs after ``steps`` of full-batch gradient descent.

    The loss is ``L = 1/2 sum_i |f(x_i) - y_i|^2`` (a sum over training inputs and outputs, with
    the factor 1/2). Gradient descent with learning rate ``lr`` on the model linearised at
    ``theta_0`` moves the training outputs by ``f_{t+1} = f_t - lr Theta (f_t - y)``, so
    (Lee et al. 2019)::

        f_t(X) = f_0(X) + (I - (I - lr Theta)^t) (y - f_0(X))
        f_t(x) = f_0(x) + Theta(x, X) Theta^-1 (I - (I - lr Theta)^t) (y - f_0(X))

    This returns ``f_t(x)``; pass ``kernel_train`` and ``f0_train`` as the test ones for
    ``f_t(X)``. ``continuous=True`` gives gradient flow, ``(I - lr Theta)^t -> exp(-lr Theta t)``.
    ``Theta^-1 (I - (I - lr Theta)^t)`` is evaluated through the eigenvalues of ``Theta``, so a
    singular kernel is fine. For ``torch.nn.functional.mse_loss`` (the mean over ``n`` inputs and
    ``K`` outputs, no 1/2) pass ``lr * 2 / (n * K)``.

    Args:
        kernel_train: ``Theta(X, X)``, ``(n, n)`` (the ``"trace"`` kernel, applied to each output:
            exact for one output, and at infinite width, where the kernel is the identity across
            outputs, up to the factor ``K`` of the trace) or ``(n K, n K)`` (the ``"full"`` kernel).
        kernel_test_train: ``Theta(x, X)``, ``(m, n)`` or ``(m K, n K)`` to match.
        f0_train, f0_test: the outputs at initialisation, ``(n,)``/``(n, K)`` and ``(m,)``/``(m, K)``.
        y: training targets, shaped like ``f0_train``.
        lr: the learning rate.
        steps: the number of steps (with ``continuous``, the time ``t``).

    Returns:
        ``f_t(x)`` in the shape of ``f0_test`` (float64).

    Example:
        >>> kernel = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> f0, y = torch.zeros(2), torch.ones(2)
        >>> linearised_predictions(kernel, kernel, f0, f0, y, lr=0.5, steps=1).tolist()
        [1.0, 0.5]
    """
    n, m = len(f0_train), len(f0_test)
    f0, f0x = f0_train.double().reshape(n, -1), f0_test.double().reshape(m, -1)
    residual = y.double().reshape(n, -1) - f0
    k = f0.shape[1]
    full = k > 1 and kernel_train.shape == (n * k, n * k)
    rows = m * k if full else m
    if not full and kernel_train.shape != (n, n):
        raise PluginConfigError(
            f"kernel_train of shape {tuple(kernel_train.shape)} pairs neither {n} inputs nor {n * k} outputs"
        )
    if kernel_test_train.shape != (rows, kernel_train.shape[0]):
        raise PluginConfigError(
            f"kernel_test_train of shape {tuple(kernel_test_train.shape)} must be "
            f"{(rows, kernel_train.shape[0])}"
        )
    theta = kernel_train.double()
    lam, vectors = torch.linalg.eigh(0.5 * (theta + theta.T))
    lam = lam.clamp_min(0.0)
    decay = torch.exp(-lr * lam * steps) if continuous else (1.0 - lr * lam) ** steps
    tiny = lam <= 1e-12 * max(float(lam.max()), 1e-300)  # (1 - decay) / lam -> lr * steps as lam -> 0
    gain = torch.where(tiny, torch.full_like(lam, lr * steps), (1.0 - decay) / torch.where(tiny, 1.0, lam))
    coefficients = vectors @ (
        gain.unsqueeze(1) * (vectors.T @ (residual.reshape(-1, 1) if full else residual))
    )
    move = kernel_test_train.double() @ coefficients
    return (f0x + move.reshape(f0x.shape)).reshape(f0_test.shape)


def _pair_map(fn: Any, q1: np.ndarray, q2: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``fn(q1_i, q2_j, c_ij)`` for every pair; each distinct pair once (the map is symmetric)."""
    out = np.empty_like(cov)
    cache: dict[tuple[float, float, float], float] = {}
    for i in range(cov.shape[0]):
        for j in range(cov.shape[1]):
            c = cov[i, j] / math.sqrt(q1[i] * q2[j]) if q1[i] * q2[j] > 0 else 0.0
            key = (float(q1[i]), float(q2[j]), float(c))
            if key not in cache:
                cache[key] = fn(*key)
            out[i, j] = cache[key]
    return out


def analytic_ntk(
    activation: ActivationLike,
    depth: int,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    sigma_w: float,
    sigma_b: float,
) -> Tensor:
    """The infinite-width NTK of a ``DeepMLP(parameterisation="ntk")`` with one output (Jacot et al. 2018).

    ``depth`` hidden layers as in ``DeepMLP``, and every layer, the read-out too, in the NTK
    parameterisation of neural-tangents' ``stax.Dense(sigma_w, sigma_b)``. With ``Sigma^1 =
    sigma_w^2 x.x'/d + sigma_b^2`` and ``Theta^1 = Sigma^1``, each further layer gives::

        Sigma^{l+1} = sigma_w^2 E[phi(u) phi(u')] + sigma_b^2
        Theta^{l+1} = Sigma^{l+1} + sigma_w^2 E[phi'(u) phi'(u')] Theta^l,   (u, u') ~ N(0, Sigma^l)

    and the kernel is ``Theta^{depth+1}``. The Gaussian integrals are those of
    :mod:`plugins.signal_propagation`: closed forms for ``relu`` (the arc-cosine kernels of
    degrees 1 and 0), ``erf`` and ``linear``; quadrature for ``tanh`` and others.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> analytic_ntk("linear", 1, x, sigma_w=1.0, sigma_b=0.0)  # Theta = 2 x.x'/d
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    if not isinstance(depth, int) or depth < 0:
        raise PluginConfigError(f"depth (hidden layers) must be a whole number >= 0, got {depth!r}")
    act = _activation(activation)
    a = x1.detach().double().reshape(len(x1), -1)
    b = a if x2 is None else x2.detach().double().reshape(len(x2), -1)
    if a.shape[1] != b.shape[1]:
        raise PluginConfigError(f"x1 and x2 have different input sizes, {a.shape[1]} and {b.shape[1]}")
    d = a.shape[1]
    sw2, sb2 = sigma_w**2, sigma_b**2
    cov = (sw2 * (a @ b.T) / d + sb2).numpy()
    q1 = (sw2 * (a * a).sum(1) / d + sb2).numpy()
    q2 = (sw2 * (b * b).sum(1) / d + sb2).numpy()
    theta = cov.copy()
    for _ in range(depth):
        derivative = _pair_map(act.derivative_cross_moment, q1, q2, cov)
        cov = sw2 * _pair_map(act.cross_moment, q1, q2, cov) + sb2
        theta = cov + sw2 * derivative * theta
        q1 = np.array([sw2 * act.second_moment(float(q)) + sb2 for q in q1])
        q2 = q1 if x2 is None else np.array([sw2 * act.second_moment(float(q)) + sb2 for q in q2])
    return torch.from_numpy(theta)


class NeuralTangentKernel(DiagnosticCallback):
    """The empirical NTK on a fixed probe batch over training, compared with its value at the first probe.

    Logged per probe (key ``ntk/<name>``): ``relative_kernel_change`` ``|Theta_t - Theta_0|_F /
    |Theta_0|_F``, ``kernel_distance`` to ``Theta_0`` (:func:`kernel_distance`),
    ``relative_weight_change`` ``|theta_t - theta_0| / |theta_0|``, ``label_alignment``
    (:func:`kernel_target_alignment` with the probe batch's targets) and ``kernel_trace``; the kernel
    as an array, and a figure of the three changes over the probes so far. ``Theta_0`` and
    ``theta_0`` are kept in the checkpoint, so a resumed run measures from the same start.

    The kernel is the ``"trace"`` one of :func:`empirical_ntk`, in ``eval()`` mode. Needs:
    ``pl_module(x)``; targets as the batch's second item (or ``batch["y"]``) for the alignment.

    Args:
        chunk_size: inputs per ``vmap`` chunk of :func:`empirical_ntk`.
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the inputs (e.g. ``lambda m, x: m(x, x)``); default ``pl_module(x)``.
        **schedule: ``at_init``, ``every_n_steps``, ``every_n_epochs``, ``at_end``, ``probe_size``,
            ``probe_seed``: see :class:`~plugins.base.DiagnosticCallback` (default: at init and at the end, 64
            inputs).

    Example:
        >>> cb = NeuralTangentKernel(probe_size=8)
        >>> net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))
        >>> batch = (torch.randn(8, 3), torch.randn(8))
        >>> cb.probe(net, batch).scalars["relative_kernel_change"]
        0.0
    """

    name = "ntk"
    needs_forward = True

    def __init__(
        self,
        chunk_size: int | None = 64,
        forward_fn: ForwardFn | None = None,
        *,
        at_end: bool = True,
        probe_size: int = 64,
        **schedule: Any,
    ) -> None:
        super().__init__(at_end=at_end, probe_size=probe_size, **schedule)
        self.forward_fn = forward_fn
        check_whole_number("NeuralTangentKernel", "chunk_size", chunk_size, none_means="one chunk")
        self.chunk_size = chunk_size
        self.kernel0: Tensor | None = None
        self.weights0: Tensor | None = None

    def check_module(self, pl_module: L.LightningModule) -> None:
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise PluginConfigError(
                f"NeuralTangentKernel differentiates with respect to the trainable parameters, and "
                f"{type(pl_module).__name__} has none: attach it to a module with parameters "
                "that require grad"
            )

    @probes_through_forward_fn
    def probe(self, pl_module: nn.Module, batch: Any) -> ProbeResult:
        x = probe_inputs(batch)
        kernel = empirical_ntk(pl_module, x, chunk_size=self.chunk_size).double().cpu()
        weights = parameter_vector(pl_module).double().cpu()
        if self.kernel0 is None or self.weights0 is None:
            self.kernel0, self.weights0 = kernel, weights
        scalars = {
            "relative_kernel_change": float((kernel - self.kernel0).norm() / self.kernel0.norm()),
            "kernel_distance": kernel_distance(kernel, self.kernel0),
            "relative_weight_change": float((weights - self.weights0).norm() / self.weights0.norm()),
            "kernel_trace": float(kernel.trace()),
        }
        targets = _targets(batch)
        if targets is not None and len(targets) == len(x):
            scalars["label_alignment"] = kernel_target_alignment(kernel, targets.cpu())
        figure = self._figure(scalars)
        return ProbeResult(scalars=scalars, arrays={"kernel": kernel}, figures={"ntk_drift": figure})

    def _figure(self, latest: dict[str, float]) -> Figure:
        fig, (ax,) = fixed_layout_figure(5, 3.2)
        steps = [h["step"] for h in self.history] + [max(self.last_probe_step, 0)]
        for key, label in (
            ("relative_kernel_change", r"$|\Theta_t - \Theta_0| / |\Theta_0|$"),
            ("kernel_distance", "kernel distance to init"),
            ("relative_weight_change", r"$|\theta_t - \theta_0| / |\theta_0|$"),
        ):
            values = [h.get(f"{self.name}/{key}", math.nan) for h in self.history] + [latest[key]]
            ax.plot(steps, values, marker="o", label=label)
        ax.set_xlabel("probe (training step)")
        ax.set_ylabel("change since the first probe")
        ax.legend(fontsize=8)
        return fig

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kernel0": self.kernel0, "weights0": self.weights0}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.kernel0, self.weights0 = state_dict.get("kernel0"), state_dict.get("weights0")


def _targets(batch: Any) -> Tensor | None:
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, dict) and isinstance(batch.get("y"), Tensor):
        return batch["y"]
    return None
