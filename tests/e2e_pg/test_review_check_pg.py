"""The deploy gate's strict check on the PostgreSQL store: a candidate with a contradiction is refused through the
real `nba rulesets activate`, the running version keeps serving, and the refused version never reaches the
store's ruleset archive (only versions that served are kept there)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from tests.e2e._support import NBA_SCRIPT, server_env
from tests.e2e.test_review_check import EXIT_REFUSED, status, with_contradiction
from tests.e2e_pg._pg_support import fetch, pg_env, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e


def test_activate_refuses_a_contradiction_on_postgres(pg_dsn: str, start_pg: StartPgServer, tmp_path: Path) -> None:
    seed_sync(pg_dsn, 20, datetime.now(UTC))
    candidate = with_contradiction(tmp_path / "candidate")
    server = start_pg(pg_dsn)
    before = status(server)
    result = subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "activate", str(candidate), "--target", server.address],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**server_env(), **pg_env(pg_dsn)},
    )
    assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
    assert "contradiction: rule 'teen-retiree'" in result.stderr
    after = status(server)
    assert after.active.hash == before.active.hash
    assert after.last_refusal.candidate.version == "9.9.9"
    answer = server.stub.Decide(
        nba_pb2.DecideRequest(customer_id="CUST-000001", channel=nba_pb2.AGENT_DESKTOP), timeout=10
    )
    assert answer.ruleset.hash == before.active.hash
    archived = {row["version"] for row in fetch(pg_dsn, "SELECT version FROM ruleset_sources")}
    assert before.active.version in archived
    assert "9.9.9" not in archived, "a refused version never served, so it is not archived"
