"""Every check of the curvature package, in one place, and the one error they raise.

The pure functions call these checks on their arguments; :class:`~plugins.curvature.HessianEigenvalues`
calls the same ones at construction, so a misuse is caught once, with one message, wherever it is.

Example:
    >>> check_k(2, size=10)
    >>> try:
    ...     check_which("middle")
    ... except CurvatureError as err:
    ...     print(err)
    which='middle': use 'largest' or 'smallest'
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from plugins.checks import PluginConfigError
from plugins.protocol import checked_loss

__all__ = [
    "CurvatureError",
    "check_autograd",
    "check_curvature",
    "check_density",
    "check_distributed",
    "check_eigen",
    "check_k",
    "check_matvecs",
    "check_parameter_names",
    "check_same_dtype_device",
    "check_scalar_loss",
    "check_start",
    "check_which",
]

CURVATURES = ("hessian", "ggn")
FISHER_KINDS = ("empirical", "mc")


class CurvatureError(PluginConfigError):
    """A misuse of a curvature function or callback: the plugins' :class:`~plugins.base.PluginConfigError`
    (so ``tdl`` prints it as one line, as a Lightning ``MisconfigurationException``, and notebook
    code may catch it as a ``ValueError``), named for the curvature package.

    Example:
        >>> isinstance(CurvatureError("k=0: use k >= 1"), ValueError)
        True
    """


def check_which(which: str) -> None:
    """``which`` is ``"largest"`` or ``"smallest"``."""
    if which not in ("largest", "smallest"):
        raise CurvatureError(f"which={which!r}: use 'largest' or 'smallest'")


def check_curvature(curvature: str) -> None:
    """``curvature`` is ``"hessian"`` or ``"ggn"``."""
    if curvature not in CURVATURES:
        raise CurvatureError(f"curvature={curvature!r}: use 'hessian' or 'ggn'")


def check_k(k: Any, size: int | None = None) -> None:
    """``k`` is a whole number in ``[1, size]``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CurvatureError(f"k={k!r}: use a whole number >= 1")
    if size is not None and k > size:
        raise CurvatureError(f"k={k} exceeds the size of the operator ({size} parameters)")


def check_eigen(k: Any, tol: float, max_iter: Any, which: str = "largest", size: int | None = None) -> None:
    """The arguments of a Lanczos eigenvalue run: ``k`` in ``[1, size]``, ``which``, ``tol > 0``,
    ``max_iter >= k``."""
    check_k(k)
    check_which(which)
    if not tol > 0:
        raise CurvatureError(f"tol={tol}: use a positive relative error such as 1e-4")
    check_k(k, size)
    if not isinstance(max_iter, int) or max_iter < k:
        raise CurvatureError(f"max_iter={max_iter!r} must be a whole number at least k={k}")


def check_matvecs(matvecs: Any, what: str = "Hutch++") -> None:
    """A Hutch++-style estimator gets at least 6 products (2 to sketch, 2 to project, 2 to sample)."""
    if not isinstance(matvecs, int) or isinstance(matvecs, bool) or matvecs < 6:
        raise CurvatureError(f"matvecs={matvecs!r}: {what} needs at least 6 products")


def check_density(probes: int, steps: int, points: int, sigma: float) -> None:
    """The arguments of stochastic Lanczos quadrature."""
    if min(probes, steps) < 1 or points < 2 or not sigma > 0:
        raise CurvatureError(
            f"num_probes={probes}, num_steps={steps}, num_points={points}, sigma={sigma}: "
            "use num_probes >= 1, num_steps >= 1, num_points >= 2 and sigma > 0"
        )


def check_autograd() -> None:
    """Curvature products need autograd: refuse ``torch.inference_mode``."""
    if torch.is_inference_mode_enabled():
        raise CurvatureError(
            "the Hessian needs autograd, and this call runs under torch.inference_mode (e.g. a "
            "validation hook): call it from a training hook, or use Trainer(inference_mode=False)"
        )


def check_distributed(distributed: bool) -> None:
    """``distributed=True`` needs an initialised process group."""
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise CurvatureError(
            "distributed=True needs an initialised torch.distributed process group (e.g. under "
            "Trainer(strategy='ddp')); use distributed=False for one process"
        )


def check_parameter_names(wanted: Sequence[str], names: Sequence[str], model: str) -> None:
    """Every wanted name is a trainable parameter's name or a module prefix of one."""
    for name in wanted:
        if not any(n == name or n.startswith(name + ".") for n in names):
            modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n} | set(names))
            close = difflib.get_close_matches(name, modules, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CurvatureError(
                f"parameters={list(wanted)!r}: {name!r} is neither a trainable parameter of {model} nor "
                f"a module holding one{hint}; names look like {names[0]!r}"
            )


def check_same_dtype_device(params: Sequence[Tensor], model: str) -> None:
    """The chosen parameters exist and share one dtype and one device (flat vectors need both)."""
    if not params:
        raise CurvatureError(
            f"{model} has no parameter with requires_grad=True among the chosen ones: choose "
            "trainable parameters (check `parameters=` and requires_grad)"
        )
    dtypes, devices = {p.dtype for p in params}, {p.device for p in params}
    if len(dtypes) > 1 or len(devices) > 1:
        raise CurvatureError(
            f"all chosen parameters must share one dtype and device, got {dtypes} on {devices}: "
            "cast the model with .to(dtype) first"
        )


def check_scalar_loss(loss: Any) -> Tensor:
    """``loss_fn``'s result as a 0-d tensor that depends on the parameters
    (:func:`plugins.protocol.checked_loss`, raising :class:`CurvatureError`)."""
    return checked_loss(loss, error=CurvatureError)


def check_start(start: Tensor, size: int) -> None:
    """A Lanczos start vector: finite, non-zero, one entry per operator row."""
    if start.numel() != size or not bool(torch.isfinite(start).all()) or float(start.norm()) == 0:
        raise CurvatureError(
            f"start must be a finite non-zero vector with one entry per trainable parameter "
            f"({size}), got {start.numel()} entries"
        )
