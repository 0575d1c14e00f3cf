"""Faults on the embedded store: SIGKILL under load, a full disk, a read-only file and a read-only filesystem.

Real `nba serve` processes, gRPC over loopback, real filesystems: the database sits on a small tmpfs (to fill
it) or on ext4 in a loop-mounted image (for read-only), which needs root and `mount`. Where the tests cannot
get those they skip with the reason, except under CI=true (CI runs as root), where they fail with it.

What they hold the service to (DESIGN.md, "The decision record"): answered means recorded, so SIGKILL at any
moment loses no answered decision; when records cannot be made durable the service says so (health
NOT_SERVING, UNAVAILABLE within --db-timeout) instead of answering without a record or failing with INTERNAL;
it recovers by itself when the disk does; SIGTERM finishes in bounded time whatever the disk does and says in
its log what it could not write.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from tests.e2e._support import NBA_SCRIPT, ServerHandle, export_lines, server_env, start_server

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

DB_TIMEOUT_S = 1.0
DRAIN_S = 2.0
ANSWER_MARGIN_S = 0.75  # how much later than --db-timeout an UNAVAILABLE may arrive (scheduling, one round trip)
HEALTH_WITHIN_S = 1.5  # the runner polls readiness every 0.5 s
CLIENT_TIMEOUT_S = 10.0  # generous: a DEADLINE_EXCEEDED here means the server never answered
CHANNELS = (nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER)


def _cannot_run(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and this fault test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def _must(*command: str) -> None:
    done = _run(*command)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}"


# --------------------------------------------------------------------------------------------------
# Settings: flags where `nba serve` has them, NBA_* variables otherwise
# --------------------------------------------------------------------------------------------------


@functools.cache
def _serve_flags() -> frozenset[str]:
    done = subprocess.run(
        [str(NBA_SCRIPT), "serve", "--help"], capture_output=True, text=True, env=server_env(), check=False
    )
    return frozenset(re.findall(r"(--[a-z][a-z-]+)", done.stdout))


def _settings(values: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """Each setting as its `nba serve` flag if the CLI has one now, else as its NBA_* variable (pydantic-settings
    reads both; `server_env()` strips the parent's NBA_* variables, so they are passed explicitly)."""
    args: list[str] = []
    env: dict[str, str] = {}
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if flag in _serve_flags():
            args += [flag, str(value)]
        else:
            env["NBA_" + name.upper()] = str(value)
    return args, env


# --------------------------------------------------------------------------------------------------
# The rig: servers, mounts and filler files of one test, torn down in that order
# --------------------------------------------------------------------------------------------------


@dataclass
class Rig:
    base: Path
    servers: list[ServerHandle] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    immutable: list[Path] = field(default_factory=list)
    frozen: list[Path] = field(default_factory=list)

    def start(self, workdir: Path, database: Path | None = None, **settings: object) -> ServerHandle:
        if database is not None:
            settings["db_path"] = database
        args, env = _settings(settings)
        handle = start_server(workdir, *args, env=env, database=database)
        self.servers.append(handle)
        return handle

    def _require(self, *tools: str) -> None:
        if os.geteuid() != 0:
            _cannot_run(f"needs root to mount filesystems (running as uid {os.geteuid()})")
        for tool in tools:
            if shutil.which(tool) is None:
                _cannot_run(f"`{tool}` is not installed")

    def tmpfs(self, name: str, size: str) -> Path:
        self._require("mount", "umount")
        where = self.base / name
        where.mkdir(parents=True)
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        if done.returncode != 0:
            _cannot_run(f"`mount -t tmpfs` failed: {done.stderr.strip()}")
        self.mounts.append(where)
        return where

    def ext4(self, name: str, size_mb: int) -> tuple[Path, Path]:
        """A fresh ext4 filesystem in an image file, loop-mounted with errors=remount-ro; (mount point, image)."""
        self._require("mount", "umount", "mkfs.ext4", "chattr", "e2fsck")
        image = self.base / f"{name}.img"
        with image.open("wb") as handle:
            handle.truncate(size_mb << 20)
        _must("mkfs.ext4", "-q", "-F", str(image))
        where = self.base / name
        where.mkdir(parents=True)
        done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(where))
        if done.returncode != 0:
            _cannot_run(f"`mount -o loop` of an ext4 image failed: {done.stderr.strip()}")
        self.mounts.append(where)
        return where, image

    def set_immutable(self, *paths: Path, on: bool = True) -> None:
        for path in paths:
            _must("chattr", "+i" if on else "-i", str(path))
            if on:
                self.immutable.append(path)
            elif path in self.immutable:
                self.immutable.remove(path)

    def freeze(self, where: Path) -> None:
        """`fsfreeze -f`: every write to the filesystem (and every write fault on its mmaps) blocks until thawed."""
        self._require("fsfreeze")
        _must("fsfreeze", "-f", str(where))
        self.frozen.append(where)

    def thaw(self, where: Path) -> None:
        _must("fsfreeze", "-u", str(where))
        self.frozen.remove(where)

    def close(self) -> None:
        for where in self.frozen:  # first: a process blocked on a frozen filesystem cannot even be killed
            _run("fsfreeze", "-u", str(where))
        for handle in self.servers:
            handle.close_channels()
            if handle.process.poll() is None:
                handle.process.kill()
                handle.process.wait(10)
        for path in self.immutable:
            _run("chattr", "-i", str(path))
        for where in reversed(self.mounts):
            if _run("umount", str(where)).returncode != 0:
                _run("umount", "-l", str(where))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


