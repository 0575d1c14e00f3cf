"""Directions, mandatory actions and "not now" on the embedded store, against the real server over gRPC, HTTP
and the `nba decide` command (the checks are in `_direction_support`, shared with the PostgreSQL tests)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from tests.e2e import _direction_support as support
from tests.e2e._review_support import nba
from tests.e2e._support import ServerHandle, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def direction_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server of this module's own (its outcomes change contact history) on the ruleset with a mandatory notice."""
    folder = tmp_path_factory.mktemp("nba-directions")
    rulesets = support.mandatory_ruleset(folder / "rulesets")
    handle = start_server(folder, "--http-port", "0", "--rulesets", str(rulesets))
    yield handle
    handle.stop(signal.SIGTERM, timeout=20)


@pytest.fixture(scope="module")
def customer(direction_server: ServerHandle) -> str:
    return support.customer_with_notice_and_offer(direction_server)


def test_inbound_and_outbound_desktop_decisions_record_their_direction(
    direction_server: ServerHandle, customer: str
) -> None:
    """One customer decided inbound, outbound and unspecified on the desktop, and on the dialer: the answers,
    the records and ExplainDecision on gRPC and HTTP each say the direction."""
    support.directions_are_recorded_and_explained(direction_server, customer)


def test_a_dialer_never_answers_inbound(direction_server: ServerHandle, customer: str) -> None:
    """OUTBOUND_DIALER + INBOUND is INVALID_ARGUMENT naming `direction`, on gRPC and HTTP; so is an unknown one."""
    support.dialer_inbound_is_refused_naming_the_field(direction_server, customer)


def test_mandatory_flag_reaches_grpc_and_http(direction_server: ServerHandle, customer: str) -> None:
    """The ruleset's mandatory notice ranks first with `mandatory` set on both transports and in the record."""
    support.mandatory_reaches_both_answers(direction_server, customer)


def test_nba_decide_takes_a_direction_and_prints_it(direction_server: ServerHandle, customer: str) -> None:
    """`nba decide --direction outbound --json` asks for an outbound contact and prints the answer's direction
    and each action's `mandatory`; `nba outcome ... not_now` records the customer's "not now" for it, outbound;
    the text form says the direction and marks the mandatory action."""
    target = ("--target", direction_server.address)
    result = nba("decide", customer, "--direction", "outbound", "--max-actions", "20", "--json", *target)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["direction"] == "OUTBOUND"
    assert [a["mandatory"] for a in document["actions"]] == [True] + [False] * (len(document["actions"]) - 1)
    heard = nba("outcome", document["decision_id"], support.NOTICE, "not_now", "--note", "later", *target)
    assert heard.returncode == 0, heard.stderr
    assert [
        (r["outcome"], r["direction"], r["note"])
        for r in direction_server.records()
        if r.get("kind") == "outcome" and r["decision_id"] == document["decision_id"]
    ] == [("not_now", "outbound", "later")]
    text = nba("decide", customer, "--direction", "inbound", *target)
    assert text.returncode == 0, text.stderr
    assert f"for {customer} on agent_desktop (inbound)" in text.stdout
    assert f"1. [mandatory] {support.SCRIPT}" in text.stdout
    refused = nba("decide", customer, "--channel", "outbound_dialer", "--direction", "inbound", *target)
    assert refused.returncode == 2
    assert "direction: outbound_dialer never takes inbound contacts" in refused.stderr
    bad = nba("decide", customer, "--direction", "sideways", *target)
    assert bad.returncode == 2
    assert "sideways" in bad.stderr


def test_not_now_is_stored_in_the_contact_history_with_its_direction(
    direction_server: ServerHandle, customer: str
) -> None:
    """NOT_NOW (gRPC and HTTP) is stored, and the next decision reads it in the customer's contact history with
    the direction of the decision it answered; the export carries the outcome with its direction too."""
    contact = support.not_now_is_stored_with_its_direction(direction_server, customer)
    outcomes = [
        r
        for r in direction_server.records()
        if r.get("kind") == "outcome" and r["decision_id"] == contact["decision_id"]
    ]
    assert [(o["outcome"], o["direction"]) for o in outcomes] == [("not_now", "outbound")]
