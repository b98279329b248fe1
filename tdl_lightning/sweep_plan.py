"""Where a sweep's runs go: moved to :mod:`tdl_lightning.sweep.plan`; these names stay importable here.

Example:
    >>> from tdl_lightning.sweep_plan import in_shard
    >>> in_shard(1, (0, 2))
    True
"""

from tdl_lightning.sweep.plan import Slot, in_shard, parse_shard, plan_slots, usable_cpus, visible_gpus

__all__ = ["Slot", "in_shard", "parse_shard", "plan_slots", "usable_cpus", "visible_gpus"]
