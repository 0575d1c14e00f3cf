"""Pending dialer calls on PostgreSQL: the same checks as on the embedded store (tests/e2e/_pending_support.py),
against `nba serve --store postgres`, and what they leave in `contacts`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.synthetic import generate_profiles
from tests.e2e import _pending_support as checks
from tests.e2e._support import ServerHandle
from tests.e2e_pg._pg_support import fetch, fetchval, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 200


@pytest.fixture
def pending_pg(pg_dsn: str, start_pg: StartPgServer, tmp_path: Path) -> tuple[ServerHandle, checks.Pool]:
    """The generated population in an afternoon time zone, under the small two-cap ruleset."""
    seeded_at = datetime.now(UTC)
    seed_sync(pg_dsn, COUNT, seeded_at)
    zone = checks.afternoon_zone(seeded_at)
    fetch(pg_dsn, "UPDATE customers SET attributes = jsonb_set(attributes, '{timezone}', to_jsonb($1::text))", zone)
    ruleset = checks.write_ruleset(tmp_path / "rulesets")
    server = start_pg(pg_dsn, "--workers", "1", "--rulesets", str(ruleset))
    return server, checks.callable_pool(server, list(generate_profiles(COUNT, now=seeded_at)))


def _contacts(dsn: str, customer_ids: list[str]) -> list[Any]:
    return fetch(
        dsn,
        "SELECT customer_id, outcome, pending_until, campaign_id FROM contacts"
        " WHERE customer_id = ANY($1::text[]) AND decision_id IS NOT NULL AND channel = 'outbound_dialer'"
        " ORDER BY customer_id, time",
        customer_ids,
    )


def test_a_second_campaign_does_not_list_the_first_ones_customers(
    pending_pg: tuple[ServerHandle, checks.Pool], pg_dsn: str
) -> None:
    """The second campaign excludes the first one's customers (frequency_cap, `dialer-daily`); each streamed call
    is one pending row in `contacts`, written with its decision."""
    server, pool = pending_pg
    taken = pool.ids[:3]
    checks.check_a_second_campaign_skips_the_first_ones_calls(server, pool)
    rows = _contacts(pg_dsn, taken)
    assert [(r["customer_id"], r["outcome"], r["campaign_id"]) for r in rows] == [
        (ident, "not_offered", "pending-a1") for ident in sorted(taken)
    ]
    assert all(r["pending_until"] is not None for r in rows)
    # The profile the second campaign decided on, as its record keeps it, holds the call with its pending_until.
    inputs = fetch(
        pg_dsn,
        "SELECT c->>'action_id' AS action, c->>'channel' AS channel"
        "  FROM decisions, jsonb_array_elements(inputs->'profile'->'contacts') AS c"
        " WHERE context->'attributes'->>'campaign_id' = 'pending-a2' AND customer_id = ANY($1::text[])"
        " AND c ? 'pending_until'",
        taken,
    )
    assert len(inputs) == len(taken)
    assert {(r["action"], r["channel"]) for r in inputs} == {(checks.ACTION, "outbound_dialer")}


def test_a_retry_of_the_same_campaign_lists_the_same_calls(
    pending_pg: tuple[ServerHandle, checks.Pool], pg_dsn: str
) -> None:
    """Same customers, same keys; the retry's calls replace the first attempt's pending rows, one per customer."""
    server, pool = pending_pg
    taken = pool.ids[:3]
    checks.check_a_retry_lists_the_same_calls(server, pool)
    assert [(r["customer_id"], r["campaign_id"]) for r in _contacts(pg_dsn, taken)] == [
        (ident, "pending-b1") for ident in sorted(taken)
    ]


def test_a_no_answer_disposition_replaces_the_pending_call(
    pending_pg: tuple[ServerHandle, checks.Pool], pg_dsn: str, tmp_path: Path
) -> None:
    """The imported no-answer replaces the pending row and no longer counts; a declined call keeps counting."""
    server, pool = pending_pg
    unanswered, connected = pool.ids[:2]
    checks.check_a_no_answer_releases_the_cap(server, pool, tmp_path)
    rows = _contacts(pg_dsn, [unanswered, connected])
    assert [(r["outcome"], r["pending_until"]) for r in rows if r["customer_id"] == connected] == [("declined", None)]
    assert [(r["outcome"], r["pending_until"] is None) for r in rows if r["customer_id"] == unanswered] == [
        ("no_answer", True),
        ("not_offered", False),
    ]


def test_a_call_never_made_stops_counting_when_its_window_closes(
    pending_pg: tuple[ServerHandle, checks.Pool],
) -> None:
    server, pool = pending_pg
    checks.check_a_call_never_made_stops_counting(server, pool)


def test_every_send_path_counts_against_the_same_cap(
    pending_pg: tuple[ServerHandle, checks.Pool], tmp_path: Path
) -> None:
    server, pool = pending_pg
    checks.check_every_send_path_counts_against_one_cap(server, pool, tmp_path)


def test_an_outcome_for_the_first_attempt_clears_its_retry(
    pending_pg: tuple[ServerHandle, checks.Pool], pg_dsn: str, tmp_path: Path
) -> None:
    server, pool = pending_pg
    [customer] = pool.ids[:1]
    checks.check_an_outcome_for_the_first_attempt_clears_its_retry(server, pool, tmp_path)
    assert [r["campaign_id"] for r in _contacts(pg_dsn, [customer]) if r["pending_until"] is not None] == ["pending-f2"]


def test_results_a_cancelled_campaign_never_streamed_leave_no_pending_call(
    pending_pg: tuple[ServerHandle, checks.Pool], pg_dsn: str
) -> None:
    """Calls decided and recorded but never streamed (the dialer hung up) are corrected to `cancelled` and leave no
    pending contact; every pending contact belongs to a sent decision."""
    server, _ = pending_pg
    stream = server.stub.DecideBatch(
        nba_pb2.DecideBatchRequest(
            campaign_id="cancelled", channel=nba_pb2.OUTBOUND_DIALER, segment=nba_pb2.Segment(all_customers=True)
        )
    )
    next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError):
        list(stream)
    withdrawn_sql = (
        "SELECT count(*) FROM decisions WHERE context->'attributes'->>'campaign_id' = 'cancelled'"
        " AND delivery = 'cancelled' AND context->'attributes' ? 'idempotency_key'"
    )
    deadline = time.monotonic() + 10
    while fetchval(pg_dsn, withdrawn_sql) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fetchval(pg_dsn, withdrawn_sql) > 0
    deliveries = fetch(
        pg_dsn,
        "SELECT DISTINCT d.delivery FROM contacts k JOIN decisions d USING (decision_id)"
        " WHERE k.pending_until IS NOT NULL",
    )
    assert {r["delivery"] for r in deliveries} <= {"sent"}
