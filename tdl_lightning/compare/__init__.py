"""``tdl compare``: what differs between local runs, how their metrics ended, and their curves.

Hand-written rather than W&B's UI because that needs a server, an account and ``wandb sync``:
this reads the local run files, offline. Each run directory (``runs/<experiment>/<run id>/``) is
read through :mod:`tdl_lightning.runs.reading` from the project's own files (``config.yaml``,
``summary.json``, ``metrics.csv``, ``plugins/*/history.json``) and, where those lack something,
from the offline W&B run file beside them (``wandb/offline-run-*/run-<id>.wandb``, read with
``wandb leet inspect``). A folder of runs (``runs/edge_of_chaos_sweep``) is expanded to the runs
inside it. A run that cannot be read (missing, not a run, killed before it finished) is named
with the reason, and the others are still compared.

    tdl compare runs/edge_of_chaos_sweep --metric val/acc --output edge_of_chaos.png
    tdl compare runs/lenet_mnist/20260101-120000-ab12 runs/lenet_mnist/20260101-130000-cd34 --json

The modules: :mod:`~tdl_lightning.compare.comparison` (what differs, which metrics),
:mod:`~tdl_lightning.compare.twins` (theory and ``_step`` twins), :mod:`~tdl_lightning.compare.table`,
:mod:`~tdl_lightning.compare.panels` and :mod:`~tdl_lightning.compare.figure` (the figure),
:mod:`~tdl_lightning.compare.cli` (the command line).

Example:
    >>> comparison = compare_runs(["runs/no_such_experiment"])
    >>> comparison.problems[0].reason.split(":")[0]
    'no such file or directory'
"""

from tdl_lightning.compare.cli import main
from tdl_lightning.compare.comparison import Comparison, compare_runs
from tdl_lightning.compare.figure import plot_comparison
from tdl_lightning.runs.reading import RunError, RunProblem, find_run_dirs, flatten_config, load_run
from tdl_lightning.runs.record import RunRecord, higher_is_better
from tdl_lightning.runs.wandb_file import read_wandb_run

__all__ = [
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
]
