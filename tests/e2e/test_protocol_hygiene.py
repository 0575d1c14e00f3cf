"""Protocol hygiene over gRPC: undecodable bytes, text no store can keep, anchored identifiers, every problem of a
request in one answer, and event attributes the ruleset does not declare."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import SERVICE_NAME, ServerHandle, utcnow

pytestmark = pytest.mark.e2e

GOOD_CUSTOMER = "CUST-000001"
Call = Callable[[nba_pb2_grpc.NextBestActionStub], object]
# What a Python exception leaks into a status message: class names, module paths, tracebacks.
PYTHON_NAMES = re.compile(r"Error\b|Exception|Traceback|google\.protobuf|<class|\.py\b|builtins")


def _refused(call: Call, server: ServerHandle) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(server.stub)
    return info.value


def _still_serving(server: ServerHandle) -> None:
    assert server.stub.Decide(
        nba_pb2.DecideRequest(customer_id=GOOD_CUSTOMER, channel=nba_pb2.AGENT_DESKTOP), timeout=10
    ).decision_id


def _future() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(utcnow() + timedelta(hours=2))
    return stamp


def decide(customer_id: str = GOOD_CUSTOMER, **kwargs: object) -> Call:
    request = nba_pb2.DecideRequest(customer_id=customer_id, channel=nba_pb2.AGENT_DESKTOP, **kwargs)
    return lambda stub: stub.Decide(request, timeout=10)


def context(reason: str = "", **attributes: str) -> nba_pb2.InteractionContext:
    return nba_pb2.InteractionContext(reason=reason, attributes=attributes)


def outcome(decision_id: str = "no-such-decision", action_id: str = "welcome-call", **kwargs: object) -> Call:
    request = nba_pb2.RecordOutcomeRequest(
        decision_id=decision_id, action_id=action_id, **{"outcome": nba_pb2.ACCEPTED, **kwargs}
    )
    return lambda stub: stub.RecordOutcome(request, timeout=10)


def ingest(
    customer_id: str = GOOD_CUSTOMER, event_type: str = "large_deposit", time: Timestamp | None = None, **attrs: object
) -> Call:
    values = {
        key: nba_pb2.AttributeValue(string_value=v) if isinstance(v, str) else nba_pb2.AttributeValue(number_value=v)
        for key, v in attrs.items()
    }
    request = nba_pb2.IngestEventRequest(customer_id=customer_id, type=event_type, attributes=values, time=time)
    return lambda stub: stub.IngestEvent(request, timeout=10)


# ------------------------------------------------------------------------------------------------
# Bytes that do not decode
# ------------------------------------------------------------------------------------------------

UNDECODABLE = {
    "bad-utf8-in-field-1": b"\x0a\x02\xc3\x28",  # field 1 (a string in every request): 0xC3 0x28 is not UTF-8
    "truncated": b"\x0a\x10abc",  # field 1 announces 16 bytes and carries 3
    "garbage": b"\xff\xff\xff\xff",
}


@pytest.mark.parametrize("method", ["Decide", "RecordOutcome", "IngestEvent"])
@pytest.mark.parametrize("payload", list(UNDECODABLE))
def test_undecodable_request_is_invalid_argument_in_plain_words(
    server: ServerHandle, method: str, payload: str
) -> None:
    """Bytes that are not the method's request message (a string field that is not UTF-8, truncated or garbage
    bytes) get INVALID_ARGUMENT with a plain message naming the message type, never UNKNOWN with Python
    exception names; the server keeps serving."""
    raw = server.new_channel().unary_unary(f"/{SERVICE_NAME}/{method}")  # no serializers: bytes in, bytes out
    with pytest.raises(grpc.RpcError) as info:
        raw(UNDECODABLE[payload], timeout=10)
    error = info.value
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {details}"
    assert f"could not be decoded as nba.v1.{method}Request" in details
    assert ("UTF-8" in details) == (payload == "bad-utf8-in-field-1"), details
    assert not PYTHON_NAMES.search(details), details
    _still_serving(server)


# ------------------------------------------------------------------------------------------------
# Text no store can keep
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nul:
    call: Call
    field: str


NUL_CASES: dict[str, Nul] = {
    "decide-customer_id": Nul(decide("CUST-000001\x00"), "customer_id"),
    "decide-context.reason": Nul(decide(context=context("card\x00lost")), "context.reason"),
    "decide-context-key": Nul(decide(context=context(**{"queue\x00x": "gold"})), "context.attributes[queue\\x00x]"),
    "decide-context-value": Nul(decide(context=context(queue="go\x00ld")), "context.attributes[queue]"),
    "outcome-decision_id": Nul(outcome(decision_id="d\x00"), "decision_id"),
    "outcome-action_id": Nul(outcome(action_id="welcome-call\x00"), "action_id"),
    "outcome-note": Nul(outcome(note="called\x00back"), "note"),
    "ingest-customer_id": Nul(ingest(customer_id="\x00"), "customer_id"),
    "ingest-type": Nul(ingest(event_type="large_deposit\x00"), "type"),
    "ingest-attribute-key": Nul(ingest(**{"amount\x00": 1.0}), "attributes[amount\\x00]"),
    "ingest-attribute-string": Nul(ingest(account_last4="12\x0034"), "attributes[account_last4].string_value"),
}


@pytest.mark.parametrize("name", list(NUL_CASES))
def test_nul_in_any_string_field_is_refused_naming_the_field(server: ServerHandle, name: str) -> None:
    """A NUL character (which PostgreSQL cannot store in text or jsonb) in any string field of any RPC, map keys
    and values included, is INVALID_ARGUMENT with a field violation naming the field and saying why."""
    case = NUL_CASES[name]
    error = _refused(case.call, server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
    violations = field_violations(error)
    assert case.field in violations, violations
    assert "NUL" in violations[case.field]
    assert "cannot be stored" in violations[case.field]
    assert (error.details() or "").startswith(case.field)
    _still_serving(server)


def test_every_field_with_unstorable_text_is_reported(server: ServerHandle) -> None:
    """Several fields with a NUL are all named in one answer, not the first one only."""
    call = decide("CUST\x00", context=context("a\x00", queue="b\x00", **{"k\x00": "v"}))
    violations = field_violations(_refused(call, server))
    assert set(violations) == {
        "customer_id",
        "context.reason",
        "context.attributes[queue]",
        "context.attributes[k\\x00]",
    }


# ------------------------------------------------------------------------------------------------
# Identifiers are matched whole
# ------------------------------------------------------------------------------------------------

TRAILING_NEWLINE: dict[str, Nul] = {
    "decide-customer_id": Nul(decide("CUST-000001\n"), "customer_id"),
    "ingest-customer_id": Nul(ingest(customer_id="CUST-000001\n", amount=25000.0), "customer_id"),
    "decide-context-key": Nul(decide(context=context(**{"queue\n": "gold"})), "context.attributes[queue\n]"),
    "ingest-attribute-name": Nul(ingest(**{"amount\n": 25000.0}), "attributes[amount\n]"),
}


@pytest.mark.parametrize("name", list(TRAILING_NEWLINE))
def test_identifier_with_a_trailing_newline_is_invalid(server: ServerHandle, name: str) -> None:
    """`CUST-000001\\n` is not a customer id (a pattern ending in `$` used to accept it and answer NOT_FOUND, or
    store the event): identifiers, context keys and attribute names must match their pattern as a whole."""
    case = TRAILING_NEWLINE[name]
    error = _refused(case.call, server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
    assert case.field in field_violations(error)


# ------------------------------------------------------------------------------------------------
# Every problem of a request at once
# ------------------------------------------------------------------------------------------------

ALL_PROBLEMS: dict[str, tuple[Call, set[str]]] = {
    "decide": (
        decide("", max_actions=21, context=context("r" * 501, **{"bad key!": "v", "queue": "q" * 501})),
        {"customer_id", "max_actions", "context.reason", "context.attributes[bad key!]", "context.attributes[queue]"},
    ),
    "outcome": (
        outcome("", "a" * 65, outcome=nba_pb2.OUTCOME_UNSPECIFIED, note="n" * 501, time=_future()),
        {"decision_id", "action_id", "outcome", "note", "time"},
    ),
    "ingest": (
        ingest("bad id", "lottery_win", time=_future(), Amount=1.0),
        {"customer_id", "type", "time", "attributes[Amount]"},
    ),
    "ingest-attributes": (
        ingest(amout=48250.0, account_last4=1234.0),
        {"attributes[amout]", "attributes[account_last4]"},
    ),
}


@pytest.mark.parametrize("name", list(ALL_PROBLEMS))
def test_all_problems_of_a_request_are_reported_at_once(server: ServerHandle, name: str) -> None:
    """A request with several bad fields gets one INVALID_ARGUMENT whose BadRequest names every one of them
    (and whose message mentions each), so a caller fixes it in one round trip."""
    call, fields = ALL_PROBLEMS[name]
    error = _refused(call, server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
    assert set(field_violations(error)) == fields
    details = error.details() or ""
    for field in fields:
        assert f"{field}: " in details, details


def test_many_bad_entries_still_fit_in_one_answer(server: ServerHandle) -> None:
    """Fifty bad context keys of 20,000 characters each are refused with INVALID_ARGUMENT naming a bounded
    number of them, not with a transport error about oversized trailers."""
    attributes = {f"{i:02d} bad" + "x" * 20_000: "v" for i in range(50)}
    error = _refused(decide(context=context(**attributes)), server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
    assert 1 <= len(field_violations(error)) <= 10
    assert "more problems" in (error.details() or "")


# ------------------------------------------------------------------------------------------------
# Event attributes the ruleset does not declare
# ------------------------------------------------------------------------------------------------


def test_undeclared_event_attribute_is_refused_listing_the_declared_ones(server: ServerHandle) -> None:
    """`amout` is not an attribute of large_deposit events: the event is refused (it would otherwise replace the
    customer's real trigger with one no rule can match), naming the declared attributes."""
    error = _refused(ingest("CUST-000058", "large_deposit", amout=48250.0), server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()}: {error.details()}"
    problem = field_violations(error)["attributes[amout]"]
    assert "large_deposit" in problem
    assert "amount" in problem
    assert "account_last4" in problem
