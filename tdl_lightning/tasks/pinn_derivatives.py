"""Forward-mode (Taylor-mode) derivatives of a tanh MLP: a PINN residual without nested autograd.

:func:`mlp_derivatives` carries an MLP's first and second directional derivatives forward with its
values, so that the PDE residual and its gradient in the weights need one forward and one ordinary
backward pass; :func:`taylor_layers` says whether a network is an MLP it can run, and
:func:`is_affine_in_output` whether a problem's hard constraint ``g(x) + D(x) n`` lets the product rule
carry the derivatives through it.

Example:
    >>> net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    >>> x = torch.rand(3, 1, dtype=torch.float64)
    >>> y, (dy,), _ = mlp_derivatives(taylor_layers(net), x, torch.eye(1, dtype=torch.float64))
    >>> bool(torch.allclose(y, net(x)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tdl_lightning.data.pde import PDEProblem, partial_derivatives

__all__ = ["TaylorResidual", "is_affine_in_output", "mlp_derivatives", "taylor_layers"]


def taylor_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers of ``model`` as a flat list, if it is an MLP that :func:`mlp_derivatives` can run.

    Supported: (nested) ``nn.Sequential`` of ``nn.Linear``, ``nn.Tanh``, ``nn.Flatten`` and
    ``nn.Identity``, such as ``DeepMLP`` with ``activation="tanh"`` or ``"linear"``; anything else
    gives ``None`` (the PINN then takes derivatives by autograd).

    Example:
        >>> from tdl_lightning.models import DeepMLP
        >>> len(taylor_layers(DeepMLP(input_dim=2, width=4, depth=2, output_dim=1)))
        5
        >>> taylor_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU())) is None
        True
    """
    layers: list[nn.Module] = []
    for module in model if isinstance(model, nn.Sequential) else [model]:
        if isinstance(module, nn.Sequential):
            inner = taylor_layers(module)
            if inner is None:
                return None
            layers += inner
        elif isinstance(module, (nn.Linear, nn.Tanh)):
            layers.append(module)
        elif not isinstance(module, (nn.Flatten, nn.Identity)):
            return None
    return layers if any(isinstance(m, nn.Linear) for m in layers) else None


