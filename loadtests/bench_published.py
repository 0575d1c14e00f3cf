"""The published benchmark: a bare grpc.aio echo server, then the service on the embedded store and on PostgreSQL,
swept with the same open-loop generator and the same rate steps in one run.

Not a timed test: it prints figures and marks the issue's two targets met or missed, with the margin.

    python loadtests/bench_published.py [--dsn SERVER_DSN] [--customers 100000] [--rates 250,500,1000,...]
                                        [--mix decide=85,batch=5,event=7,outcome=3] [--generators 2]
                                        [--servers echo,embedded,postgres] [--profile-rate 1000 --py-spy PATH]

For each server in turn:
1. starts it as its own process(es): the echo server (`echo_main`, a generic unary handler on bytes, one process
   per core on one port, as `nba serve` runs its workers), `nba serve` on the embedded store (the bundled 1,000
   customers), or `nba serve --store postgres` on a throwaway database `nba_published_<pid>` created on `--dsn`,
   seeded with `--customers` synthetic customers and dropped at the end. The service runs with the product's
   default worker count (one process per core) and durable decision records (an answer is sent once its
   record is committed);
2. starts `--generators` generator processes (spawned; each with its own event loop and `--connections`
   connections). A warm-up of Decide calls fills each generator's pool of decisions that RecordOutcome calls
   later report on. Then each rate step sends `--step-seconds` of calls on one fixed schedule shared by the
   generators (call i is due at start + i / rate, whatever the server answers), in the mix given by `--mix`:
   Decide on AGENT_DESKTOP, DecideBatch of `--batch-size` customers on OUTBOUND_DIALER (one call, timed until its
   stream ends), IngestEvent, RecordOutcome on a decision made earlier in the run. Latency is taken from each
   call's intended send time, so a generator or server that falls behind shows in it (no coordinated omission);
3. stops the sweep after the first step that saturates: fewer than 90% of the intended calls per second answered
   OK, or a p99 above `--p99-ceiling-ms`, or more than 1% errors.

It writes the table (Markdown, to paste into docs/performance.md), a JSON report and the latency-versus-rate plot
(PNG) under `--output-dir` (default: docs/benchmarks/ and docs/images/ of this repository).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    PhaseResult,
    load_average,
    machine_info,
    note,
    open_channels,
    open_loop,
    rank,
    read_json_lines,
    serve_command,
    start_server,
    stop_server,
)
from bench_postgres import DEFAULT_DSN, create_database, drop_database, prepare_database, redacted, with_database

REPO = Path(__file__).resolve().parents[1]
RULESET = REPO / "rulesets" / "retail-banking.yaml"
EMBEDDED_CUSTOMERS = 1_000  # the bundled sample
SERVICE = "nba.v1.NextBestAction"
KINDS = ("decide", "batch", "event", "outcome")
METHODS = {"decide": "Decide", "batch": "DecideBatch", "event": "IngestEvent", "outcome": "RecordOutcome"}
DEFAULT_MIX = "decide=85,batch=5,event=7,outcome=3"
DEFAULT_RATES = "250,500,1000,1500,2000,3000,4000,5000,6000,8000,10000"
SERVERS = ("echo", "embedded", "postgres")
LABELS = {"echo": "grpc.aio echo", "embedded": "service, embedded store", "postgres": "service, PostgreSQL"}

TARGET_RATE = 1000.0
TARGET_P99_MS = 5.0
TARGET_PEAK_SHARE = 0.5
ACHIEVED_SHARE = 0.9  # a step saturates below this share of its intended rate
MAX_ERROR_SHARE = 0.01
LATE_MS = 5.0  # a call that left this much after its intended time shows the generator behind
POOL_SIZE = 10_000


# --------------------------------------------------------------------------------------------------
# The echo server: the floor any grpc.aio service on this machine stands on
# --------------------------------------------------------------------------------------------------


async def _echo(port: int, delay_s: float, ready: Connection) -> None:
    import grpc

    async def unary(request: bytes, context: Any) -> bytes:
        if delay_s:
            await asyncio.sleep(delay_s)
        return request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        if delay_s:
            await asyncio.sleep(delay_s)
        yield request

    handlers = {
        method: grpc.unary_stream_rpc_method_handler(stream)
        if kind == "batch"
        else grpc.unary_unary_rpc_method_handler(unary)
        for kind, method in METHODS.items()
    }
    # No (de)serializers: the handler sees and returns the bytes on the wire, so no protobuf work is done.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.send(bound)
    ready.close()
    await server.wait_for_termination()


def echo_main(port: int, delay_s: float, ready: Connection) -> None:
    """An echo worker's entry point (spawned): answers every call of the service with its own request."""
    asyncio.run(_echo(port, delay_s, ready))


