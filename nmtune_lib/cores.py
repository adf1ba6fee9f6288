"""The CPU cores this process may run on, which every "all cores" default in the package means."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores in this process's affinity mask (``taskset``, a Slurm or container cpuset, a pinned test worker), or
    every core where the platform keeps no mask (macOS, Windows). ``os.cpu_count()`` counts the machine's cores even
    when the process may use fewer, and torch threads beyond the mask wait on each other."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
