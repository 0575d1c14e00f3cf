"""grpc.health.v1 for this server: the library's servicer, with Watch streams that end when the server stops.

The library's Watch runs until its caller hangs up. Clients that watch (gRPC's client-side health checking,
proxies) keep it open for the life of the connection, and
`grpc.aio.Server.stop(grace)` waits for every open call, so a single watcher made each SIGTERM and each
retiring worker wait out the whole grace period. Here every watcher gets the last status (NOT_SERVING at a
shutdown) and then a clean end of stream, and the server stops as soon as its real calls are done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

_Status = Any  # health_pb2.HealthCheckResponse.ServingStatus, an int at run time


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, _Status] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: _Status) -> None:
        await super().set(service, status)
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    async def close_watches(self) -> None:
        """Ends every Watch stream after it has sent the current status; later Watch calls end the same way."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        sent: _Status | None = None
        while True:
            async with self._changed:
                while self._statuses.get(request.service, unknown) == sent and not self._closing:
                    await self._changed.wait()
                status, closing = self._statuses.get(request.service, unknown), self._closing
            # Written outside the lock: a slow watcher must not hold up `set` for everyone else.
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if closing:
                return