@dataclass
class EchoServer:
    processes: list[BaseProcess]
    address: str

    @property
    def pids(self) -> list[int]:
        return [p.pid or 0 for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(10)


def start_echo(workers: int, delay_s: float = 0.0) -> EchoServer:
    """`workers` echo processes on one port (SO_REUSEPORT), the way `nba serve --workers N` shares its port."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    port = 0
    try:
        for _ in range(workers):
            ours, theirs = context.Pipe(duplex=False)
            process = context.Process(target=echo_main, args=(port, delay_s, theirs), name="bench-echo")
            process.start()
            theirs.close()
            processes.append(process)
            if not ours.poll(30):
                raise RuntimeError("the echo server did not start")
            port = ours.recv()
    except BaseException:
        EchoServer(processes, "").stop()
        raise
    return EchoServer(processes, f"127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------------
# The generator processes
# --------------------------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        if name.strip() not in KINDS:
            raise ValueError(f"unknown call kind {name.strip()!r} in the mix (known: {', '.join(KINDS)})")
        mix[name.strip()] = float(share)
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError("mix shares must not be negative and must not all be 0")
    return mix


@dataclass
class Workload:
    """What one generator sends: its schedule's kinds and the serialized requests (outcomes are built when sent)."""

    kinds: list[str]
    payloads: list[bytes]


def prepare(count: int, mix: dict[str, float], options: dict[str, Any], rng: random.Random) -> Workload:
    from nba_service._proto.nba.v1 import nba_pb2

    customers, batch_size = options["customers"], options["batch_size"]
    names = list(mix)
    kinds = rng.choices(names, weights=[mix[n] for n in names], k=count)
    payloads: list[bytes] = []

    def customer() -> str:
        return f"CUST-{rng.randint(1, customers):06d}"

    for kind in kinds:
        if kind == "decide":
            message: Any = nba_pb2.DecideRequest(customer_id=customer(), channel=nba_pb2.AGENT_DESKTOP)
        elif kind == "batch":
            message = nba_pb2.DecideBatchRequest(
                campaign_id=f"bench-{uuid.uuid4().hex[:12]}",
                channel=nba_pb2.OUTBOUND_DIALER,
                customer_ids=nba_pb2.CustomerList(
                    ids=[f"CUST-{i:06d}" for i in rng.sample(range(1, customers + 1), batch_size)]
                ),
            )
        elif kind == "event":
            message = nba_pb2.IngestEventRequest(
                customer_id=customer(),
                type="large_deposit",
                attributes={
                    "amount": nba_pb2.AttributeValue(number_value=round(rng.uniform(5_000, 50_000), 2)),
                    "account_last4": nba_pb2.AttributeValue(string_value=f"{rng.randint(0, 9999):04d}"),
                },
            )
        else:
            message = None  # built at send time from a decision answered earlier
        payloads.append(message.SerializeToString() if message is not None else b"")
    return Workload(kinds, payloads)


async def _generate(pipe: Connection, address: str, options: dict[str, Any], index: int) -> None:
    from nba_service._proto.nba.v1 import nba_pb2

    rng = random.Random(options["seed"] * 1_000 + index)
    mix: dict[str, float] = options["mix"]
    timeout, harvest = options["timeout"], options["harvest"]
    # Decisions answered so far, (decision id, first action id), oldest first: RecordOutcome reports on them.
    pool: collections.deque[tuple[str, str]] = collections.deque(maxlen=POOL_SIZE)
    channels = await open_channels(address, options["connections"])
    # Raw bytes in and out: requests are serialized before the schedule starts, so the generator's per-call
    # work is nearly the same against every server (against the service it also parses Decide answers, for
    # the outcome pool), and the echo server can answer any method with its request.
    methods = [
        {
            kind: (channel.unary_stream if kind == "batch" else channel.unary_unary)(f"/{SERVICE}/{method}")
            for kind, method in METHODS.items()
        }
        for channel in channels
    ]
    try:
        while True:
            message = await asyncio.to_thread(pipe.recv)
            if message[0] == "stop":
                break
            _, step_mix, count = message
            work = prepare(count, step_mix or mix, options, rng)
            gc.collect()
            gc.freeze()
            # The generator's own collections would stall its loop and show up as server latency.
            gc.disable()

            async def send(i: int, work: Workload = work) -> str | None:
                kind, calls = work.kinds[i], methods[i % len(methods)]
                if kind == "batch":
                    async for _ in calls["batch"](work.payloads[i], timeout=timeout):
                        pass
                    return None
                if kind == "outcome":
                    decision, action = pool.popleft() if pool else ("dry-none", "none")
                    request = nba_pb2.RecordOutcomeRequest(
                        decision_id=decision, action_id=action, outcome=nba_pb2.ACCEPTED
                    ).SerializeToString()
                    await calls["outcome"](request, timeout=timeout)
                    return None
                answer = await calls[kind](work.payloads[i], timeout=timeout)
                if kind == "decide" and harvest:
                    response = nba_pb2.DecideResponse.FromString(answer)
                    if response.actions:
                        pool.append((response.decision_id, response.actions[0].action_id))
                    return str(response.decision_id)
                return None

            pipe.send(("ready",))
            _, start_ns, own_rate = pipe.recv()
            result = await open_loop(send, count, own_rate, kinds=work.kinds, start_ns=start_ns)
            result.decision_ids = []  # not needed by the parent; keeps the pipe light
            gc.enable()
            gc.unfreeze()
            pipe.send(("result", result, len(pool)))
    finally:
        for channel in channels:
            await channel.close()


def generator_main(pipe: Connection, address: str, options: dict[str, Any], index: int) -> None:
    """A generator process's entry point (spawned: no state shared with the parent)."""
    try:
        asyncio.run(_generate(pipe, address, options, index))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        pipe.close()


@dataclass
class StepResult:
    """One rate step, merged over the generator processes."""

    rate: float
    seconds: float
    phases: list[PhaseResult]
    start_ns: int
    server_cpu_s: float = math.nan
    machine_busy_s: float = math.nan
    wall_s: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)


