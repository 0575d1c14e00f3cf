"""Benchmark: the server's CPU per call, for Decide and for a gRPC health check on the same server.

Not a timed test: it prints figures (and PASS/MISS against issue 12's target of under 0.4 ms of server CPU per
Decide on the embedded store) for a human or a CI log.

    python loadtests/bench_cpu.py [--calls 6000] [--in-flight 4] [--rounds 2] [--workers 1]
                                  [--pin-cpus off|on|compare] [--pairs 3]

It starts the real `nba serve` on the embedded store (a temporary directory, the bundled sample and ruleset,
`--workers 1` by default so that one process's CPU is the server's), then from this process, over one
connection with `--in-flight` calls outstanding (closed loop: CPU per call, not latency, is the figure), sends
alternating rounds of `--calls` health checks and `--calls` Decide calls on random sample customers and
channels, and reads the server's user and system CPU time (psutil) around each round. The health check is the
floor for any call through this server (gRPC, the interceptors, the event loop): what Decide costs above it is
the decision itself, its profile read and its record.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
from bench_common import load_average, machine_info, serve_command, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc  # noqa: E402

RULESET = ROOT / "rulesets" / "retail-banking.yaml"
TARGET_MS = 0.4


def _shown(load: list[float] | None) -> str:
    return "?" if load is None else ", ".join(f"{x:.2f}" for x in load)


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        user, system = user + times.user, system + times.system
    return user, system


async def measure(address: str, pids: list[int], args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    import grpc

    rng = random.Random(args.seed)
    customers = [f"CUST-{i:06d}" for i in range(1, 1001)]
    channels = [nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER]
    figures: dict[str, list[tuple[float, float]]] = {"health": [], "decide": []}
    async with grpc.aio.insecure_channel(address) as channel:
        decide = nba_pb2_grpc.NextBestActionStub(channel).Decide
        check = health_pb2_grpc.HealthStub(channel).Check

        async def decides(count: int) -> None:
            for _ in range(count):
                request = nba_pb2.DecideRequest(customer_id=rng.choice(customers), channel=rng.choice(channels))
                await decide(request, timeout=10)

        async def checks(count: int) -> None:
            for _ in range(count):
                await check(health_pb2.HealthCheckRequest(), timeout=10)

        kinds = {"health": checks, "decide": decides}
        await asyncio.gather(*(decides(500 // args.in_flight) for _ in range(args.in_flight)))  # warm-up
        for _ in range(args.rounds):
            for name, run in kinds.items():
                before = cpu_seconds(pids)
                await asyncio.gather(*(run(args.calls // args.in_flight) for _ in range(args.in_flight)))
                after = cpu_seconds(pids)
                calls = args.calls // args.in_flight * args.in_flight
                figures[name].append(((after[0] - before[0]) / calls * 1e3, (after[1] - before[1]) / calls * 1e3))
    return figures


def serve_once(args: argparse.Namespace, pinned: bool) -> tuple[dict[str, list[tuple[float, float]]], int]:
    with tempfile.TemporaryDirectory(prefix="nba_bench_cpu_") as tmp:
        workdir = Path(tmp)
        extra = ["--workers", str(args.workers), *(["--pin-cpus"] if pinned else [])]
        process, serving = start_server(
            serve_command(workdir, RULESET, "sqlite", extra), workdir / "server.log", workdir
        )
        try:
            pids = [int(p) for p in serving.get("worker_pids") or [serving["pid"]]]
            figures = asyncio.run(measure(serving["address"], pids, args))
        finally:
            status, _ = stop_server(process, 60)
    return figures, status


def best(rounds: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(user, system, total) of the round with the least total."""
    user, system = min(rounds, key=sum)
    return user, system, user + system


def verdict(decide: float) -> str:
    return "PASS" if decide < TARGET_MS else f"MISS by {decide - TARGET_MS:.2f} ms ({decide / TARGET_MS:.1f}x)"


def compare(args: argparse.Namespace) -> int:
    """Unpinned and pinned servers alternately, `--pairs` times: on a shared machine only alternation separates a
    change from the machine's own drift."""
    runs: dict[str, list[dict[str, float]]] = {"unpinned": [], "--pin-cpus": []}
    failures = 0
    print(f"{'run':<6}{'server':<12}{'health':>8}{'decide':>8}   (best round, server CPU per call, ms)")
    for pair in range(1, args.pairs + 1):
        for name, pinned in (("unpinned", False), ("--pin-cpus", True)):
            figures, status = serve_once(args, pinned)
            failures += status != 0
            shown = {kind: best(rounds)[2] for kind, rounds in figures.items()}
            runs[name].append(shown)
            print(f"{pair:<6}{name:<12}{shown['health']:>8.3f}{shown['decide']:>8.3f}", flush=True)
    for name, figures in runs.items():
        health = statistics.median(f["health"] for f in figures)
        decide = statistics.median(f["decide"] for f in figures)
        print(f"median {name:<12} health {health:.3f}  decide {decide:.3f}  target < {TARGET_MS} ms: {verdict(decide)}")
    return 0 if failures == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=6000, help="calls per round and kind (default 6000)")
    parser.add_argument("--in-flight", type=int, default=4, help="calls outstanding at once (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each kind (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument(
        "--pin-cpus",
        choices=["off", "on", "compare"],
        default="off",
        help="serve with --pin-cpus (on), without (off, the default), or both alternately --pairs times (compare)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="with --pin-cpus compare: how many of each (default 3)")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()
    before = load_average()
    info = machine_info(["grpcio", "durable-rules"])
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, grpcio {info['grpcio']}")
    print(
        f"server: nba serve --workers {args.workers}, embedded store; {args.rounds} rounds of {args.calls:,} calls "
        f"per kind, {args.in_flight} in flight on one connection"
    )
    if args.pin_cpus == "compare":
        code = compare(args)
        print(f"load average before: {_shown(before)}; at the end: {_shown(load_average())}")
        return code
    figures, status = serve_once(args, args.pin_cpus == "on")
    print(f"load average before: {_shown(before)}; at the end: {_shown(load_average())}; server exit {status}")
    print(f"{'server CPU per call (ms)':<28}{'user':>8}{'system':>8}{'total':>8}   (each round)")
    totals: dict[str, float] = {}
    for name, rounds in figures.items():
        user, system, totals[name] = best(rounds)
        shown = ", ".join(f"{u + s:.3f}" for u, s in rounds)
        print(f"{name:<28}{user:>8.3f}{system:>8.3f}{totals[name]:>8.3f}   ({shown})")
    decide = totals["decide"]
    print(f"decide above a health check: {decide - totals['health']:.3f} ms")
    print(f"target: Decide server CPU per call (best round) {decide:.3f} ms   < {TARGET_MS} ms   {verdict(decide)}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
