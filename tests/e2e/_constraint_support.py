"""Purposes and constraint pauses against a real `nba serve`, shared by the embedded store's tests
(tests/e2e/test_constraints.py) and PostgreSQL's (tests/e2e_pg/test_constraints_pg.py).

A small ruleset offers every customer a marketing offer and a service check-in on the agent desktop: consent to
offers is asked for marketing only, two declines of the offer within 90 days pause it, and "not now" defers it
for two weeks. Outcomes go through RecordOutcome as an agent desktop reports them, so what pauses the offer is
the contact history the store keeps, read back on the next decision.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc

from nba_service._proto.nba.v1 import nba_pb2
from tests.e2e._review_support import explain
from tests.e2e._support import ServerHandle

CONSTRAINT_RULESET = """\
ruleset:
  name: constraints
  version: 1.0.0
  owner: tests
  description: A marketing offer and a service check-in for everyone, with consent per purpose and two pauses.
  valid_for: 4h
fields:
  - {name: stage, type: string}
  - {name: consent_agent_offers, type: boolean}
purposes:
  - {id: service, description: Their own matters, categories: [service]}
  - {id: marketing, description: Offers, categories: [upsell]}
actions:
  - id: offer
    category: upsell
    scripts: {agent_desktop: "Mention our savings rates."}
  - id: check-in
    category: service
    scripts: {agent_desktop: "Check the customer has what they need."}
rules:
  - {id: r-offer, description: Everyone, reason: Savings, priority: 60, action: offer,
     when: {all: [{field: stage, op: exists}]}}
  - {id: r-check-in, description: Everyone, reason: Check-in, priority: 50, action: check-in,
     when: {all: [{field: stage, op: exists}]}}
policies:
  consent:
    - {field: consent_agent_offers, channel: agent_desktop, purposes: [marketing]}
  constraints:
    - {id: declined-twice, action: offer, outcomes: [declined], after: 2, within: 90d}
    - {id: not-now, action: offer, outcomes: [not_now], after: 1, within: 14d}
"""


def write_ruleset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "constraints.yaml"
    path.write_text(CONSTRAINT_RULESET, encoding="utf-8")
    return path


def _decide(server: ServerHandle, customer: str, dry_run: bool = False) -> nba_pb2.DecideResponse:
    request = nba_pb2.DecideRequest(customer_id=customer, channel=nba_pb2.AGENT_DESKTOP, max_actions=5, dry_run=dry_run)
    return server.stub.Decide(request, timeout=10)


def _ids(response: nba_pb2.DecideResponse) -> list[str]:
    return [a.action_id for a in response.actions]


def _record(server: ServerHandle, decision_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dict(json.loads(explain(server, decision_id).record_json))
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _drops(server: ServerHandle, decision_id: str) -> dict[str, tuple[str, str]]:
    return {d["action_id"]: (d["reason"], d["policy"]) for d in _record(server, decision_id)["dropped"]}


def _report(server: ServerHandle, decision_id: str, outcome: int) -> None:
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=decision_id, action_id="offer", outcome=outcome), timeout=10
    )


def customers(server: ServerHandle, candidates: list[str]) -> tuple[list[str], list[str]]:
    """(offered both, offered the check-in only) among the candidates, found by dry runs that record nothing."""
    both: list[str] = []
    service_only: list[str] = []
    for customer in candidates:
        answer = _ids(_decide(server, customer, dry_run=True))
        if answer == ["offer", "check-in"]:
            both.append(customer)
        elif answer == ["check-in"]:
            service_only.append(customer)
    return both, service_only


def check_consent_is_asked_for_marketing_only(server: ServerHandle, service_only: str) -> None:
    """A customer without consent to offers still gets the service check-in; the offer is dropped for consent."""
    answer = _decide(server, service_only)
    assert _ids(answer) == ["check-in"]
    assert _drops(server, answer.decision_id) == {"offer": ("no_consent", "consent:marketing:agent_desktop")}


def check_two_declines_pause_the_offer(server: ServerHandle, customer: str) -> None:
    """One decline does not pause the offer; the second does, recorded as the constraint that paused it; the
    service check-in is untouched."""
    first = _decide(server, customer)
    assert _ids(first) == ["offer", "check-in"]
    _report(server, first.decision_id, nba_pb2.DECLINED)
    second = _decide(server, customer)
    assert _ids(second) == ["offer", "check-in"], "one decline is not two"
    _report(server, second.decision_id, nba_pb2.DECLINED)
    third = _decide(server, customer)
    assert _ids(third) == ["check-in"]
    assert _drops(server, third.decision_id) == {"offer": ("constraint", "declined-twice")}


def check_not_now_defers_without_counting_as_a_decline(server: ServerHandle, customer: str) -> None:
    """ "Not now" defers the offer (constraint not-now); it is stored as NOT_NOW, not as a decline."""
    first = _decide(server, customer)
    _report(server, first.decision_id, nba_pb2.DECLINED)
    second = _decide(server, customer)
    assert _ids(second) == ["offer", "check-in"]
    _report(server, second.decision_id, nba_pb2.NOT_NOW)
    third = _decide(server, customer)
    assert _ids(third) == ["check-in"]
    assert _drops(server, third.decision_id) == {"offer": ("constraint", "not-now")}
    history = _record(server, third.decision_id)["inputs"]["profile"]["contacts"]
    assert sorted(c["outcome"] for c in history if c["action_id"] == "offer") == ["declined", "not_now"]
