"""Pinning a serving process, every thread it has and every thread it starts, to one CPU."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def pin_to_one_cpu(index: int) -> int | None:
    """Pins this process to the `index`-th CPU it may run on (round robin over the allowed set); returns that CPU,
    or None where the platform has no CPU affinity.

    Why: a call through this server hands the GIL between the event loop, gRPC's threads and the store's threads
    several times; on a virtual machine each hand-over to a thread on the other core costs a cross-CPU wake-up
    and cold caches. Pinned, the same Decide took 4-8% less server CPU in the medians of alternating runs, a
    health check 11-16% less (README "Server CPU per Decide"). The price: the process's threads no longer spread
    over idle cores, so pin only where every core has its own worker (`--workers` equal to the cores, the default)
    and no other busy process shares them: beside PostgreSQL and a load generator on two cores, pinned was far
    worse (the PostgreSQL benchmark's p99 1,486 ms against 119 ms unpinned).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    # Linux applies affinity per thread: each thread already running is pinned by its id, later ones inherit.
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread in threads:
        try:
            os.sched_setaffinity(thread, {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    log.info("pinned_to_cpu", cpu=cpu, allowed=len(allowed))
    return cpu
