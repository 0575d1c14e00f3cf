"""A server span per HTTP request, after the HTTP semantic conventions, parented by the caller's `traceparent`.

Plain ASGI rather than opentelemetry-instrumentation-asgi, for the reasons `grpc_tracing` gives: only what
cannot name a customer is recorded (method, route template, path, status; never the query string, headers
or body), health checks stay untraced, and an untraced server does not have it at all.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_UNTRACED = frozenset({"/healthz"})


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self._app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self._app(scope, receive, send)
            return
        method: str = scope["method"]
        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        server = scope.get("server")
        if server:
            attributes["server.address"], attributes["server.port"] = server[0], server[1]
        with self._tracer.start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # an exception's text can name a customer
            set_status_on_exception=False,
        ) as span:
            try:
                await self._app(scope, receive, sent)
            except BaseException:
                status = status or 500
                raise
            finally:
                template = getattr(scope.get("route"), "path", None)
                if isinstance(template, str):
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                if status:
                    span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
