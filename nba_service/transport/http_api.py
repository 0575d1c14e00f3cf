"""The HTTP/JSON face for CRM plugins that cannot speak gRPC: the same calls, checks and errors, over JSON.

Thin, like the gRPC servicer: each handler authenticates with the process's one `AccessControl`, authorises
with the one table (`security.authz`, under the gRPC method names so a role means the same on both), admits
the call through the gRPC edge's own limits (`LimitsInterceptor.admit`: one rate and one cap per caller and
process, whichever protocol it speaks), then calls the same `DecisionService` method. Domain errors become
`{"code", "message", "fields"}` with the gRPC status name as `code` and the HTTP status Google's API design
guide gives that gRPC code; the domain-to-code mapping stays in `grpc_errors`.

The request and response models are the OpenAPI document (`/openapi.json`, 3.1): field names as in the proto,
enums by their proto names, times as RFC 3339. Authentication runs as a dependency, before the body is
validated, so a caller without credentials learns nothing about the request's shape. Client certificates are
required by the TLS listener when `--tls-client-ca` is set, but uvicorn does not hand the verified
certificate to the application, so on HTTP callers are identified by bearer token only: a JWT, or a session of
the agent side panel (`transport.panel`), which stands for the identity of the JWT it was exchanged for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Annotated, Any, Literal

import grpc
import structlog
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from nba_service.domain.model import Channel, Direction
from nba_service.domain.profile import AttributeValue, OutcomeKind
from nba_service.domain.records import Delivery
from nba_service.domain.wording import action_id_title, action_labels, action_title
from nba_service.errors import DeadlineExceeded, InvalidArgument, NbaError, Problems, ResourceExhausted
from nba_service.review.queries import ReviewQueries
from nba_service.security.access import AccessControl
from nba_service.security.authz import NEXT_BEST_ACTION, Ask, authorize
from nba_service.security.policy import Caller
from nba_service.service import DecisionService
from nba_service.telemetry.metrics import ServiceMetrics
from nba_service.transport.explanation import explanation_message
from nba_service.transport.grpc_errors import status_code
from nba_service.transport.grpc_limits import LimitsInterceptor
from nba_service.transport.grpc_server import DELIVERY_MARGIN_S
from nba_service.transport.http_identity import CallerDep, authenticated, peer
from nba_service.transport.http_metrics import HttpMetricsMiddleware
from nba_service.transport.http_review import RulesetRef, review_router
from nba_service.transport.panel import PanelConfig, add_panel
from nba_service.transport.wire import shown_key, text_problem

log = structlog.get_logger(__name__)

# gRPC code -> HTTP status, as google.rpc.Code documents it (and grpc-gateway maps it).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_CHANNELS = {"AGENT_DESKTOP": Channel.AGENT_DESKTOP, "OUTBOUND_DIALER": Channel.OUTBOUND_DIALER}
_OUTCOMES = {kind.name: kind for kind in OutcomeKind}
_DIRECTIONS = {direction.name: direction for direction in Direction}
ChannelName = Literal["AGENT_DESKTOP", "OUTBOUND_DIALER"]
DirectionName = Literal["INBOUND", "OUTBOUND"]
OutcomeName = Literal["ACCEPTED", "DECLINED", "NO_ANSWER", "CONVERTED", "CALLBACK_REQUESTED", "NOT_OFFERED", "NOT_NOW"]
_DECIDE, _OUTCOME, _EVENT = (NEXT_BEST_ACTION + name for name in ("Decide", "RecordOutcome", "IngestEvent"))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Context(_Model):
    reason: str = Field("", description="why the agent asks (e.g. inbound_call)")
    attributes: dict[str, str] = Field(default_factory=dict, description="what the caller knows, recorded as given")


class DecideRequest(_Model):
    customer_id: str = ""
    channel: ChannelName | None = Field(None, description="required")
    context: Context = Field(default_factory=lambda: Context.model_validate({}))
    max_actions: int = Field(0, description="0 means 3; at most 20")
    dry_run: bool = Field(False, description="decide without recording; the answer carries its explanation")
    direction: DirectionName | None = Field(
        None,
        description="who started the contact: INBOUND (the customer called, an agent answers) or OUTBOUND (we "
        "call them); absent means the channel's usual one. OUTBOUND_DIALER never takes INBOUND",
    )


class RecommendedAction(_Model):
    action_id: str
    title: str = Field(description="a short heading for the card")
    script: str = Field(description="what the agent says, in plain words")
    accept_label: str = Field(description="the accept button (at most 12 characters): record ACCEPTED")
    decline_label: str = Field(description="the decline button (at most 12 characters): record DECLINED")
    rank: int = Field(description="1 is the best")
    priority: int = Field(description="as in gRPC: the rank")
    category: str
    reason: str
    rule_id: str
    valid_until: AwareDatetime
    mandatory: bool = Field(description="a regulatory notice: ranked above every offer, to be given")


class DecideResponse(_Model):
    decision_id: str = Field(description="send it back with the outcome (POST /v1/outcomes)")
    direction: DirectionName = Field(description="the direction decided for (the request's, or the channel's usual)")
    actions: list[RecommendedAction]
    ruleset: RulesetRef
    decided_at: AwareDatetime
    explanation: dict[str, Any] | None = Field(None, description="dry runs only: why it came out as it did")


class RecordOutcomeRequest(_Model):
    decision_id: str = ""
    action_id: str = ""
    outcome: OutcomeName | None = Field(None, description="required")
    time: AwareDatetime | None = Field(None, description="when it happened; now when absent")
    note: str = ""


class RecordOutcomeResponse(_Model):
    customer_id: str = Field(description="the decision's customer, only to the caller the decision was answered to")


class IngestEventRequest(_Model):
    customer_id: str = ""
    type: str = ""
    time: AwareDatetime | None = None
    attributes: dict[str, bool | int | float | str] = Field(default_factory=dict)
    expires_at: AwareDatetime | None = None


class IngestEventResponse(_Model):
    event_id: str


class FieldViolation(_Model):
    field: str
    problem: str


class ErrorBody(_Model):
    code: str = Field(description="the gRPC status name: INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...")
    message: str
    fields: list[FieldViolation] = Field(default_factory=list)


class Health(_Model):
    status: Literal["SERVING", "NOT_SERVING"]


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "invalid request (fields name each problem)"),
        (401, "no or bad credentials"),
        (403, "the caller's roles do not allow this call"),
        (404, "unknown customer or decision"),
        (429, "a limit was reached; see Retry-After"),
        (500, "unexpected failure, logged"),
        (503, "the store cannot answer"),
        (504, "deadline exceeded"),
    )
}


def error_response(error: NbaError) -> JSONResponse:
    code = status_code(error)
    body = ErrorBody(
        code=code.name,
        message=error.message,
        fields=[FieldViolation(field=p.field, problem=p.problem) for p in error.problems],
    )
    headers = {}
    if isinstance(error, ResourceExhausted):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if code is grpc.StatusCode.UNAUTHENTICATED:  # RFC 6750: say which scheme would be accepted
        headers["WWW-Authenticate"] = 'Bearer realm="nba"'
    return JSONResponse(body.model_dump(), status_code=HTTP_STATUS.get(code, 500), headers=headers)


def _field_path(location: tuple[int | str, ...]) -> str:
    """pydantic's error location as the service names fields: `context.attributes[queue]`, `actions[0]`."""
    path = ""
    parts = location[1:] if location[:1] == ("body",) else location
    for index, part in enumerate(parts):
        if index and parts[index - 1] == "attributes":
            return f"{path}[{shown_key(part)}]"  # what follows is the union member pydantic tried: not a field
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


