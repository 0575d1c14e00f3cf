"""What both benchmarks report the same way: the machine, latency distributions and target verdicts."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Stats:
    """A latency distribution, in the unit `scale` nanoseconds make (1e3: microseconds, 1e6: milliseconds)."""

    count: int
    median: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples_ns: Sequence[int | float], scale: float) -> Stats:
        if not samples_ns:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        ordered = sorted(samples_ns)
        return cls(
            count=len(ordered),
            median=statistics.median(ordered) / scale,
            p90=rank(ordered, 90) / scale,
            p99=rank(ordered, 99) / scale,
            max=ordered[-1] / scale,
            mean=statistics.fmean(ordered) / scale,
        )


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float
    limit: float
    unit: str
    equal: bool = False  # "measured == limit" instead of "measured < limit"
    decimals: int = 2

    @property
    def passed(self) -> bool:
        return self.measured == self.limit if self.equal else self.measured < self.limit

    def condition(self) -> str:
        return f"== {self.limit:,.0f}" if self.equal else f"< {self.limit:g} {self.unit}"

    def verdict(self) -> str:
        if self.equal:
            if self.passed:
                return "PASS (equal)"
            return f"MISS by {self.measured - self.limit:+,.0f} {self.unit}"
        if self.passed:
            return f"PASS ({self.limit - self.measured:.{self.decimals}f} {self.unit} to spare)"
        over = self.measured - self.limit
        return f"MISS by {over:.{self.decimals}f} {self.unit} ({over / self.limit:.0%} over)"
