"""Where sweep runs go: a GPU and a CPU share per slot (two fake GPUs), and shards of the points."""

from __future__ import annotations

import sys

import pytest

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep import run_sweep
from tdl_lightning.sweep.plan import in_shard, parse_shard, plan_slots, usable_cpus, visible_gpus
from tests.sweep.helpers import FAKE_FIT, write_sweep

# the fake fit also prints what its slot gave it
SLOT_FIT = (
    FAKE_FIT
    + """
print("slot:", os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ["OMP_NUM_THREADS"],
      ",".join(map(str, sorted(os.sched_getaffinity(0)))), flush=True)
"""
)


def test_slots_go_round_robin_over_the_gpus_and_share_the_cpus():
    slots = plan_slots(4, gpus=["0", "1"], cpus=list(range(8)))
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]  # two slots per GPU
    assert [s.cpus for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [s.threads for s in slots] == [2, 2, 2, 2]
    uneven = plan_slots(3, gpus=[], cpus=[4, 5, 9, 10])  # a cpuset need not start at 0 nor be contiguous
    assert [s.cpus for s in uneven] == [(4, 5), (9,), (10,)] and all(s.gpu is None for s in uneven)
    assert [s.cpus for s in plan_slots(3, gpus=[], cpus=[0])] == [(0,), (0,), (0,)]


def test_visible_gpus_and_cpus_follow_the_environment_not_the_host():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert usable_cpus() == sorted(__import__("os").sched_getaffinity(0))


def test_dry_run_shows_each_slot_with_two_fake_gpus(in_tmp, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write_sweep(in_tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.5, 1.0, 2.0])
    lines: list[str] = []
    run_sweep(path, parallel=2, dry_run=True, echo=lines.append)
    cpus = usable_cpus()
    first, second = (f"cpus={c}" for c in _halves(cpus))
    assert any(
        line.startswith("slot 1/2: CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=") and first in line
        for line in lines
    )
    assert any(
        line.startswith("slot 2/2: CUDA_VISIBLE_DEVICES=1 OMP_NUM_THREADS=") and second in line
        for line in lines
    )
    assert not (in_tmp / "runs" / "tiny_sweep" / ".sweep-logs").exists()


def _halves(cpus: list[int]) -> list[str]:
    slots = plan_slots(2, gpus=[], cpus=cpus)
    return [s.describe().split("cpus=")[1] for s in slots]


def test_runs_get_their_slot_gpu_threads_and_cpus(in_tmp, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (in_tmp / "fake_fit.py").write_text(SLOT_FIT)
    path = write_sweep(in_tmp, [sys.executable, "fake_fit.py", "${args}"], [0.5, 1.0, 2.0])
    report = run_sweep(path, parallel=2, echo=lambda s: None)
    assert [r.status for r in report.runs] == ["done"] * 3
    seen = [
        next(line for line in r.log.read_text().splitlines() if line.startswith("slot:")).split()[1:]
        for r in report.runs
    ]
    slots = plan_slots(2, gpus=["0", "1"])
    for (gpu, threads, cpus), slot in zip(seen[:2], slots, strict=True):  # the first two start at once
        assert (gpu, int(threads), cpus) == (slot.gpu, slot.threads, ",".join(map(str, slot.cpus)))
    assert seen[2][0] in ("0", "1")


def test_shards_cover_every_point_once(in_tmp):
    path = write_sweep(
        in_tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.1 * i for i in range(7)]
    )
    indices = []
    for i in range(3):
        lines: list[str] = []
        report = run_sweep(path, dry_run=True, shard=(i, 3), echo=lines.append)
        indices += [run.index for run in report.runs]
        assert f"7 runs, share {i}/3: {len(report.runs)} of them" in lines[0]
    assert sorted(indices) == list(range(1, 8))
    assert all(in_shard(i, None) for i in range(1, 8))


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b"])
def test_a_bad_shard_says_how_to_write_it(text):
    with pytest.raises(ConfigError, match="write i/N with 0 <= i < N"):
        parse_shard(text)
