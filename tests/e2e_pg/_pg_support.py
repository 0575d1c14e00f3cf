"""Helpers for the PostgreSQL end-to-end tests: seeding, SQL from sync code, load, and what to expect.

The server is the real `nba serve --store postgres` process started by `tests.e2e._support.start_server`;
the expectations come from the synthetic generator (the population `seed` loaded) evaluated in this process
with the reference evaluator and the policy code, only where the answer cannot depend on the exact moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.profile import Profile
from nba_service.stores.postgres.seed import SeedReport, seed
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import PB_CHANNEL, RULESET_PATH, ProfileEdit, ServerHandle, start_server
from tests.pg import ThrowawayCluster, run_sync

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def pg_args(*extra: str) -> tuple[str, ...]:
    """`nba serve` arguments for the PostgreSQL store: one-second database calls unless `extra` says otherwise.
    The DSN is not among them: it carries a password, so the server reads it from NBA_DSN only (`pg_env`)."""
    return ("--store", "postgres", "--db-timeout", "1", *extra)


def pg_env(dsn: str) -> dict[str, str]:
    return {"NBA_DSN": dsn}


def spill_dir(server: ServerHandle) -> Path:
    """Where `start_pg_server` tells the server to leave records it could not store at shutdown."""
    return server.server_log.parent / "spill"


def spill_files(server: ServerHandle) -> list[Path]:
    return sorted(spill_dir(server).glob("records-unsent-*.jsonl"))


# --------------------------------------------------------------------------------------------------
# SQL from sync code


async def _seed(dsn: str, count: int, now: datetime) -> SeedReport:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await seed(conn, count, seed=DEFAULT_SEED, now=now)
    finally:
        await conn.close()


def seed_sync(dsn: str, count: int, now: datetime) -> SeedReport:
    return run_sync(_seed(dsn, count, now))


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query on a connection of its own (jsonb comes back as JSON text)."""
    return run_sync(_fetch(dsn, sql, *args))


def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    return fetch(dsn, sql, *args)[0][0]


def decision_ids(dsn: str) -> list[str]:
    return [str(r["decision_id"]) for r in fetch(dsn, "SELECT decision_id FROM decisions")]


def deliveries(dsn: str) -> dict[str, str]:
    """decision id -> delivery (sent, deadline_exceeded, cancelled, failed) for every stored decision."""
    return {str(r["decision_id"]): r["delivery"] for r in fetch(dsn, "SELECT decision_id, delivery FROM decisions")}


def sent_ids(dsn: str) -> list[str]:
    """The stored decisions whose answers reached the caller: exactly the calls answered OK."""
    return sorted(d for d, delivery in deliveries(dsn).items() if delivery == "sent")