class Generators:
    """`count` generator processes against one server, driven one step at a time."""

    def __init__(self, address: str, count: int, options: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for index in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=generator_main, args=(theirs, address, options, index), name=f"bench-generator-{index}"
            )
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid or 0 for p in self.processes]

    def _receive(self, pipe: Connection, timeout: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError("a load generator did not answer in time")
        message: tuple[Any, ...] = pipe.recv()
        if message[0] == "error":
            raise RuntimeError(f"a load generator failed: {message[1]}")
        return message

    def step(
        self, rate: float, seconds: float, timeout: float, mix: dict[str, float] | None = None, watch: Any = None
    ) -> StepResult:
        """Sends `rate` calls per second for `seconds` on one schedule split between the processes: call i of
        the step is due at start + i / rate and goes out from process i mod count."""
        count = len(self.pipes)
        total = max(1, round(rate * seconds))
        for index, pipe in enumerate(self.pipes):
            pipe.send(("step", mix, len(range(index, total, count))))
        for pipe in self.pipes:
            self._receive(pipe, 120)
        start_ns = time.monotonic_ns() + 200_000_000
        interval_ns = 1e9 / rate
        for index, pipe in enumerate(self.pipes):
            pipe.send(("go", start_ns + round(index * interval_ns), rate / count))
        before = watch() if watch else None
        started = time.monotonic()
        results = [self._receive(pipe, seconds + timeout + 120) for pipe in self.pipes]
        step = StepResult(rate, seconds, [r[1] for r in results], start_ns)
        step.extra["outcome_pool"] = sum(r[2] for r in results)
        if before is not None:
            after = watch()
            step.server_cpu_s = after[0] - before[0]
            step.machine_busy_s = after[1] - before[1]
            step.wall_s = time.monotonic() - started
        return step

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.terminate()
                process.join(5)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return dict.fromkeys(("p50", "p90", "p99", "p99.9", "max"), math.nan)
    ordered = sorted(samples_ns)
    return {
        "p50": rank(ordered, 50) / 1e6,
        "p90": rank(ordered, 90) / 1e6,
        "p99": rank(ordered, 99) / 1e6,
        "p99.9": rank(ordered, 99.9) / 1e6,
        "max": ordered[-1] / 1e6,
    }


def summarise(step: StepResult) -> dict[str, Any]:
    """One row of the table: the merged latencies are from each call's intended send time."""
    phases = step.phases
    planned = sum(p.planned for p in phases)
    latency = [ns for p in phases for ns in p.scheduled_ns]
    lag = [ns for p in phases for ns in p.lag_ns]
    codes: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, list[int]] = collections.defaultdict(list)
    kind_codes: collections.Counter[tuple[str, str]] = collections.Counter()
    for p in phases:
        codes.update(p.codes)
        kind_codes.update(p.kind_codes)
        for kind, ns in zip(p.kinds, p.scheduled_ns, strict=True):
            by_kind[kind].append(ns)
    ok = codes.get("OK", 0)
    last_done = max(p.last_done_ns for p in phases)
    last_sent = max(p.last_sent_ns for p in phases)
    first_sent = min(p.first_sent_ns for p in phases)
    answered_over = (last_done - step.start_ns) / 1e9
    achieved = ok / answered_over if answered_over > 0 else math.nan
    sent_rate = (planned - 1) / ((last_sent - first_sent) / 1e9) if last_sent > first_sent else math.nan
    late = sum(1 for ns in lag if ns > LATE_MS * 1e6)
    errors = {code: n for code, n in sorted(codes.items()) if code != "OK"}
    row = {
        "intended_rate": step.rate,
        "seconds": step.seconds,
        "calls": planned,
        "sent_rate": sent_rate,
        "achieved_rate": achieved,
        "ok": ok,
        "errors": errors,
        "error_count": sum(errors.values()),
        "latency_ms": percentiles_ms(latency),
        "latency_by_kind_ms": {k: percentiles_ms(v) for k, v in sorted(by_kind.items())},
        "calls_by_kind": {
            kind: {code: n for (k, code), n in sorted(kind_codes.items()) if k == kind} for kind in sorted(by_kind)
        },
        "send_lag_ms": percentiles_ms(lag),
        "late_calls": late,
        "generator_cpu_pct": sum(p.cpu_s for p in phases) / step.seconds * 100.0,
        "server_cpu_pct": step.server_cpu_s / step.wall_s * 100.0 if step.wall_s > 0 else math.nan,
        "machine_cpu_pct": step.machine_busy_s / step.wall_s * 100.0 if step.wall_s > 0 else math.nan,
        "outcome_pool": step.extra.get("outcome_pool"),
    }
    row["saturated"] = saturated(row, math.inf)
    return row


