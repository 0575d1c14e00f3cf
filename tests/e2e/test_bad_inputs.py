"""Bad requests get INVALID_ARGUMENT (naming the field) or NOT_FOUND, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import ServerHandle, utcnow

pytestmark = pytest.mark.e2e

GOOD_CUSTOMER = "CUST-000001"
UNKNOWN_CUSTOMER = "CUST-999999"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
Call = Callable[[nba_pb2_grpc.NextBestActionStub], object]


@dataclass(frozen=True)
class Case:
    call: Call
    code: grpc.StatusCode
    field: str | None  # the field violation expected (INVALID_ARGUMENT), or None (NOT_FOUND)


def _stamp(delta: timedelta) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(utcnow() + delta)
    return result


def _hour_ago() -> Timestamp:
    """The same whole second on every call (within the hour), so two fields can be equal."""
    return Timestamp(seconds=int(utcnow().timestamp()) // 3600 * 3600 - 3600)


def decide(customer_id: str = GOOD_CUSTOMER, channel: int = nba_pb2.AGENT_DESKTOP, **kwargs: object) -> Call:
    request = nba_pb2.DecideRequest(customer_id=customer_id, channel=channel, **kwargs)
    return lambda stub: stub.Decide(request, timeout=10)


def ingest(
    customer_id: str = GOOD_CUSTOMER,
    event_type: str = "large_deposit",
    attributes: dict[str, nba_pb2.AttributeValue] | None = None,
    **kwargs: Callable[[], Timestamp],
) -> Call:
    def call(stub: nba_pb2_grpc.NextBestActionStub) -> object:
        times = {name: make() for name, make in kwargs.items()}
        request = nba_pb2.IngestEventRequest(
            customer_id=customer_id, type=event_type, attributes=attributes or {}, **times
        )
        return stub.IngestEvent(request, timeout=10)

    return call


def outcome(decision_id: str, action_id: str = "welcome-call", value: int = nba_pb2.ACCEPTED) -> Call:
    request = nba_pb2.RecordOutcomeRequest(decision_id=decision_id, action_id=action_id, outcome=value)
    return lambda stub: stub.RecordOutcome(request, timeout=10)


def _number(value: float) -> nba_pb2.AttributeValue:
    return nba_pb2.AttributeValue(number_value=value)


CASES: dict[str, Case] = {
    "decide-empty-customer": Case(decide(""), INVALID, "customer_id"),
    "decide-customer-with-space": Case(decide("CUST 000001"), INVALID, "customer_id"),
    "decide-customer-with-quote": Case(decide("CUST-000001'; --"), INVALID, "customer_id"),
    "decide-customer-unicode": Case(decide("CUST-00000١"), INVALID, "customer_id"),
    "decide-customer-1000-chars": Case(decide("C" * 1000), INVALID, "customer_id"),
    "decide-channel-unspecified": Case(decide(channel=nba_pb2.CHANNEL_UNSPECIFIED), INVALID, "channel"),
    "decide-channel-99": Case(decide(channel=99), INVALID, "channel"),
    "decide-max-actions-21": Case(decide(max_actions=21), INVALID, "max_actions"),
    "decide-max-actions-huge": Case(decide(max_actions=2**32 - 1), INVALID, "max_actions"),
    "decide-51-context-attributes": Case(
        decide(context=nba_pb2.InteractionContext(attributes={f"k{i}": "v" for i in range(51)})),
        INVALID,
        "context.attributes",
    ),
    "decide-context-reason-too-long": Case(
        decide(context=nba_pb2.InteractionContext(reason="r" * 501)), INVALID, "context.reason"
    ),
    "decide-context-bad-key": Case(
        decide(context=nba_pb2.InteractionContext(attributes={"bad key!": "v"})),
        INVALID,
        "context.attributes[bad key!]",
    ),
    "decide-context-value-too-long": Case(
        decide(context=nba_pb2.InteractionContext(attributes={"queue": "q" * 501})),
        INVALID,
        "context.attributes[queue]",
    ),
    "decide-unknown-customer": Case(decide(UNKNOWN_CUSTOMER), NOT_FOUND, None),
    "ingest-unknown-type": Case(ingest(event_type="lottery_win"), INVALID, "type"),
    "ingest-empty-type": Case(ingest(event_type=""), INVALID, "type"),
    "ingest-empty-customer": Case(ingest(customer_id=""), INVALID, "customer_id"),
    "ingest-bad-customer": Case(ingest(customer_id="../etc/passwd"), INVALID, "customer_id"),
    "ingest-unknown-customer": Case(ingest(customer_id=UNKNOWN_CUSTOMER), NOT_FOUND, None),
    "ingest-time-in-future": Case(ingest(time=lambda: _stamp(timedelta(hours=1))), INVALID, "time"),
    "ingest-expires-before-time": Case(
        ingest(time=lambda: _stamp(-timedelta(hours=1)), expires_at=lambda: _stamp(-timedelta(hours=2))),
        INVALID,
        "expires_at",
    ),
    "ingest-expires-equal-time": Case(
        ingest(time=_hour_ago, expires_at=_hour_ago),
        INVALID,
        "expires_at",
    ),
    "ingest-invalid-timestamp": Case(
        ingest(time=lambda: Timestamp(seconds=10**13)),
        INVALID,
        "time",
    ),
    "ingest-attribute-without-value": Case(
        ingest(attributes={"amount": nba_pb2.AttributeValue()}), INVALID, "attributes[amount]"
    ),
    "ingest-attribute-bad-name": Case(ingest(attributes={"Amount": _number(1.0)}), INVALID, "attributes[Amount]"),
    "ingest-attribute-nan": Case(ingest(attributes={"amount": _number(float("nan"))}), INVALID, "attributes[amount]"),
    "ingest-attribute-string-too-long": Case(
        ingest(attributes={"account_last4": nba_pb2.AttributeValue(string_value="x" * 1001)}),
        INVALID,
        "attributes[account_last4]",
    ),
    "ingest-51-attributes": Case(ingest(attributes={f"a{i}": _number(i) for i in range(51)}), INVALID, "attributes"),
    "outcome-empty-decision": Case(outcome(""), INVALID, "decision_id"),
    "outcome-unknown-decision": Case(outcome("no-such-decision"), NOT_FOUND, None),
    "outcome-unspecified": Case(outcome("no-such-decision", value=nba_pb2.OUTCOME_UNSPECIFIED), INVALID, "outcome"),
    "outcome-99": Case(outcome("no-such-decision", value=99), INVALID, "outcome"),
}

LONG_INPUT_CASES: dict[str, Case] = {
    "ingest-type-20k-chars": Case(ingest(event_type="x" * 20_000), INVALID, "type"),
    "ingest-attribute-name-20k-chars": Case(
        ingest(attributes={"K" * 20_000: _number(1.0)}), INVALID, "attributes[" + "K" * 64 + "]"
    ),
    "outcome-decision-id-20k-chars": Case(outcome("d" * 20_000), INVALID, "decision_id"),
}


def _check(server: ServerHandle, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as info:
        case.call(server.stub)
    error = info.value
    assert error.code() == case.code, f"{error.code()}: {error.details()}"
    details = error.details() or ""
    if case.code is INVALID:
        violations = field_violations(error)
        if case.field is not None:
            assert case.field in violations, violations
            assert violations[case.field], "the violation does not say what is wrong"
            assert details.startswith(case.field), details
        else:
            assert violations
    else:
        assert "not found" in details
    # The server is still fine.
    assert server.stub.Decide(
        nba_pb2.DecideRequest(customer_id=GOOD_CUSTOMER, channel=nba_pb2.AGENT_DESKTOP), timeout=10
    ).decision_id


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_refused_precisely(server: ServerHandle, name: str) -> None:
    """Each malformed request gets INVALID_ARGUMENT with a BadRequest field violation naming the field (and a
    message starting with it), or NOT_FOUND for an unknown customer or decision; a good Decide then succeeds."""
    _check(server, CASES[name])


@pytest.mark.parametrize("name", list(LONG_INPUT_CASES))
def test_very_long_inputs_are_refused_with_the_intended_status(server: ServerHandle, name: str) -> None:
    """A 20,000-character event type, attribute name, decision id or action id is refused with
    INVALID_ARGUMENT/NOT_FOUND like its short form, not with a transport error."""
    _check(server, LONG_INPUT_CASES[name])


def test_very_long_action_id_is_refused_with_the_intended_status(server: ServerHandle) -> None:
    """RecordOutcome for a real decision with a 20,000-character action id is INVALID_ARGUMENT on action_id."""
    decision = server.stub.Decide(
        nba_pb2.DecideRequest(customer_id=GOOD_CUSTOMER, channel=nba_pb2.AGENT_DESKTOP), timeout=10
    )
    _check(server, Case(outcome(decision.decision_id, action_id="a" * 20_000), INVALID, "action_id"))


def test_field_violations_never_raises(server: ServerHandle) -> None:
    """`field_violations` (used by the CLI and by clients) returns a dict for any RpcError, even one whose
    status code the transport replaced after an oversized trailer, instead of raising."""
    with pytest.raises(grpc.RpcError) as info:
        server.stub.RecordOutcome(
            nba_pb2.RecordOutcomeRequest(decision_id="d" * 10_000, action_id="a", outcome=nba_pb2.ACCEPTED), timeout=10
        )
    assert isinstance(field_violations(info.value), dict)


def test_unknown_customer_on_decide_names_the_customer(server: ServerHandle) -> None:
    """Decide for a well-formed but unknown customer id is NOT_FOUND and says which customer."""
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Decide(
            nba_pb2.DecideRequest(customer_id=UNKNOWN_CUSTOMER, channel=nba_pb2.OUTBOUND_DIALER), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert UNKNOWN_CUSTOMER in (info.value.details() or "")
    assert field_violations(info.value) == {}
