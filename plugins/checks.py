"""One validation path for the plugins: the one error family of their misuse, and the checks that
a pure function and its callback share.

A pure function calls a check with ``owner=""`` (its message starts ``argument=value: ...``); the
callback calls the same check at construction with its class name (``Owner(argument=value): ...``).
Either way the error is a :class:`PluginConfigError`: a Lightning ``MisconfigurationException``,
which ``tdl`` prints as one line, and a ``ValueError``, which notebook code catches.

Example:
    >>> check_whole_number("JacobianSpectrum", "every_n_steps", 50, none_means="never")
    >>> try:
    ...     check_whole_number("", "chunk_size", 0, none_means="all at once")
    ... except ValueError as err:
    ...     print(err)
    chunk_size=0: use a whole number >= 1, or None (all at once)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException

__all__ = ["PROBE_MOMENTS", "PluginConfigError", "check_moments", "check_whole_number", "misuse"]

PROBE_MOMENTS = ("init", "step", "epoch", "end")  # the values of DiagnosticCallback.probe_when


class PluginConfigError(MisconfigurationException, ValueError):
    """A misuse of a plugin or of one of its pure functions: a bad argument, or a module that lacks
    what the plugin needs.

    It is a Lightning ``MisconfigurationException`` (``tdl`` prints it as one line, as Lightning's
    users expect) and a ``ValueError`` (what notebook code that calls a pure function catches).

    Example:
        >>> err = PluginConfigError("Demo(k=0): use k >= 1")
        >>> isinstance(err, ValueError), isinstance(err, MisconfigurationException)
        (True, True)
    """


def misuse(owner: str, argument: str, value: Any, fix: str) -> PluginConfigError:
    """The error for a bad ``argument``: ``"Owner(argument=value): fix"`` for a callback's argument,
    ``"argument=value: fix"`` for a pure function's (``owner=""``), so that one check serves both.

    Example:
        >>> str(misuse("InformationPlane", "bins", 0, "use a whole number >= 1"))
        'InformationPlane(bins=0): use a whole number >= 1'
        >>> str(misuse("", "bins", 0, "use a whole number >= 1"))
        'bins=0: use a whole number >= 1'
    """
    given = f"{argument}={value!r}"
    return PluginConfigError(f"{owner}({given}): {fix}" if owner else f"{given}: {fix}")


def check_whole_number(
    owner: str, argument: str, value: Any, minimum: int = 1, none_means: str | None = None
) -> None:
    """``value`` is a whole number ``>= minimum`` (or ``None``, where ``none_means`` says what that
    means); else :func:`misuse`'s error. The one check of counts such as ``chunk_size`` or ``bins``.

    Example:
        >>> check_whole_number("NeuralTangentKernel", "chunk_size", None, none_means="all at once")
        >>> check_whole_number("", "bins", 0)
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: bins=0: use a whole number >= 1
    """
    if value is None and none_means is not None:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return
    fix = f"use a whole number >= {minimum}" + (f", or None ({none_means})" if none_means is not None else "")
    raise misuse(owner, argument, value, fix)


def check_moments(owner: str, argument: str, moments: Sequence[str] | None) -> list[str]:
    """``moments`` as a list, each one a probe moment (``"init"``, ``"step"``, ``"epoch"``, ``"end"``).

    The one check of the ``*_at`` arguments that name the probes at which a plugin does something
    costly (``HessianEigenvalues(density_at=...)``, ``FilterVisualisation(maximise_at=...)``).

    Example:
        >>> check_moments("Demo", "density_at", ("init", "end"))
        ['init', 'end']
        >>> check_moments("Demo", "density_at", ["sometimes"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: Demo(density_at=['sometimes']): ['sometimes'] unknown; ...
    """
    chosen = [] if moments is None else [moments] if isinstance(moments, str) else list(moments)
    unknown = sorted(set(chosen) - set(PROBE_MOMENTS))
    if unknown:
        raise misuse(owner, argument, moments, f"{unknown} unknown; choose any of {str(PROBE_MOMENTS)[1:-1]}")
    return chosen
