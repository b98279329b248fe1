"""The ``tdl`` command.

``tdl fit|validate|test|predict`` run Lightning through :class:`~tdl_lightning.lightning_cli.TDLCLI`
(``tdl fit --config experiments/lenet_mnist.yaml``); ``tdl compare``, ``tdl sweep`` and ``tdl connect``
compare runs, run parameter studies locally and connect two solutions; ``tdl --help`` lists them all.
This module stays light: Lightning is imported only by the
subcommands that train, so the tools start at once.

Example:
    >>> main(["compare", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import warnings

from tdl_lightning.errors import TDLError

__all__ = ["COMMANDS", "main", "overview", "user_error"]

_MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
_WANDB_ERRORS = ("CommError", "UsageError", "AuthenticationError", "AuthenticationRequiredError")
_TOOLS = {"compare": "tdl_lightning.compare", "sweep": "tdl_lightning.sweep"}
_TOOLS["connect"] = "tdl_lightning.connect"  # mode connectivity of two runs
# every subcommand, one line each: what `tdl`, `tdl -h` and `tdl --help` print (Lightning not imported)
COMMANDS = {
    "fit": "train a model: tdl fit --config experiments/lenet_mnist.yaml (continue one: --resume RUN_DIR)",
    "validate": "evaluate a model on the validation split (--ckpt_path CHECKPOINT)",
    "test": "evaluate a model on the test split (--ckpt_path CHECKPOINT)",
    "predict": "run a model on the data module's predict split (--ckpt_path CHECKPOINT)",
    "compare": "compare local runs: the config keys that differ, final and best metrics, their curves",
    "sweep": "run a W&B sweep config locally, one `tdl fit` per point (K at once with --parallel K)",
    "connect": "mode connectivity of two runs: the loss along the straight line and a trained Bezier curve",
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``tdl`` command; misuse errors are printed without a traceback.

    Set ``TDL_DEBUG=1`` to see the full traceback of such an error.

    Example:
        >>> main(["fit", "--config", "experiments/lenet_mnist.yaml"])  # doctest: +SKIP
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    try:
        if argv and argv[0] in _TOOLS:
            importlib.import_module(_TOOLS[argv[0]]).main(argv[1:])
            return
        warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden")
        _preload_wandb_launch()
        from tdl_lightning.lightning_cli import TDLCLI
        from tdl_lightning.runs.quiet import quiet_output

        quiet_output(subcommand=argv[0])

        TDLCLI(args=None if args is None else argv)
    except Exception as err:
        cause = user_error(err)
        if cause is None or os.environ.get("TDL_DEBUG"):
            raise
        print(f"tdl: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def overview() -> str:
    """What ``tdl --help`` prints: every subcommand, one line each.

    Example:
        >>> print(overview().splitlines()[0])
        usage: tdl <command> [options]
    """
    lines = ["usage: tdl <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {what}" for name, what in COMMANDS.items()]
    lines += [
        "",
        "`tdl <command> --help` lists a command's options. TDL_DEBUG=1 shows tracebacks and the",
        "output of Lightning and W&B that tdl hides; docs/runs.md says where a run's files go.",
    ]
    return "\n".join(lines)


def _preload_wandb_launch() -> None:
    """Import the part of W&B that ``wandb.init`` loads on every run now, before Lightning and torch.

    ``wandb.init`` imports ``wandb.sdk.launch`` (to look for staged launch inputs), whose pydantic
    models each walk the whole call stack and ``sys.modules`` for their docstrings: deep inside
    ``Trainer.fit`` with torch loaded, that import took 0.45 s on the idle 2-core machine and 1.9 s
    at load 3, against 0.13-0.29 s here. Skipped when W&B is disabled or not installed.
    """
    if os.environ.get("WANDB_MODE") == "disabled":
        return
    with contextlib.suppress(ImportError):  # no wandb, or one without that module: nothing to gain
        import wandb.sdk.launch.inputs.internal  # noqa: F401


def user_error(err: BaseException) -> BaseException | None:
    """The misuse error behind ``err``: a ``TDLError``, Lightning's ``MisconfigurationException``, a
    ``ValueError`` a plugin raised itself (named by the plugin), a full disk, W&B's usage errors.

    Config parsing wraps errors raised in ``__init__`` (jsonargparse's "Does not validate against
    any of the Union subtypes"), so the chain of causes is searched.

    Example:
        >>> from tdl_lightning.errors import ConfigError
        >>> try:
        ...     try:
        ...         raise ConfigError("width must be >= 1")
        ...     except ConfigError as inner:
        ...         raise ValueError("Does not validate") from inner
        ... except ValueError as outer:
        ...     print(user_error(outer))
        width must be >= 1
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Lightning's exception is matched by name: importing it would load all of Lightning
        if isinstance(current, TDLError) or any(
            c.__name__ == "MisconfigurationException" for c in type(current).__mro__
        ):
            return current
        if isinstance(current, OSError) and current.errno in _MACHINE_ERRNOS:
            return current  # a full disk, a quota, a read-only file system: the message names the file
        if type(current).__module__.startswith("wandb") and type(current).__name__ in _WANDB_ERRORS:
            return _one_line_wandb_error(current)
        if isinstance(current, ValueError):
            plugin = _plugin_that_raised(current)
            if plugin is not None:
                return current if str(current).startswith(plugin) else TDLError(f"{plugin}: {current}")
        pending += [current.__cause__, current.__context__]
    return None


def _one_line_wandb_error(err: BaseException) -> TDLError:
    """W&B's error (often several lines: the cause, then advice on ``init_timeout``) as one line.

    Example:
        >>> class CommError(Exception): ...
        >>> line = str(_one_line_wandb_error(CommError("Timed out: connection refused\\nConsider ...")))
        >>> line.startswith("W&B: Timed out: connection refused: check WANDB_BASE_URL"), "\\n" in line
        (True, False)
    """
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if type(err).__name__ == "CommError":
        first += (
            ": check WANDB_BASE_URL and the network, or log offline with WANDB_MODE=offline "
            "(then `wandb sync` the run)"
        )
    return TDLError(f"W&B: {first}")


def _plugin_that_raised(err: BaseException) -> str | None:
    """The name of the plugin (a Lightning callback) whose own code raised ``err``, or ``None``.

    A ``ValueError`` is a misuse error when a plugin raised it itself: in a method of a callback (a
    plugin of the user's own too) or in a function of the ``plugins`` package. One raised deeper,
    inside torch or numpy, is a failure with a traceback.

    Example:
        >>> _plugin_that_raised(ValueError("no traceback")) is None
        True
    """
    lightning = sys.modules.get("lightning.pytorch")
    callback_type = getattr(lightning, "Callback", None)
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or callback_type is None:
        return None
    callbacks = [f.f_locals.get("self") for f in frames]
    names = [type(c).__name__ for c in callbacks if isinstance(c, callback_type)]
    innermost = frames[-1]
    in_plugins = str(innermost.f_globals.get("__name__", "")).split(".")[0] == "plugins"
    if in_plugins or isinstance(callbacks[-1], callback_type):
        return names[-1] if names else str(innermost.f_globals["__name__"])
    return None


if __name__ == "__main__":
    main()
