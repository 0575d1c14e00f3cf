"""RecordOutcome: outcomes feed contact history and frequency caps; bad outcomes are refused precisely."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.domain.profile import Contact, OutcomeKind
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import Oracle, ServerHandle, ids, response_ids, utcnow, with_contact

pytestmark = pytest.mark.e2e

CHANNEL = Channel.AGENT_DESKTOP


def _capped_once(doc: Any) -> set[str]:
    """Actions with a per-action frequency cap of at most one contact (on any channel)."""
    return {
        c["action"] for c in doc["policies"]["frequency_caps"] if "action" in c and c["max"] == 1 and "channel" not in c
    }


def _find(
    server: ServerHandle, oracle: Oracle, actions: set[str], outcome: OutcomeKind, exclude: set[str]
) -> tuple[str, str, list[str]]:
    """(customer, capped action it is offered now, expected actions after recording `outcome` for it)."""
    for profile in oracle.customers(server.ready_at):
        if profile.customer_id in exclude:
            continue
        before = oracle.stable(server, profile.customer_id, CHANNEL)
        if before is None:
            continue
        for action in [a for a in ids(before) if a in actions]:
            contact = with_contact(lambda now, a=action: Contact(a, CHANNEL, now, outcome))
            after = oracle.stable(server, profile.customer_id, CHANNEL, edits=(contact,))
            if after is not None and (action in ids(after)) == (outcome is OutcomeKind.NOT_OFFERED):
                return profile.customer_id, action, ids(after)
    pytest.fail(f"no sample customer is offered one of {sorted(actions)} on {CHANNEL.value}")


def _record(server: ServerHandle, decision_id: str, action_id: str, outcome: int, **kwargs: Any) -> str:
    request = nba_pb2.RecordOutcomeRequest(decision_id=decision_id, action_id=action_id, outcome=outcome, **kwargs)
    return server.stub.RecordOutcome(request, timeout=10).customer_id


def test_accepted_outcome_caps_the_action(start_fresh_server: Any, oracle: Oracle, ruleset_doc: Any) -> None:
    """After ACCEPTED is recorded for an action capped at one contact, the next decision no longer offers it
    (and matches the reference with that contact added); NOT_OFFERED does not count against the cap; both
    outcomes are written to the decision log."""
    capped = _capped_once(ruleset_doc)
    assert capped, "the bundled ruleset has no per-action cap of 1"
    server = start_fresh_server()

    customer, action, expected_after = _find(server, oracle, capped, OutcomeKind.ACCEPTED, set())
    decision = server.decide(customer, CHANNEL, max_actions=20)
    assert action in response_ids(decision)
    assert _record(server, decision.decision_id, action, nba_pb2.ACCEPTED, note="customer keen") == customer
    again = server.decide(customer, CHANNEL, max_actions=20)
    assert action not in response_ids(again)
    assert response_ids(again) == expected_after

    other, other_action, expected_other = _find(server, oracle, capped, OutcomeKind.NOT_OFFERED, {customer})
    decision_other = server.decide(other, CHANNEL, max_actions=20)
    assert other_action in response_ids(decision_other)
    assert _record(server, decision_other.decision_id, other_action, nba_pb2.NOT_OFFERED) == other
    again_other = server.decide(other, CHANNEL, max_actions=20)
    assert other_action in response_ids(again_other)
    assert response_ids(again_other) == expected_other

    deadline = time.monotonic() + 10
    wanted = {(decision.decision_id, action, "accepted"), (decision_other.decision_id, other_action, "not_offered")}
    while True:
        lines = [r for r in server.records() if r.get("kind") == "outcome"]
        seen = {(r["decision_id"], r["action_id"], r["outcome"]) for r in lines}
        if wanted <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert wanted <= seen
    accepted = next(r for r in lines if r["decision_id"] == decision.decision_id)
    assert accepted["customer_id"] == customer
    assert accepted["channel"] == CHANNEL.value
    assert accepted["note"] == "customer keen"


def _error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_outcome_errors_name_the_problem(server: ServerHandle, oracle: Oracle) -> None:
    """Unknown decision: NOT_FOUND. An action the decision did not return, OUTCOME_UNSPECIFIED or an unknown
    outcome number, a time in the future or long before the decision, an over-long note: INVALID_ARGUMENT
    with a field violation on that field. None of them changes what the customer is offered."""
    customer = next(
        p.customer_id
        for p in oracle.customers(server.ready_at)
        if len(oracle.stable(server, p.customer_id, CHANNEL) or []) >= 2
    )
    decision = server.decide(customer, CHANNEL, max_actions=1)
    offered = decision.actions[0].action_id
    not_offered = next(a for a in oracle.ruleset.actions if a != offered)
    now = utcnow()

    missing = _error(lambda: _record(server, str(uuid.uuid4()), offered, nba_pb2.ACCEPTED))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "not found" in (missing.details() or "")

    def stamp(delta: timedelta) -> Timestamp:
        result = Timestamp()
        result.FromDatetime(now + delta)
        return result

    cases: list[tuple[str, Any]] = [
        ("action_id", lambda: _record(server, decision.decision_id, not_offered, nba_pb2.ACCEPTED)),
        ("action_id", lambda: _record(server, decision.decision_id, "", nba_pb2.ACCEPTED)),
        ("decision_id", lambda: _record(server, "", offered, nba_pb2.ACCEPTED)),
        ("outcome", lambda: _record(server, decision.decision_id, offered, nba_pb2.OUTCOME_UNSPECIFIED)),
        ("outcome", lambda: _record(server, decision.decision_id, offered, 99)),
        (
            "time",
            lambda: _record(server, decision.decision_id, offered, nba_pb2.ACCEPTED, time=stamp(timedelta(hours=1))),
        ),
        (
            "time",
            lambda: _record(server, decision.decision_id, offered, nba_pb2.ACCEPTED, time=stamp(-timedelta(hours=1))),
        ),
        ("note", lambda: _record(server, decision.decision_id, offered, nba_pb2.ACCEPTED, note="n" * 501)),
    ]
    for field, call in cases:
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.details())
        violations = field_violations(error)
        assert field in violations, (field, violations)
        assert field in (error.details() or "")
    assert response_ids(server.decide(customer, CHANNEL, max_actions=1)) == [offered]
