"""The gRPC face: thin translation between protobuf messages and the decision service."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.domain.contact_points import PhoneType
from nba_service.domain.model import Channel, Direction
from nba_service.domain.profile import AttributeValue, OutcomeKind
from nba_service.domain.records import Delivery
from nba_service.errors import DeadlineExceeded, InvalidArgument, NbaError, Problems
from nba_service.security.access import AccessControl
from nba_service.security.limits import CallLimits
from nba_service.service import CampaignExclusion, CampaignResult, DecisionService
from nba_service.telemetry.metrics import ServiceMetrics
from nba_service.transport.explanation import DIRECTIONS, action_message, explanation_message, timestamp
from nba_service.transport.grpc_auth import AuthInterceptor, current_caller
from nba_service.transport.grpc_errors import internal_status, to_status
from nba_service.transport.grpc_health import HealthService
from nba_service.transport.grpc_in_flight import InFlightCalls
from nba_service.transport.grpc_limits import LimitsInterceptor
from nba_service.transport.grpc_metrics import MetricsInterceptor
from nba_service.transport.wire import Undecodable, check_storable_text, lenient_deserializer

log = structlog.get_logger(__name__)
SERVICE_NAME = nba_pb2.DESCRIPTOR.services_by_name["NextBestAction"].full_name
# A health name that is SERVING while the process answers at all, whatever the store: a liveness probe asks for it,
# so that a database outage takes replicas out of the load balancer (readiness) instead of restarting them.
LIVENESS_NAME = "liveness"

_CHANNELS: dict[int, Channel] = {
    nba_pb2.AGENT_DESKTOP: Channel.AGENT_DESKTOP,
    nba_pb2.OUTBOUND_DIALER: Channel.OUTBOUND_DIALER,
}
_OUTCOMES: dict[int, OutcomeKind] = {
    nba_pb2.ACCEPTED: OutcomeKind.ACCEPTED,
    nba_pb2.DECLINED: OutcomeKind.DECLINED,
    nba_pb2.NO_ANSWER: OutcomeKind.NO_ANSWER,
    nba_pb2.CONVERTED: OutcomeKind.CONVERTED,
    nba_pb2.CALLBACK_REQUESTED: OutcomeKind.CALLBACK_REQUESTED,
    nba_pb2.NOT_OFFERED: OutcomeKind.NOT_OFFERED,
    nba_pb2.NOT_NOW: OutcomeKind.NOT_NOW,
}
_DIRECTIONS: dict[int, Direction] = {nba_pb2.INBOUND: Direction.INBOUND, nba_pb2.OUTBOUND: Direction.OUTBOUND}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _edge(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Refuses requests that did not decode or hold text no store can keep, maps domain errors to statuses,
    and turns any other failure into INTERNAL without killing the server."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            _check_wire(request)
            return await method(self, request, context)
        except NbaError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("unexpected_error", method=method.__name__)
            await context.abort_with_status(internal_status("internal error; the failure was logged"))
        raise AssertionError("unreachable")  # abort_with_status always raises

    return wrapper


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def _stream_edge(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """`_edge` for a server-streaming method: an error after some results ends the stream with its status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        try:
            _check_wire(request)
            async for item in method(self, request, context):
                yield item
        except NbaError as exc:
            await context.abort_with_status(to_status(exc))
        except Exception:
            log.exception("unexpected_error", method=method.__name__)
            await context.abort_with_status(internal_status("internal error; the failure was logged"))

    return wrapper


def _check_wire(request: object) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.problem)
    if isinstance(request, Message):
        problems = Problems()
        check_storable_text(request, problems)
        problems.raise_if_any()


def _optional_time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument.of(name, f"is not a valid timestamp ({exc})") from exc


def _channel(value: int) -> Channel | None:
    if value == nba_pb2.CHANNEL_UNSPECIFIED:
        return None
    if value not in _CHANNELS:
        raise InvalidArgument.of("channel", f"unknown channel {value}")
    return _CHANNELS[value]


def _direction(value: int) -> Direction | None:
    """Unspecified is None: the service takes the channel's usual direction."""
    if value == nba_pb2.DIRECTION_UNSPECIFIED:
        return None
    if value not in _DIRECTIONS:
        raise InvalidArgument.of("direction", f"unknown direction {value}")
    return _DIRECTIONS[value]