# --------------------------------------------------------------------------------------------------
# Calls and checks
# --------------------------------------------------------------------------------------------------


def _decide_request(customer: int, channel: nba_pb2.Channel.ValueType = nba_pb2.AGENT_DESKTOP) -> nba_pb2.DecideRequest:
    return nba_pb2.DecideRequest(
        customer_id=f"CUST-{customer:06d}", channel=channel, context=nba_pb2.InteractionContext(reason="fault test")
    )


@dataclass
class Answer:
    code: grpc.StatusCode
    took: float
    details: str = ""
    response: Any = None


def _call(method: Any, request: Any, timeout: float = CLIENT_TIMEOUT_S) -> Answer:
    started = time.monotonic()
    try:
        response = method(request, timeout=timeout)
    except grpc.RpcError as exc:
        return Answer(exc.code(), time.monotonic() - started, exc.details() or "")
    return Answer(grpc.StatusCode.OK, time.monotonic() - started, response=response)


def _decide(server: ServerHandle, customer: int, channel: nba_pb2.Channel.ValueType = nba_pb2.AGENT_DESKTOP) -> Answer:
    return _call(server.stub.Decide, _decide_request(customer, channel))


def _decide_ok(server: ServerHandle, customers: range) -> set[str]:
    """Decides for each customer, every one answered OK; returns the decision ids."""
    answered = set()
    for customer in customers:
        answer = _decide(server, customer)
        assert answer.code == grpc.StatusCode.OK, answer
        answered.add(answer.response.decision_id)
    return answered


def _decide_until_ok(server: ServerHandle, customer: int, what: str, within: float = 2.0) -> Answer:
    """The first OK Decide once the fault is gone. UNAVAILABLE (which clients retry) is allowed for `within`
    seconds, for a writer that is still in its retry backoff when the disk comes back; any other code is not."""
    until = time.monotonic() + within
    while True:
        answer = _decide(server, customer)
        if answer.code == grpc.StatusCode.OK:
            return answer
        assert answer.code == grpc.StatusCode.UNAVAILABLE, f"{what}: {answer.code.name} ({answer.details!r})"
        assert time.monotonic() < until, f"{what}: still UNAVAILABLE after {within:g} s ({answer.details!r})"


def _assert_unavailable_in_time(answer: Answer, what: str) -> None:
    assert answer.code == grpc.StatusCode.UNAVAILABLE, f"{what}: {answer.code.name} ({answer.details!r})"
    assert answer.took <= DB_TIMEOUT_S + ANSWER_MARGIN_S, f"{what}: UNAVAILABLE took {answer.took:.2f} s"


