"""Quiet output: the tdl report is the last thing a run prints; ``TDL_DEBUG=1`` shows everything.

What is hidden: Lightning's "Tip: ... litlogger / litmodels" adverts, warnings the project knows to
be harmless here (torch's ``_pytree`` deprecation inside Lightning, W&B's ``anonymous`` setting,
the non-empty checkpoint folder of a resumed run, the ``weights_only`` note of a run's own
checkpoints) and the history and summary W&B prints when a run ends.

Example:
    >>> quiet_output(environ={"TDL_DEBUG": "1"})
    False
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

__all__ = ["quiet_output"]

_HIDDEN_LOGS = ("💡 Tip:", "`weights_only` was not set")
_HIDDEN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r".*Checkpoint directory .* exists and is not empty",
    r".*The anonymous setting has no effect",
)


class _HideKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(_HIDDEN_LOGS)


def quiet_output(environ: Mapping[str, str] | None = None) -> bool:
    """Hide the known noise of Lightning and W&B (not under ``TDL_DEBUG``); return whether it did."""
    environ = os.environ if environ is None else environ
    if environ.get("TDL_DEBUG"):
        return False
    for message in _HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    noise = _HideKnownNoise()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.addFilter(noise)
        for handler in logger.handlers:
            handler.addFilter(noise)
    os.environ.setdefault("WANDB_QUIET", "true")  # no history/summary lines after the report
    return True
