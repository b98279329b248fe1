"""Errors raised on misuse: the ``tdl`` command prints their message alone, with no traceback.

Every message says what went wrong *and* what to do instead.

Example:
    >>> from tdl_lightning.errors import ConfigError
    >>> try:
    ...     raise ConfigError("depth must be >= 1, got 0: set model.init_args.depth to 1 or more")
    ... except ValueError as err:
    ...     print(err)
    depth must be >= 1, got 0: set model.init_args.depth to 1 or more
"""

from __future__ import annotations

__all__ = ["TDLError", "ConfigError", "DataNotFoundError"]


class TDLError(Exception):
    """Base class of the errors a user can fix by changing a config, a flag or the machine.

    Example:
        >>> issubclass(ConfigError, TDLError)
        True
    """


class ConfigError(TDLError, ValueError):
    """An argument or config value that cannot work (negative width, unknown activation, ...).

    Example:
        >>> ConfigError("width must be >= 1").args[0]
        'width must be >= 1'
    """


class DataNotFoundError(TDLError, FileNotFoundError):
    """A data set that is neither on disk nor downloadable from here.

    Example:
        >>> isinstance(DataNotFoundError("no MNIST in ./data"), FileNotFoundError)
        True
    """
