"""How busy the machine was during a benchmark: CPU time used by other processes, from /proc/stat.

On a shared machine a benchmark's numbers are only as good as the quiet around them; these two
functions put that quiet in the report.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its reaped children)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    own = os.times()
    return machine, own.user + own.system + own.children_user + own.children_system


def other_load(before: tuple[float, float], wall_s: float) -> dict[str, float]:
    """CPU time that processes other than this benchmark's used during the run: the noise indicator
    on a shared machine (approximate: a worker its parent never reaped counts as "other")."""
    machine, own = (now - then for now, then in zip(cpu_seconds(), before, strict=True))
    capacity = wall_s * (os.cpu_count() or 1)
    return {
        "cpu_s_benchmark": round(own, 1),
        "cpu_s_other_processes": round(max(0.0, machine - own), 1),
        "cpu_s_capacity": round(capacity, 1),
    }
