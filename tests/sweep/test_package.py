"""``tdl_lightning.sweep`` as a package: every module's docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

from tdl_lightning import sweep as sweep_module


def test_docstring_examples_run():
    names = [m.name for m in pkgutil.iter_modules(sweep_module.__path__) if m.name != "__main__"]
    modules = [sweep_module] + [importlib.import_module(f"tdl_lightning.sweep.{name}") for name in names]
    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in modules]
    assert sum(r.attempted for r in results) > 10 and all(r.failed == 0 for r in results)
