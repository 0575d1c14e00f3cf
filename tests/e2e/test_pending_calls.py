"""Pending dialer calls on the embedded store: a call streamed to a dialer counts toward caps until its disposition
arrives or its call window closes, on every send path (checks in tests/e2e/_pending_support.py)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e import _pending_support as checks
from tests.e2e._support import ServerHandle, start_server
from tests.e2e.conftest import StartServer


@pytest.fixture(scope="module")
def pending_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The sample in an afternoon time zone, under the small two-cap ruleset; campaigns change its state."""
    folder = tmp_path_factory.mktemp("nba-pending")
    sample = checks.write_afternoon_sample(folder, checks.afternoon_zone(datetime.now(UTC)))
    ruleset = checks.write_ruleset(folder / "rulesets")
    handle = start_server(folder, "--sample", str(sample), "--rulesets", str(ruleset))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def pool(pending_server: ServerHandle) -> checks.Pool:
    return checks.callable_pool(pending_server, list(read_sample(SAMPLE_PATH, datetime.now(UTC))))


def _pending_rows(server: ServerHandle, customer_ids: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    with sqlite3.connect(server.database) as conn:
        return conn.execute(
            "SELECT customer_id, outcome, pending_until, campaign_id FROM contacts"
            f" WHERE customer_id IN ({', '.join('?' * len(customer_ids))}) AND channel = 'outbound_dialer'"
            " AND decision_id IS NOT NULL ORDER BY customer_id",
            customer_ids,
        ).fetchall()


def test_a_second_campaign_does_not_list_the_first_ones_customers(
    pending_server: ServerHandle, pool: checks.Pool
) -> None:
    """Two campaigns run before any disposition is imported: the second excludes every customer the first
    listed, with frequency_cap naming `dialer-daily`; the profile the second decided on (its record's inputs)
    holds the first one's call as a pending contact with its `pending_until`."""
    taken = pool.ids[:3]
    checks.check_a_second_campaign_skips_the_first_ones_calls(pending_server, pool)
    second = [
        r
        for r in pending_server.decision_lines()
        if r["context"]["attributes"].get("campaign_id") == "pending-a2" and r["customer_id"] in taken
    ]
    assert len(second) == len(taken)
    for record in second:
        [contact] = [c for c in record["inputs"]["profile"]["contacts"] if c.get("pending_until")]
        assert contact["action_id"] == checks.ACTION
        assert contact["channel"] == "outbound_dialer"
        assert datetime.fromisoformat(contact["pending_until"]) > datetime.fromisoformat(record["decided_at"])


def test_a_retry_of_the_same_campaign_lists_the_same_calls(pending_server: ServerHandle, pool: checks.Pool) -> None:
    """The same campaign run again lists the same customers with the same idempotency keys, its calls replace the
    first attempt's pending contacts (one per customer), and any other campaign still sees them as capped."""
    taken = pool.ids[:3]
    checks.check_a_retry_lists_the_same_calls(pending_server, pool)
    rows = _pending_rows(pending_server, taken)
    assert [(ident, outcome, campaign) for ident, outcome, _, campaign in rows] == [
        (ident, "not_offered", "pending-b1") for ident in sorted(taken)
    ]
    assert all(until is not None for _, _, until, _ in rows)


def test_a_no_answer_disposition_replaces_the_pending_call(
    pending_server: ServerHandle, pool: checks.Pool, tmp_path: Path
) -> None:
    """`nba dialer results` with a no-answer replaces the pending contact (no longer pending, not counted), so the
    next campaign lists the customer; a declined call keeps counting."""
    taken = pool.ids[:2]
    checks.check_a_no_answer_releases_the_cap(pending_server, pool, tmp_path)
    rows = {ident: (outcome, until) for ident, outcome, until, _ in _pending_rows(pending_server, taken)}
    assert rows[taken[1]] == ("declined", None)
    # The unanswered customer: the import's no-answer (no longer pending) and the new campaign's pending call.
    outcomes = sorted(outcome for ident, outcome, _, _ in _pending_rows(pending_server, taken) if ident == taken[0])
    assert outcomes == ["no_answer", "not_offered"]


def test_a_call_never_made_stops_counting_when_its_window_closes(
    pending_server: ServerHandle, pool: checks.Pool
) -> None:
    """No disposition ever arrives: the pending call counts while its call window is open and not after."""
    checks.check_a_call_never_made_stops_counting(pending_server, pool)


def test_every_send_path_counts_against_the_same_cap(
    pending_server: ServerHandle, pool: checks.Pool, tmp_path: Path
) -> None:
    """Decide on the agent desktop (with its outcome), DecideBatch, `nba dialer export` and a retried Decide all
    count against `check-in-daily`, a cap on the action whatever the channel."""
    checks.check_every_send_path_counts_against_one_cap(pending_server, pool, tmp_path)


def test_an_outcome_for_the_first_attempt_clears_its_retry(
    pending_server: ServerHandle, pool: checks.Pool, tmp_path: Path
) -> None:
    checks.check_an_outcome_for_the_first_attempt_clears_its_retry(pending_server, pool, tmp_path)


def test_results_a_cancelled_campaign_never_streamed_leave_no_pending_call(start_fresh_server: StartServer) -> None:
    """A dialer that hangs up after the first result: the results never streamed are corrected to `cancelled` and
    hand over no call, so only sent decisions leave pending contacts."""
    server = start_fresh_server("--workers", "1")
    stream = server.stub.DecideBatch(
        nba_pb2.DecideBatchRequest(
            campaign_id="cancelled", channel=nba_pb2.OUTBOUND_DIALER, segment=nba_pb2.Segment(all_customers=True)
        )
    )
    next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError):
        list(stream)
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in server.decision_lines() if r["context"]["attributes"].get("campaign_id") == "cancelled"]
        withdrawn = {
            r["decision_id"]
            for r in records
            if r["delivery"] == "cancelled" and "idempotency_key" in r["context"]["attributes"]
        }
        if withdrawn or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert withdrawn  # calls decided and recorded, never streamed
    deliveries = {r["decision_id"]: r["delivery"] for r in records}
    with sqlite3.connect(server.database) as conn:
        pending = {row[0] for row in conn.execute("SELECT decision_id FROM contacts WHERE pending_until IS NOT NULL")}
    assert pending.isdisjoint(withdrawn)
    assert {deliveries[d] for d in pending} <= {"sent"}
