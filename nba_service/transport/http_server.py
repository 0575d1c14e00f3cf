"""Runs the HTTP/JSON app (`http_api`) with uvicorn in the gRPC server's process and event loop.

The socket is made here rather than by uvicorn, for two reasons: port 0 must name the port it picked before
`serving` is logged, and a supervisor's workers share one port (SO_REUSEPORT) as their gRPC servers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from fastapi import FastAPI

from nba_service.security.tls import ServerTls
from nba_service.transport.grpc_server import check_can_listen


class HttpServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, *, tls: ServerTls | None, reuse_port: bool, grace: float
    ) -> None:
        check_can_listen(host, port, reuse_port=reuse_port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(1024)
        except OSError as exc:
            self._socket.close()
            raise OSError(f"cannot listen on {host}:{port} (HTTP): {exc.strerror or exc}") from exc
        self.port: int = self._socket.getsockname()[1]
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.scheme = "http" if tls is None else "https"
        config = uvicorn.Config(
            app,
            log_config=None,  # our structlog setup owns logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(grace)),
        )
        config.load()
        if tls is not None:  # the gRPC listener's policy: TLS 1.2+, a client certificate from the CA when mutual
            config.ssl = tls.ssl_context()
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http")
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # raises what stopped it
            raise OSError(f"the HTTP listener on {self.address} stopped at once")

    async def stop(self) -> None:
        """Takes no new connection, lets requests in flight finish (up to the grace), then closes."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close()