_PLAIN = {
    (True, "json_invalid"): "is not valid JSON",
    (True, "model_attributes_type"): "must be a JSON object, sent with Content-Type: application/json",
    (False, "extra_forbidden"): "is not a field of this request",
}


def _invalid_request(error: RequestValidationError) -> InvalidArgument:
    """One problem per field (pydantic reports each member of a union it tried), all of them at once."""
    problems = Problems()
    seen: set[str] = set()
    for item in error.errors():
        kind = item.get("type")
        field = "body" if kind == "json_invalid" else _field_path(tuple(item.get("loc", ())))
        if field not in seen:
            seen.add(field)
            problems.add(field, _PLAIN.get((field == "body", kind), str(item.get("msg", "is invalid"))))
    try:
        problems.raise_if_any()
    except InvalidArgument as exc:
        return exc
    return InvalidArgument.of("body", "the request could not be read")


def _check_text(value: object, path: str, problems: Problems) -> None:
    """Text no store can keep (NUL, unpaired surrogates) is refused with its field, as on gRPC (`wire`)."""
    if isinstance(value, str):
        if (problem := text_problem(value)) is not None:
            problems.add(path, problem)
    elif isinstance(value, Mapping):
        is_map = path.endswith("attributes")
        for key, item in value.items():
            entry = f"{path}[{shown_key(key)}]" if is_map else f"{path}.{key}" if path else str(key)
            if is_map and isinstance(key, str) and (problem := text_problem(key)) is not None:
                problems.add(entry, f"the key {problem}")
            _check_text(item, entry, problems)


