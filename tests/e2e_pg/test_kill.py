"""SIGKILL of the server under load on PostgreSQL: no answered decision is lost, none is stored twice."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime

import grpc
import pytest

from nba_service.domain.model import Channel
from tests.e2e._support import NBA_SCRIPT, server_env
from tests.e2e_pg._pg_support import Load, deliveries, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 300


@pytest.mark.parametrize("answered_before_kill", [50, 400])
def test_sigkill_under_load_loses_no_answered_decision(
    pg_dsn: str, start_pg: StartPgServer, answered_before_kill: int
) -> None:
    """Eight threads call Decide back to back; the server is killed with SIGKILL mid-load (no shutdown, no
    drain, no spill). A new server on the same database serves, and `nba decisions export --store postgres`
    holds every decision answered OK exactly once, marked sent."""
    seed_sync(pg_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_dsn)
    load = Load(server, COUNT, workers=8, deadline=4.0).start()
    load.wait_for_ok(answered_before_kill)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    calls = load.stop()
    answered = [c.decision_id for c in calls if c.code == grpc.StatusCode.OK]
    assert len(answered) >= answered_before_kill
    assert {c.code for c in calls} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

    again = start_pg(pg_dsn)
    assert again.decide("CUST-000001", Channel.AGENT_DESKTOP).decision_id

    exported = subprocess.run(
        [str(NBA_SCRIPT), "decisions", "export", "--store", "postgres"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**server_env(), "NBA_DSN": pg_dsn},
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    ids = [r["decision_id"] for r in records if r["kind"] == "decision"]
    assert len(ids) == len(set(ids)), "a decision was stored twice"
    by_id = {r["decision_id"]: r for r in records if r["kind"] == "decision"}
    missing = [d for d in answered if d not in by_id]
    assert not missing, f"{len(missing)} answered decisions lost, e.g. {missing[:3]}"
    assert all(by_id[d]["delivery"] == "sent" for d in answered)
    assert set(deliveries(pg_dsn)) == set(by_id)
