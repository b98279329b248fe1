"""The ``tdl_lightning.compare`` package: its docstring examples, its public names, what it imports."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import tdl_lightning.compare as compare_package

READERS = ("tdl_lightning.runs.reading", "tdl_lightning.runs.record", "tdl_lightning.runs.wandb_file")
PUBLIC = (
    "Comparison",
    "RunError",
    "RunProblem",
    "RunRecord",
    "compare_runs",
    "find_run_dirs",
    "flatten_config",
    "higher_is_better",
    "load_run",
    "main",
    "plot_comparison",
    "read_wandb_run",
)


def test_docstring_examples_run():
    names = [f"{compare_package.__name__}.{m.name}" for m in pkgutil.iter_modules(compare_package.__path__)]
    modules = [
        compare_package,
        *map(importlib.import_module, [n for n in names if not n.endswith("__main__")]),
    ]
    results = [
        doctest.testmod(m, optionflags=doctest.ELLIPSIS)
        for m in [*modules, *map(importlib.import_module, READERS)]
    ]
    assert sum(r.attempted for r in results) > 15 and sum(r.failed for r in results) == 0


def test_every_public_name_is_importable_from_the_package():
    assert sorted(compare_package.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(compare_package, name).__doc__, name


def test_sweep_reads_runs_without_compare_and_neither_loads_lightning():
    code = (
        "import sys, tdl_lightning.sweep; a = 'tdl_lightning.compare' in sys.modules; "
        "import tdl_lightning.compare; "
        "print(a, [m for m in ('lightning', 'torch', 'wandb') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False []", "tdl compare and tdl sweep start at once"


def test_python_m_runs_the_command():
    help_text = subprocess.run(
        [sys.executable, "-m", "tdl_lightning.compare", "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: tdl compare")