TIMEOUT_HEADER = "X-Request-Timeout"
MAX_TIMEOUT_S = 300.0


def _deadline(value: str | None) -> float | None:
    """The caller's deadline, as gRPC's `grpc-timeout` gives one: seconds from now, in `X-Request-Timeout`."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise InvalidArgument.of(TIMEOUT_HEADER, f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}")
    return time.monotonic() + seconds


def _storable(model: BaseModel) -> None:
    problems = Problems()
    _check_text(model.model_dump(exclude_none=True), "", problems)
    problems.raise_if_any()


def create_app(
    service: DecisionService,
    *,
    access: AccessControl | None,
    limits: LimitsInterceptor | None,
    serving: Callable[[], bool],
    review: ReviewQueries | None = None,
    panel: PanelConfig | None = None,
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """The ASGI app. `access` None lets every call through as a trusted in-process caller (tests only, as the
    gRPC server); `limits` None enforces none; `serving` is what /healthz answers (gRPC health's state); `panel`
    mounts the agent side panel (`transport.panel`), whose sessions every call then accepts as bearer tokens."""
    app = FastAPI(
        title="Next best action (HTTP/JSON)",
        version="1",
        description="The nba.v1.NextBestAction calls over JSON for CRM plugins; the same semantics as gRPC.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    app.state.access = access
    app.state.sessions = None if panel is None else panel.sessions
    if metrics is not None:
        app.add_middleware(HttpMetricsMiddleware, metrics=metrics)

    @app.exception_handler(NbaError)
    async def domain_error(_: Request, exc: NbaError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_invalid_request(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected_error", path=request.url.path, exc_info=exc)
        body = ErrorBody(code="INTERNAL", message="internal error; the failure was logged")
        return JSONResponse(body.model_dump(), status_code=500)

    def admitted(request: Request, caller: Caller | None, ask: Ask) -> Callable[[], None]:
        if caller is not None:
            authorize(caller, ask)
        if limits is None:
            return lambda: None
        return limits.admit(ask.method, caller, peer(request)).leave

    @app.post("/v1/decide", responses=_ERRORS, response_model_exclude_none=True)
    async def decide(
        body: DecideRequest,
        request: Request,
        caller: CallerDep,
        timeout: Annotated[  # noqa: ASYNC109 - the caller's header, handled as a deadline
            str | None,
            Header(
                alias=TIMEOUT_HEADER,
                description="the caller's deadline in seconds (as gRPC's deadline): an answer that would arrive "
                "later is not given, 504, and its record says so",
            ),
        ] = None,
    ) -> DecideResponse:
        """The next best actions for a customer, best first (gRPC Decide)."""
        channel = None if body.channel is None else _CHANNELS[body.channel]
        leave = admitted(request, caller, Ask(_DECIDE, channel, body.dry_run))
        try:
            _storable(body)
            deadline = _deadline(timeout)
            decision = await service.decide(
                body.customer_id,
                channel,
                max_actions=body.max_actions,
                context_reason=body.context.reason,
                context=body.context.attributes,
                dry_run=body.dry_run,
                caller=caller,
                deadline=deadline,
                direction=None if body.direction is None else _DIRECTIONS[body.direction],
            )
        finally:
            leave()
        if decision.explanation is None:  # a dry run has no record whose delivery could be corrected
            if deadline is not None and time.monotonic() >= deadline - DELIVERY_MARGIN_S:
                service.undelivered(decision.decision_id, Delivery.DEADLINE_EXCEEDED)
                raise DeadlineExceeded("the caller's deadline passed while the decision was being recorded")
            if await request.is_disconnected():  # nobody is left to read the answer: it is no offer
                service.undelivered(decision.decision_id, Delivery.CANCELLED)
        declared = service.active.ruleset.actions
        actions = []
        for a in decision.actions:
            action = declared.get(a.action_id)
            accept, decline = action_labels(action)
            actions.append(
                RecommendedAction(
                    action_id=a.action_id,
                    title=action_title(action) if action is not None else action_id_title(a.action_id),
                    script=a.script,
                    accept_label=accept,
                    decline_label=decline,
                    rank=a.priority,
                    priority=a.priority,
                    category=a.category,
                    reason=a.reason,
                    rule_id=a.rule_id,
                    valid_until=a.valid_until.astimezone(UTC),
                    mandatory=a.mandatory,
                )
            )
        explanation = None
        if decision.explanation is not None:
            message = explanation_message(decision.explanation)
            explanation = json_format.MessageToDict(message, preserving_proto_field_name=True)
        ref = decision.ruleset
        return DecideResponse(
            decision_id=decision.decision_id,
            direction="INBOUND" if decision.direction is Direction.INBOUND else "OUTBOUND",
            actions=actions,
            ruleset=RulesetRef(name=ref.name, version=ref.version, hash=ref.hash),
            decided_at=decision.decided_at.astimezone(UTC),
            explanation=explanation,
        )

    @app.post("/v1/outcomes", responses=_ERRORS, response_model_exclude_none=True)
    async def record_outcome(body: RecordOutcomeRequest, request: Request, caller: CallerDep) -> RecordOutcomeResponse:
        """What came of an action a decision returned (gRPC RecordOutcome)."""
        leave = admitted(request, caller, Ask(_OUTCOME))
        try:
            _storable(body)
            receipt = await service.record_outcome(
                body.decision_id,
                body.action_id,
                None if body.outcome is None else _OUTCOMES[body.outcome],
                body.time,
                body.note,
                caller=caller,
            )
        finally:
            leave()
        return RecordOutcomeResponse(customer_id=receipt.customer_id)

    @app.post("/v1/events", responses=_ERRORS, response_model_exclude_none=True)
    async def ingest_event(body: IngestEventRequest, request: Request, caller: CallerDep) -> IngestEventResponse:
        """An event the active ruleset declares, durable before the answer (gRPC IngestEvent)."""
        leave = admitted(request, caller, Ask(_EVENT))
        try:
            _storable(body)
            attributes: dict[str, AttributeValue] = dict(body.attributes)
            event_id = await service.ingest_event(
                body.customer_id, body.type, attributes, body.time, body.expires_at, caller=caller
            )
        finally:
            leave()
        return IngestEventResponse(event_id=event_id)

    if panel is not None:
        add_panel(app, service, access, panel, admitted, authenticated)

    @app.get("/healthz", responses={503: {"model": Health, "description": "not serving"}})
    async def healthz() -> JSONResponse:
        """SERVING when the store answers, as gRPC health says; open to every caller."""
        up = serving()
        return JSONResponse(Health(status="SERVING" if up else "NOT_SERVING").model_dump(), 200 if up else 503)

    if review is not None:
        app.include_router(review_router(review, admitted, _ERRORS))
    return app
