"""``python -m tdl_lightning.compare RUN_DIR ...``: the same as ``tdl compare RUN_DIR ...``."""

from tdl_lightning.compare.cli import main

if __name__ == "__main__":
    main()
