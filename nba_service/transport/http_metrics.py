"""The HTTP/JSON API's request duration histogram: a pure ASGI middleware, one record per request.

Labelled by route template (`/v1/decisions/{decision_id}/outcomes`), never the path itself, which holds ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nba_service.telemetry.metrics import ServiceMetrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self._metrics = metrics
        self._recorders: dict[tuple[str, str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes the app becomes Starlette's 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
            route = getattr(scope.get("route"), "path", "")  # set by the router once a route matched
            key = (method, route, status)
            recorder = self._recorders.get(key)
            if recorder is None:
                recorder = self._recorders[key] = self._metrics.http_recorder(method, route, status)
            recorder(elapsed)
