"""Traces and logs of a real `nba serve --workers 2` exporting to an OTLP receiver of ours: every log line is
JSON and free of customer data and secrets, lines logged within calls name their trace, and the spans each
worker buffered reach the receiver when it stops."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest

from nba_service._proto.nba.v1 import nba_pb2, review_pb2, review_pb2_grpc
from nba_service.domain.model import Channel
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, Oracle, ServerHandle, start_server
from tests.otlp_receiver import OtlpReceiver, attributes
from tests.pg import free_port

pytestmark = pytest.mark.e2e

CALLER_TRACE = "5c0ffee15a5e1ec7ab1e0ddba11ad0b5"
CALLER_SPAN = "a1b2c3d4e5f60718"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CALLER_TOKEN = "tok-Vr8XwQ2-never-logged"
EXPORTER_TOKEN = "otlp-Kp4Zs9-never-logged"
# Values a caller sends about a customer: distinctive, so a substring search cannot miss or misfire.
EVENT_VALUES: dict[str, Any] = {"employer": "Brindlewick Foundry 8830", "change_pct": 61.37}
CARD_VALUES: dict[str, Any] = {"country": "Xanadu-QQ", "amount": 7719.83, "merchant": "Ozymandias Curios 4471"}
CONTEXT_VALUES = {"crm_case": "case-Hq7Tz0-context", "agent_note": "callback after Wednesday-Vq3"}
STAGES = {"profile.read", "pipeline", "rules", "policy", "arbitration", "rendering", "decision_record"}
SERVER_SPAN_NAMES = {
    "nba.v1.NextBestAction/Decide",
    "nba.v1.NextBestAction/IngestEvent",
    "nba.v1.NextBestAction/RecordOutcome",
    "nba.v1.Review/ExplainDecision",
    "POST /v1/decide",
    "POST /v1/events",
    "POST /v1/outcomes",
    "GET /v1/review/decisions/{decision_id}/explanation",
}


@dataclass
class Session:
    handle: ServerHandle
    receiver: OtlpReceiver
    secrets: set[str]
    decisions: list[str] = field(default_factory=list)
    explained: dict[str, str] = field(default_factory=dict)
    cli_output: str = ""
    exit_code: int | None = None


def _attribute(value: Any) -> nba_pb2.AttributeValue:
    if isinstance(value, float):
        return nba_pb2.AttributeValue(number_value=value)
    return nba_pb2.AttributeValue(string_value=value)


def _customer_secrets(oracle: Oracle, handle: ServerHandle, customer_id: str) -> set[str]:
    """The customer's id and attribute values that are the customer's own (not words the ruleset uses)."""
    vocabulary = RULESET_PATH.read_text(encoding="utf-8")
    profile = oracle.profiles(handle.ready_at)[customer_id]
    found = {customer_id}
    for value in profile.attributes.values():
        text = str(value)
        # Short numbers ("34.4") turn up inside any timestamp: only values a search can tell apart count.
        if (isinstance(value, float) and len(text) >= 8) or (
            isinstance(value, str) and len(value) >= 5 and value not in vocabulary
        ):
            found.add(text)
    return found


def _run_calls(session: Session, customer: str) -> None:
    """Decides, events, outcomes, explanations and refusals on both transports. The server runs open (no access
    policy), which refuses any bearer token as one it cannot verify: one call on each transport presents one."""
    handle = session.handle
    auth = ("x-crm-case", "case-Hq7Tz0-header")  # a caller's own header, as a CRM plugin may send
    traced = (auth, ("traceparent", TRACEPARENT))
    stub = handle.stub
    with pytest.raises(grpc.RpcError) as unverified:
        stub.Decide(
            nba_pb2.DecideRequest(customer_id=customer, channel=nba_pb2.AGENT_DESKTOP),
            metadata=(("authorization", f"Bearer {CALLER_TOKEN}"),),
            timeout=10,
        )
    assert unverified.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stub.IngestEvent(
        nba_pb2.IngestEventRequest(
            customer_id=customer,
            type="salary_change",
            attributes={k: _attribute(v) for k, v in EVENT_VALUES.items()},
        ),
        metadata=(auth,),
        timeout=10,
    )
    decided = stub.Decide(
        nba_pb2.DecideRequest(
            customer_id=customer,
            channel=nba_pb2.AGENT_DESKTOP,
            max_actions=5,
            context=nba_pb2.InteractionContext(reason="inbound call", attributes=CONTEXT_VALUES),
        ),
        metadata=traced,
        timeout=10,
    )
    session.decisions.append(decided.decision_id)
    assert decided.actions, "the chosen customer gets an action"
    stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(
            decision_id=decided.decision_id,
            action_id=decided.actions[0].action_id,
            outcome=nba_pb2.DECLINED,
            note="agent note Plk-4411",
        ),
        metadata=(auth,),
        timeout=10,
    )
    refusals = [
        nba_pb2.DecideRequest(customer_id="NO-SUCH-Cst-5501", channel=nba_pb2.AGENT_DESKTOP),
        nba_pb2.DecideRequest(customer_id=customer),  # no channel
    ]
    for request in refusals:
        with pytest.raises(grpc.RpcError):
            stub.Decide(request, metadata=(auth,), timeout=10)
    bad_event = nba_pb2.IngestEventRequest(
        customer_id=customer,
        type="card_declined_abroad",
        attributes={
            **{k: _attribute(v) for k, v in CARD_VALUES.items()},
            "amount": _attribute(str(CARD_VALUES["amount"])),
        },
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.IngestEvent(bad_event, metadata=(auth,), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    review = review_pb2_grpc.ReviewStub(handle.new_channel())
    explained = review.ExplainDecision(
        review_pb2.ExplainDecisionRequest(decision_id=decided.decision_id), metadata=(auth,), timeout=10
    )
    session.explained["grpc"] = explained.explanation.trace_id

    assert handle.http_address is not None
    headers = {"x-crm-case": "case-Hq7Tz0-header"}
    with httpx.Client(base_url=f"http://{handle.http_address}", timeout=10, headers=headers) as http:
        token = {"authorization": f"Bearer {CALLER_TOKEN}"}
        unverified_http = http.post(
            "/v1/decide", json={"customer_id": customer, "channel": "AGENT_DESKTOP"}, headers=token
        )
        assert unverified_http.status_code == 401
        event = http.post(
            "/v1/events", json={"customer_id": customer, "type": "card_declined_abroad", "attributes": CARD_VALUES}
        )
        assert event.status_code == 200, event.text
        decision = http.post(
            "/v1/decide",
            json={"customer_id": customer, "channel": "AGENT_DESKTOP", "context": {"attributes": CONTEXT_VALUES}},
        )
        assert decision.status_code == 200, decision.text
        body = decision.json()
        session.decisions.append(body["decision_id"])
        outcome = http.post(
            "/v1/outcomes",
            json={
                "decision_id": body["decision_id"],
                "action_id": body["actions"][0]["action_id"],
                "outcome": "ACCEPTED",
            },
        )
        assert outcome.status_code == 200, outcome.text
        unknown = http.post("/v1/decide", json={"customer_id": "NO-SUCH-Cst-5502", "channel": "AGENT_DESKTOP"})
        assert unknown.status_code == 404
        malformed = http.post(
            "/v1/events",
            json={"customer_id": customer, "type": "salary_change", "attributes": {"employer": 5, **CONTEXT_VALUES}},
        )
        assert malformed.status_code == 400
        not_json = http.post("/v1/decide", content=f'{{"customer_id": "{customer}", "channel": ', headers=headers)
        assert not_json.status_code in (400, 422)
        over_http = http.get(
            f"/v1/review/decisions/{body['decision_id']}/explanation", headers={"traceparent": TRACEPARENT}
        )
        assert over_http.status_code == 200, over_http.text
        session.explained["http"] = over_http.json()["explanation"]["trace_id"]

    cli = subprocess.run(
        [str(NBA_SCRIPT), "explain", decided.decision_id, "--target", handle.address],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    session.cli_output = cli.stdout
    _decide_on_each_worker(session, customer)


def _decide_on_each_worker(session: Session, customer: str) -> None:
    """Decides over new connections until both workers have answered (the kernel spreads connections)."""
    handle = session.handle
    for _ in range(40):
        workers = {e.get("worker") for e in handle.log_events() if e.get("event") == "decided"}
        if workers >= {0, 1}:
            return
        # A local subchannel pool: channels to one address otherwise share one connection, hence one worker.
        channel = grpc.insecure_channel(handle.address, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            decide = channel.unary_unary(
                "/nba.v1.NextBestAction/Decide",
                request_serializer=nba_pb2.DecideRequest.SerializeToString,
                response_deserializer=nba_pb2.DecideResponse.FromString,
            )
            answer = decide(nba_pb2.DecideRequest(customer_id=customer, channel=nba_pb2.AGENT_DESKTOP), timeout=10)
            session.decisions.append(answer.decision_id)
        finally:
            channel.close()
    pytest.fail("the kernel sent 40 connections to one worker")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    receiver = OtlpReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {EXPORTER_TOKEN}",
        "OTEL_SERVICE_NAME": "nba-e2e",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=e2e",
        # Nothing is exported on a timer during the test: what arrives was flushed by the workers as they stopped.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    handle = start_server(
        tmp_path_factory.mktemp("nba-telemetry"),
        "--workers",
        "2",
        "--http-port",  # a fixed port: workers share it
        str(free_port()),
        "--log-level",
        "debug",
        env=env,
    )
    oracle = Oracle()
    try:
        customer = next(
            p.customer_id
            for p in oracle.customers(handle.ready_at)
            if oracle.stable(handle, p.customer_id, Channel.AGENT_DESKTOP, limit=5)
        )
        secrets = _customer_secrets(oracle, handle, customer)
        assert len(secrets) >= 4, f"too few distinctive attribute values to search for: {secrets}"
        secrets |= {str(v) for v in (*EVENT_VALUES.values(), *CARD_VALUES.values(), *CONTEXT_VALUES.values())}
        secrets |= {CALLER_TOKEN, EXPORTER_TOKEN, "Plk-4411", "case-Hq7Tz0-header"}
        current = Session(handle, receiver, secrets)
        _run_calls(current, customer)
        current.exit_code = handle.stop(signal.SIGTERM)
        yield current
    finally:
        if handle.process.poll() is None:
            handle.stop()
        receiver.stop()


def _log_lines(handle: ServerHandle) -> list[str]:
    return handle.server_log.read_text(encoding="utf-8").splitlines()


def test_the_server_stopped_cleanly(session: Session) -> None:
    assert session.exit_code == 0, session.handle.log_text()


def test_every_log_line_is_json_and_none_holds_customer_data_or_a_secret(session: Session) -> None:
    lines = _log_lines(session.handle)
    assert len(lines) > 20
    for number, line in enumerate(lines, start=1):
        event = json.loads(line)  # raises, naming the line, for anything that is not JSON
        assert isinstance(event, dict), f"line {number}: {line}"
        leaked = sorted(s for s in session.secrets if s in line)
        assert not leaked, f"line {number} holds {leaked}: {line}"


def test_lines_logged_within_calls_name_their_trace_span_and_decision(session: Session) -> None:
    events = [json.loads(line) for line in _log_lines(session.handle)]
    within = [e for e in events if e["event"] in {"decided", "outcome_recorded", "event_ingested"}]
    assert {e["event"] for e in within} == {"decided", "outcome_recorded", "event_ingested"}
    for event in within:
        assert len(event["trace_id"]) == 32, event
        assert len(event["span_id"]) == 16, event
        int(event["trace_id"] + event["span_id"], 16)
    decided = {e["decision_id"]: e for e in within if e["event"] == "decided"}
    assert set(session.decisions) <= set(decided)
    assert decided[session.decisions[0]]["trace_id"] == CALLER_TRACE  # the caller's traceparent, honoured
    outside = [e for e in events if e["event"] in {"serving", "worker_serving", "application_ready"}]
    assert outside
    assert all("trace_id" not in e for e in outside)


def test_each_worker_flushed_its_spans_on_shutdown_as_one_trace_per_call(session: Session) -> None:
    spans = session.receiver.spans()
    assert spans, "no span reached the receiver"
    workers = {e["pid"] for e in session.handle.log_events() if e["event"] == "worker_serving"}
    assert len(workers) == 2
    assert {resource["process.pid"] for resource, _ in spans} == workers
    for resource, _span in spans:
        assert resource["service.name"] == "nba-e2e"
        assert resource["deployment.environment"] == "e2e"
    assert all(m.get("authorization") == f"Bearer {EXPORTER_TOKEN}" for m in session.receiver.metadata)
    servers = [s for _, s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert {s.name for s in servers} >= SERVER_SPAN_NAMES
    decide = next(s for s in servers if s.trace_id.hex() == CALLER_TRACE and s.name.endswith("/Decide"))
    assert decide.parent_span_id.hex() == CALLER_SPAN
    assert attributes(decide) == {
        "rpc.system": "grpc",
        "rpc.service": "nba.v1.NextBestAction",
        "rpc.method": "Decide",
        "rpc.grpc.status_code": 0,
    }
    children = [s for _, s in spans if s.trace_id == decide.trace_id and s.span_id != decide.span_id]
    assert {s.name for s in children} >= STAGES
    refused = [s for s in servers if s.name.endswith("/Decide") and attributes(s)["rpc.grpc.status_code"] != 0]
    assert {attributes(s)["rpc.grpc.status_code"] for s in refused} == {
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.UNAUTHENTICATED.value[0],  # traced before authentication refuses it
    }
    for _, span in spans:
        text = json.dumps({"name": span.name, "attributes": attributes(span)}, default=str)
        leaked = sorted(s for s in session.secrets if s in text)
        assert not leaked, f"span {span.name} carries {leaked}"


def test_records_and_explanations_lead_to_the_trace(session: Session) -> None:
    records = session.handle.wait_for_decisions(session.decisions)
    assert records[session.decisions[0]]["trace_id"] == CALLER_TRACE
    exported = {s.trace_id.hex() for _, s in session.receiver.spans()}
    for decision_id in session.decisions:
        assert records[decision_id]["trace_id"] in exported
    assert session.explained["grpc"] == CALLER_TRACE
    assert session.explained["http"] == records[session.decisions[1]]["trace_id"]
    assert f"trace {CALLER_TRACE}" in session.cli_output


def test_a_collector_that_is_away_costs_no_call_and_its_warnings_are_json_lines(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The exporter's own warnings (it logs through the standard library) come out as JSON lines, and the
    server still answers and stops cleanly, within the exporter's timeout."""
    handle = start_server(
        tmp_path_factory.mktemp("nba-collector-away"),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"},
    )
    try:
        customer = Oracle().customers(handle.ready_at)[0].customer_id
        for _ in range(3):
            handle.decide(customer, Channel.AGENT_DESKTOP)
    finally:
        assert handle.stop(signal.SIGTERM, timeout=30) == 0
    events = [json.loads(line) for line in _log_lines(handle)]  # every line JSON
    exporter = [e for e in events if str(e.get("logger", "")).startswith("opentelemetry")]
    assert exporter, "the exporter logged nothing about its collector"
    assert all(e["level"] in {"warning", "error"} for e in exporter)
