"""What both benchmarks report the same way: the machine they ran on and nearest-rank percentiles."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from collections.abc import Sequence
from typing import Any


def rank(ordered: Sequence[int | float], percent: float) -> int | float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(percent / 100.0 * len(ordered)) - 1)]


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """CPU model, cores, Python and the versions of `packages`, so figures can be compared across runs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
    for package in packages:
        info[package.replace("-", "_")] = importlib.metadata.version(package)
    return info


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
