"""The one interceptor every gRPC call passes: who is calling, may they make this call, and who they are for
the handler.

It wraps each unary handler's behaviour rather than deciding on the method name alone, because what a call
may do depends on the request too (Decide's channel and dry_run). Inside the wrapped behaviour the caller is
set in `CURRENT_CALLER`, so the handler, and any interceptor installed after this one (limits), see it.
Which customers a call may touch needs the profile or the record, so scoping is left to the service layer.
Health and reflection pass untouched.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.errors import PermissionDenied, Unauthenticated
from nba_service.security.access import AccessControl
from nba_service.security.authz import NEXT_BEST_ACTION, Ask, authorize, is_open
from nba_service.security.policy import Caller
from nba_service.transport.grpc_errors import internal_status, to_status
from nba_service.transport.grpc_handlers import Behaviour, StreamBehaviour, rewrapped

log = structlog.get_logger(__name__)

CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("nba_caller", default=None)

_DECIDE = NEXT_BEST_ACTION + "Decide"
_CHANNELS = {nba_pb2.AGENT_DESKTOP: Channel.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER: Channel.OUTBOUND_DIALER}


def current_caller() -> Caller | None:
    """The caller of the call being handled; None outside a call this interceptor let through."""
    return CURRENT_CALLER.get()


def ask_of(method: str, request: object) -> Ask:
    """What the call asks, as authorisation needs it. A request that did not decode asks for nothing in
    particular: the handler refuses it as invalid once a caller who may use the method gets that far."""
    if method == _DECIDE and isinstance(request, nba_pb2.DecideRequest):
        return Ask(method, _CHANNELS.get(request.channel), request.dry_run)
    return Ask(method)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Install first: interceptors after it run inside its wrapped behaviour and can read `CURRENT_CALLER`."""

    def __init__(self, access: AccessControl) -> None:
        self._access = access
        # The wrapped handler per method, made once: gRPC hands the same handler for a method on every call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or is_open(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # A server stream (DecideBatch) is checked once, before its first result.
        guarded = rewrapped(handler, lambda b: self._guard(method, b), lambda b: self._guard_stream(method, b))
        # Only unary and server-streaming methods are ours (add_servicer): any other is refused.
        wrapped = _refusing(handler, method) if guarded is None else guarded
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _guard(self, method: str, behaviour: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._admit(method, request, context)
            token = CURRENT_CALLER.set(caller)
            try:
                return await behaviour(request, context)
            finally:
                CURRENT_CALLER.reset(token)

        return guarded

    def _guard_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            caller = await self._admit(method, request, context)
            token = CURRENT_CALLER.set(caller)
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                CURRENT_CALLER.reset(token)

        return guarded

    async def _admit(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Caller:
        """The authenticated and authorised caller, or the call ends here with the refusal."""
        try:
            caller = self._access.caller(context.invocation_metadata() or (), context.auth_context())
            authorize(caller, ask_of(method, request))
        except (Unauthenticated, PermissionDenied) as exc:
            log.info("call_refused", method=method, code=exc.code.value, reason=exc.message, peer=context.peer())
            await context.abort_with_status(to_status(exc))
            raise AssertionError("unreachable") from exc  # abort_with_status always raises
        except Exception as exc:  # never gRPC's UNKNOWN with a Python exception in it
            log.exception("authentication_failed", method=method)
            await context.abort_with_status(internal_status("internal error; the failure was logged"))
            raise AssertionError("unreachable") from exc
        return caller


def _refusing(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A streaming method nobody classified: refused to everyone rather than served unchecked."""
    status = to_status(PermissionDenied(f"{method.rsplit('/', 1)[-1]} is open to no role"))

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    factories = {
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    factory = factories[(handler.request_streaming, handler.response_streaming)]
    return factory(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