class HealthWatch:
    """Every status a gRPC health Watch stream reports, with when it arrived (time.monotonic): a short
    NOT_SERVING spell is seen even if it ends before a poll would have looked."""

    def __init__(self, server: ServerHandle) -> None:
        self.seen: list[tuple[float, int]] = []
        stub = health_pb2_grpc.HealthStub(server.new_channel())
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        first = threading.Event()
        threading.Thread(target=self._read, args=(first,), daemon=True).start()
        assert first.wait(5), "the health Watch stream sent nothing"

    def _read(self, first: threading.Event) -> None:
        try:
            for response in self._call:
                self.seen.append((time.monotonic(), response.status))
                first.set()
        except grpc.RpcError:
            pass
        finally:
            first.set()

    def wait_for(self, status: int, since: float, until: float) -> float | None:
        """When health reported `status` at or after `since` (or was in it then), or None if not by `until`."""
        while True:
            before = [s for t, s in self.seen if t < since]
            if before and before[-1] == status:
                return since
            hit = next((t for t, s in self.seen if t >= since and s == status), None)
            if hit is not None or time.monotonic() > until:
                return hit
            time.sleep(0.02)

    def statuses(self, since: float) -> list[tuple[float, str]]:
        return [(round(t - since, 2), health_pb2.HealthCheckResponse.ServingStatus.Name(s)) for t, s in self.seen]


def _store_lines(server: ServerHandle) -> str:
    return "\n".join(line for line in server.log_text().splitlines() if "store" in line)


def _wait_health(stub: health_pb2_grpc.HealthStub, status: int, until: float) -> float | None:
    """Polls health until it reports `status`; the moment it did (time.monotonic), or None by `until`."""
    while True:
        now = time.monotonic()
        if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == status:
            return now
        if now > until:
            return None
        time.sleep(0.05)