def mlp_derivatives(
    layers: list[nn.Module], h: Tensor, tangents: Tensor, pairs: Sequence[tuple[int, int]] = ()
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """An MLP's output with its first and second directional derivatives, in one forward pass.

    Forward-mode (Taylor-mode) propagation through ``Linear`` and ``tanh`` layers: with
    ``z = W h + b``, ``a = tanh(z)``, ``s = 1 - a^2``, the first derivative along a direction is
    ``a' = s z'`` and the second along two directions ``a'' = s z'' - 2 a (s z'_i) z'_j``. ``tangents``
    (``(k, d_in)``) are the directions of the first derivatives (e.g. unit vectors divided by an
    input scale); ``pairs`` index two of them for each second derivative. The result is differentiable
    in the parameters by ordinary (first-order) backpropagation, with fewer operations than the
    nested autograd graph of :func:`~tdl_lightning.data.pde.partial_derivatives`; no
    ``create_graph`` is needed.

    Returns ``(y, [dy_k], [d2y_pair])``, each of shape ``(N, d_out)``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        >>> x = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
        >>> y, (y_x, y_t), (y_xx,) = mlp_derivatives(list(net), x, torch.eye(2).double(), [(0, 0)])
        >>> g = torch.autograd.grad(net(x).sum(), x, create_graph=True)[0]
        >>> g_xx = torch.autograd.grad(g[:, 0].sum(), x)[0][:, 0:1]
        >>> bool(torch.allclose(y_t, g[:, 1:]) and torch.allclose(y_xx, g_xx))
        True
    """
    value = h
    firsts: list[Tensor] = list(tangents.to(h.dtype))  # (d,) rows: constant over the points at first
    seconds: list[Tensor | None] = [None] * len(pairs)  # None: identically zero so far
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight_t = layer.weight.T
            value = value @ weight_t if layer.bias is None else torch.addmm(layer.bias, value, weight_t)
            firsts = [f @ weight_t for f in firsts]
            seconds = [None if s is None else s @ weight_t for s in seconds]
        else:  # tanh
            value = torch.tanh(value)
            slope = 1.0 - value * value
            new_firsts = [slope * f for f in firsts]
            seconds = [
                (0.0 if s is None else slope * s) - 2.0 * value * new_firsts[i] * firsts[j]
                for s, (i, j) in zip(seconds, pairs, strict=True)
            ]
            firsts = new_firsts
    firsts = [f.expand_as(value) for f in firsts]
    seconds = [torch.zeros_like(value) if s is None else s for s in seconds]
    return value, firsts, seconds  # type: ignore[return-value]


def is_affine_in_output(problem: PDEProblem, dtype: torch.dtype) -> bool:
    """Whether ``problem.hard_constraint(x, n)`` is ``g(x) + D(x) n`` (checked at a few points).

    Example:
        >>> from tdl_lightning.data.pde import Burgers
        >>> is_affine_in_output(Burgers(), torch.float64)
        True
    """
    x = problem.sample_interior(8, "uniform", seed=0).to(dtype)
    zero = torch.zeros(8, 1, dtype=dtype)
    n = torch.linspace(-2.0, 3.0, 8, dtype=dtype).unsqueeze(1)
    with torch.no_grad():
        g = problem.hard_constraint(x, zero)
        slope = problem.hard_constraint(x, zero + 1.0) - g
        return bool(torch.allclose(problem.hard_constraint(x, n), g + slope * n, rtol=1e-6, atol=1e-9))


class TaylorResidual:
    """A problem's PDE residual from :func:`mlp_derivatives`, through a hard constraint if there is one.

    For ``constraint="hard"`` the network's ``n`` becomes ``u = g(x) + D(x) n`` and the product rule
    carries ``n``'s derivatives to ``u``'s; ``g``, ``D`` and their derivatives involve no weights, so
    :meth:`constraint_parts` computes them once per point set (by autograd) and keeps them while the
    same points, unchanged in place, come back.

    Args:
        layers: the MLP's layers (:func:`taylor_layers`).
        problem: the PDE problem.
        constraint: ``soft`` or ``hard``.

    Example:
        >>> from tdl_lightning.data.pde import Heat1D
        >>> net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
        >>> taylor = TaylorResidual(taylor_layers(net), Heat1D(), "soft")
        >>> x = torch.rand(5, 2, dtype=torch.float64)
        >>> taylor.residual(x, x, taylor.tangents(torch.ones(2, dtype=torch.float64)), {}).shape
        torch.Size([5, 1])
    """

    def __init__(self, layers: list[nn.Module], problem: PDEProblem, constraint: str) -> None:
        self.layers, self.problem, self.constraint = layers, problem, constraint
        # the first-derivative directions and the pairs of second ones
        letters = {c for name in problem.derivatives for c in name}
        self.first_names = [c for c in problem.coords if c in letters]
        position = {c: k for k, c in enumerate(self.first_names)}
        self.pairs = [(position[n[0]], position[n[1]]) for n in problem.derivatives if len(n) == 2]
        self.pair_names = [self.first_names[i] + self.first_names[j] for i, j in self.pairs]  # e.g. "xx"
        self.cache: tuple[Tensor | None, int, dict[str, Tensor]] = (None, -1, {})

    def tangents(self, scale: Tensor) -> Tensor:
        """The directions of the first derivatives, ``(k, d_in)``: the network input's rate of change
        along each coordinate used (``scale[i]``, e.g. one over the domain's half-width)."""
        rows = [self.problem.coords.index(c) for c in self.first_names]
        return torch.diag(scale)[rows]

    def residual(self, x: Tensor, h: Tensor, tangents: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """The residual at the points ``x`` whose network input is ``h``: pure tensor maths (what a
        PINN's ``compile=True`` compiles); ``parts`` from :meth:`constraint_parts` (hard constraint)."""
        u, d = self.derivatives(h, tangents, parts)
        return self.problem.residual(x, u, d)

    def derivatives(
        self, h: Tensor, tangents: Tensor, parts: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``u`` and its partial derivatives named in ``problem.derivatives``."""
        n, firsts, seconds = mlp_derivatives(self.layers, h, tangents, self.pairs)
        dn = dict(zip(self.first_names, firsts, strict=True))
        dn.update(zip(self.pair_names, seconds, strict=True))
        if self.constraint == "soft":
            return n, {name: dn[name] for name in self.problem.derivatives}
        g, D = parts["g"], parts["D"]
        du: dict[str, Tensor] = {}
        for name in self.problem.derivatives:
            if len(name) == 1:
                du[name] = parts["g" + name] + parts["D" + name] * n + D * dn[name]
            else:
                i, j = name[0], name[1]
                du[name] = (
                    parts["g" + name]
                    + parts["D" + name] * n
                    + parts["D" + i] * dn[j]
                    + parts["D" + j] * dn[i]
                    + D * dn[name]
                )
        return g + D * n, du

    def constraint_parts(self, key: Tensor, x: Tensor) -> dict[str, Tensor]:
        """``g``, ``D`` of the hard constraint ``u = g + D n`` and their derivatives at ``x``, cached
        while ``key`` (the batch's points tensor) comes back unchanged."""
        cached_key, version, parts = self.cache
        if cached_key is key and version == key._version:
            return parts
        problem = self.problem
        names = self.first_names + self.pair_names
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            zero = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
            g = problem.hard_constraint(xg, zero)
            D = problem.hard_constraint(xg, zero + 1.0) - g
            parts = {"g": g, "D": D}
            for label, y in (("g", g), ("D", D)):
                for name, value in partial_derivatives(y, xg, names, problem.coords).items():
                    parts[label + name] = value
        parts = {k: v.detach() for k, v in parts.items()}
        self.cache = (key, key._version, parts)  # an in-place change of the points invalidates it
        return parts
