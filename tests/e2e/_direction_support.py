"""Checks of directions, mandatory actions and "not now" against a real server, shared by the embedded store's
tests (tests/e2e/test_directions.py) and PostgreSQL's (tests/e2e_pg/test_directions_pg.py).

The server runs the bundled ruleset plus one mandatory notice (`mandatory_ruleset`), so every answer on a
consented channel carries an action with `mandatory` set beside ordinary offers. Customers are found by dry runs,
which record nothing, so the search leaves no trace on caps or records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._review_support import explain, refused
from tests.e2e._support import RULESET_PATH, ServerHandle

NOTICE = "account-terms-notice"
SCRIPT = "Tell the client that our account terms change next month and that a summary is in their online banking."
_ACTION = f"""actions:
  - id: account-terms-notice
    category: compliance
    type: mandatory
    description: "A regulatory notice: the account terms change next month. Every customer must hear it."
    scripts:
      agent_desktop: "{SCRIPT}"
      outbound_dialer: "Tell the client that our account terms change next month and that a summary is on its way."
"""
_RULE = """rules:
  - id: terms-change-everyone
    description: "Every customer hears about the change to the account terms, before any offer."
    reason: "Regulatory notice: account terms change"
    priority: 100
    action: account-terms-notice
    when:
      all:
        - {field: tenure_days, op: gte, value: 0}
"""


def mandatory_ruleset(folder: Path) -> Path:
    """The bundled ruleset with a mandatory notice at the lowest priority of all: it still ranks first."""
    text = RULESET_PATH.read_text(encoding="utf-8")
    changed = text.replace("\nactions:\n", "\n" + _ACTION, 1).replace("\nrules:\n", "\n" + _RULE, 1)
    assert changed.count(NOTICE) == 2, "the bundled ruleset's layout changed: adapt mandatory_ruleset"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RULESET_PATH.name
    path.write_text(changed, encoding="utf-8")
    return path


def _request(customer: str, channel: int, direction: int, **fields: Any) -> nba_pb2.DecideRequest:
    return nba_pb2.DecideRequest(customer_id=customer, channel=channel, direction=direction, max_actions=20, **fields)


def customer_with_notice_and_offer(server: ServerHandle) -> str:
    """A customer whose desktop answer, inbound and outbound alike, holds the notice and at least one offer."""
    for number in range(1, 301):
        customer = f"CUST-{number:06d}"
        answers = [
            server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, way, dry_run=True), timeout=10)
            for way in (nba_pb2.INBOUND, nba_pb2.OUTBOUND)
        ]
        if all(len(a.actions) >= 2 and a.actions[0].action_id == NOTICE for a in answers):
            return customer
    pytest.fail("no customer of the population gets the notice and an offer on the agent desktop both ways")


def _records(server: ServerHandle, decision_ids: list[str], timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """The decisions' records as ExplainDecision gives them back (the record as the store holds it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return {d: json.loads(explain(server, d).record_json) for d in decision_ids}
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def directions_are_recorded_and_explained(server: ServerHandle, customer: str) -> dict[str, str]:
    """Inbound, outbound and unspecified desktop decisions for one customer: each answer says its direction, the
    record keeps it, and ExplainDecision (gRPC and HTTP) shows it; the unspecified one is the desktop's usual
    inbound; a dialer decision is outbound. Returns the decision ids by what was asked."""
    asked = {
        "inbound": _request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.INBOUND),
        "outbound": _request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND),
        "unspecified": _request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.DIRECTION_UNSPECIFIED),
        "dialer": _request(customer, nba_pb2.OUTBOUND_DIALER, nba_pb2.DIRECTION_UNSPECIFIED),
    }
    answers = {name: server.stub.Decide(request, timeout=10) for name, request in asked.items()}
    wanted = {"inbound": "INBOUND", "outbound": "OUTBOUND", "unspecified": "INBOUND", "dialer": "OUTBOUND"}
    assert {name: nba_pb2.Direction.Name(a.direction) for name, a in answers.items()} == wanted
    ids = {name: a.decision_id for name, a in answers.items()}
    records = _records(server, list(ids.values()))
    assert {name: records[ids[name]]["direction"] for name in ids} == {n: w.lower() for n, w in wanted.items()}
    for name, decision_id in ids.items():
        explained = explain(server, decision_id)
        assert nba_pb2.Direction.Name(explained.direction) == wanted[name], name
        assert explained.customer_id == customer
        # Only the desktop's unusual direction is worth a sentence in the summary a reviewer reads.
        said = "The agent was calling the customer (outbound)" in explained.explanation.summary
        assert said == (name == "outbound"), explained.explanation.summary
    if server.http_address is not None:
        with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as http:
            for name, decision_id in ids.items():
                body = http.get(f"/v1/review/decisions/{decision_id}/explanation").json()
                assert body["direction"] == wanted[name], body
                assert body["record"]["direction"] == wanted[name].lower()
    return ids