def _fill(directory: Path) -> Path:
    """Writes a file until the filesystem has no space left (ENOSPC), and returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while handle.write(block):
                    pass
    probe = directory / "probe"
    try:
        with pytest.raises(OSError, match="No space left") as full:
            probe.write_bytes(b"\0" * (1 << 12))
    finally:
        probe.unlink(missing_ok=True)
    assert full.value.errno == errno.ENOSPC
    assert os.statvfs(directory).f_bavail == 0
    return filler


def _integrity(database: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def _integrity_of_copy(database: Path, where: Path) -> list[tuple[Any, ...]]:
    """`PRAGMA integrity_check` of the database and its WAL as they are now, checked on a copy so that the
    check (which recovers and checkpoints the WAL) leaves the original exactly as it was."""
    where.mkdir()
    for suffix in ("", "-wal"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            shutil.copyfile(source, where / (database.name + suffix))
    return _integrity(where / database.name)


def _assert_all_recorded(database: Path, answered: set[str]) -> list[dict[str, Any]]:
    """Every answered decision is in the export exactly once, with delivery "sent"; returns the decision records."""
    decisions = [r for r in export_lines(database) if r.get("kind") == "decision"]
    counts = Counter(r["decision_id"] for r in decisions)
    assert not [d for d, n in counts.items() if n > 1], "decision ids repeated in the export"
    missing = answered - set(counts)
    assert not missing, (
        f"{len(missing)} of {len(answered)} answered decisions are not in the export: {sorted(missing)[:5]}"
    )
    wrong = {
        r["decision_id"]: r["delivery"] for r in decisions if r["decision_id"] in answered and r["delivery"] != "sent"
    }
    assert not wrong, f"answered decisions recorded as not sent: {wrong}"
    return decisions


def _event(server: ServerHandle, name: str) -> list[dict[str, Any]]:
    return [e for e in server.log_events() if e.get("event") == name]


# --------------------------------------------------------------------------------------------------
# 1. SIGKILL under load
# --------------------------------------------------------------------------------------------------


@dataclass
class Load:
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[float, grpc.StatusCode, str]] = field(default_factory=list)


def _drive(server: ServerHandle, channel: grpc.Channel, number: int, stop: threading.Event, out: Load) -> None:
    stub = nba_pb2_grpc.NextBestActionStub(channel)
    count = 0
    while not stop.is_set():
        request = _decide_request((number * 127 + count * 31) % 1000 + 1, CHANNELS[(number + count) % 2])
        try:
            out.ok.append(stub.Decide(request, timeout=CLIENT_TIMEOUT_S).decision_id)
        except grpc.RpcError as exc:
            out.failed.append((time.monotonic(), exc.code(), exc.details() or ""))
            if server.process.poll() is not None or stop.is_set():
                return
        count += 1


@pytest.mark.parametrize("kill_after", [0.4, 1.2, 2.0])
def test_sigkill_under_load_loses_no_answered_decision(rig: Rig, kill_after: float) -> None:
    """SIGKILL mid-load loses no answered decision: 8 client threads call Decide back to back (customers across
    CUST-000001..CUST-001000, both channels) and the server is SIGKILLed `kill_after` seconds in. The database as
    the kill left it passes `PRAGMA integrity_check`; a server restarted on the same workdir (same database
    file) starts and serves, and its export holds every decision that got an OK answer, each exactly once
    (no decision id repeated) and with delivery "sent". No call failed before the kill. (The integrity check
    runs on a copy of the database and WAL taken right after the kill, so the restart meets the files exactly
    as the kill left them.)"""
    workdir = rig.base / "work"
    server = rig.start(workdir)
    assert _decide(server, 1).code == grpc.StatusCode.OK  # warm: the engine and the writer are running

    stop = threading.Event()
    loads = [Load() for _ in range(8)]
    channels = [server.new_channel() for _ in range(4)]
    threads = [
        threading.Thread(target=_drive, args=(server, channels[n % 4], n, stop, loads[n]), daemon=True)
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)
    killed_at = time.monotonic()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 5)
    server.close_channels()

    answered = {d for load in loads for d in load.ok}
    early = [(code.name, details) for load in loads for at, code, details in load.failed if at < killed_at]
    assert not early, f"calls failed before the kill: {early[:5]}"
    assert len(answered) >= 20 * kill_after, f"only {len(answered)} answers in {kill_after} s: no real load"
    assert sum(len(load.ok) for load in loads) == len(answered), "the server gave one decision id twice"
    assert _integrity_of_copy(server.database, rig.base / "crash-image") == [("ok",)]
    print(f"SIGKILL after {kill_after} s: {len(answered)} answered decisions")

    restarted = rig.start(workdir)
    assert restarted.database == server.database
    assert _decide(restarted, 2).code == grpc.StatusCode.OK
    decisions = _assert_all_recorded(restarted.database, answered)
    assert len(decisions) >= len(answered) + 2  # the warm-up and the restarted server's own decision too
    assert restarted.stop(signal.SIGTERM, timeout=20) == 0
    assert _integrity(server.database) == [("ok",)]


# --------------------------------------------------------------------------------------------------
# 2. Disk full
# --------------------------------------------------------------------------------------------------


def _start_on_tmpfs(rig: Rig, size: str = "8m") -> tuple[ServerHandle, Path, Path]:
    """A server whose database is on its own small tmpfs and whose spill dir is on the ordinary disk."""
    mount = rig.tmpfs("dbfs", size)
    spill = rig.base / "spill"
    server = rig.start(
        rig.base / "work",
        database=mount / "nba.db",
        spill_dir=spill,
        db_timeout=DB_TIMEOUT_S,
        drain_seconds=DRAIN_S,
    )
    [created] = _event(server, "embedded_database_created")
    assert created["customers"] == 1000
    assert server.database.exists()
    stats = os.statvfs(mount)
    assert stats.f_bavail * stats.f_frsize > 1 << 20, "the tmpfs is too small for the seeded database to work in"
    return server, mount, spill


def test_disk_full_answers_unavailable_reports_not_serving_and_recovers(rig: Rig) -> None:
    """Disk full (the database's tmpfs filled to ENOSPC by another file): Decide answers UNAVAILABLE - not OK, not
    INTERNAL, not DEADLINE_EXCEEDED under a 10 s client deadline - within --db-timeout plus a small margin, the
    log says the record store is failing, and gRPC health turns NOT_SERVING within 1.5 s. Once the filler is
    deleted Decide answers OK again and health is SERVING again, with no restart. Every decision answered OK is
    in the export afterwards, with delivery "sent", and the database passes `PRAGMA integrity_check`."""
    server, mount, _ = _start_on_tmpfs(rig)
    health = server.health()
    watch = HealthWatch(server)
    answered = _decide_ok(server, range(1, 6))

    filler = _fill(mount)
    started = time.monotonic()
    _assert_unavailable_in_time(_decide(server, 6), "Decide on a full disk")
    assert watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S), (
        f"health not NOT_SERVING {HEALTH_WITHIN_S} s after a Decide met a full disk: {watch.statuses(started)}; "
        f"log:\n{_store_lines(server)}"
    )
    _assert_unavailable_in_time(_decide(server, 7, nba_pb2.OUTBOUND_DIALER), "a second Decide on a full disk")
    failing = _event(server, "decision_record_store_failing")
    assert failing, server.log_text()
    assert "full" in failing[0]["error"], failing[0]

    filler.unlink()
    answered.add(_decide_until_ok(server, 8, "Decide after the disk was freed").response.decision_id)
    assert _wait_health(health, SERVING, time.monotonic() + HEALTH_WITHIN_S), "health did not return to SERVING"
    assert _event(server, "decision_record_store_recovered"), server.log_text()
    for customer in range(9, 14):
        answer = _decide(server, customer, CHANNELS[customer % 2])
        assert answer.code == grpc.StatusCode.OK, answer
        answered.add(answer.response.decision_id)

    assert server.stop(signal.SIGTERM, timeout=20) == 0
    decisions = _assert_all_recorded(server.database, answered)
    assert len(decisions) == len(answered), "a refused decision left a record"
    assert _integrity(server.database) == [("ok",)]


def test_disk_full_health_recovers_without_traffic(rig: Rig) -> None:
    """After a full disk is freed, gRPC health returns to SERVING by itself, before any new Decide arrives: a
    load balancer or readiness probe that stopped sending calls on NOT_SERVING would otherwise never send the
    call that heals it, and the replica would stay out of service until restarted."""
    server, mount, _ = _start_on_tmpfs(rig)
    health = server.health()
    watch = HealthWatch(server)
    assert _decide(server, 1).code == grpc.StatusCode.OK
    filler = _fill(mount)
    started = time.monotonic()
    _assert_unavailable_in_time(_decide(server, 2), "Decide on a full disk")
    assert watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S), watch.statuses(started)
    filler.unlink()
    freed = time.monotonic()
    back = _wait_health(health, SERVING, freed + 3.0)
    assert back is not None, (
        "health stayed NOT_SERVING for 3 s after the disk was freed, with no calls coming in; log:\n"
        + _store_lines(server)
    )


def test_disk_full_health_stays_not_serving_while_the_disk_is_full(rig: Rig) -> None:
    """Health follows the disk, not the traffic: once a Decide has met the full disk, gRPC health stays
    NOT_SERVING (and the log claims no recovery) for as long as the disk stays full, with no calls coming in
    (watched for 2.5 s). A replica that turns SERVING again without having written anything draws the load
    balancer's traffic back, only to fail each call after --db-timeout."""
    server, mount, _ = _start_on_tmpfs(rig)
    watch = HealthWatch(server)
    assert _decide(server, 1).code == grpc.StatusCode.OK
    _fill(mount)
    started = time.monotonic()
    _assert_unavailable_in_time(_decide(server, 2), "Decide on a full disk")
    down = watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S)
    assert down is not None, watch.statuses(started)
    time.sleep(max(0.0, down + 2.5 - time.monotonic()))
    back = [t for t, status in watch.seen if t > down and status == SERVING]
    assert not back, (
        f"health returned to SERVING {back[0] - started:.2f} s after a Decide met the full disk, which is still "
        f"full (health: {watch.statuses(started)}); log:\n{_store_lines(server)}"
    )
    assert not _event(server, "decision_record_store_recovered")


