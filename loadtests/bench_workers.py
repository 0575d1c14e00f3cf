"""Benchmark: peak Decide rate of `nba serve --workers 1` against `--workers 2`, on the embedded store.

Not a timed test: it prints figures for a human or a CI log.

    python loadtests/bench_workers.py [--workers 1 2] [--rounds 3] [--clients 2] [--connections 4] [--in-flight 8]
                                      [--duration 10] [--warmup 2] [--json]

For each worker count, `--rounds` times (the counts alternate, so a neighbour's burst of work hits both alike):
a fresh temporary directory (so a fresh embedded database, seeded from
the bundled 1,000 customers), the real `nba serve --workers N` as a subprocess, then `--clients` load
generator processes, each with `--connections` connections of its own (so SO_REUSEPORT spreads them over
the workers) and `--in-flight` callers per connection calling Decide back to back (closed loop: the peak
rate is what the server sustains with that many calls always waiting). After `--warmup` seconds the calls of
the next `--duration` seconds are counted and timed. CPU use of the server (supervisor and workers) and of
the generators is sampled over the same window: the generators share the machine's cores with the server,
so on a small machine they take part of what a second worker could have used. The report gives every run
and, per worker count, the median rate of its rounds; the ratio is of those medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_common import Stats, load_average, machine_info, read_json_lines

REPO = Path(__file__).resolve().parents[1]
RULESET = REPO / "rulesets" / "retail-banking.yaml"
START_TIMEOUT_S = 60.0
CUSTOMERS = 1000


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


def start_server(workdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    script = Path(sys.executable).parent / "nba"
    command = [
        str(script),
        "serve",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--rulesets",
        str(RULESET),
        "--log-format",
        "json",
    ]
    log_path = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        serving = next((e for e in read_json_lines(log_path) if e.get("event") == "serving"), None)
        if serving is not None:
            return process, serving
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"nba serve did not start; log:\n{log_path.read_text()}")
        time.sleep(0.05)


def stop_server(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


def server_cpu_seconds(pid: int) -> float:
    """The supervisor's CPU and its live workers' (its children, found by their parent's pid)."""
    family = [pid, *(p.pid for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == pid)]
    total = 0.0
    for each in family:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(each).cpu_times()
            total += times.user + times.system
    return total


def connections_per_worker(serving: dict[str, Any]) -> list[int]:
    port = int(serving["address"].rsplit(":", 1)[1])
    pids = serving.get("worker_pids") or [serving["pid"]]
    counts = []
    for pid in pids:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        counts.append(sum(1 for c in conns if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED))
    return counts


# --------------------------------------------------------------------------------------------------
# The load generator: separate processes, each with its own event loop
# --------------------------------------------------------------------------------------------------


async def drive(pipe: Connection, address: str, options: dict[str, Any]) -> None:
    import grpc

    from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc

    rng = random.Random(options["seed"])
    gc.collect()
    gc.freeze()
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(options["connections"])
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    stubs = [nba_pb2_grpc.NextBestActionStub(channel) for channel in channels]
    desk, dialer = nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER
    latencies: list[int] = []
    errors: dict[str, int] = {}
    phase = {"measure": False, "stop": False}

    async def caller(stub: Any) -> None:
        while not phase["stop"]:
            request = nba_pb2.DecideRequest(
                customer_id=f"CUST-{rng.randint(1, CUSTOMERS):06d}", channel=desk if rng.random() < 0.5 else dialer
            )
            started = time.perf_counter_ns()
            try:
                await stub.Decide(request, timeout=options["timeout"])
            except grpc.aio.AioRpcError as exc:
                if phase["measure"]:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            if phase["measure"]:
                latencies.append(time.perf_counter_ns() - started)

    callers = [asyncio.create_task(caller(stub)) for stub in stubs for _ in range(options["in_flight"])]
    try:
        await asyncio.sleep(options["warmup"])
        pipe.send(("warm",))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "go": every generator at once
        cpu = time.process_time()
        phase["measure"] = True
        began = time.perf_counter()
        await asyncio.sleep(options["duration"])
        phase["measure"] = False
        took = time.perf_counter() - began
        cpu = time.process_time() - cpu
        phase["stop"] = True
        await asyncio.gather(*callers)
    finally:
        for channel in channels:
            await channel.close()
    pipe.send(("done", latencies, errors, took, cpu))


def generator_main(pipe: Connection, address: str, options: dict[str, Any]) -> None:
    try:
        asyncio.run(drive(pipe, address, options))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        pipe.close()


def run_load(address: str, server_pid: int, serving: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes = []
    for number in range(options["clients"]):
        ours, theirs = context.Pipe()
        process = context.Process(
            target=generator_main,
            args=(theirs, address, {**options, "seed": options["seed"] + number}),
            name=f"bench-generator-{number}",
        )
        process.start()
        theirs.close()
        pipes.append(ours)
        processes.append(process)
    try:
        for pipe in pipes:
            message = pipe.recv()
            if message[0] != "warm":
                raise RuntimeError(f"a load generator failed: {message[1:]}")
        spread = connections_per_worker(serving)
        server_cpu = server_cpu_seconds(server_pid)
        generator_cpu = sum(psutil.Process(p.pid).cpu_times().user for p in processes if p.pid)
        busy = psutil.cpu_times()
        began = time.perf_counter()
        for pipe in pipes:
            pipe.send(("go",))
        results = [pipe.recv() for pipe in pipes]
        wall = time.perf_counter() - began
        server_cpu = server_cpu_seconds(server_pid) - server_cpu
        after = psutil.cpu_times()
        idle = (after.idle - busy.idle) + (getattr(after, "iowait", 0.0) - getattr(busy, "iowait", 0.0))
        total = sum(after) - sum(busy)
        for result in results:
            if result[0] != "done":
                raise RuntimeError(f"a load generator failed: {result[1:]}")
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
    latencies = [ns for result in results for ns in result[1]]
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result[2].items():
            errors[code] = errors.get(code, 0) + count
    took = max(result[3] for result in results)
    generator_cpu = sum(result[4] for result in results)
    stats = Stats.of(latencies, 1e6)
    return {
        "calls": len(latencies),
        "errors": errors,
        "seconds": took,
        "rate": len(latencies) / took,
        "latency_ms": {"p50": stats.median, "p90": stats.p90, "p99": stats.p99, "max": stats.max},
        "server_cpu_cores": server_cpu / wall,
        "generator_cpu_cores": generator_cpu / took,
        "machine_busy": 1 - idle / total if total else float("nan"),
        "connections_per_worker": spread,
    }


def measure(workers: int, options: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"nba-bench-workers{workers}-") as workdir:
        note(f"--workers {workers}: starting the server ...")
        process, serving = start_server(Path(workdir), workers)
        try:
            note(
                f"--workers {workers}: serving on {serving['address']}; {options['clients']} generator(s) x "
                f"{options['connections']} connection(s) x {options['in_flight']} in flight, "
                f"{options['warmup']:g} s warm-up, {options['duration']:g} s measured ..."
            )
            result = run_load(serving["address"], process.pid, serving, options)
        finally:
            code = stop_server(process)
        result["exit_code"] = code
        result["workers"] = workers
        return result


def print_report(report: dict[str, Any]) -> None:
    info = report["machine"]
    options = report["options"]
    print(f"machine: {info['cpu']}, {info['usable_cores']} usable cores, {info['python']}, load {report['load']}")
    print(
        f"load: {options['clients']} generator processes x {options['connections']} connections x "
        f"{options['in_flight']} calls in flight (closed loop), {options['duration']:g} s measured after "
        f"{options['warmup']:g} s warm-up; embedded store, bundled ruleset and sample"
    )
    for run in report["runs"]:
        lat = run["latency_ms"]
        errors = ", ".join(f"{c} {n}" for c, n in run["errors"].items()) or "none"
        print(
            f"--workers {run['workers']}: {run['rate']:6,.0f} Decide/s  p50 {lat['p50']:5.1f} ms  "
            f"p99 {lat['p99']:5.1f} ms  ({run['calls']:,} calls, errors: {errors}; connections per worker "
            f"{run['connections_per_worker']}; CPU cores: server {run['server_cpu_cores']:.2f}, generators "
            f"{run['generator_cpu_cores']:.2f}, machine {run['machine_busy']:.0%} busy; exit {run['exit_code']})"
        )
    for workers, median in report["median_rate"].items():
        print(f"median of --workers {workers}: {median:,.0f} Decide/s")
    if report["ratio"] is not None:
        counts = list(report["median_rate"])
        print(f"ratio --workers {counts[-1]} / --workers {counts[0]}: {report['ratio']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each worker count")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per generator")
    parser.add_argument("--in-flight", type=int, default=8, help="callers per connection")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    options = {
        "clients": args.clients,
        "connections": args.connections,
        "in_flight": args.in_flight,
        "duration": args.duration,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "seed": args.seed,
    }
    load = load_average()
    runs = [measure(workers, options) for _ in range(args.rounds) for workers in args.workers]
    median = {w: statistics.median(r["rate"] for r in runs if r["workers"] == w) for w in args.workers}
    first, last = median[args.workers[0]], median[args.workers[-1]]
    report = {
        "machine": machine_info(["durable-rules", "grpcio"]),
        "load": load,
        "options": options,
        "runs": runs,
        "median_rate": median,
        "ratio": last / first if len(median) >= 2 else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(r["exit_code"] == 0 and not r["errors"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
