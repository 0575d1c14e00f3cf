"""Which calls the server is running, so that a shutdown knows when nothing of its own is left, and can say
what it cut off when the grace period ran out.

grpc.aio's `Server.stop(grace)` can wait out the whole grace period although every call it started has ended
(a clean-checkout run saw a SIGTERM take 5.02 s of a 5 s grace with nothing left to record), and it cancels calls
its transport accepted but never started (grpc/grpc#41785): those are never run either way. Counting the calls
that did start lets the server stop as soon as they have finished.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from nba_service.transport.grpc_handlers import Behaviour, StreamBehaviour, rewrapped


class InFlightCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        """Returns once no started call is running."""
        await self._idle.wait()

    def running(self) -> dict[str, int]:
        """The started calls still running, by method."""
        return {method: n for method, n in self._running.items() if n}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            return handler  # health Watch: it writes rather than yields, and ends when the server stops
        method: str = details.method
        wrapped = rewrapped(handler, lambda b: self._counted(method, b), lambda b: self._counted_stream(method, b))
        return handler if wrapped is None else wrapped  # reflection's stream ends with its caller

    def _enter(self, method: str) -> None:
        self._running[method] += 1
        self._idle.clear()

    def _leave(self, method: str) -> None:
        self._running[method] -= 1
        if not any(self._running.values()):
            self._idle.set()

    def _counted(self, method: str, behaviour: Behaviour) -> Behaviour:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._enter(method)
            try:
                return await behaviour(request, context)
            finally:
                self._leave(method)

        return counted

    def _counted_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._enter(method)
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                self._leave(method)

        return counted
