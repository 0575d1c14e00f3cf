"""What a shadow run costs an answer: Decide latency on the embedded store with and without `--shadow`.

Run with `make bench-shadow` (or `python loadtests/bench_shadow.py`). Not a timed test: it prints figures
and a verdict against the issue's limit (a shadow may add at most 10% to the median Decide latency).

What it does:
1. writes a candidate ruleset into a temporary directory: the bundled ruleset with a new version and one
   rule's priority raised (`credit-card-established-customer` 340 -> 480), so the candidate disagrees on a
   few percent of decisions, as a real candidate would;
2. starts two real servers (`nba serve --port 0`), each on a fresh embedded database of its own seeded
   from the bundled sample: one plain, one with `--shadow <candidate>`;
3. drives the same closed-loop load at each: `--concurrency` callers over one gRPC channel, each sending
   its next Decide as soon as the last is answered, over the same random customers with alternating
   channels. Load goes to one server at a time, in `--rounds` rounds that alternate which server goes
   first (ABBA...), so a drift in the machine's load falls on both alike; `--warmup` calls each first;
4. stops both (SIGTERM), reads their decision records (the server's own `latency_ms`) and the shadow
   server's agreement through `nba rulesets shadow-report`'s code, and prints median, p90 and p99 of both,
   and what the shadow added.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from loadtests.bench_common import Stats, Target, load_average, machine_info, read_json_lines
from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.export import export_records
from nba_service.settings import Settings
from nba_service.shadow_report import shadow_report
from nba_service.synthetic import customer_id

REPO = Path(__file__).resolve().parents[1]
RULESET = REPO / "rulesets" / "retail-banking.yaml"
CANDIDATE_RULE = "credit-card-established-customer"
CANDIDATE_PRIORITY = 480
LIMIT_PERCENT = 10.0
START_TIMEOUT_S = 60.0
SAMPLE_CUSTOMERS = 1000


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_candidate(directory: Path) -> Path:
    """The bundled ruleset as a candidate: a new version, and one rule ranked above the loyalty band."""
    text = RULESET.read_text(encoding="utf-8")
    text, versions = re.subn(r"(?m)^  version: .*$", "  version: 1.1.0", text, count=1)
    pattern = rf"(- id: {re.escape(CANDIDATE_RULE)}\n(?:    .*\n)*?    priority: )\d+"
    text, rules = re.subn(pattern, rf"\g<1>{CANDIDATE_PRIORITY}", text, count=1)
    if versions != 1 or rules != 1:
        raise RuntimeError(f"{RULESET} no longer has the version line or rule {CANDIDATE_RULE!r} this bench edits")
    path = directory / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Server:
    name: str
    workdir: Path
    process: subprocess.Popen[bytes]
    address: str

    @property
    def database(self) -> Path:
        return self.workdir / "nba.db"


def start_server(name: str, workdir: Path, extra: Sequence[str]) -> Server:
    workdir.mkdir(parents=True)
    script = Path(sys.executable).parent / "nba"
    command = [
        str(script),
        "serve",
        "--port",
        "0",
        "--rulesets",
        str(RULESET),
        "--db-path",
        str(workdir / "nba.db"),
        "--spill-dir",
        str(workdir),
        "--log-format",
        "json",
        *extra,
    ]
    log_path = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        serving = next((e for e in read_json_lines(log_path) if e.get("event") == "serving"), None)
        if serving is not None:
            return Server(name, workdir, process, str(serving["address"]))
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"{name}: nba serve did not start; log:\n{log_path.read_text()}")
        time.sleep(0.02)


def stop_server(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait(5)


def requests(count: int, rng: random.Random) -> list[nba_pb2.DecideRequest]:
    channels = (nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER)
    return [
        nba_pb2.DecideRequest(customer_id=customer_id(rng.randint(1, SAMPLE_CUSTOMERS)), channel=channels[i % 2])
        for i in range(count)
    ]


@dataclass
class Measured:
    latency_ns: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


async def closed_loop(
    stub: nba_pb2_grpc.NextBestActionStub, batch: Sequence[nba_pb2.DecideRequest], concurrency: int, into: Measured
) -> None:
    """`concurrency` callers, each sending its next request the moment its last one is answered."""
    queue = iter(batch)
    clock = time.perf_counter_ns

    async def caller() -> None:
        for request in queue:
            sent = clock()
            try:
                await stub.Decide(request, timeout=10)
            except grpc.aio.AioRpcError:
                into.errors += 1
                continue
            into.latency_ns.append(clock() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    into.seconds += time.perf_counter() - started


async def drive(servers: Sequence[Server], args: argparse.Namespace) -> dict[str, Measured]:
    rng = random.Random(args.seed)
    channels = {s.name: grpc.aio.insecure_channel(s.address) for s in servers}
    measured = {s.name: Measured() for s in servers}
    try:
        stubs = {name: nba_pb2_grpc.NextBestActionStub(channel) for name, channel in channels.items()}
        warm = requests(args.warmup, rng)
        for server in servers:
            await closed_loop(stubs[server.name], warm, args.concurrency, Measured())
        for round_number in range(args.rounds):
            batch = requests(args.calls, rng)
            order = servers if round_number % 2 == 0 else list(reversed(servers))
            for server in order:
                await closed_loop(stubs[server.name], batch, args.concurrency, measured[server.name])
            note(f"round {round_number + 1}/{args.rounds} done")
    finally:
        for channel in channels.values():
            await channel.close()
    return measured


def server_latencies(database: Path) -> list[float]:
    """The service's own time per decision (`latency_ms` of every record), in milliseconds."""
    lines: list[str] = []
    asyncio.run(export_records(Settings(db_path=database, rulesets=RULESET), lines.append))
    return [float(r["latency_ms"]) for r in map(json.loads, lines) if r.get("kind") == "decision"]


