"""What the benchmarks share: the machine, latency distributions, target verdicts, starting and stopping the
real server, and the open-loop load generator."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------------------------------
# The real server, as a subprocess
# --------------------------------------------------------------------------------------------------


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if not path.exists():
        return items
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                items.append(item)
    return items


def serve_command(workdir: Path, ruleset: Path, store: str, extra: Sequence[str] = ()) -> list[str]:
    """`nba serve` on a free loopback port; a DSN goes in the environment (`start_server`), never on a command
    line. The product's default worker count applies unless `extra` sets `--workers`."""
    script = Path(sys.executable).parent / "nba"
    launcher = [str(script)] if script.exists() else [sys.executable, "-c", "from nba_service.cli import main; main()"]
    # --log-level info, not warning: the `serving` event that names the address is logged at info, and
    # the request path logs nothing below warning, so this costs the measured calls nothing.
    return [
        *launcher,
        "serve",
        "--store",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rulesets",
        str(ruleset),
        "--spill-dir",
        str(workdir),
        "--log-format",
        "json",
        "--log-level",
        "info",
        *extra,
    ]


def start_server(
    command: list[str], log_path: Path, workdir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Starts the server with no NBA_ settings inherited but `env`; returns it and its `serving` log event
    (address, pid, worker_pids) once it listens."""
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("NBA_")}, **(env or {})}
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir, env=environment)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        serving = next((e for e in read_json_lines(log_path) if e.get("event") == "serving"), None)
        if serving is not None:
            if not serving.get("ready", True):
                note("warning: the server reports its store as not ready")
            return process, serving
        if process.poll() is not None:
            raise RuntimeError(f"nba serve exited with {process.returncode}; log:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(
                f"nba serve did not log 'serving' in {START_TIMEOUT_S:.0f} s; log:\n{log_path.read_text()}"
            )
        time.sleep(0.02)


def stop_server(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """SIGTERM, then wait for the exit (the decision log drains first); returns the status and seconds taken."""
    started = time.perf_counter()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        code = -9
    return code, time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# The open-loop generator
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PhaseResult:
    """One open-loop phase, as the generator saw it. Times are `time.monotonic_ns()`, one clock for every
    process on the machine, so phases of several generator processes can share a schedule."""

    planned: int
    latency_ns: list[int] = field(default_factory=list)  # from the moment the call left
    scheduled_ns: list[int] = field(default_factory=list)  # from the moment it was due (lag included)
    lag_ns: list[int] = field(default_factory=list)  # how late each call left
    kinds: list[str] = field(default_factory=list)  # each answered call's kind, in answer order (when given)
    codes: Counter[str] = field(default_factory=Counter)
    kind_codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    decision_ids: list[str] = field(default_factory=list)
    first_sent_ns: int = 0
    last_sent_ns: int = 0
    last_done_ns: int = 0
    peak_in_flight: int = 0
    cpu_s: float = 0.0
    wall_start: float = 0.0
    wall_end: float = 0.0


async def open_channels(address: str, count: int) -> list[Any]:
    """`count` connections to `address`, each ready. A local subchannel pool per channel: otherwise gRPC shares
    one connection among identical channels, and a server's workers would not each get their share."""
    import grpc

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    return channels


# Sends call i and returns the decision id it made, if any; raises (a gRPC error) when the call failed.
Send = Callable[[int], Awaitable[str | None]]


async def open_loop(
    send: Send,
    count: int,
    rate: float,
    *,
    kinds: Sequence[str] | None = None,
    start_ns: int | None = None,
) -> PhaseResult:
    """Calls `send(i)` for i < `count` at `rate` per second on a fixed schedule from `start_ns`, never waiting
    for answers. Latency is also taken from when each call was due, so a generator or server that falls
    behind cannot hide it (no coordinated omission)."""
    import grpc

    result = PhaseResult(planned=count)
    clock = time.monotonic_ns
    interval_ns = 1e9 / rate
    in_flight = 0

    async def call(index: int, due: int) -> None:
        nonlocal in_flight
        sent = clock()
        in_flight += 1
        result.peak_in_flight = max(result.peak_in_flight, in_flight)
        try:
            ident = await send(index)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except Exception as exc:  # counted, so one failure does not end the phase
            code = type(exc).__name__
        else:
            code = "OK"
            if ident:
                result.decision_ids.append(ident)
        done = clock()
        in_flight -= 1
        result.codes[code] += 1
        if kinds is not None:
            result.kinds.append(kinds[index])
            result.kind_codes[kinds[index], code] += 1
        result.latency_ns.append(done - sent)
        result.scheduled_ns.append(done - due)
        result.lag_ns.append(sent - due)
        result.last_done_ns = max(result.last_done_ns, done)

    tasks: list[asyncio.Task[None]] = []
    cpu = time.process_time()
    result.wall_start = time.time()
    start = clock() + 5_000_000 if start_ns is None else start_ns
    for index in range(count):
        due = start + round(index * interval_ns)
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        tasks.append(asyncio.create_task(call(index, due)))
        if index == 0:
            result.first_sent_ns = clock()
    result.last_sent_ns = clock()
    result.wall_end = time.time()
    await asyncio.gather(*tasks)
    result.cpu_s = time.process_time() - cpu
    return result
