"""A server span per gRPC call, after the RPC semantic conventions, parented by the caller's `traceparent`.

Ours rather than opentelemetry-instrumentation-grpc's: it must run before authentication (a refused call is
traced too), it leaves health checks and reflection untraced (a probe every few seconds would bury the calls
that matter), and no attribute may carry what a request says about a customer: only the method and the
status are recorded, never the request, the peer's metadata or an error's text. The server adds it only when
tracing is on (`nba_service.telemetry.tracing`), so an untraced server pays nothing for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from nba_service.telemetry import tracing
from nba_service.transport.grpc_handlers import Behaviour, StreamBehaviour, rewrapped

_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Server errors as the RPC conventions count them; the rest are the caller's and leave the span's status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_UNTRACED):
            return handler
        wrapped = rewrapped(handler, lambda b: self._traced(method, b), lambda b: self._traced_stream(method, b))
        return handler if wrapped is None else wrapped

    def _traced(self, method: str, behaviour: Behaviour) -> Behaviour:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = self._start(method, context)
            code = grpc.StatusCode.OK
            try:
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    return await behaviour(request, context)
            except BaseException as exc:
                code = _code(exc, context)
                raise
            finally:
                _end(span, code)

        return traced

    def _traced_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        """The span is current only while the behaviour runs, never across a `yield`: grpc.aio closes the
        stream of a caller that went away from another context, where OpenTelemetry could not detach it."""

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = self._start(method, context)
            current = trace.set_span_in_context(span)
            items = aiter(behaviour(request, context))
            code = grpc.StatusCode.OK
            try:
                while True:
                    token = otel_context.attach(current)
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    yield item
            except BaseException as exc:
                code = _code(exc, context)
                raise
            finally:
                _end(span, code)
                await items.aclose()  # type: ignore[attr-defined]  # an async generator, as add_servicer registers

        return traced

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> trace.Span:
        service, _, name = method.lstrip("/").rpartition("/")
        carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        return self._tracer.start_span(
            method.lstrip("/"),
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,  # an exception's text can name a customer
            set_status_on_exception=False,
        )


def _code(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised ends with: the one it aborted with, or why it was cut short."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the caller went away, or its deadline passed
        remaining = context.time_remaining()
        return (
            grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
        )
    code = context.code()
    if isinstance(code, int):  # grpc.aio reports the code set by abort as its number
        code = _by_number(code)
    return grpc.StatusCode.UNKNOWN if code is None or code is grpc.StatusCode.OK else code


def _end(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _by_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def tracing_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptor to put first, or none when tracing is off."""
    tracer = tracing.tracer()
    return [] if tracer is None else [TracingInterceptor(tracer)]