def added(base: float, other: float) -> float:
    return (other - base) / base * 100.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nba-bench-shadow-") as tmp:
        workdir = Path(tmp)
        candidate = write_candidate(workdir)
        servers: list[Server] = []
        try:
            extra = tuple(args.server_arg)
            servers.append(start_server("plain", workdir / "plain", extra))
            servers.append(start_server("shadow", workdir / "shadow", (*extra, "--shadow", str(candidate))))
            note(f"serving: plain {servers[0].address}, shadow {servers[1].address}; driving the load ...")
            load_before = load_average()
            measured = asyncio.run(drive(servers, args))
            load_after = load_average()
        finally:
            codes = [stop_server(s) for s in servers]
        report = asyncio.run(
            shadow_report(Settings(db_path=servers[1].database, rulesets=RULESET), since=None, until=None)
        )
        server_ms = {s.name: server_latencies(s.database) for s in servers}
    client = {name: Stats.of(m.latency_ns, 1e6) for name, m in measured.items()}
    own = {name: Stats.of([v * 1e6 for v in values], 1e6) for name, values in server_ms.items()}
    median_added = added(client["plain"].median, client["shadow"].median)
    return {
        "machine": machine_info(["durable-rules", "grpcio"]),
        "load_average": {"before": load_before, "after": load_after},
        "options": vars(args),
        "candidate": f"{CANDIDATE_RULE} priority {CANDIDATE_PRIORITY}",
        "client_ms": {name: _stats(s) for name, s in client.items()},
        "server_ms": {name: _stats(s) for name, s in own.items()},
        "calls_per_second": {name: len(m.latency_ns) / m.seconds for name, m in measured.items()},
        "errors": {name: m.errors for name, m in measured.items()},
        "added_percent": {
            "median": median_added,
            "p99": added(client["plain"].p99, client["shadow"].p99),
            "server_median": added(own["plain"].median, own["shadow"].median),
        },
        "shadow": {
            "shadowed": report.total.shadowed,
            "agreed": report.total.agreed,
            "disagreed": report.total.disagreed,
            "failed": report.total.failed,
        },
        "exit_codes": codes,
        "target": {"limit_percent": LIMIT_PERCENT, "passed": Target("", median_added, LIMIT_PERCENT, "%").passed},
    }


def _stats(stats: Stats) -> dict[str, float]:
    return {"count": stats.count, "median": stats.median, "p90": stats.p90, "p99": stats.p99, "max": stats.max}


def print_report(report: dict[str, Any]) -> None:
    info = report["machine"]
    options = report["options"]
    loads = report["load_average"]
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, {info['python']}, grpcio {info['grpcio']}")
    print(f"load average before {loads['before']}, after {loads['after']}")
    print(
        f"closed loop: {options['concurrency']} caller(s), {options['rounds']} rounds x {options['calls']} calls "
        f"per server (after {options['warmup']} warm-up calls each); candidate: {report['candidate']}; "
        f"server arguments: {' '.join(options['server_arg']) or 'none'}"
    )
    print(f"{'Decide latency (ms)':<34} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'calls/s':>9} {'errors':>7}")
    for name in ("plain", "shadow"):
        for side, label in (("client_ms", "client, over gRPC"), ("server_ms", "server's own (latency_ms)")):
            s = report[side][name]
            rate = f"{report['calls_per_second'][name]:>9,.0f}" if side == "client_ms" else " " * 9
            errors = f"{report['errors'][name]:>7}" if side == "client_ms" else ""
            print(
                f"{name + ', ' + label:<34} {s['median']:>8.3f} {s['p90']:>8.3f} {s['p99']:>8.3f} "
                f"{s['max']:>8.2f} {rate} {errors}"
            )
    pct = report["added_percent"]
    shadow = report["shadow"]
    print(
        f"added by the shadow: median {pct['median']:+.1f}%, p99 {pct['p99']:+.1f}%, "
        f"server's own median {pct['server_median']:+.1f}%"
    )
    disagreement = shadow["disagreed"] / shadow["shadowed"] if shadow["shadowed"] else 0.0
    print(
        f"shadowed decisions: {shadow['shadowed']}, agreed {shadow['agreed']}, disagreed {shadow['disagreed']} "
        f"({disagreement:.1%}), failed {shadow['failed']}"
    )
    verdict = "PASS" if report["target"]["passed"] else "MISS"
    print(f"target: median added < {LIMIT_PERCENT:g}%: {verdict} ({pct['median']:+.1f}%)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1, help="callers in the closed loop (default 1)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=1000, help="calls per server per round")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls per server first")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="passed to both `nba serve`s (repeatable), e.g. --workers=1"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["exit_codes"] == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
