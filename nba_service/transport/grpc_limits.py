"""Rate and concurrency limits at the gRPC edge: RESOURCE_EXHAUSTED, naming the limit and when to retry.

Installed after the authentication interceptor (`grpc_auth`), inside its wrapped behaviour, so the limits
know the caller (`CURRENT_CALLER`) and a call refused by the policy never takes a token. A caller the server
does not identify (plain text without a policy: `anonymous`) is counted per peer address instead, so one
such client cannot use up everyone's share. Health checks are never limited: a load balancer must see a busy
server as busy, not as down; reflection (a stream) passes untouched too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from nba_service.errors import ResourceExhausted
from nba_service.security.limits import CallCounter, CallLimits, Rate, RateLimiter, Refused, Slot
from nba_service.security.policy import Caller
from nba_service.transport.grpc_auth import current_caller
from nba_service.transport.grpc_errors import to_status
from nba_service.transport.grpc_handlers import Behaviour, StreamBehaviour, rewrapped

log = structlog.get_logger(__name__)

RateFor = Callable[[Caller | None], Rate | None]
"""The rate a caller gets (None: unlimited). The seam for per-role limits: today every caller gets the one
configured rate."""
_EXEMPT_PREFIX = "/grpc.health.v1.Health/"
_ANONYMOUS = "anonymous"
REFUSAL_LOG_EVERY_S = 5.0


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` -> `10.0.0.7`, `ipv6:[::1]:51234` -> `::1`: the caller's address without the port,
    so that every connection from one machine shares one count."""
    _, _, address = peer.partition(":")
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address or peer


def caller_key(caller: Caller | None, peer: str) -> str:
    """Whose bucket a call takes from: the verified principal, or the peer's address for a caller nobody
    identified."""
    if caller is not None and caller.principal != _ANONYMOUS:
        return caller.principal
    return f"{_ANONYMOUS}@{peer_host(peer)}"


class LimitsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Install after `AuthInterceptor`. Counts run in the event loop's one thread: no lock is needed."""

    def __init__(
        self,
        limits: CallLimits,
        rate_for: RateFor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._rate_for: RateFor = rate_for or (lambda _caller: limits.rate)
        self._rates = RateLimiter(clock)
        self._calls = CallCounter(limits.max_concurrent_calls, clock)
        self._clock = clock
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._refused_since_log = 0
        self._last_log = float("-inf")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_EXEMPT_PREFIX):
            return handler
        if handler.unary_unary is None and handler.unary_stream is None:  # reflection, a bidirectional stream
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # A campaign (server stream) takes one token and holds one slot while it streams.
        wrapped = rewrapped(handler, lambda b: self._limited(method, b), lambda b: self._limited_stream(method, b))
        assert wrapped is not None  # reflection's stream was let through above
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _limited(self, method: str, behaviour: Behaviour) -> Behaviour:
        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                slot = self.admit(method, current_caller(), context.peer())
            except ResourceExhausted as exc:
                await context.abort_with_status(to_status(exc))
                raise AssertionError("unreachable") from exc  # abort_with_status always raises
            try:
                return await behaviour(request, context)
            finally:
                slot.leave()

        return limited

    def _limited_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def limited(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                slot = self.admit(method, current_caller(), context.peer())
            except ResourceExhausted as exc:
                await context.abort_with_status(to_status(exc))
                raise AssertionError("unreachable") from exc
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                slot.leave()

        return limited

    def admit(self, method: str, caller: Caller | None, peer: str) -> Slot:
        """Takes a token and a slot for one call, or raises ResourceExhausted naming the limit and when to retry.

        Transport-independent: the HTTP edge (`http_api`) admits its calls here too, so a caller shares one rate
        and one process-wide cap whichever protocol it speaks. `peer` is in gRPC's form (`ipv4:10.0.0.7:51234`).
        """
        rate = self._rate_for(caller)
        key = caller_key(caller, peer)
        refused = None if rate is None else self._rates.take(key, rate)
        if refused is not None:
            self._refuse(method, key, refused, f"{refused.limit} for {key} exceeded")
        slot = self._calls.enter()
        if isinstance(slot, Refused):
            self._refuse(method, key, slot, f"{slot.limit} reached")
        assert isinstance(slot, Slot)  # _refuse always raises
        return slot

    def _refuse(self, method: str, key: str, refused: Refused, what: str) -> None:
        error = ResourceExhausted(f"{what}; retry after {refused.retry_after:g} s", refused.retry_after)
        self._note_refusal(method, key, error.message)
        raise error

    def _note_refusal(self, method: str, key: str, message: str) -> None:
        """One log line per few seconds, with how many calls were refused since the last: a caller hammering
        the server must not flood the log as well."""
        self._refused_since_log += 1
        now = self._clock()
        if now - self._last_log >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "calls_refused_by_limits",
                refused=self._refused_since_log,
                last_method=method,
                last_caller=key,
                last_reason=message,
            )
            self._refused_since_log = 0
            self._last_log = now

    @property
    def running(self) -> int:
        """Calls running now (for tests and metrics)."""
        return self._calls.running
