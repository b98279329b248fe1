"""Where a sweep's runs go: GPU and CPU slots on one host, and shares of the points across hosts.

``tdl sweep --parallel K`` runs K points at once, each in a *slot*: its own GPU (round robin over
the visible ones, ``CUDA_VISIBLE_DEVICES`` set to one index; more slots than GPUs share them) and its
own share of the CPUs this process may use (``os.sched_getaffinity``, which honours SLURM's and
``taskset``'s cpusets, not ``os.cpu_count``): the run is pinned to them and ``OMP_NUM_THREADS`` is
their number. ``tdl sweep --shard i/N`` runs the ``i``-th (from 0) of ``N`` shares of the points,
so the tasks of a SLURM job array (``experiments/slurm/tdl_sweep.sbatch``) run a sweep across
nodes, every point once; a point that finished is skipped on a rerun as always.

Example:
    >>> for slot in plan_slots(3, gpus=["0", "1"], cpus=[0, 1, 2, 3, 4, 5]):
    ...     print(slot.describe())
    CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=2 cpus=0-1
    CUDA_VISIBLE_DEVICES=1 OMP_NUM_THREADS=2 cpus=2-3
    CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=2 cpus=4-5
    >>> in_shard(5, parse_shard("1/2")), in_shard(6, parse_shard("1/2"))
    (False, True)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tdl_lightning.errors import ConfigError

__all__ = ["Slot", "in_shard", "parse_shard", "plan_slots", "usable_cpus", "visible_gpus"]


@dataclass(frozen=True)
class Slot:
    """One place a sweep's run goes: a GPU (``None``: no GPU) and the CPUs it is pinned to.

    Example:
        >>> Slot(0, "1", (2, 3)).env({"PATH": "/bin"})["CUDA_VISIBLE_DEVICES"]
        '1'
    """

    index: int
    gpu: str | None
    cpus: tuple[int, ...]

    @property
    def threads(self) -> int:
        """``OMP_NUM_THREADS`` of the slot: one per CPU."""
        return max(1, len(self.cpus))

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with this slot's ``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS`` (an
        ``OMP_NUM_THREADS`` already set by the user is kept)."""
        env = dict(base)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        return env

    def describe(self) -> str:
        """``CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=2 cpus=0-1``, as ``--dry-run`` shows it."""
        gpu = f"CUDA_VISIBLE_DEVICES={self.gpu} " if self.gpu is not None else ""
        return f"{gpu}OMP_NUM_THREADS={self.threads} cpus={_ranges(self.cpus)}"


def _ranges(cpus: Sequence[int]) -> str:
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        start = cpu if start is None else start
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(cpu) if cpu == start else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a run may use: ``CUDA_VISIBLE_DEVICES``'s entries if it is set, else every CUDA
    device torch sees (none without CUDA).

    Example:
        >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}), visible_gpus({"CUDA_VISIBLE_DEVICES": ""})
        (['2', '3'], [])
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (``os.sched_getaffinity``: a SLURM job's cpuset, not the host's).

    Example:
        >>> len(usable_cpus()) >= 1
        True
    """
    return sorted(os.sched_getaffinity(0))


def plan_slots(
    parallel: int, gpus: Sequence[str] | None = None, cpus: Sequence[int] | None = None
) -> list[Slot]:
    """``parallel`` slots: slot ``k`` gets GPU ``gpus[k % len(gpus)]`` (several slots per GPU when
    ``parallel`` exceeds the GPUs) and the ``k``-th contiguous share of ``cpus`` (CPUs are shared
    round robin when there are fewer than slots).

    Args:
        parallel: runs at once.
        gpus: the GPUs to spread over (default :func:`visible_gpus`; empty: CPU only).
        cpus: the CPUs to share (default :func:`usable_cpus`).

    Example:
        >>> [s.describe() for s in plan_slots(2, gpus=[], cpus=[0, 1, 2])]
        ['OMP_NUM_THREADS=2 cpus=0-1', 'OMP_NUM_THREADS=1 cpus=2']
    """
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    gpus = visible_gpus() if gpus is None else list(gpus)
    cpus = usable_cpus() if cpus is None else sorted(cpus)
    base, extra = divmod(len(cpus), parallel)
    slots, start = [], 0
    for k in range(parallel):
        size = base + (k < extra)
        share = tuple(cpus[start : start + size]) if size else (cpus[k % len(cpus)],)
        start += size
        slots.append(Slot(k, gpus[k % len(gpus)] if gpus else None, share))
    return slots


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (``0 <= i < N``) as ``(i, N)``; e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``.

    Example:
        >>> parse_shard("0/4")
        (0, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(
            f"--shard {text!r}: write i/N with 0 <= i < N (the i-th of N shares, from 0), e.g. "
            "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-<N-1>"
        )
    return int(match[1]), int(match[2])


def in_shard(index: int, shard: tuple[int, int] | None) -> bool:
    """Whether the sweep's ``index``-th point (from 1, in the sweep's order) is in ``shard``:
    points are dealt to the ``N`` shares in turn, so shares differ by at most one point.

    Example:
        >>> [i for i in range(1, 8) if in_shard(i, (0, 3))]
        [1, 4, 7]
    """
    return shard is None or (index - 1) % shard[1] == shard[0]