class TableLock:
    """Holds a lock on `decisions` that blocks inserts (not reads) from another connection until released:
    the record writer then waits, as it would behind a slow or stuck database, and so do the answers."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._locked = threading.Event()
        self._release = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._hold, name="decisions-lock", daemon=True)

    def _hold(self) -> None:
        async def hold() -> None:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE decisions IN SHARE ROW EXCLUSIVE MODE")
                    self._locked.set()
                    while not self._release.is_set():
                        await conn.execute("SELECT pg_sleep(0.05)")
            finally:
                await conn.close()

        try:
            run_sync(hold())
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            self._locked.set()

    def __enter__(self) -> TableLock:
        self._thread.start()
        assert self._locked.wait(10), "could not lock the decisions table"
        assert not self._errors, self._errors
        return self

    def release(self) -> None:
        self._release.set()
        self._thread.join(10)
        assert not self._errors, self._errors

    def __exit__(self, *exc: object) -> None:
        self.release()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def frozen(cluster: ThrowawayCluster) -> Iterator[None]:
    """Suspends (SIGSTOP) the cluster's postmaster and its backends: PostgreSQL still accepts TCP connections
    (the kernel does) but answers nothing, as a hung or partitioned database does. Resumed (SIGCONT) on exit."""
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None
    pids = [postmaster, *_children(postmaster)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------------------------------
# gRPC


def decide_request(customer: str, channel: Channel, max_actions: int = 20) -> nba_pb2.DecideRequest:
    return nba_pb2.DecideRequest(customer_id=customer, channel=PB_CHANNEL[channel], max_actions=max_actions)


def health_status(server: ServerHandle, timeout: float = 1.0) -> int:
    stub = health_pb2_grpc.HealthStub(server.new_channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


def wait_for_health(server: ServerHandle, status: int, within: float) -> float:
    """Polls grpc.health.v1 Check until it reports `status`; returns how long that took, fails after `within`."""
    started = time.monotonic()
    stub = health_pb2_grpc.HealthStub(server.new_channel())
    seen: list[int] = []
    while True:
        for service in ("", "nba.v1.NextBestAction"):
            seen.append(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status)
        if seen[-2:] == [status, status]:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"health did not become {status} within {within} s (last seen {seen[-2:]})")
        time.sleep(0.05)


@dataclasses.dataclass
class Call:
    started: float
    ended: float
    code: grpc.StatusCode
    decision_id: str = ""
    details: str = ""


class Load:
    """Threads calling Decide back to back (customers 1..`customers`, both channels) until stopped."""

    def __init__(self, server: ServerHandle, customers: int, *, workers: int = 8, deadline: float = 4.0) -> None:
        self.server = server
        self.customers = customers
        self.deadline = deadline
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        channels = [server.new_channel() for _ in range(min(workers, 4))]
        self._threads = [
            threading.Thread(target=self._work, args=(n, channels[n % len(channels)]), daemon=True)
            for n in range(workers)
        ]

    def _work(self, number: int, channel: grpc.Channel) -> None:
        stub = nba_pb2_grpc.NextBestActionStub(channel)
        count = 0
        while not self._stop.is_set():
            customer = f"CUST-{(number * 37 + count) % self.customers + 1:06d}"
            request = decide_request(customer, (Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER)[count % 2])
            started = time.monotonic()
            try:
                response = stub.Decide(request, timeout=self.deadline)
                call = Call(started, time.monotonic(), grpc.StatusCode.OK, response.decision_id)
            except grpc.RpcError as exc:
                call = Call(started, time.monotonic(), exc.code(), details=exc.details() or "")
                time.sleep(0.02)  # no hot loop while the database is away
            with self._lock:
                self.calls.append(call)
            count += 1

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.deadline + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread hung"
        return list(self.calls)

    def ok_count(self) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.code == grpc.StatusCode.OK)

    def wait_for_ok(self, count: int, within: float = 20.0, *, after: float | None = None) -> None:
        """Waits until `count` calls (started after `after`, if given) have been answered OK."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                done = sum(
                    1 for c in self.calls if c.code == grpc.StatusCode.OK and (after is None or c.started >= after)
                )
            if done >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {done} of {count} Decide calls answered OK within {within} s")
            time.sleep(0.02)


# --------------------------------------------------------------------------------------------------
# What the server should answer


@dataclasses.dataclass(frozen=True)
class Expected:
    actions: list[str]
    rules: list[str]
    fired: list[tuple[str, str]]
    dropped: list[tuple[str, str, str]]


class Expectations:
    """Decisions for the population `seed` loaded at `seeded_at`, computed locally."""

    def __init__(self, count: int, seeded_at: datetime) -> None:
        self.ruleset = load_ruleset_file(RULESET_PATH)
        self.active = reference_active(self.ruleset)
        self.seeded_at = seeded_at
        self.profiles = {p.customer_id: p for p in generate_profiles(count, seed=DEFAULT_SEED, now=seeded_at)}

    def evaluate(self, profile: Profile, channel: Channel, now: datetime, limit: int) -> Expected:
        """The service's own pipeline, on the reference evaluator instead of durable_rules."""
        result = evaluate(self.active, profile, channel, now, limit)
        return Expected(
            [a.action_id for a in result.actions],
            [a.rule_id for a in result.actions],
            [(f.rule_id, f.action_id) for f in result.rules_fired],
            [(d.rule_id, d.action_id, d.reason) for d in result.dropped],
        )

    def stable(
        self,
        customer: str,
        channel: Channel,
        *,
        limit: int = 20,
        edits: Iterable[ProfileEdit] = (),
        horizon: timedelta = timedelta(seconds=120),
    ) -> Expected | None:
        """The decision for a call made between now and `horizon` from now, or None when it could change in
        between (every time-dependent check is monotonic in time, so both ends agreeing is enough)."""
        now = datetime.now(UTC)
        profile = self.profiles[customer]
        for edit in edits:
            profile = edit(profile, now)
        first = self.evaluate(profile, channel, now, limit)
        last = self.evaluate(profile, channel, now + horizon, limit)
        return first if first == last else None


def start_pg_server(workdir: Path, dsn: str, *extra: str) -> ServerHandle:
    """`nba serve --store postgres` on `dsn` (through NBA_DSN), spilling into `spill_dir(server)`."""
    return start_server(workdir, *pg_args("--spill-dir", str(workdir / "spill"), *extra), env=pg_env(dsn))
