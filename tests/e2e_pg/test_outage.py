"""PostgreSQL going away and coming back under a running `nba serve --store postgres`, and starting without it."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2_grpc
from nba_service.domain.model import Channel
from tests.e2e._support import server_command, server_env
from tests.e2e_pg._pg_support import (
    NOT_SERVING,
    SERVING,
    decide_request,
    frozen,
    health_status,
    pg_args,
    pg_env,
    seed_sync,
    sent_ids,
    wait_for_health,
)
from tests.e2e_pg.conftest import StartPgServer
from tests.pg import ThrowawayCluster

pytestmark = pytest.mark.e2e

COUNT = 50


def _decide_failure(stub: nba_pb2_grpc.NextBestActionStub, customer: str) -> tuple[grpc.RpcError, float]:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Decide(decide_request(customer, Channel.AGENT_DESKTOP), timeout=3)
    return info.value, time.monotonic() - started


def test_database_down_gives_unavailable_not_serving_and_recovers_by_itself(
    pg_cluster: ThrowawayCluster, start_pg: StartPgServer
) -> None:
    """With PostgreSQL stopped under a running server (--db-timeout 1): Decide with a 3 s deadline comes back
    UNAVAILABLE (not DEADLINE_EXCEEDED) within 2 s, saying the database is unavailable; gRPC health reports
    NOT_SERVING within 3 s; once PostgreSQL is started again, without touching the server, health is SERVING
    again and Decide answers OK. The table holds exactly the two decisions answered, marked sent."""
    seed_sync(pg_cluster.nba_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_cluster.nba_dsn)
    stub = server.stub
    first = stub.Decide(decide_request("CUST-000001", Channel.AGENT_DESKTOP), timeout=5)
    assert health_status(server) == SERVING

    pg_cluster.stop("fast")
    for customer in ("CUST-000002", "CUST-000003", "CUST-000002"):
        error, took = _decide_failure(stub, customer)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert took < 2.0, f"UNAVAILABLE took {took:.2f} s"
        details = (error.details() or "").lower()
        assert "database" in details, error.details()
        assert "unavailable" in details, error.details()
    wait_for_health(server, NOT_SERVING, within=3.0)
    error, _ = _decide_failure(stub, "CUST-000004")
    assert error.code() == grpc.StatusCode.UNAVAILABLE

    pg_cluster.start()
    took = wait_for_health(server, SERVING, within=5.0)
    assert took < 5.0
    second = stub.Decide(decide_request("CUST-000004", Channel.OUTBOUND_DIALER), timeout=5)
    assert server.process.poll() is None, "the server restarted or died"
    assert server.stop() == 0, server.log_text()
    events = [e.get("event") for e in server.log_events()]
    assert "store_readiness_changed" in events

    assert sent_ids(pg_cluster.nba_dsn) == sorted([first.decision_id, second.decision_id])


def test_a_hung_database_gives_unavailable_within_the_deadline(
    pg_cluster: ThrowawayCluster, start_pg: StartPgServer
) -> None:
    """With PostgreSQL suspended (connections accepted, nothing answered, as with a hung server or a network
    partition), Decide with a 3 s deadline still comes back UNAVAILABLE, not DEADLINE_EXCEEDED, within about
    2 s (--db-timeout 1 bounds getting a connection and the query each); health turns NOT_SERVING; once
    PostgreSQL resumes, the server serves again by itself and exactly the decisions answered are stored as sent."""
    seed_sync(pg_cluster.nba_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_cluster.nba_dsn)
    stub = server.stub
    answered = [
        stub.Decide(decide_request(f"CUST-{n:06d}", Channel.AGENT_DESKTOP), timeout=5).decision_id for n in range(1, 6)
    ]
    with frozen(pg_cluster):
        for customer in ("CUST-000006", "CUST-000001", "CUST-000007"):
            error, took = _decide_failure(stub, customer)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details(), took)
            assert took < 2.5, f"UNAVAILABLE took {took:.2f} s"
            assert "database" in (error.details() or "")
        wait_for_health(server, NOT_SERVING, within=3.0)
    wait_for_health(server, SERVING, within=5.0)
    answered.append(stub.Decide(decide_request("CUST-000006", Channel.AGENT_DESKTOP), timeout=5).decision_id)
    assert server.stop() == 0, server.log_text()
    assert sent_ids(pg_cluster.nba_dsn) == sorted(answered)


def test_starts_not_serving_while_the_database_is_down_then_serves(
    pg_cluster: ThrowawayCluster, start_pg: StartPgServer
) -> None:
    """Started while PostgreSQL is down, the server still comes up (it logs `serving` with ready false),
    reports NOT_SERVING and answers Decide UNAVAILABLE; once PostgreSQL starts it turns SERVING on its own
    and Decide answers OK."""
    seed_sync(pg_cluster.nba_dsn, COUNT, datetime.now(UTC))
    pg_cluster.stop("fast")
    server = start_pg(pg_cluster.nba_dsn)
    serving = next(e for e in server.log_events() if e.get("event") == "serving")
    assert serving["ready"] is False
    assert health_status(server) == NOT_SERVING
    error, took = _decide_failure(server.stub, "CUST-000001")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert took < 2.0

    pg_cluster.start()
    wait_for_health(server, SERVING, within=5.0)
    response = server.stub.Decide(decide_request("CUST-000001", Channel.AGENT_DESKTOP), timeout=5)
    assert response.decision_id
    assert server.stop() == 0, server.log_text()


def test_refuses_to_start_on_an_unmigrated_schema(pg_empty_dsn: str, tmp_path: Path) -> None:
    """Against a database without the schema, `nba serve --store postgres` exits with code 2 and a message
    that names the missing migration and tells to run `nba db migrate`; it never logs `serving`."""
    result = subprocess.run(
        server_command(tmp_path, *pg_args()),
        capture_output=True,
        text=True,
        timeout=60,
        env={**server_env(), **pg_env(pg_empty_dsn)},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "nba db migrate" in result.stderr
    assert "0001_initial" in result.stderr
    assert '"serving"' not in result.stderr
    assert "Traceback" not in result.stderr
