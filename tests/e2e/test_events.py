"""IngestEvent against a fresh server: live triggers change the next decision, and never leak into scripts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import Oracle, ServerHandle, ids, response_ids, utcnow, with_event

pytestmark = pytest.mark.e2e

AMOUNT = 48250.75
COUNTRY = "Zz-Unique-Country"
MERCHANT = "Qx Unlikely Merchant Emporium"
ACCOUNT = "Acct-Zq-7781"
EMPLOYER = "Wobblethorpe Industries"
RAW_VALUES = (str(AMOUNT), "48250", "48,250", COUNTRY, MERCHANT, ACCOUNT, "7781", EMPLOYER)


def _value(value: Any) -> nba_pb2.AttributeValue:
    if isinstance(value, bool):
        return nba_pb2.AttributeValue(bool_value=value)
    if isinstance(value, int):
        return nba_pb2.AttributeValue(int_value=value)
    if isinstance(value, float):
        return nba_pb2.AttributeValue(number_value=value)
    return nba_pb2.AttributeValue(string_value=value)


def ingest(server: ServerHandle, customer_id: str, event_type: str, attributes: dict[str, Any], **kwargs: Any) -> str:
    request = nba_pb2.IngestEventRequest(
        customer_id=customer_id,
        type=event_type,
        attributes={k: _value(v) for k, v in attributes.items()},
        **kwargs,
    )
    return server.stub.IngestEvent(request, timeout=10).event_id


def _find_customer(
    server: ServerHandle,
    oracle: Oracle,
    channel: Channel,
    event_type: str,
    attributes: dict[str, Any],
    action: str,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> str:
    """A customer for whom `action` is absent now and present once the event is in (both predictions stable)."""
    for profile in oracle.customers(server.ready_at):
        if profile.customer_id in exclude:
            continue
        before = oracle.stable(server, profile.customer_id, channel)
        if before is None or action in ids(before):
            continue
        after = oracle.stable(server, profile.customer_id, channel, edits=(with_event(event_type, attributes),))
        if after is not None and action in ids(after):
            return profile.customer_id
    pytest.fail(f"no sample customer gains {action} on {channel.value} from a {event_type} event")


@pytest.mark.parametrize(
    ("event_type", "attributes", "action"),
    [
        ("card_declined_abroad", {"country": COUNTRY, "amount": AMOUNT, "merchant": MERCHANT}, "card-abroad-unblock"),
        ("large_deposit", {"amount": AMOUNT, "account_last4": ACCOUNT}, "term-deposit-rates"),
        ("salary_change", {"change_pct": -32, "employer": EMPLOYER}, "hardship-check"),
    ],
    ids=["card_declined_abroad", "large_deposit", "salary_drop"],
)
def test_ingested_event_makes_its_rule_fire_without_leaking_values(
    start_fresh_server: Any, oracle: Oracle, event_type: str, attributes: dict[str, Any], action: str
) -> None:
    """Before the event the triggered action is absent; after IngestEvent it is offered, exactly as the local
    reference predicts with the event added; the event's raw values (amount, country, merchant, account,
    employer) appear in no script or reason on either channel."""
    server = start_fresh_server()
    channel = Channel.AGENT_DESKTOP
    customer = _find_customer(server, oracle, channel, event_type, attributes, action)

    before = server.decide(customer, channel, max_actions=20)
    assert action not in response_ids(before)

    event_id = ingest(server, customer, event_type, attributes)
    uuid.UUID(event_id)

    expected = oracle.stable(server, customer, channel, edits=(with_event(event_type, attributes),))
    after = server.decide(customer, channel, max_actions=20)
    assert action in response_ids(after)
    if expected is not None:
        assert response_ids(after) == ids(expected)
    triggered = next(a for a in after.actions if a.action_id == action)
    assert triggered.valid_until.ToDatetime() > utcnow().replace(tzinfo=None)

    for answer in (after, server.decide(customer, Channel.OUTBOUND_DIALER, max_actions=20)):
        for decided in answer.actions:
            for raw in RAW_VALUES:
                assert raw not in decided.script, (raw, decided)
                assert raw not in decided.reason, (raw, decided)


def test_event_expiry_bounds_the_action_and_expired_events_are_ignored(start_fresh_server: Any, oracle: Oracle) -> None:
    """An action driven by an event is valid no longer than the event's expires_at; an event whose expires_at is
    already past is refused (it could never drive anything) and the decision does not change."""
    server = start_fresh_server()
    channel = Channel.AGENT_DESKTOP
    attributes = {"country": COUNTRY, "amount": AMOUNT, "merchant": MERCHANT}
    first = _find_customer(server, oracle, channel, "card_declined_abroad", attributes, "card-abroad-unblock")
    second = _find_customer(
        server, oracle, channel, "card_declined_abroad", attributes, "card-abroad-unblock", exclude={first}
    )

    now = utcnow()
    expires = Timestamp()
    expires.FromDatetime(now + timedelta(minutes=30))
    ingest(server, first, "card_declined_abroad", attributes, expires_at=expires)
    response = server.decide(first, channel, max_actions=20)
    unblock = next(a for a in response.actions if a.action_id == "card-abroad-unblock")
    assert unblock.valid_until.ToDatetime() <= (now + timedelta(minutes=30)).replace(tzinfo=None)

    happened, expired = Timestamp(), Timestamp()
    happened.FromDatetime(now - timedelta(hours=2))
    expired.FromDatetime(now - timedelta(hours=1))
    before = response_ids(server.decide(second, channel, max_actions=20))
    with pytest.raises(grpc.RpcError) as refused:
        ingest(server, second, "card_declined_abroad", attributes, time=happened, expires_at=expired)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expires_at" in field_violations(refused.value)
    after = response_ids(server.decide(second, channel, max_actions=20))
    assert "card-abroad-unblock" not in after
    assert after == before


# Values that stress how facts reach the rules engine: boundaries, strings that differ only in case, spacing,
# quoting, escaping or look-alike letters, strings past the engine's short-string length, huge and tiny numbers,
# a non-finite number and values of the wrong type (both treated as missing).
TRICKY_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("complaint_opened", {"category": "fraud"}),
    ("complaint_opened", {"category": "FRAUD"}),
    ("complaint_opened", {"category": "fraud "}),
    ("complaint_opened", {"category": 'fr"aud'}),
    ("complaint_opened", {"category": "fraud\\"}),
    ("complaint_opened", {"category": "frаud"}),  # Cyrillic a
    ("complaint_opened", {"category": ""}),
    ("complaint_opened", {"category": "f" * 49}),
    ("complaint_opened", {}),
    ("complaint_opened", {"category": "service"}),
    ("loan_application_abandoned", {"loan_type": "home_improvement", "amount": 2**62}),
    ("loan_application_abandoned", {"loan_type": "car\u200b", "amount": 1e-300}),  # NUL is refused at the edge
    ("loan_application_abandoned", {"loan_type": "personal", "amount": -0.0}),
    ("salary_change", {"change_pct": -15}),
    ("salary_change", {"change_pct": -15.000000000000002}),
    ("salary_change", {"change_pct": -14.999999999999998}),
    ("salary_change", {"change_pct": 25.0, "employer": "x" * 1000}),
    ("large_deposit", {"amount": 1e20}),
    ("large_deposit", {"amount": 19999.999999999996}),
    ("large_deposit", {"amount": 20000}),
    ("survey_completed", {"score": 9}),
    ("survey_completed", {"score": 8.999999999999998}),
    ("survey_completed", {"score": 6.0}),
    ("app_login_failures", {"failures": 5}),
    ("app_login_failures", {"failures": 4.9}),
    ("product_upgraded", {"product": "🚀 Ultra"}),
    ("returned_after_absence", {"days_away": 60}),
    ("mortgage_rate_expiring", {"days_left": 30.5}),
    ("large_withdrawal", {"amount": 2000}),  # an undeclared attribute is refused (test_protocol_hygiene)
]


def test_engine_agrees_with_reference_on_tricky_event_values(start_fresh_server: Any, oracle: Oracle) -> None:
    """Events with boundary numbers, near-miss strings, long strings, non-finite or mistyped values, sent over
    gRPC to different customers, lead to exactly the decisions the reference evaluator predicts on both
    channels: the engine's value encoding loses nothing and confuses nothing."""
    server = start_fresh_server()
    profiles = [
        p
        for p in oracle.customers(server.ready_at)
        if p.attributes.get("consent_agent_offers") is True and p.attributes.get("stage") != "lost"
    ]
    mismatches: list[str] = []
    compared = 0
    for (event_type, attributes), profile in zip(TRICKY_EVENTS, profiles, strict=False):
        customer = profile.customer_id
        ingest(server, customer, event_type, attributes)
        for channel in Channel:
            expected = oracle.stable(server, customer, channel, edits=(with_event(event_type, attributes),))
            if expected is None:
                continue
            got = response_ids(server.decide(customer, channel, max_actions=20))
            compared += 1
            if got != ids(expected):
                mismatches.append(f"{customer} {event_type} {attributes!r} {channel.value}: {got} != {ids(expected)}")
    assert not mismatches, "\n".join(mismatches)
    assert compared >= len(TRICKY_EVENTS)


MISTYPED_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("complaint_opened", {"category": 7}, "attributes[category]"),
    ("salary_change", {"change_pct": float("-inf")}, "attributes[change_pct]"),
    ("salary_change", {"change_pct": float("nan")}, "attributes[change_pct]"),
    ("salary_change", {"change_pct": True}, "attributes[change_pct]"),
    ("large_deposit", {"amount": "25000"}, "attributes[amount]"),
]


@pytest.mark.parametrize(("event_type", "attributes", "field"), MISTYPED_EVENTS)
def test_mistyped_or_non_finite_attributes_are_refused(
    server: Any, event_type: str, attributes: dict[str, Any], field: str
) -> None:
    """A declared attribute of the wrong type, or a non-finite number, is refused naming the attribute,
    instead of being stored and silently never matching a rule."""
    with pytest.raises(grpc.RpcError) as refused:
        ingest(server, "CUST-000001", event_type, attributes)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(refused.value)
