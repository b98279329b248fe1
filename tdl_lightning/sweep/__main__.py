"""``python -m tdl_lightning.sweep CONFIG ...``: the same as ``tdl sweep CONFIG ...``."""

from __future__ import annotations

import sys

from tdl_lightning.errors import TDLError
from tdl_lightning.sweep.cli import main

if __name__ == "__main__":
    try:
        main()
    except TDLError as err:
        print(f"tdl sweep: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