def test_sigterm_with_disk_full_stops_in_time_and_names_what_it_could_not_write(rig: Rig) -> None:
    """SIGTERM while the disk is full and Decide calls are waiting on their records: the process exits 0 within
    --db-timeout (in-flight calls end by then) plus --drain-seconds plus a 1 s margin; the waiting calls end
    UNAVAILABLE (never OK: their records were not durable); the log says `stopped`, and its `not_written`
    count matches the decision ids named in `decision_records_not_written` or the records in the spill file
    (records-unsent-*.jsonl in --spill-dir). After the disk is freed every decision answered OK is in the export."""
    server, mount, spill = _start_on_tmpfs(rig)
    answered = _decide_ok(server, range(1, 4))

    filler = _fill(mount)
    in_flight: list[Answer] = []
    threads = [
        threading.Thread(target=lambda n=n: in_flight.append(_decide(server, 10 + n, CHANNELS[n % 2])), daemon=True)
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(DB_TIMEOUT_S + DRAIN_S + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"nba serve did not exit within {DB_TIMEOUT_S + DRAIN_S + 10} s of SIGTERM; log:\n{server.log_text()}"
        )
    took = time.monotonic() - signalled
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 5)

    assert code == 0, server.log_text()
    assert took <= DB_TIMEOUT_S + DRAIN_S + 1.0, f"SIGTERM took {took:.2f} s with the disk full"
    assert len(in_flight) == 4
    assert all(a.code == grpc.StatusCode.UNAVAILABLE for a in in_flight), [(a.code.name, a.details) for a in in_flight]
    [stopped] = _event(server, "stopped")
    not_written = stopped["not_written"]
    named = [d for e in _event(server, "decision_records_not_written") for d in e["decision_ids"]]
    spilled = _event(server, "decision_records_spilled")
    spilled_count = sum(e["records"] + e["delivery_updates"] for e in spilled)
    for event in spilled:
        path = Path(event["path"])
        assert path.parent == spill, path
        assert re.fullmatch(r"records-unsent-.*\.jsonl", path.name), path
        assert len(path.read_text(encoding="utf-8").splitlines()) == event["records"] + event["delivery_updates"]
    assert not_written == len(named), (stopped, named)
    if not spilled:
        assert not list(spill.glob("records-unsent-*.jsonl")), "a spill file the log does not mention"

    filler.unlink()
    _assert_all_recorded(server.database, answered)
    assert _integrity(server.database) == [("ok",)]
    # What this run left behind, for the report: with nothing pending both stay 0.
    print(f"SIGTERM on a full disk took {took:.2f} s; not_written={not_written}, spilled={spilled_count}")


