"""The decision log a real server writes: one auditable JSON line per decision, raw trigger data kept out of
anything an agent sees."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.domain.scenarios import DROP_REASONS
from tests.e2e._support import Oracle, ServerHandle, ids, response_ids, ruleset_sha256, utcnow, with_event
from tests.e2e.test_events import ingest

pytestmark = pytest.mark.e2e

AMOUNT = 48250.75
ACCOUNT = "Acct-Zq-5521-Unique"


def _customer_for_deposit(server: ServerHandle, oracle: Oracle) -> str:
    """A customer who gets term-deposit-rates (a rule reading the deposit amount) only after a large deposit."""
    event = with_event("large_deposit", {"amount": AMOUNT, "account_last4": ACCOUNT})
    for profile in oracle.customers(server.ready_at):
        before = oracle.stable(server, profile.customer_id, Channel.AGENT_DESKTOP)
        after = oracle.stable(server, profile.customer_id, Channel.AGENT_DESKTOP, edits=(event,))
        if before is not None and after is not None and "term-deposit-rates" in set(ids(after)) - set(ids(before)):
            return profile.customer_id
    pytest.fail("no sample customer gains term-deposit-rates from a large deposit")


def _check_record(record: dict[str, Any], response: nba_pb2.DecideResponse, customer: str, channel: Channel) -> None:
    assert record["kind"] == "decision"
    assert record["decision_id"] == response.decision_id
    decided_at = datetime.fromisoformat(record["decided_at"])
    assert decided_at.tzinfo is not None
    assert abs((decided_at - response.decided_at.ToDatetime(tzinfo=UTC)).total_seconds()) < 0.001
    assert record["customer_id"] == customer
    assert record["channel"] == channel.value
    assert record["ruleset"] == {
        "name": response.ruleset.name,
        "version": response.ruleset.version,
        "hash": ruleset_sha256(),
    }
    assert isinstance(record["latency_ms"], int | float)
    assert 0 <= record["latency_ms"] < 10_000
    assert isinstance(record["rules_fired"], list)
    for fired in record["rules_fired"]:
        assert set(fired) >= {"rule_id", "action_id", "priority", "values"}
        assert isinstance(fired["values"], dict)
        assert fired["values"], f"rule {fired['rule_id']} fired without reading any value"
    for dropped in record["dropped"]:
        assert dropped["reason"] in DROP_REASONS, dropped
        assert dropped["detail"]
        assert dropped["action_id"]
    fired_actions = {f["action_id"] for f in record["rules_fired"]}
    logged = [(a["action_id"], a["script"], a["priority"], a["rule_id"]) for a in record["actions"]]
    assert logged == [(a.action_id, a.script, a.priority, a.rule_id) for a in response.actions]
    for action in record["actions"]:
        assert action["action_id"] in fired_actions
        assert datetime.fromisoformat(action["valid_until"]) > decided_at
    # Every fired rule is accounted for: chosen or dropped with a reason.
    accounted = {a["rule_id"] for a in record["actions"]} | {d["rule_id"] for d in record["dropped"]}
    assert {f["rule_id"] for f in record["rules_fired"]} <= accounted


def test_decision_log_records_each_decision_with_raw_values_only_in_rules_fired(
    start_fresh_server: Any, oracle: Oracle
) -> None:
    """Each Decide leaves one JSON line with decision_id, decided_at, customer_id, channel, ruleset {name,
    version, hash}, rules_fired with the values each rule read, dropped candidates with reasons, the actions and
    latency_ms, plus the interaction context. A large deposit's amount shows up only in rules_fired values; it
    and the account reference never reach an action's script or reason; the account (read by no rule) is not
    in the log at all."""
    server = start_fresh_server()
    customer = _customer_for_deposit(server, oracle)
    ingest(server, customer, "large_deposit", {"amount": AMOUNT, "account_last4": ACCOUNT})
    context = nba_pb2.InteractionContext(reason="card_lost", attributes={"queue": "retail-1", "skill": "cards"})
    responses = [
        (
            customer,
            Channel.AGENT_DESKTOP,
            server.decide(customer, Channel.AGENT_DESKTOP, max_actions=20, context=context),
        ),
        (customer, Channel.OUTBOUND_DIALER, server.decide(customer, Channel.OUTBOUND_DIALER, max_actions=20)),
    ]
    for number in range(1, 41, 4):
        other = f"CUST-{number:06d}"
        for channel in Channel:
            responses.append((other, channel, server.decide(other, channel, max_actions=2)))
    assert "term-deposit-rates" in response_ids(responses[0][2])

    records = server.wait_for_decisions(r.decision_id for _, _, r in responses)
    for who, channel, response in responses:
        _check_record(records[response.decision_id], response, who, channel)

    main = records[responses[0][2].decision_id]
    assert main["context"] == {"reason": "card_lost", "attributes": {"queue": "retail-1", "skill": "cards"}}
    assert main["format"] == "nba.record/1"
    assert main["delivery"] == "sent"
    term = next(f for f in main["rules_fired"] if f["action_id"] == "term-deposit-rates")
    assert math.isclose(term["values"]["events.large_deposit.amount"], AMOUNT)
    assert 0 <= term["values"]["events.large_deposit.age_hours"] < 1

    lines = [json.dumps(r, ensure_ascii=False) for r in server.records()]
    assert len(lines) == len(server.decision_lines())
    for line in lines:
        record = json.loads(line)
        if record["kind"] != "decision":
            continue
        # Raw trigger values stay in the record's evidence: what the rules read, and the profile the decision saw
        # (kept so that it can be replayed exactly); nowhere else.
        evidence = {"rules_fired", "inputs"}
        assert ACCOUNT not in json.dumps({k: v for k, v in record.items() if k not in evidence})
        if record["decision_id"] == main["decision_id"]:
            assert ACCOUNT in json.dumps(record["inputs"]), "the profile the decision saw is kept whole"
        for action in record["actions"]:
            for raw in (str(AMOUNT), "48250", ACCOUNT):
                assert raw not in action["script"]
                assert raw not in action["reason"]
        amount_in = [f for f in record["rules_fired"] if AMOUNT in f["values"].values()]
        without_values = {k: v for k, v in record.items() if k not in evidence}
        assert str(AMOUNT) not in json.dumps(without_values), "the raw amount leaked outside the evidence"
        if record["decision_id"] == main["decision_id"]:
            assert amount_in
    assert utcnow() > datetime.fromisoformat(main["decided_at"])