def _attribute(key: str, value: nba_pb2.AttributeValue) -> AttributeValue:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument.of(f"attributes[{key}]", "has no value")
    result: AttributeValue = getattr(value, kind)
    return result


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# The caller's clock started before ours (transit, queueing): an answer ready this close to the deadline
# would most likely arrive too late, so it is not sent, and an offer nobody saw is never counted.
DELIVERY_MARGIN_S = 0.002


def _watch_delivery(context: grpc.aio.ServicerContext, service: DecisionService, decision_id: str) -> None:
    """Corrects the record when the call ends without the caller getting the answer (deadline, cancel)."""

    def finished(ctx: grpc.aio.ServicerContext) -> None:
        if ctx.cancelled():  # the transport gave up on the call: a deadline, a cancel, a lost connection
            remaining = ctx.time_remaining()
            late = remaining is not None and remaining <= 0
            service.undelivered(decision_id, Delivery.DEADLINE_EXCEEDED if late else Delivery.CANCELLED)

    remaining = context.time_remaining()
    if remaining is not None and remaining <= DELIVERY_MARGIN_S:
        service.undelivered(decision_id, Delivery.DEADLINE_EXCEEDED)
        raise DeadlineExceeded("the caller's deadline passed while the decision was being recorded")
    context.add_done_callback(finished)


