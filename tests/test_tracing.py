"""Traces of real calls, in process: the real gRPC and HTTP servers on loopback, spans caught by the SDK's
in-memory exporter. What an exported trace looks like end to end is tests/e2e/test_telemetry.py's part."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc, review_pb2, review_pb2_grpc
from nba_service.app import Application, build_application
from nba_service.domain.model import Channel
from nba_service.domain.profile import Profile
from nba_service.errors import FailedPrecondition
from nba_service.log_setup import add_trace_ids
from nba_service.review.queries import ReviewQueries
from nba_service.settings import Settings
from nba_service.synthetic import SAMPLE_PATH, read_sample
from nba_service.telemetry import tracing
from nba_service.transport.grpc_review import ReviewServicer, add_review
from nba_service.transport.grpc_server import GrpcServer
from nba_service.transport.grpc_tracing import tracing_interceptors
from nba_service.transport.http_api import create_app
from nba_service.transport.http_server import HttpServer
from nba_service.transport.http_tracing import TracingMiddleware

RULESET = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"
STAGES = {"profile.read", "pipeline", "rules", "policy", "arbitration", "rendering", "decision_record"}
PIPELINE_STAGES = {"rules", "policy", "arbitration", "rendering"}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
# Event values no span may carry; distinctive so that a substring check cannot be fooled.
EVENT_VALUES = {"employer": "Quillfeather Holdings 5521", "change_pct": 37.25}


@dataclass
class Stack:
    app: Application
    grpc: GrpcServer
    http: HttpServer
    channel: grpc.aio.Channel
    client: httpx.AsyncClient

    @property
    def stub(self) -> nba_pb2_grpc.NextBestActionStub:
        return nba_pb2_grpc.NextBestActionStub(self.channel)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def stack(spans: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[Stack]:
    """The servers wired as `runner.serve` wires them with tracing on (no access policy: a trusted caller)."""
    app = await build_application(Settings(db_path=tmp_path / "nba.db", rulesets=RULESET))
    server = GrpcServer(app.service, "127.0.0.1", 0, outer=tracing_interceptors())
    review = ReviewQueries(app.archive, app.records, app.service, None)
    add_review(ReviewServicer(review), server.server)
    api = create_app(app.service, access=None, limits=None, serving=lambda: True, review=review)
    tracer = tracing.tracer()
    assert tracer is not None
    api.add_middleware(TracingMiddleware, tracer=tracer)
    http = HttpServer(api, "127.0.0.1", 0, tls=None, reuse_port=False, grace=1)
    await server.start()
    await http.start()
    channel = grpc.aio.insecure_channel(server.address)
    async with httpx.AsyncClient(base_url=f"http://{http.address}", timeout=10) as client:
        yield Stack(app, server, http, channel, client)
    await channel.close()
    await http.stop()
    await server.stop(1)
    await app.close()


def _customers() -> list[Profile]:
    return list(read_sample(SAMPLE_PATH, datetime.now(UTC)))


def _secret_values(profile: Profile) -> set[str]:
    """The customer's id and distinctive attribute values, as text a span could hold them in."""
    values = {profile.customer_id}
    for value in profile.attributes.values():
        if isinstance(value, float) or (isinstance(value, str) and len(value) >= 5):
            values.add(str(value))
    return values


def _trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context and format_trace_id(s.context.trace_id) == trace_id]


def _server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    return server


async def _until(ready: Callable[[], bool]) -> None:
    """Spans end a moment after the caller holds its answer or status (the server's interceptor or middleware
    ends them once the call is done), so a test waits for what it reads (2 s at most)."""
    for _ in range(100):
        if ready():
            return
        await asyncio.sleep(0.02)


async def _settled_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    """A call's spans once its server span has ended."""
    await _until(lambda: any(s.kind is SpanKind.SERVER for s in _trace(exporter, trace_id)))
    return _trace(exporter, trace_id)


