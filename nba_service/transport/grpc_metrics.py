"""The RPC duration histogram: one record per call, made here so that no handler has to think of it.

Installed first (outermost), so refused calls (authentication, limits) are measured with the status they got.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from nba_service.telemetry.metrics import ServiceMetrics
from nba_service.transport.grpc_handlers import Behaviour, StreamBehaviour, rewrapped


def _status(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status the call ends with: the one set or aborted with, else `default`."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio gives the C core's integer
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return default


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._recorders: dict[tuple[str, grpc.StatusCode], Callable[[float], None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            return handler  # health Watch: as long as its connection, a duration would say nothing
        wrapped = rewrapped(handler, lambda b: self._measured(method, b), lambda b: self._measured_stream(method, b))
        return handler if wrapped is None else wrapped  # reflection's stream, the same

    def _record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        elapsed = time.perf_counter() - started
        recorder = self._recorders.get((method, code))
        if recorder is None:
            recorder = self._recorders[(method, code)] = self._metrics.rpc_recorder(method, code.name, code.value[0])
        recorder(elapsed)

    def _measured(self, method: str, behaviour: Behaviour) -> Behaviour:
        async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = _status(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                if code is grpc.StatusCode.OK:
                    code = _status(context, grpc.StatusCode.OK)
                self._record(method, code, started)

        return measured

    def _measured_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def measured(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for item in behaviour(request, context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = _status(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                if code is grpc.StatusCode.OK:
                    code = _status(context, grpc.StatusCode.OK)
                self._record(method, code, started)

        return measured