# --------------------------------------------------------------------------------------------------
# 3. Read-only
# --------------------------------------------------------------------------------------------------


def test_read_only_database_file_answers_unavailable_and_recovers_by_itself(rig: Rig) -> None:
    """A database that turns read-only while serving: Decide and IngestEvent answer UNAVAILABLE within
    --db-timeout plus a margin (not INTERNAL), health turns NOT_SERVING within 1.5 s; when it is writable again
    the service recovers by itself (Decide OK, health SERVING) and every decision answered OK is in the export.

    `mount -o remount,ro` of the database's filesystem is what the brief asked for, but Linux refuses it
    ("mount point is busy", EBUSY) while any file on it is open for writing, which SQLite's always are; so the
    read-only condition is made on the files themselves: ext4's immutable attribute (`chattr +i`) on the
    database and its WAL makes every write to them fail with EPERM, and `chattr -i` undoes it. (tmpfs ignores
    the attribute for open files, hence ext4 in a loop-mounted image; the -shm file stays writable, as
    SQLite's mmap of an immutable -shm dies of SIGBUS, which is not what a read-only disk does.)"""
    mount, _ = rig.ext4("dbfs", 32)
    server = rig.start(
        rig.base / "work",
        database=mount / "nba.db",
        spill_dir=rig.base / "spill",
        db_timeout=DB_TIMEOUT_S,
        drain_seconds=DRAIN_S,
    )
    health = server.health()
    watch = HealthWatch(server)
    answered = _decide_ok(server, range(1, 4))

    files = [server.database, server.database.with_name(server.database.name + "-wal")]
    rig.set_immutable(*files)
    started = time.monotonic()
    _assert_unavailable_in_time(_decide(server, 4), "Decide on a read-only database")
    assert watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S), watch.statuses(started)
    _assert_unavailable_in_time(_ingest(server, 5), "IngestEvent on a read-only database")

    rig.set_immutable(*files, on=False)
    answered.add(_decide_until_ok(server, 6, "Decide once the database is writable again").response.decision_id)
    assert _wait_health(health, SERVING, time.monotonic() + HEALTH_WITHIN_S), "health did not return to SERVING"
    assert _ingest(server, 7).code == grpc.StatusCode.OK

    assert server.stop(signal.SIGTERM, timeout=20) == 0
    _assert_all_recorded(server.database, answered)
    assert _integrity(server.database) == [("ok",)]


