"""Helpers for the tests of `nba serve --workers N`: which worker serves a connection, and the supervisor's log.

A gRPC channel hides its connection, so ownership is read from the operating system: the channel's new
client port, and the worker process holding the server side of that connection (psutil).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.supervisor import connection_migration
from tests.e2e._support import ServerHandle


def fresh_channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (gRPC shares connections between equal channels otherwise)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def reset_in_hand_over(code: str, details: str) -> bool:
    """A call whose new connection was queued on a worker leaving the port and reset by the kernel, which happens
    only where net.ipv4.tcp_migrate_req is off (the supervisor warns then; docs/operators/workers.md).
    Seen on a busy 2-core machine, where a worker accepts late; tests/test_connection_migration.py shows both."""
    return connection_migration() is False and code == "UNAVAILABLE" and "reset by peer" in details.lower()


def port_of(server: ServerHandle) -> int:
    return int(server.address.rsplit(":", 1)[1])


def _client_ports(server_port: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED
    }


def _owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.laddr.port == server_port and conn.raddr and conn.raddr.port == client_port:
                return pid
    return None


def channel_owner(server: ServerHandle, channel: grpc.Channel, pids: list[int]) -> int | None:
    """Connects `channel` (one health check) and returns the pid of the worker that accepted its connection."""
    server_port = port_of(server)
    before = _client_ports(server_port)
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    new = _client_ports(server_port) - before
    assert len(new) == 1, f"expected one new connection, found {sorted(new)}"
    return _owner(pids, server_port, new.pop())


def channels_by_worker(server: ServerHandle, pids: list[int], attempts: int = 200) -> dict[int, grpc.Channel]:
    """One connected channel per worker pid: fresh connections until the kernel has handed one to each."""
    found: dict[int, grpc.Channel] = {}
    for _ in range(attempts):
        channel = fresh_channel(server.address)
        owner = channel_owner(server, channel, pids)
        if owner is not None and owner not in found:
            found[owner] = channel
            if len(found) == len(pids):
                return found
        else:
            channel.close()
    for channel in found.values():
        channel.close()
    pytest.fail(f"{attempts} connections reached only workers {sorted(found)} of {pids}")


def serving_event(server: ServerHandle) -> dict[str, Any]:
    return next(e for e in server.log_events() if e.get("event") == "serving")


def events(server: ServerHandle, name: str) -> list[dict[str, Any]]:
    return [e for e in server.log_events() if e.get("event") == name]


def wait_for_event(server: ServerHandle, name: str, *, count: int = 1, timeout: float = 60.0) -> dict[str, Any]:
    """The `count`-th `name` event of the server's log, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = events(server, name)
        if len(found) >= count:
            return found[count - 1]
        if server.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {name!r} event #{count} within {timeout} s; log:\n{server.log_text()}")
        time.sleep(0.05)


def worker_processes(supervisor: int) -> list[int]:
    """The running worker processes started by this supervisor, found by their command line (which names the
    supervisor), so that workers it left behind are found too. Read from /proc: psutil's `children()` drops a
    child whose start time looks earlier than its parent's, which a step of this VM's clock can make it do."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if b"nba_service.worker" in argv and argv[-2:] == [str(supervisor).encode(), b""] and state != "Z":
                found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to reap it has already stopped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            pytest.fail(f"still running after {timeout} s: {[pid for pid in pids if alive(pid)]}")
        time.sleep(0.05)


def decide_with_actions(channel: grpc.Channel, customers: range = range(1, 200)) -> nba_pb2.DecideResponse:
    """A decision that offers at least one action, through this channel."""
    stub = nba_pb2_grpc.NextBestActionStub(channel)
    for number in customers:
        request = nba_pb2.DecideRequest(customer_id=f"CUST-{number:06d}", channel=nba_pb2.AGENT_DESKTOP)
        response = stub.Decide(request, timeout=10)
        if response.actions:
            return response
    pytest.fail(f"no customer among {customers} was offered an action")