async def _ended_server_span(exporter: InMemorySpanExporter, trace_id: str) -> ReadableSpan:
    return _server_span(await _settled_trace(exporter, trace_id))


def _check_stage_tree(spans: list[ReadableSpan]) -> ReadableSpan:
    """One server span; the stages beneath it, the pipeline's own under `pipeline`. Returns the server span."""
    server = _server_span(spans)
    by_name = {s.name: s for s in spans if s is not server}
    assert set(by_name) == STAGES
    assert server.context is not None
    pipeline = by_name["pipeline"].context
    assert pipeline is not None
    for name, span in by_name.items():
        assert span.parent is not None
        expected = pipeline.span_id if name in PIPELINE_STAGES else server.context.span_id
        assert span.parent.span_id == expected, name
    return server


def _no_customer_data(exporter: InMemorySpanExporter, secrets: set[str]) -> None:
    for span in exporter.get_finished_spans():
        text = json.dumps({"name": span.name, "attributes": dict(span.attributes or {})}, default=str)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"span {span.name} carries {leaked}"


class TestGrpc:
    async def test_a_decide_is_one_trace_under_the_callers_span_and_its_record_and_explanation_name_it(
        self, stack: Stack, spans: InMemorySpanExporter
    ) -> None:
        """The caller's traceparent parents the server span; every stage is a child; the record keeps the trace
        id, and ExplainDecision shows it."""
        profile = _customers()[0]
        response = await stack.stub.Decide(
            nba_pb2.DecideRequest(customer_id=profile.customer_id, channel=nba_pb2.AGENT_DESKTOP),
            metadata=(("traceparent", TRACEPARENT),),
            timeout=10,
        )
        server = _check_stage_tree(await _settled_trace(spans, CALLER_TRACE))
        assert server.name == "nba.v1.NextBestAction/Decide"
        assert server.parent is not None
        assert format_span_id(server.parent.span_id) == CALLER_SPAN
        assert server.parent.is_remote
        assert dict(server.attributes or {}) == {
            "rpc.system": "grpc",
            "rpc.service": "nba.v1.NextBestAction",
            "rpc.method": "Decide",
            "rpc.grpc.status_code": 0,
        }
        assert server.status.status_code is StatusCode.UNSET
        record = await stack.app.records.get_record(response.decision_id)
        assert record is not None
        assert record.trace_id == CALLER_TRACE
        review = review_pb2_grpc.ReviewStub(stack.channel)
        explained = await review.ExplainDecision(
            review_pb2.ExplainDecisionRequest(decision_id=response.decision_id), timeout=10
        )
        assert explained.explanation.trace_id == CALLER_TRACE
        assert json.loads(explained.record_json)["trace_id"] == CALLER_TRACE

    async def test_without_a_traceparent_a_new_trace_starts_and_the_record_names_it(
        self, stack: Stack, spans: InMemorySpanExporter
    ) -> None:
        profile = _customers()[1]
        response = await stack.stub.Decide(
            nba_pb2.DecideRequest(customer_id=profile.customer_id, channel=nba_pb2.OUTBOUND_DIALER), timeout=10
        )
        record = await stack.app.records.get_record(response.decision_id)
        assert record is not None
        assert len(record.trace_id) == 32
        assert record.trace_id != CALLER_TRACE
        server = _check_stage_tree(await _settled_trace(spans, record.trace_id))
        assert server.parent is None

    @pytest.mark.parametrize(
        ("customer_id", "channel", "code"),
        [
            ("NO-SUCH-CUSTOMER-77", nba_pb2.AGENT_DESKTOP, grpc.StatusCode.NOT_FOUND),
            ("", 0, grpc.StatusCode.INVALID_ARGUMENT),
        ],
    )
    async def test_a_refused_call_is_traced_with_its_status_and_not_as_a_server_error(
        self, stack: Stack, spans: InMemorySpanExporter, customer_id: str, channel: int, code: grpc.StatusCode
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.stub.Decide(
                nba_pb2.DecideRequest(customer_id=customer_id, channel=channel),  # type: ignore[arg-type]
                metadata=(("traceparent", TRACEPARENT),),
                timeout=10,
            )
        assert raised.value.code() is code
        server = await _ended_server_span(spans, CALLER_TRACE)
        assert server.attributes is not None
        assert server.attributes["rpc.grpc.status_code"] == code.value[0]
        assert server.status.status_code is StatusCode.UNSET  # the caller's error, not the server's
        assert not server.events  # no exception text, which names the customer
        _no_customer_data(spans, {"NO-SUCH-CUSTOMER-77"})

    async def test_a_campaign_stream_is_one_server_span_and_a_stream_left_early_detaches_cleanly(
        self, stack: Stack, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stream read to the end is OK; one the caller cancels after its first result is CANCELLED, and
        neither OpenTelemetry (a context it failed to detach) nor asyncio (an async generator that failed to
        close) logs an error: a plain-text line in a JSON log."""
        ids = [p.customer_id for p in _customers()[:300]]
        request = nba_pb2.DecideBatchRequest(
            campaign_id="spring-1",
            channel=nba_pb2.OUTBOUND_DIALER,
            customer_ids=nba_pb2.CustomerList(ids=ids),
        )
        results = [
            r async for r in stack.stub.DecideBatch(request, metadata=(("traceparent", TRACEPARENT),), timeout=30)
        ]
        assert len(results) <= len(ids)
        server = await _ended_server_span(spans, CALLER_TRACE)
        assert server.name == "nba.v1.NextBestAction/DecideBatch"
        assert (server.attributes or {})["rpc.grpc.status_code"] == 0
        assert results
        record = await stack.app.records.get_record(results[0].decision_id)
        assert record is not None
        assert record.trace_id == CALLER_TRACE
        spans.clear()
        call = stack.stub.DecideBatch(request, metadata=(("traceparent", TRACEPARENT),), timeout=30)
        async for _ in call:
            call.cancel()
            break
        server = await _ended_server_span(spans, CALLER_TRACE)
        assert (server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
        assert not [r for r in caplog.records if r.name.startswith(("opentelemetry", "asyncio"))]

    async def test_health_checks_are_not_traced(self, stack: Stack, spans: InMemorySpanExporter) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        await health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert spans.get_finished_spans() == ()


class TestHttp:
    async def test_a_decide_is_one_trace_under_the_callers_span_with_http_conventions(
        self, stack: Stack, spans: InMemorySpanExporter
    ) -> None:
        profile = _customers()[2]
        response = await stack.client.post(
            "/v1/decide",
            json={"customer_id": profile.customer_id, "channel": "AGENT_DESKTOP"},
            headers={"traceparent": TRACEPARENT},
        )
        assert response.status_code == 200, response.text
        server = _check_stage_tree(await _settled_trace(spans, CALLER_TRACE))
        assert server.name == "POST /v1/decide"
        assert server.parent is not None
        assert format_span_id(server.parent.span_id) == CALLER_SPAN
        attributes = dict(server.attributes or {})
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.route"] == "/v1/decide"
        assert attributes["url.path"] == "/v1/decide"
        assert attributes["http.response.status_code"] == 200
        assert attributes["url.scheme"] == "http"
        decision_id = response.json()["decision_id"]
        explained = await stack.client.get(f"/v1/review/decisions/{decision_id}/explanation")
        assert explained.status_code == 200, explained.text
        assert explained.json()["explanation"]["trace_id"] == CALLER_TRACE
        assert explained.json()["record"]["trace_id"] == CALLER_TRACE

    async def test_an_unknown_customer_is_a_404_span_named_for_its_route(
        self, stack: Stack, spans: InMemorySpanExporter
    ) -> None:
        response = await stack.client.post(
            "/v1/decide",
            json={"customer_id": "NO-SUCH-CUSTOMER-78", "channel": "AGENT_DESKTOP"},
            headers={"traceparent": TRACEPARENT},
        )
        assert response.status_code == 404
        server = await _ended_server_span(spans, CALLER_TRACE)
        assert server.name == "POST /v1/decide"
        assert (server.attributes or {})["http.response.status_code"] == 404
        assert server.status.status_code is StatusCode.UNSET
        _no_customer_data(spans, {"NO-SUCH-CUSTOMER-78"})


async def test_no_span_carries_customer_ids_attributes_or_event_values(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    """Decides, an event, an outcome and an explanation on both transports: only ids of decisions and names
    of methods, routes and stages reach the spans."""
    profile = _customers()[3]
    secrets = _secret_values(profile) | {str(v) for v in EVENT_VALUES.values()}
    await stack.stub.IngestEvent(
        nba_pb2.IngestEventRequest(
            customer_id=profile.customer_id,
            type="salary_change",
            attributes={
                "employer": nba_pb2.AttributeValue(string_value=str(EVENT_VALUES["employer"])),
                "change_pct": nba_pb2.AttributeValue(number_value=float(EVENT_VALUES["change_pct"])),
            },
        ),
        timeout=10,
    )
    event = await stack.client.post(
        "/v1/events",
        json={"customer_id": profile.customer_id, "type": "salary_change", "attributes": EVENT_VALUES},
    )
    assert event.status_code == 200, event.text
    decided = await stack.stub.Decide(
        nba_pb2.DecideRequest(customer_id=profile.customer_id, channel=nba_pb2.AGENT_DESKTOP, max_actions=5),
        timeout=10,
    )
    over_http = await stack.client.post(
        "/v1/decide", json={"customer_id": profile.customer_id, "channel": "AGENT_DESKTOP"}
    )
    assert over_http.status_code == 200, over_http.text
    if decided.actions:
        await stack.stub.RecordOutcome(
            nba_pb2.RecordOutcomeRequest(
                decision_id=decided.decision_id, action_id=decided.actions[0].action_id, outcome=nba_pb2.DECLINED
            ),
            timeout=10,
        )
    expected = {
        "nba.v1.NextBestAction/IngestEvent",
        "nba.v1.NextBestAction/Decide",
        "POST /v1/events",
        "POST /v1/decide",
    }

    def names() -> set[str]:
        return {s.name for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER}

    await _until(lambda: expected <= names())
    assert expected <= names()
    _no_customer_data(spans, secrets)


async def test_log_lines_within_a_span_name_its_trace_and_span() -> None:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    tracer = tracing.tracer()
    assert tracer is not None
    try:
        with tracer.start_as_current_span("call"):
            event = add_trace_ids(None, "info", {"event": "x"})
        (span,) = exporter.get_finished_spans()
        assert span.context is not None
        assert event["trace_id"] == format_trace_id(span.context.trace_id)
        assert event["span_id"] == format_span_id(span.context.span_id)
        assert "trace_id" not in add_trace_ids(None, "info", {"event": "outside"})
    finally:
        tracing.shutdown()


async def test_a_shadow_run_is_a_span_of_the_call_after_the_answer(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    from tests.e2e.test_shadow import write_candidate

    (tmp_path / "candidate").mkdir()
    candidate = write_candidate(tmp_path / "candidate")
    settings = Settings(db_path=tmp_path / "nba.db", rulesets=RULESET, shadow=candidate.parent)
    app = await build_application(settings)
    server = GrpcServer(app.service, "127.0.0.1", 0, outer=tracing_interceptors())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            await nba_pb2_grpc.NextBestActionStub(channel).Decide(
                nba_pb2.DecideRequest(customer_id=_customers()[0].customer_id, channel=nba_pb2.AGENT_DESKTOP),
                metadata=(("traceparent", TRACEPARENT),),
                timeout=10,
            )
        await _until(lambda: any(s.name == "shadow" for s in _trace(spans, CALLER_TRACE)))
        call = await _settled_trace(spans, CALLER_TRACE)
        server_span = _server_span(call)
        (shadow,) = [s for s in call if s.name == "shadow"]
        assert shadow.parent is not None
        assert server_span.context is not None
        assert shadow.parent.span_id == server_span.context.span_id
    finally:
        await server.stop(1)
        await app.close()


def test_stages_of_a_call_the_sampler_left_out_make_no_span() -> None:
    """Under a parent-based sampler a left-out call's stages would be left out too: none is even made."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    tracing.install(SimpleSpanProcessor(exporter), provider=provider)
    try:
        tracer = tracing.tracer()
        assert tracer is not None
        with tracer.start_as_current_span("call") as call:
            assert not call.is_recording()
            assert tracing.stage("rules") is tracing.stage("policy")  # the shared null context
        assert tracing.stage("outside any call") is tracing.stage("policy")
        with tracer.start_as_current_span("call", context=_sampled_parent()), tracing.stage("rules") as span:
            assert span is not None
        assert [s.name for s in exporter.get_finished_spans()] == ["rules", "call"]
    finally:
        tracing.shutdown()


def _sampled_parent() -> Context:
    """The context of a caller whose traceparent says "sampled": ParentBased follows it."""
    return propagate.extract({"traceparent": TRACEPARENT})


def test_a_record_written_before_trace_ids_reads_as_untraced() -> None:
    """The record format gained `trace_id` without a new format name: older lines lack it and read as ""."""
    from nba_service.domain.records import DecisionRecord

    line = {
        "format": "nba.record/1",
        "kind": "decision",
        "decision_id": "d-1",
        "decided_at": "2026-11-30T09:00:00+00:00",
        "customer_id": "CUST-000001",
        "channel": "agent_desktop",
        "ruleset": {"name": "retail-banking", "version": "1.2.0", "hash": "c0ffee"},
        "engine": "durable_rules",
        "rules_fired": [],
        "dropped": [],
        "actions": [],
        "latency_ms": 0.5,
    }
    record = DecisionRecord.from_json(line)
    assert record.trace_id == ""
    assert DecisionRecord.from_json({**line, "trace_id": CALLER_TRACE}).to_json()["trace_id"] == CALLER_TRACE


class TestOff:
    async def test_off_there_is_no_interceptor_no_span_and_no_trace_id(self, tmp_path: Path) -> None:
        assert not tracing.enabled()
        assert tracing_interceptors() == []
        assert tracing.stage("x") is tracing.stage("y")  # one shared null context, nothing made per call
        app = await build_application(Settings(db_path=tmp_path / "nba.db", rulesets=RULESET))
        try:
            decision = await app.service.decide(_customers()[0].customer_id, Channel.AGENT_DESKTOP)
            record = await app.records.get_record(decision.decision_id)
            assert record is not None
            assert record.trace_id == ""
            assert record.to_json()["trace_id"] == ""
        finally:
            await app.close()


class TestEnvironment:
    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({}, []),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
            ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
            ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
            ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
            ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),
            ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
            ({"OTEL_METRICS_EXPORTER": "otlp"}, []),
        ],
    )
    def test_traces_are_on_only_when_the_environment_asks(self, env: dict[str, str], expected: list[str]) -> None:
        assert tracing.exporter_names(env) == expected

    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
            (
                {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
        ],
    )
    def test_a_setting_the_server_cannot_honour_is_refused_by_name(self, env: dict[str, str], named: str) -> None:
        with pytest.raises(FailedPrecondition, match=named):
            tracing.exporter_names(env)

    def test_the_service_is_named_nba_service_unless_the_environment_names_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        resource = tracing.resource().attributes
        assert resource["service.name"] == "nba-service"
        assert resource["deployment.environment"] == "test"
        monkeypatch.setenv("OTEL_SERVICE_NAME", "nba-eu")
        assert tracing.resource().attributes["service.name"] == "nba-eu"