def test_filesystem_turning_read_only_under_the_server(rig: Rig) -> None:
    """The database's filesystem itself turns read-only while serving (an ext4 error with errors=remount-ro,
    triggered through /sys/fs/ext4/<dev>/trigger_fs_error: the one way Linux makes a filesystem read-only under
    files open for writing). Decide answers UNAVAILABLE within --db-timeout plus a margin, health turns
    NOT_SERVING within 1.5 s, SIGTERM still exits 0 within --db-timeout + --drain-seconds + 1 s and logs
    `stopped`; after an fsck and a fresh mount every decision answered OK is in the export, and the database
    passes `PRAGMA integrity_check`. (Such a filesystem cannot be remounted read-write without fsck, so here
    recovery is a restart; the recoverable case is the test above.)"""
    mount, image = rig.ext4("dbfs", 32)
    server = rig.start(
        rig.base / "work",
        database=mount / "nba.db",
        spill_dir=rig.base / "spill",
        db_timeout=DB_TIMEOUT_S,
        drain_seconds=DRAIN_S,
    )
    device = Path(_run("findmnt", "-no", "SOURCE", str(mount)).stdout.strip()).name
    trigger = Path("/sys/fs/ext4") / device / "trigger_fs_error"
    if not trigger.exists():
        _cannot_run(f"this kernel has no {trigger}")
    watch = HealthWatch(server)
    answered = _decide_ok(server, range(1, 4))

    trigger.write_text("fault test\n")
    options = _run("findmnt", "-no", "OPTIONS", str(mount)).stdout.strip().split(",")
    assert {"ro", "emergency_ro"} & set(options), options  # 6.x kernels mark an error-forced read-only "emergency_ro"
    started = time.monotonic()
    _assert_unavailable_in_time(_decide(server, 4), "Decide on a read-only filesystem")
    assert watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S), watch.statuses(started)

    signalled = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=DB_TIMEOUT_S + DRAIN_S + 10)
    took = time.monotonic() - signalled
    assert code == 0, server.log_text()
    assert took <= DB_TIMEOUT_S + DRAIN_S + 1.0, f"SIGTERM took {took:.2f} s on a read-only filesystem"
    [stopped] = _event(server, "stopped")
    assert stopped["not_written"] == 0, stopped

    _must("umount", str(mount))
    rig.mounts.remove(mount)
    assert _run("e2fsck", "-fy", str(image)).returncode in (0, 1)  # 1: errors corrected
    _must("mount", "-o", "loop", str(image), str(mount))
    rig.mounts.append(mount)
    _assert_all_recorded(mount / "nba.db", answered)
    assert _integrity(mount / "nba.db") == [("ok",)]


