"""Benchmark: the server's CPU per call, for Decide and for a gRPC health check on the same server.

Not a timed test: it prints figures (and PASS/MISS against issue 12's target of under 0.4 ms of server CPU per
Decide on the embedded store) for a human or a CI log.

    python loadtests/bench_cpu.py [--calls 6000] [--in-flight 4] [--rounds 2] [--workers 1]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=6000, help="calls per round and kind (default 6000)")
    parser.add_argument("--in-flight", type=int, default=4, help="calls outstanding at once (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each kind (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="nba_bench_cpu_") as tmp:
        workdir = Path(tmp)
        command = serve_command(workdir, RULESET, "sqlite", ["--workers", str(args.workers)])
        process, serving = start_server(command, workdir / "server.log", workdir)
        try:
            pids = [int(p) for p in serving.get("worker_pids") or [serving["pid"]]]
            figures = asyncio.run(measure(serving["address"], pids, args))
        finally:
            status, _ = stop_server(process, 60)
    info = machine_info(["grpcio", "durable-rules"])
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, grpcio {info['grpcio']}")
    print(f"load average before: {_shown(before)}; at the end: {_shown(load_average())}; server exit {status}")
    print(
        f"server: nba serve --workers {args.workers}, embedded store; {args.rounds} rounds of {args.calls:,} calls "
        f"per kind, {args.in_flight} in flight on one connection"
    )
    print(f"{'server CPU per call (ms)':<28}{'user':>8}{'system':>8}{'total':>8}   (each round)")
    totals: dict[str, float] = {}
    for name, rounds in figures.items():
        per_round = [user + system for user, system in rounds]
        totals[name] = min(per_round)
        user, system = rounds[per_round.index(totals[name])]
        shown = ", ".join(f"{t:.3f}" for t in per_round)
        print(f"{name:<28}{user:>8.3f}{system:>8.3f}{totals[name]:>8.3f}   ({shown})")
    decide = totals["decide"]
    verdict = "PASS" if decide < TARGET_MS else f"MISS by {decide - TARGET_MS:.2f} ms ({decide / TARGET_MS:.1f}x)"
    print(f"decide above a health check: {decide - totals['health']:.3f} ms")
    print(f"target: Decide server CPU per call (best round) {decide:.3f} ms   < {TARGET_MS} ms   {verdict}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
