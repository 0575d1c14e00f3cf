"""The embedded database keeps history: callers cannot evict it, restarts keep it, and processes share it."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from tests.e2e._support import Oracle, ServerHandle, response_ids, start_server
from tests.e2e.test_events import AMOUNT, COUNTRY, MERCHANT, _find_customer, ingest

pytestmark = pytest.mark.e2e

CHANNEL = Channel.AGENT_DESKTOP
ABROAD = {"country": COUNTRY, "amount": AMOUNT, "merchant": MERCHANT}


def _outcome(server: ServerHandle, decision_id: str, action_id: str, outcome: int) -> None:
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=decision_id, action_id=action_id, outcome=outcome), timeout=10
    )


def _capped_elsewhere(server: ServerHandle) -> tuple[str, str, str, str]:
    """A customer, a decision, an action it offered, and another action its seeded history caps."""
    for number in range(1, 1001):
        customer = f"CUST-{number:06d}"
        decision = server.decide(customer, CHANNEL, max_actions=20)
        if not decision.actions:
            continue
        record = server.wait_for_decisions([decision.decision_id])[decision.decision_id]
        capped = [d["action_id"] for d in record["dropped"] if d["reason"] == "frequency_cap"]
        if capped:
            return customer, decision.decision_id, decision.actions[0].action_id, capped[0]
    pytest.fail("no sample customer has an action capped by its seeded history")


def test_hundreds_of_no_answers_neither_evict_history_nor_lift_a_cap(start_fresh_server: Any) -> None:
    """Measured before: 600 NO_ANSWER outcomes pushed the seeded contact out of a 500-entry history and lifted a
    cap. Now 600 outcomes for one offered action are one contact: the other action stays capped, and so does
    the offered one after an ACCEPTED followed by 50 replayed NO_ANSWERs (a no-answer cannot undo an offer heard)."""
    server = start_fresh_server()
    customer, decision_id, offered, capped = _capped_elsewhere(server)
    for _ in range(600):
        _outcome(server, decision_id, offered, nba_pb2.NO_ANSWER)
    again = server.decide(customer, CHANNEL, max_actions=20)
    record = server.wait_for_decisions([again.decision_id])[again.decision_id]
    assert capped not in response_ids(again)
    assert capped in {d["action_id"] for d in record["dropped"] if d["reason"] == "frequency_cap"}

    heard = again.actions[0].action_id if again.actions else None
    if heard is None:
        return
    _outcome(server, again.decision_id, heard, nba_pb2.ACCEPTED)
    after_accept = server.decide(customer, CHANNEL, max_actions=20)
    for _ in range(50):
        _outcome(server, again.decision_id, heard, nba_pb2.NO_ANSWER)
    after_replays = server.decide(customer, CHANNEL, max_actions=20)
    assert response_ids(after_replays) == response_ids(after_accept)
    outcomes = [r for r in server.records() if r["kind"] == "outcome" and r["decision_id"] == again.decision_id]
    assert len(outcomes) == 51, "every outcome stays in the audit trail"


def test_hundreds_of_other_events_do_not_push_out_a_live_trigger(start_fresh_server: Any, oracle: Oracle) -> None:
    """Measured before: 200 events of another type evicted a live card_declined_abroad trigger. Now the newest
    live event of each declared type is read however many other events the customer has."""
    server = start_fresh_server()
    customer = _find_customer(server, oracle, CHANNEL, "card_declined_abroad", ABROAD, "card-abroad-unblock")
    ingest(server, customer, "card_declined_abroad", ABROAD)
    assert "card-abroad-unblock" in response_ids(server.decide(customer, CHANNEL, max_actions=20))
    for _ in range(250):
        ingest(server, customer, "app_login_failures", {})
    assert "card-abroad-unblock" in response_ids(server.decide(customer, CHANNEL, max_actions=20))


def test_events_outcomes_and_decisions_survive_a_restart(
    tmp_path_factory: pytest.TempPathFactory, oracle: Oracle
) -> None:
    """Stop the server and start it again on the same database: the ingested trigger still drives the decision,
    the recorded outcome still caps, and every decision record made before is still there."""
    workdir = tmp_path_factory.mktemp("restart")
    first = start_server(workdir)
    customer = _find_customer(first, oracle, CHANNEL, "card_declined_abroad", ABROAD, "card-abroad-unblock")
    ingest(first, customer, "card_declined_abroad", ABROAD)
    decision = first.decide(customer, CHANNEL, max_actions=20)
    assert "card-abroad-unblock" in response_ids(decision)
    _outcome(first, decision.decision_id, "card-abroad-unblock", nba_pb2.ACCEPTED)
    capped = first.decide(customer, CHANNEL, max_actions=20)
    assert first.stop(signal.SIGTERM) == 0

    second = start_server(workdir)
    try:
        again = second.decide(customer, CHANNEL, max_actions=20)
        assert response_ids(again) == response_ids(capped)
        kept = {r["decision_id"] for r in second.decision_lines()}
        assert {decision.decision_id, capped.decision_id} <= kept
    finally:
        assert second.stop(signal.SIGTERM) == 0


def test_two_processes_serve_one_database(tmp_path_factory: pytest.TempPathFactory, oracle: Oracle) -> None:
    """Two servers on one file at once: an event ingested through one drives the other's next decision, and
    both processes' decision records land in the same database."""
    first = start_server(tmp_path_factory.mktemp("one"))
    database = first.database
    second = start_server(tmp_path_factory.mktemp("two"), "--db-path", str(database))
    try:
        customer = _find_customer(first, oracle, CHANNEL, "card_declined_abroad", ABROAD, "card-abroad-unblock")
        ingest(first, customer, "card_declined_abroad", ABROAD)
        answered = [second.decide(customer, CHANNEL, max_actions=20)]
        assert "card-abroad-unblock" in response_ids(answered[0])
        for number in range(1, 200):
            server = first if number % 2 else second
            answered.append(server.decide(f"CUST-{number:06d}", CHANNEL))
        stored = first.wait_for_decisions(a.decision_id for a in answered)
        assert len(stored) == len(answered)
    finally:
        assert second.stop(signal.SIGTERM) == 0
        assert first.stop(signal.SIGTERM) == 0