class NextBestActionServicer(nba_pb2_grpc.NextBestActionServicer):
    def __init__(self, service: DecisionService) -> None:
        self._service = service

    @_edge
    async def Decide(  # noqa: N802 - gRPC method names
        self, request: nba_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> nba_pb2.DecideResponse:
        decision = await self._service.decide(
            request.customer_id,
            _channel(request.channel),
            max_actions=request.max_actions,
            context_reason=request.context.reason,
            context=dict(request.context.attributes),
            deadline=_deadline(context),
            dry_run=request.dry_run,
            caller=current_caller(),
            direction=_direction(request.direction),
        )
        if decision.explanation is None:  # a dry run has no record whose delivery could be corrected
            _watch_delivery(context, self._service, decision.decision_id)
        response = nba_pb2.DecideResponse(
            decision_id=decision.decision_id,
            actions=[action_message(a) for a in decision.actions],
            ruleset=nba_pb2.RulesetRef(
                name=decision.ruleset.name, version=decision.ruleset.version, hash=decision.ruleset.hash
            ),
            decided_at=timestamp(decision.decided_at),
            direction=DIRECTIONS[decision.direction],
        )
        if decision.explanation is not None:
            response.explanation.CopyFrom(explanation_message(decision.explanation))
        return response

    @_edge
    async def RecordOutcome(  # noqa: N802
        self, request: nba_pb2.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> nba_pb2.RecordOutcomeResponse:
        if request.outcome != nba_pb2.OUTCOME_UNSPECIFIED and request.outcome not in _OUTCOMES:
            raise InvalidArgument.of("outcome", f"unknown outcome {request.outcome}")
        receipt = await self._service.record_outcome(
            request.decision_id,
            request.action_id,
            _OUTCOMES.get(request.outcome),
            _optional_time(request, "time"),
            request.note,
            caller=current_caller(),
            idempotency_key=request.idempotency_key,
            wrong_number=request.wrong_number,
            validate_only=request.validate_only,
        )
        return nba_pb2.RecordOutcomeResponse(customer_id=receipt.customer_id, stored=receipt.stored)

    @_edge
    async def IngestEvent(  # noqa: N802
        self, request: nba_pb2.IngestEventRequest, context: grpc.aio.ServicerContext
    ) -> nba_pb2.IngestEventResponse:
        attributes = {key: _attribute(key, value) for key, value in request.attributes.items()}
        event_id = await self._service.ingest_event(
            request.customer_id,
            request.type,
            attributes,
            _optional_time(request, "time"),
            _optional_time(request, "expires_at"),
            caller=current_caller(),
        )
        return nba_pb2.IngestEventResponse(event_id=event_id)

    @_stream_edge
    async def DecideBatch(  # noqa: N802
        self, request: nba_pb2.DecideBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[nba_pb2.BatchResult]:
        which = request.WhichOneof("customers")
        caller = current_caller()
        campaign = await self._service.prepare_campaign(
            request.campaign_id,
            _channel(request.channel),
            customer_ids=list(request.customer_ids.ids) if which == "customer_ids" else None,
            segment=dict(request.segment.equals) if which == "segment" else None,
            all_customers=which == "segment" and request.segment.all_customers,
            at=_optional_time(request, "time"),
            legal_window=request.legal_window,
            caller=caller,
        )
        async for result in self._service.decide_batch(campaign, deadline=_deadline(context), caller=caller):
            yield batch_result_message(result)


_PHONE_TYPES = {PhoneType.MOBILE: nba_pb2.MOBILE, PhoneType.HOME: nba_pb2.HOME, PhoneType.WORK: nba_pb2.WORK}


def batch_result_message(result: CampaignResult) -> nba_pb2.BatchResult:
    if isinstance(result, CampaignExclusion):
        return nba_pb2.BatchResult(
            customer_id=result.customer_id,
            decision_id=result.decision_id,
            excluded=nba_pb2.Excluded(
                reason=nba_pb2.ExclusionReason.Value(result.reason.value.upper()), detail=result.detail
            ),
        )
    a, window = result.action, result.window
    return nba_pb2.BatchResult(
        customer_id=result.customer_id,
        decision_id=result.decision_id,
        call=nba_pb2.DialerCall(
            action=action_message(a),
            phone=result.phone.number,
            phone_type=_PHONE_TYPES[result.phone.type],
            window=nba_pb2.CallWindow(
                time_zone=window.time_zone,
                earliest=timestamp(window.earliest),
                latest=timestamp(window.latest),
                earliest_local=window.earliest.isoformat(timespec="seconds"),
                latest_local=window.latest.isoformat(timespec="seconds"),
            ),
            expires_at=timestamp(a.valid_until),
            idempotency_key=result.idempotency_key,
        ),
    )


def add_servicer(
    servicer: object, server: grpc.aio.Server, module: Any = nba_pb2, service: str = "NextBestAction"
) -> None:
    """Registers the handlers as the generated `add_*Servicer_to_server` does, but with request
    deserializers that never raise: grpcio answers a deserializer's exception with UNKNOWN and the Python
    exception in the message, where a caller should get INVALID_ARGUMENT in plain words (see `_edge`)."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in descriptor.methods:
        if method.client_streaming:
            raise TypeError(f"{method.full_name}: only unary and server-streaming methods are registered here")
        factory = (
            grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=lenient_deserializer(getattr(module, method.input_type.name)),
            response_serializer=getattr(module, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def check_can_listen(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Raises OSError("cannot listen on HOST:PORT: address already in use") when the port is taken.

    gRPC's own bind failure says only "Failed to bind" and puts the reason in its C-core log; asking the OS
    first gives the reason in one plain line. Port 0 and names that do not resolve are left to gRPC.
    With `reuse_port` the probe joins the port as a worker does, so the supervisor's reservation and the other
    workers' listeners are no conflict, and anything else holding the port still is.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise OSError(f"cannot listen on {shown}: {os.strerror(exc.errno).lower()}") from exc


CONNECTION_AGE_GRACE_S = 300.0  # beyond any call we serve: an aged connection only stops taking new calls


class GrpcServer:
    """The server with health and reflection; `stop` lets in-flight calls finish and refuses new ones.

    `reuse_port` is for a supervisor's workers: each listens on the same port (SO_REUSEPORT) and the kernel
    spreads new connections over them. A lone server leaves it off, so a second one on its port is refused.
    `connection_age` (seconds), with it, closes each connection gracefully once that old, so that a retiring
    worker that has left the port can wait until none is left instead of cancelling calls.
    `credentials` (nba_service.security.tls) make the port speak TLS; without them it is plain text.
    `limits` (nba_service.security.limits) caps calls per caller, at once per process, and streams per connection.
    `access` (nba_service.security.access) authenticates and authorises every call but health and reflection
    (grpc_auth); without it every call is let through as it is, which only tests that need no caller do.
    `reflection` False serves no reflection at all.
    `port` None listens nowhere (`--no-grpc`): the object still holds the health state and the limits that the
    HTTP edge shares, so both transports answer alike whichever of them listens.
    `metrics` (nba_service.telemetry.metrics) records every call's duration and status.
    `outer` interceptors run before all others, on every call: tracing (grpc_tracing), so refused calls are traced.
    """

    def __init__(
        self,
        service: DecisionService,
        host: str,
        port: int | None,
        *,
        reuse_port: bool = False,
        connection_age: float | None = None,
        credentials: grpc.ServerCredentials | None = None,
        limits: CallLimits | None = None,
        access: AccessControl | None = None,
        reflection: bool = True,
        metrics: ServiceMetrics | None = None,
        outer: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        options: list[tuple[str, int]] = [
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", 1 << 20),
        ]
        if connection_age is not None:
            options += [
                ("grpc.max_connection_age_ms", int(connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE_S * 1000)),
            ]
        # Tracing outermost, then metrics (refused calls are traced and measured too), then authentication,
        # then the limits, which read the caller it sets (grpc_limits).
        self._in_flight = InFlightCalls()
        interceptors: list[grpc.aio.ServerInterceptor] = [self._in_flight, *outer]
        if metrics is not None:
            interceptors.append(MetricsInterceptor(metrics))
        if access is not None:
            interceptors.append(AuthInterceptor(access))
        self._reflection = reflection
        self.limits = None if limits is None else LimitsInterceptor(limits)
        if self.limits is not None:
            interceptors.append(self.limits)
            options.append(("grpc.max_concurrent_streams", self.limits.limits.max_streams_per_connection))
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        add_servicer(NextBestActionServicer(service), self.server)
        self.health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._reflected = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.host = host
        self.serving = False
        self.listening = port is not None
        self.port = 0
        self.address = ""
        if port is None:
            return
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        check_can_listen(host, port, reuse_port=reuse_port)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(bind)
            else:
                self.port = self.server.add_secure_port(bind, credentials)
        except RuntimeError as exc:  # grpcio raises instead of returning 0 when the bind fails
            raise OSError(f"cannot listen on {bind}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {bind}")
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def reflect(self, service_name: str) -> None:
        """Lists another service added to `server` in reflection; call before `start`."""
        self._reflected.append(service_name)

    async def start(self, serving: bool = True) -> None:
        if self._reflection:
            reflection.enable_server_reflection((*self._reflected, reflection.SERVICE_NAME), self.server)
        if self.listening:
            await self.server.start()
        await self.health.set(LIVENESS_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(serving)

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving  # what gRPC health says, read by the HTTP edge's /healthz too
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.health.close_watches()
        if not self.listening:
            return
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await asyncio.sleep(0)  # gRPC refuses new calls from here on
        try:
            async with asyncio.timeout(grace):
                await self._in_flight.idle()
        except TimeoutError:
            log.warning("grace_period_over", cancelled=self._in_flight.running(), grace_seconds=grace)
        if not stopping.done():
            # Nothing this server started is running: what gRPC may still wait for, it never ran (grpc_in_flight).
            await self.server.stop(0)
        await stopping

    def leave_port(self) -> None:
        """Takes no new connection from now on and goes on serving the ones it has (Linux only).

        For a worker that stops while others keep serving the port: grpc.aio closes its listener and sends
        GOAWAY in one step, and clients reconnecting at once can land in the closing listener's queue, where
        the kernel resets them. Leaving first sends every new connection to the other workers. gRPC has no call
        for it, so its listening socket is found among this process's descriptors and shut down, not closed:
        the descriptor stays gRPC's.
        """
        if sys.platform != "linux" or not self.listening:
            return
        for name in os.listdir("/proc/self/fd"):
            try:
                if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                    continue
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    ours = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname()[1] == self.port
                    if ours and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        sock.shutdown(socket.SHUT_RD)
            except OSError:  # gone meanwhile, not a TCP socket, or a second descriptor of one already shut down
                continue

    async def wait(self) -> None:
        await self.server.wait_for_termination()