def saturated(row: dict[str, Any], p99_ceiling_ms: float) -> bool:
    return bool(
        not row["achieved_rate"] >= ACHIEVED_SHARE * row["intended_rate"]
        or row["latency_ms"]["p99"] > p99_ceiling_ms
        or row["error_count"] > MAX_ERROR_SHARE * row["calls"]
    )


def good_steps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["error_count"] <= MAX_ERROR_SHARE * r["calls"]]


def peak(rows: Sequence[dict[str, Any]]) -> float:
    """The highest rate answered OK in a step without more than 1% errors."""
    return max((r["achieved_rate"] for r in good_steps(rows)), default=0.0)


def cpu_watch(pids: Sequence[int]) -> Any:
    """A function returning (CPU seconds of `pids` and their children, busy CPU seconds of the machine)."""

    def sample() -> tuple[float, float]:
        total = 0.0
        for pid in pids:
            try:
                process = psutil.Process(pid)
                for each in [process, *process.children(recursive=True)]:
                    times = each.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return total, busy

    return sample


# --------------------------------------------------------------------------------------------------
# Profiles (py-spy, optional)
# --------------------------------------------------------------------------------------------------


def start_profiles(py_spy: str, pids: Sequence[int], seconds: float, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out_dir / f"worker-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def summarise_profiles(out_dir: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive share of samples per function, over the folded stacks of every worker."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in sorted(out_dir.glob("worker-*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            # "function (file:line)" -> "function (file)": a function's lines count together.
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_pct": [(f, n / total * 100.0) for f, n in own.most_common(top)],
        "inclusive_pct": [(f, n / total * 100.0) for f, n in inclusive.most_common(top * 2)],
    }


# --------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A server to sweep: where it listens, whose CPU counts as its own, and how many customers it knows."""

    name: str
    address: str
    pids: list[int]
    customers: int
    harvest: bool  # Decide answers carry decision ids RecordOutcome can report on
    workers: int  # processes serving the port


def sweep(target: Endpoint, args: argparse.Namespace, profile_dir: Path | None = None) -> dict[str, Any]:
    options = {
        "customers": target.customers,
        "batch_size": args.batch_size,
        "timeout": args.timeout,
        "harvest": target.harvest,
        "connections": args.connections,
        "mix": parse_mix(args.mix),
        "seed": args.seed,
    }
    rates = [float(r) for r in args.rates.split(",")]
    generators = Generators(target.address, args.generators, options)
    rows: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    try:
        watch = cpu_watch(target.pids)
        if args.warmup > 0:
            note(f"{target.name}: warm-up, Decide only at {rates[0]:g}/s for {args.warmup:g} s ...")
            generators.step(rates[0], args.warmup, args.timeout, mix={"decide": 1.0})
            time.sleep(args.pause)
        for rate in rates:
            note(f"{target.name}: {rate:g}/s for {args.step_seconds:g} s ...")
            row = summarise(generators.step(rate, args.step_seconds, args.timeout, watch=watch))
            rows.append(row)
            lat = row["latency_ms"]
            note(
                f"  achieved {row['achieved_rate']:,.0f}/s, p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
                f"errors {row['error_count']:,}, generators behind by >{LATE_MS:g} ms on {row['late_calls']:,} calls"
            )
            if saturated(row, args.p99_ceiling_ms):
                note(f"{target.name}: saturated at {rate:g}/s; stopping the sweep")
                break
            time.sleep(args.pause)
        if profile_dir is not None:
            # A step of its own, after the sweep: the sampler's CPU must not weigh on the figures in the table.
            time.sleep(args.pause)
            workers = [c.pid for p in target.pids for c in psutil.Process(p).children()] or target.pids
            note(f"{target.name}: {args.profile_rate:g}/s for {args.step_seconds:g} s under py-spy ...")
            profilers = start_profiles(args.py_spy, workers, args.step_seconds, profile_dir / target.name)
            profiled = summarise(generators.step(args.profile_rate, args.step_seconds, args.timeout, watch=watch))
            for profiler in profilers:
                profiler.wait(60)
            profile = {"row": profiled, **summarise_profiles(profile_dir / target.name)}
    finally:
        generators.close()
    return {
        "name": target.name,
        "label": LABELS.get(target.name, target.name),
        "rows": rows,
        "profile": profile,
        "peak_rate": peak(rows),
        "workers": target.workers,
        "customers": target.customers,
    }


def run_embedded(args: argparse.Namespace, profile_dir: Path | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="nba_published_"))
    try:
        command = serve_command(workdir, RULESET, "sqlite", args.server_arg)
        process, serving = start_server(command, workdir / "server.log", workdir)
        try:
            target = Endpoint(
                "embedded", str(serving["address"]), [process.pid], EMBEDDED_CUSTOMERS, True, worker_count(serving)
            )
            result = sweep(target, args, profile_dir)
        finally:
            code, _ = stop_server(process, 90)
        result["server"] = server_facts(serving, code, workdir / "server.log")
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_postgres(args: argparse.Namespace, profile_dir: Path | None) -> dict[str, Any]:
    database = f"nba_published_{os.getpid()}"
    dsn = with_database(args.dsn, database)
    workdir = Path(tempfile.mkdtemp(prefix="nba_published_"))
    note(f"creating database {database} on {redacted(args.dsn)} ...")
    asyncio.run(create_database(args.dsn, database))
    try:
        prepared = asyncio.run(prepare_database(dsn, args.customers))
        command = serve_command(workdir, RULESET, "postgres", args.server_arg)
        process, serving = start_server(command, workdir / "server.log", workdir, {"NBA_DSN": dsn})
        try:
            target = Endpoint(
                "postgres", str(serving["address"]), [process.pid], args.customers, True, worker_count(serving)
            )
            result = sweep(target, args, profile_dir)
        finally:
            code, _ = stop_server(process, 90)
        result["server"] = server_facts(serving, code, workdir / "server.log")
        result["postgresql"] = prepared["server"]
        return result
    finally:
        note(f"dropping database {database} ...")
        asyncio.run(drop_database(args.dsn, database))
        shutil.rmtree(workdir, ignore_errors=True)


def run_echo(args: argparse.Namespace, profile_dir: Path | None) -> dict[str, Any]:
    workers = args.echo_workers or os.cpu_count() or 1
    echo = start_echo(workers)
    try:
        target = Endpoint("echo", echo.address, echo.pids, EMBEDDED_CUSTOMERS, False, workers)
        result = sweep(target, args, profile_dir)
    finally:
        echo.stop()
    return result


def worker_count(serving: dict[str, Any]) -> int:
    return len(serving.get("worker_pids") or [serving.get("pid")])


def server_facts(serving: dict[str, Any], exit_code: int, log_path: Path) -> dict[str, Any]:
    events = read_json_lines(log_path)
    return {
        "exit_code": exit_code,
        "errors_logged": sum(1 for e in events if e.get("level") in ("error", "critical")),
    }


def targets(servers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's two targets for the service on PostgreSQL, each met or missed with its margin."""
    found: list[dict[str, Any]] = []
    pg, echo = servers.get("postgres"), servers.get("echo")
    if pg and echo and echo["peak_rate"] > 0:
        share = pg["peak_rate"] / echo["peak_rate"]
        found.append(
            {
                "name": "PostgreSQL peak >= half the echo peak",
                "measured": f"{pg['peak_rate']:,.0f}/s = {share:.0%} of {echo['peak_rate']:,.0f}/s",
                "met": share >= TARGET_PEAK_SHARE,
                "margin": f"{(share - TARGET_PEAK_SHARE) * echo['peak_rate']:+,.0f}/s "
                f"({share / TARGET_PEAK_SHARE - 1:+.0%})",
            }
        )
    if pg:
        row = next((r for r in pg["rows"] if r["intended_rate"] == TARGET_RATE), None)
        p99 = row["latency_ms"]["p99"] if row else math.inf
        last = pg["rows"][-1] if pg["rows"] else None
        ended = (
            f"not reached: the sweep ended at {last['intended_rate']:,.0f}/s (p99 {last['latency_ms']['p99']:,.0f} ms)"
            if last
            else "not reached"
        )
        found.append(
            {
                "name": f"PostgreSQL p99 < {TARGET_P99_MS:g} ms at {TARGET_RATE:,.0f}/s",
                "measured": f"{p99:.2f} ms" if row else ended,
                "met": p99 < TARGET_P99_MS,
                "margin": f"{TARGET_P99_MS - p99:+.2f} ms ({p99 / TARGET_P99_MS - 1:+.0%} against the limit)"
                if row
                else "n/a",
            }
        )
    return found


# --------------------------------------------------------------------------------------------------
# Output: the Markdown table, the JSON report and the plot
# --------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    loads = ", ".join(f"{x:.2f}" for x in machine["load_average_before"] or [])
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['python']}; load average before the run "
        f"{loads}. Generator: {report['options']['generators']} processes x {report['options']['connections']} "
        f"connections on the same machine; mix {report['options']['mix']} (DecideBatch of "
        f"{report['options']['batch_size']} customers counted as one call); {report['options']['step_seconds']:g} s "
        "per step; latency from each call's intended send time. CPU columns: 100% = one core, the machine has "
        f"{machine['cores'] * 100}%.",
        "",
        "| server | intended /s | achieved /s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors "
        "| server CPU | generator CPU | machine CPU | sent >5 ms late |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for server in report["servers"].values():
        for row in server["rows"]:
            lat = row["latency_ms"]
            lines.append(
                f"| {server['label']} | {row['intended_rate']:,.0f} | {row['achieved_rate']:,.0f} | {lat['p50']:.2f} "
                f"| {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['p99.9']:.2f} | {lat['max']:.1f} "
                f"| {row['error_count']:,} | {row['server_cpu_pct']:.0f}% | {row['generator_cpu_pct']:.0f}% "
                f"| {row['machine_cpu_pct']:.0f}% | {row['late_calls'] / row['calls']:.1%} |"
            )
    lines += ["", "| server | workers | peak rate /s |", "|---|--:|--:|"]
    for server in report["servers"].values():
        lines.append(f"| {server['label']} | {server['workers']} | {server['peak_rate']:,.0f} |")
    echo = report["servers"].get("echo")
    if echo and echo["rows"]:
        top = max(echo["rows"], key=lambda r: r["achieved_rate"] if r in good_steps(echo["rows"]) else -1.0)
        lines += [
            "",
            f"Generator check: at the echo server's best step the generators sent {top['sent_rate']:,.0f} calls/s "
            f"(intended {top['intended_rate']:,.0f}/s) using {top['generator_cpu_pct']:.0f}% CPU (100% = one core), "
            f"{top['late_calls'] / top['calls']:.1%} of calls leaving more than {LATE_MS:g} ms after their intended "
            "time; the machine was "
            f"{top['machine_cpu_pct']:.0f}% busy of {report['machine']['cores'] * 100}%.",
        ]
    if report["targets"]:
        lines += ["", "| target | measured | verdict | margin |", "|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['name']} | {t['measured']} | {'met' if t['met'] else 'MISSED'} | {t['margin']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for index, server in enumerate(report["servers"].values()):
        rows = server["rows"]
        if not rows:
            continue
        x = [r["achieved_rate"] for r in rows]
        color = f"C{index}"
        axes.plot(x, [r["latency_ms"]["p99"] for r in rows], "o-", color=color, label=f"{server['label']} p99")
        axes.plot(
            x, [r["latency_ms"]["p50"] for r in rows], "s--", color=color, alpha=0.6, label=f"{server['label']} p50"
        )
    axes.axhline(TARGET_P99_MS, color="grey", linestyle=":", linewidth=1, label=f"{TARGET_P99_MS:g} ms")
    axes.set_yscale("log")
    axes.set_xlabel("achieved rate (calls/s answered OK)")
    axes.set_ylabel("latency from intended send time (ms)")
    machine = report["machine"]
    axes.set_title(f"Latency versus rate, {machine['cores']} cores, generator on the same machine", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def write_outputs(report: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    paths = {
        "markdown": output_dir / "benchmarks" / "published-benchmark.md",
        "json": output_dir / "benchmarks" / "published-benchmark.json",
        "plot": output_dir / "images" / "published-benchmark.png",
    }
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    plot(report, paths["plot"])
    return paths


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("NBA_BENCH_DSN", DEFAULT_DSN),
        help=f"PostgreSQL server for a throwaway database (env NBA_BENCH_DSN, default {DEFAULT_DSN})",
    )
    parser.add_argument(
        "--customers", type=int, default=100_000, help="customers seeded in PostgreSQL (default 100000)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="which servers, in order (default: all three)")
    parser.add_argument("--rates", default=DEFAULT_RATES, help=f"rate steps in calls/s (default {DEFAULT_RATES})")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="seconds per rate step (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of Decide-only warm-up per server (default 3)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between steps, to drain (default 1)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"call mix in shares (default {DEFAULT_MIX})")
    parser.add_argument("--batch-size", type=int, default=20, help="customers per DecideBatch call (default 20)")
    parser.add_argument("--generators", type=int, default=2, help="generator processes (default 2)")
    parser.add_argument("--connections", type=int, default=2, help="connections per generator process (default 2)")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline of every call in seconds (default 2)")
    parser.add_argument(
        "--p99-ceiling-ms", type=float, default=1000.0, help="a step with a higher p99 ends the sweep (default 1000)"
    )
    parser.add_argument("--echo-workers", type=int, default=0, help="echo processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra argument for `nba serve`, repeatable"
    )
    parser.add_argument("--profile-rate", type=float, default=0.0, help="profile every server's workers at this step")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy for --profile-rate")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPO / "docs",
        help="where benchmarks/ and images/ are written (default docs/)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: write the table and the plot again from a saved JSON report (after a change to either)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    parse_mix(args.mix)
    if args.profile_rate and not args.py_spy:
        parser.error("--profile-rate needs py-spy (--py-spy PATH)")
    return args


def print_profile(server: dict[str, Any]) -> None:
    profile = server["profile"]
    if not profile.get("samples"):
        return
    row = profile["row"]
    print(
        f"profile of {server['label']}'s workers (py-spy, {profile['samples']:,} samples) in a separate step at "
        f"{row['intended_rate']:,.0f}/s (achieved {row['achieved_rate']:,.0f}/s, "
        f"p99 {row['latency_ms']['p99']:.2f} ms):"
    )
    for frame, pct in profile["self_pct"][:20]:
        print(f"  self {pct:5.1f}%  {frame}")
    for frame, pct in profile["inclusive_pct"]:
        if pct < 97.0:
            print(f"  inclusive {pct:5.1f}%  {frame}")


def build_report(
    args: argparse.Namespace, servers: dict[str, dict[str, Any]], started: datetime, load_before: list[float] | None
) -> dict[str, Any]:
    return {
        "started": started.isoformat(),
        "machine": {
            **machine_info(["grpcio", "asyncpg"]),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "options": {
            "mix": args.mix,
            "batch_size": args.batch_size,
            "generators": args.generators,
            "connections": args.connections,
            "step_seconds": args.step_seconds,
            "timeout_s": args.timeout,
            "rates": args.rates,
            "p99_ceiling_ms": args.p99_ceiling_ms,
            "customers_postgres": args.customers,
        },
        "servers": servers,
        "targets": targets(servers),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text(encoding="utf-8"))
        report["targets"] = targets(report["servers"])
        write_outputs(report, args.output_dir)
        print(markdown(report))
        return 0
    started = datetime.now(UTC)
    load_before = load_average()
    profile_root = Path(tempfile.mkdtemp(prefix="nba_profiles_")) if args.profile_rate else None
    runners = {"echo": run_echo, "embedded": run_embedded, "postgres": run_postgres}
    servers: dict[str, dict[str, Any]] = {}
    for name in args.servers.split(","):
        servers[name] = runners[name](args, profile_root)
    report = build_report(args, servers, started, load_before)
    paths = write_outputs(report, args.output_dir)
    print(markdown(report))
    for server in servers.values():
        print_profile(server)
    note(f"wrote {', '.join(str(p) for p in paths.values())}")
    if profile_root is not None:
        note(f"raw profiles (folded stacks) are in {profile_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
