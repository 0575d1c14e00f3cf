"""`nba serve` start-up failures: a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from tests.e2e._support import NBA_SCRIPT, server_env

pytestmark = pytest.mark.e2e


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(NBA_SCRIPT), "serve", "--log-format", "json", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=server_env(), check=False
    )


def test_invalid_ruleset_refuses_to_start_with_every_problem(tmp_path: Path) -> None:
    """A ruleset missing required sections stops start-up with exit code 2 and one line per problem."""
    ruleset = tmp_path / "broken.yaml"
    ruleset.write_text("ruleset: {name: broken}\n", encoding="utf-8")
    result = _serve(tmp_path, "--port", "0", "--rulesets", str(ruleset))
    assert result.returncode == 2
    assert "cannot start: the rulesets are invalid" in result.stderr
    for section in ("fields", "actions", "rules"):
        assert f"'{section}' is a required property" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_ruleset_path_is_a_usage_error(tmp_path: Path) -> None:
    """A --rulesets path that does not exist is a usage error (exit code 2) naming the path."""
    result = _serve(tmp_path, "--port", "0", "--rulesets", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_refuses_to_start_cleanly(tmp_path: Path) -> None:
    """A port already taken stops start-up with `cannot start: ...` and exit code 2, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _serve(tmp_path, "--port", str(taken.getsockname()[1]))
    assert "Traceback" not in result.stderr
    assert "cannot start" in result.stderr
    assert result.returncode == 2


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_serving_address_is_a_usable_target_for_ipv6(start_fresh_server: Any) -> None:
    """With --host ::1 the `serving` event's address can be dialled as it is, as it can for IPv4."""
    server = start_fresh_server("--host", "::1")
    port = server.address.rsplit(":", 1)[1]
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert server.address == f"[::1]:{port}"


def test_unwritable_database_refuses_to_start(tmp_path: Path) -> None:
    """A database path that cannot be created (its parent is a file) stops start-up with `cannot start`
    and exit code 2: the service never runs without its audit trail."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    command = [
        str(NBA_SCRIPT),
        "serve",
        "--port",
        "0",
        "--db-path",
        str(blocker / "nba.db"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=server_env(), check=False
    )
    assert result.returncode == 2
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr
