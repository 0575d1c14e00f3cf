"""`nba health` against the real server: the command the container's HEALTHCHECK and the chart's TLS probes run.

Readiness (`nba.v1.NextBestAction`) follows the store; liveness (`liveness`) only says the process answers, so
a database outage takes replicas out of the load balancer without Kubernetes restarting them.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from nba_service import health_cli
from nba_service.transport.grpc_server import LIVENESS_NAME, SERVICE_NAME
from tests.e2e._support import NBA_SCRIPT, ServerHandle, server_env, start_server

pytestmark = pytest.mark.e2e


def nba_health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**server_env(), **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_cli_names_are_the_servers() -> None:
    """The names `nba health` offers are the ones the server sets (spelled out there to keep `nba` fast)."""
    assert health_cli.READINESS_SERVICE == SERVICE_NAME
    assert health_cli.LIVENESS_SERVICE == LIVENESS_NAME


@pytest.mark.parametrize("service", [SERVICE_NAME, LIVENESS_NAME, ""])
def test_serving_exits_0(server: ServerHandle, service: str) -> None:
    """Every health name the server sets answers SERVING on a healthy server: exit 0 and one line saying so."""
    result = nba_health("--target", server.address, "--service", service)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{service or '(server)'}: SERVING\n"


def test_the_default_is_readiness_and_the_target_comes_from_the_environment(server: ServerHandle) -> None:
    result = nba_health(env={"NBA_TARGET": server.address})
    assert (result.returncode, result.stdout) == (0, f"{SERVICE_NAME}: SERVING\n"), result.stderr


def test_an_unknown_service_is_named_and_exits_2(server: ServerHandle) -> None:
    result = nba_health("--target", server.address, "--service", "no.such.Service")
    assert result.returncode == 2
    assert result.stderr == f"error: NOT_FOUND: {server.address} has no health service named 'no.such.Service'\n"


def test_nothing_listening_exits_3() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = nba_health("--target", address, "--timeout", "2")
    assert result.returncode == 3
    assert f"cannot reach the service at {address}" in result.stderr


def test_database_away_is_not_ready_but_alive(tmp_path: Path) -> None:
    """Started with PostgreSQL unreachable, the server serves NOT_SERVING for readiness (exit 1) while liveness
    stays SERVING (exit 0): the probes then stop traffic to it without restarting it."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nba"
    handle = start_server(tmp_path, "--store", "postgres", "--db-timeout", "1", env={"NBA_DSN": dsn})
    try:
        assert handle.health_status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        ready = nba_health("--target", handle.address)
        assert (ready.returncode, ready.stdout) == (1, f"{SERVICE_NAME}: NOT_SERVING\n")
        alive = nba_health("--target", handle.address, "--service", LIVENESS_NAME)
        assert (alive.returncode, alive.stdout) == (0, "liveness: SERVING\n"), alive.stderr
    finally:
        assert handle.stop() == 0, handle.log_text()
