"""Benchmark: a dialer campaign of 100,000 customers streamed from the PostgreSQL store through the real server.

Not a timed test: it prints figures (and PASS/MISS against the issue's target: 100,000 customers in under 30 s)
for a human or a CI log.

    python loadtests/bench_dialer.py [--dsn SERVER_DSN] [--customers 100000] [--format generic] [--keep] [--json]

What it does, in order:
1. creates a fresh database `nba_dialer_bench_<pid>` on the server named by `--dsn` (env NBA_BENCH_DSN),
   migrates it, seeds `--customers` synthetic customers (with their phone numbers) and runs VACUUM ANALYZE;
2. starts the real server (`nba serve --store postgres --workers 1`: a stream is served by one worker);
3. runs the real client, `nba dialer export --all-customers`, as a subprocess, and samples the resident memory
   of both processes every 50 ms while the campaign streams;
4. stops the server (SIGTERM) and checks that `decisions` holds exactly one row per customer for the campaign,
   and that the two files hold one line per customer between them.

The database is dropped at the end unless `--keep`. Exit status 1 when the counts disagree or a process failed,
2 with `--fail-on-miss` when the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from bench_common import load_average, machine_info
from bench_postgres import (
    DEFAULT_DSN,
    busy_seconds,
    cpu_seconds,
    create_database,
    drop_database,
    note,
    prepare_database,
    server_command,
    start_server,
    stop_server,
    with_database,
)

MIB = 1024 * 1024
TARGET_SECONDS = 30.0
SAMPLE_EVERY_S = 0.05


def _rss(process: psutil.Process) -> int:
    """Resident memory of a process and its children (a supervisor's worker, if any)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def _backends(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to the benchmark's database."""
    found: dict[int, float] = {}
    for process in psutil.process_iter(["cmdline"]):
        words = " ".join(process.info["cmdline"] or ()).split()
        # "postgres: 15/main: USER DATABASE HOST(PORT) STATE"
        if words[:1] == ["postgres:"] and database in words[2:4]:
            seconds = cpu_seconds(process.pid)
            if seconds is not None:
                found[process.pid] = seconds
    return found


def next_afternoon(now: datetime) -> datetime:
    """The next 15:00 UTC at least ten minutes ahead. Most synthetic customers (London, Dublin, New York) are
    within their legal calling hours then, so a run at any hour decides the same kind of campaign: decided for
    now, a run at night excluded half the customers for quiet hours and wrote a quarter of the calls."""
    at = now.astimezone(UTC).replace(hour=15, minute=0, second=0, microsecond=0)
    return at if at >= now + timedelta(minutes=10) else at + timedelta(days=1)


def run_campaign(
    address: str, server_pid: int, workdir: Path, layout: str, timeout: float, database: str, at: datetime
) -> dict[str, Any]:
    script = Path(sys.executable).parent / "nba"
    command = [
        str(script), "dialer", "export", "--campaign", "bench", "--all-customers", "--format", layout,
        "--out", "calls.out", "--excluded", "excluded.csv", "--target", address, "--timeout", str(timeout),
        "--at", at.isoformat(),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    server = psutil.Process(server_pid)
    server_peak = server_start = _rss(server)
    client_peak = 0
    cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in [server, *server.children(recursive=True)])
    backends_before = _backends(database)
    backends_last = dict(backends_before)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = busy_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = psutil.Process(process.pid)
    samples = 0
    while process.poll() is None:
        server_peak = max(server_peak, _rss(server))
        with contextlib.suppress(psutil.Error):
            client_peak = max(client_peak, client.memory_info().rss)
        samples += 1
        if samples % 20 == 0:  # a backend that connects and leaves within a second is missed: the pool keeps them
            backends_last.update(_backends(database))
        time.sleep(SAMPLE_EVERY_S)
    seconds = time.perf_counter() - started
    backends_last.update(_backends(database))
    machine_after = busy_seconds()
    stdout, stderr = process.communicate()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = sum(p.cpu_times().user + p.cpu_times().system for p in [server, *server.children(recursive=True)])
    lines = {
        name: sum(1 for _ in (workdir / name).open(encoding="utf-8")) - 1 if (workdir / name).exists() else 0
        for name in ("calls.out", "excluded.csv")
    }
    return {
        "exit_code": process.returncode,
        "stdout": stdout.decode(errors="replace").strip(),
        "stderr": stderr.decode(errors="replace").strip()[-2000:],
        "seconds": seconds,
        "calls": lines["calls.out"],
        "excluded": lines["excluded.csv"],
        "server_rss_start_mib": server_start / MIB,
        "server_rss_peak_mib": server_peak / MIB,
        "client_rss_peak_mib": client_peak / MIB,
        "server_cpu_seconds": cpu_after - cpu_before,
        # The client is the only child that ends during the campaign, so the children's usage is its own.
        "client_cpu_seconds": (children_after.ru_utime + children_after.ru_stime)
        - (children_before.ru_utime + children_before.ru_stime),
        "postgres_cpu_seconds": sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_last.items()),
        "postgres_backends": len(backends_last),
        "machine_cpu_seconds": machine_after[0] - machine_before[0],
        "cores": psutil.cpu_count() or 1,
    }


async def campaign_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM decisions WHERE context->'attributes'->>'campaign_id' = 'bench'"
        )
        return count
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"nba_dialer_bench_{os.getpid()}"
    dsn = with_database(args.dsn, name)
    report: dict[str, Any] = {"machine": machine_info(["grpcio", "asyncpg"]), "customers": args.customers}
    asyncio.run(create_database(args.dsn, name))
    workdir = Path(tempfile.mkdtemp(prefix="nba-dialer-bench-"))
    try:
        report["database"] = asyncio.run(prepare_database(dsn, args.customers))
        command = server_command(workdir, ["--workers", "1"])
        server, serving = start_server(command, workdir / "server.log", workdir, {"NBA_DSN": dsn})
        address = str(serving["address"])
        try:
            note(f"streaming the campaign of {args.customers:,} customers through {address} ...")
            report["load_before"] = load_average()
            at = args.at or next_afternoon(datetime.now(UTC))
            report["campaign_at"] = at.isoformat()
            report["campaign"] = run_campaign(address, server.pid, workdir, args.format, args.timeout, name, at)
            report["load_after"] = load_average()
        finally:
            code, stop_s = stop_server(server, 60)
            report["server"] = {"exit_code": code, "stop_seconds": stop_s}
        report["decisions_recorded"] = asyncio.run(campaign_rows(dsn))
    finally:
        if not args.keep:
            asyncio.run(drop_database(args.dsn, name))
    return report


def print_report(report: dict[str, Any]) -> None:
    machine, campaign = report["machine"], report["campaign"]
    customers = report["customers"]
    print(f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['python']}")
    seed = report["database"]["seed"]
    print(f"seeded:  {seed['customers']:,} customers, {seed['phones']:,} phone numbers in {seed['seconds']:.1f} s")
    print(f"campaign decided for {report['campaign_at']} (the calls' time; --at)")
    print(f"client:  {campaign['stdout']}")
    if campaign["exit_code"] != 0:
        print(f"client failed ({campaign['exit_code']}): {campaign['stderr']}")
    rate = customers / campaign["seconds"] if campaign["seconds"] else 0.0
    verdict = "PASS" if campaign["seconds"] < TARGET_SECONDS and campaign["exit_code"] == 0 else "MISS"
    print(
        f"campaign: {customers:,} customers in {campaign['seconds']:.1f} s = {rate:,.0f} customers/s "
        f"(target < {TARGET_SECONDS:.0f} s: {verdict})"
    )
    print(
        f"memory:  server RSS {campaign['server_rss_start_mib']:.0f} MiB at start, peak "
        f"{campaign['server_rss_peak_mib']:.0f} MiB; client (nba dialer export) peak "
        f"{campaign['client_rss_peak_mib']:.0f} MiB"
    )
    print(f"server CPU: {campaign['server_cpu_seconds']:.1f} s during the campaign; load {report['load_after']}")
    budget = campaign["cores"] * TARGET_SECONDS
    parts = (
        ("server", campaign["server_cpu_seconds"]),
        ("client", campaign["client_cpu_seconds"]),
        (f"PostgreSQL ({campaign['postgres_backends']} backends)", campaign["postgres_cpu_seconds"]),
    )
    named = sum(seconds for _, seconds in parts)
    print(
        f"CPU of the campaign: {', '.join(f'{label} {seconds:.1f} s' for label, seconds in parts)}, "
        f"everything else {campaign['machine_cpu_seconds'] - named:.1f} s; the machine "
        f"{campaign['machine_cpu_seconds']:.1f} s busy in all, against the {budget:.0f} CPU-seconds that "
        f"{campaign['cores']} cores give in {TARGET_SECONDS:.0f} s"
    )
    written = campaign["calls"] + campaign["excluded"]
    print(
        f"check:   {report['decisions_recorded']:,} decisions recorded for the campaign, {written:,} file lines "
        f"({campaign['calls']:,} calls + {campaign['excluded']:,} excluded); "
        f"server exit {report['server']['exit_code']}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default=os.environ.get("NBA_BENCH_DSN", DEFAULT_DSN), help="server DSN")
    parser.add_argument("--customers", type=int, default=100_000, help="customers to seed (default 100000)")
    parser.add_argument("--format", choices=("generic", "genesys", "vicidial"), default="generic")
    parser.add_argument("--timeout", type=float, default=600.0, help="the campaign's deadline in seconds")
    parser.add_argument(
        "--at",
        type=datetime.fromisoformat,
        default=None,
        help="when the calls will be placed, ISO 8601 with an offset (default: the next 15:00 UTC)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 2 when the target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    campaign = report["campaign"]
    lines = campaign["calls"] + campaign["excluded"]
    if campaign["exit_code"] != 0 or report["server"]["exit_code"] != 0:
        return 1
    if report["decisions_recorded"] != report["customers"] or lines != report["customers"]:
        return 1
    if args.fail_on_miss and campaign["seconds"] >= TARGET_SECONDS:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