def dialer_inbound_is_refused_naming_the_field(server: ServerHandle, customer: str) -> None:
    """OUTBOUND_DIALER with INBOUND is INVALID_ARGUMENT whose BadRequest names `direction` (HTTP: 400, the same
    field), and nothing is decided."""
    error = refused(
        lambda: server.stub.Decide(_request(customer, nba_pb2.OUTBOUND_DIALER, nba_pb2.INBOUND), timeout=10)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert set(violations) == {"direction"}, violations
    assert "outbound_dialer" in violations["direction"]
    unknown = refused(lambda: server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, 7), timeout=10))
    assert unknown.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(unknown)) == {"direction"}
    if server.http_address is None:
        return
    with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as http:
        body = {"customer_id": customer, "channel": "OUTBOUND_DIALER", "direction": "INBOUND"}
        answer = http.post("/v1/decide", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "INVALID_ARGUMENT"
        assert [f["field"] for f in answer.json()["fields"]] == ["direction"]
        bad = http.post("/v1/decide", json={**body, "channel": "AGENT_DESKTOP", "direction": "SIDEWAYS"})
        assert bad.status_code == 400
        assert [f["field"] for f in bad.json()["fields"]] == ["direction"]


def mandatory_reaches_both_answers(server: ServerHandle, customer: str) -> None:
    """The notice ranks first with `mandatory` set, the offers after it without, on gRPC and on HTTP; the
    record and ExplainDecision's actions say the same."""
    answer = server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.INBOUND), timeout=10)
    assert [(a.action_id == NOTICE, a.mandatory) for a in answer.actions] == [
        (True, True),
        *[(False, False)] * (len(answer.actions) - 1),
    ]
    assert len(answer.actions) >= 2
    explained = explain(server, answer.decision_id)
    assert [a.mandatory for a in explained.actions] == [a.mandatory for a in answer.actions]
    record = json.loads(explained.record_json)
    assert [a["mandatory"] for a in record["actions"]] == [a.mandatory for a in answer.actions]
    if server.http_address is None:
        return
    with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as http:
        body = {"customer_id": customer, "channel": "AGENT_DESKTOP", "direction": "OUTBOUND", "max_actions": 20}
        over_http = http.post("/v1/decide", json=body)
        assert over_http.status_code == 200, over_http.text
        data = over_http.json()
        assert data["direction"] == "OUTBOUND"
        assert data["actions"][0]["action_id"] == NOTICE
        assert [a["mandatory"] for a in data["actions"]] == [True] + [False] * (len(data["actions"]) - 1)
        reviewed = http.get(f"/v1/review/decisions/{data['decision_id']}/explanation").json()
        assert [a["mandatory"] for a in reviewed["actions"]] == [a["mandatory"] for a in data["actions"]]


def not_now_is_stored_with_its_direction(server: ServerHandle, customer: str) -> dict[str, Any]:
    """NOT_NOW for an offer of an outbound desktop decision is stored; the next decision's record holds it in
    the customer's contact history (the profile as read) with the outbound direction; returns that contact.
    HTTP takes NOT_NOW as well."""
    first = server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND), timeout=10)
    offer = next(a.action_id for a in first.actions if not a.mandatory)
    receipt = server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(
            decision_id=first.decision_id, action_id=offer, outcome=nba_pb2.NOT_NOW, note="call me next week"
        ),
        timeout=10,
    )
    assert receipt.stored
    after = server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.INBOUND), timeout=10)
    record = _records(server, [after.decision_id])[after.decision_id]
    history = [c for c in record["inputs"]["profile"]["contacts"] if c["decision_id"] == first.decision_id]
    assert [(c["action_id"], c["outcome"], c["direction"]) for c in history] == [(offer, "not_now", "outbound")]
    if server.http_address is not None:
        with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as http:
            notice = next(a.action_id for a in after.actions if a.mandatory)
            body = {"decision_id": after.decision_id, "action_id": notice, "outcome": "NOT_NOW"}
            assert http.post("/v1/outcomes", json=body).status_code == 200
        later = server.stub.Decide(_request(customer, nba_pb2.AGENT_DESKTOP, nba_pb2.INBOUND), timeout=10)
        contacts = _records(server, [later.decision_id])[later.decision_id]["inputs"]["profile"]["contacts"]
        assert [(c["outcome"], c["direction"]) for c in contacts if c["decision_id"] == after.decision_id] == [
            ("not_now", "inbound")
        ]
    return history[0]