def test_stalled_disk_answers_unavailable_and_sigterm_stops_in_time(rig: Rig) -> None:
    """A disk that stops answering while serving (the database's ext4 frozen with `fsfreeze -f`, as a snapshot
    does, and as a hung network volume behaves): Decide answers UNAVAILABLE within --db-timeout plus a margin,
    health turns NOT_SERVING within 1.5 s, and SIGTERM finishes the shutdown within --db-timeout +
    --drain-seconds + 1 s with the disk still frozen, its log saying `stopped`, what it could not write, and which
    threads it left blocked on the disk. (A thread in the kernel's uninterruptible wait keeps the process itself
    from ending, even by SIGKILL, until the disk answers; no user-space code can change that.)
    Thawed afterwards, every decision answered OK is in the
    export. (The Decide here has a 3 s deadline, still three times --db-timeout, to keep the test short.)"""
    mount, _ = rig.ext4("dbfs", 32)
    server = rig.start(
        rig.base / "work",
        database=mount / "nba.db",
        spill_dir=rig.base / "spill",
        db_timeout=DB_TIMEOUT_S,
        drain_seconds=DRAIN_S,
        grace_seconds=DB_TIMEOUT_S,
    )
    watch = HealthWatch(server)
    answered = _decide_ok(server, range(1, 4))

    rig.freeze(mount)
    started = time.monotonic()
    decided = _call(server.stub.Decide, _decide_request(4), timeout=3 * DB_TIMEOUT_S)
    not_serving = watch.wait_for(NOT_SERVING, started, started + HEALTH_WITHIN_S)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    bound = DB_TIMEOUT_S + DRAIN_S + 1.0
    try:
        server.process.wait(bound)
        exited: float | None = time.monotonic() - signalled
    except subprocess.TimeoutExpired:
        exited = None
    log_while_frozen = "\n".join(server.log_text().splitlines()[-4:])
    frozen_events = [e.get("event") for e in server.log_events()]
    rig.thaw(mount)
    code = server.process.wait(20)

    problems = []
    if decided.code != grpc.StatusCode.UNAVAILABLE or decided.took > DB_TIMEOUT_S + ANSWER_MARGIN_S:
        problems.append(f"Decide answered {decided.code.name} after {decided.took:.2f} s ({decided.details!r})")
    if not_serving is None:
        problems.append(f"health did not turn NOT_SERVING within {HEALTH_WITHIN_S} s: {watch.statuses(started)}")
    if exited is None:
        # A thread in the kernel's uninterruptible wait on the frozen filesystem holds the process's exit (not
        # even SIGKILL ends it); what the service controls is that its shutdown is over and said so in time.
        said = [e for e in frozen_events if e in ("stopped", "left_threads_blocked_on_the_database")]
        if "stopped" not in said or "left_threads_blocked_on_the_database" not in said:
            problems.append(f"SIGTERM: shutdown not finished {bound:g} s later (exit {code} after the thaw)")
    assert not problems, "; ".join(problems) + f"; log while frozen:\n{log_while_frozen}"
    assert code == 0
    assert _event(server, "stopped"), server.log_text()
    _assert_all_recorded(server.database, answered)


# --------------------------------------------------------------------------------------------------
# 4. Writes other than decision records, on a full disk
# --------------------------------------------------------------------------------------------------


def _ingest(server: ServerHandle, customer: int) -> Answer:
    request = nba_pb2.IngestEventRequest(
        customer_id=f"CUST-{customer:06d}",
        type="large_deposit",
        attributes={
            "amount": nba_pb2.AttributeValue(number_value=48250.0),
            "account_last4": nba_pb2.AttributeValue(string_value="1234"),
        },
    )
    return _call(server.stub.IngestEvent, request)


def test_ingest_event_and_record_outcome_on_a_full_disk_answer_unavailable(rig: Rig) -> None:
    """IngestEvent and RecordOutcome while the database's disk is full answer UNAVAILABLE (not INTERNAL, not OK)
    within --db-timeout plus a margin, and answer OK again once the space is freed."""
    server, mount, _ = _start_on_tmpfs(rig)
    offered = next(
        (
            a.response
            for a in (_decide(server, n) for n in range(1, 60))
            if a.code == grpc.StatusCode.OK and a.response.actions
        ),
        None,
    )
    assert offered is not None, "no sample customer got an action on the agent desktop"
    outcome = nba_pb2.RecordOutcomeRequest(
        decision_id=offered.decision_id, action_id=offered.actions[0].action_id, outcome=nba_pb2.ACCEPTED
    )

    filler = _fill(mount)
    _assert_unavailable_in_time(_ingest(server, 1), "IngestEvent on a full disk")
    _assert_unavailable_in_time(_call(server.stub.RecordOutcome, outcome), "RecordOutcome on a full disk")
    assert "unexpected_error" not in server.log_text()

    filler.unlink()
    assert _ingest(server, 1).code == grpc.StatusCode.OK
    answer = _call(server.stub.RecordOutcome, outcome)
    assert answer.code == grpc.StatusCode.OK, answer
