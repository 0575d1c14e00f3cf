"""Runs the HTTP/JSON app (`http_api`) with uvicorn in the gRPC server's process and event loop.

The socket is made here rather than by uvicorn, for two reasons: port 0 must name the port it picked before
`serving` is logged, and a supervisor's workers share one port (SO_REUSEPORT) as their gRPC servers do.

uvicorn verifies a client certificate (the TLS context requires one when `--tls-client-ca` is set) but does not
hand it to the application, so `_TlsH11Protocol` puts it in each request's scope the way the ASGI TLS extension
names it (`extensions.tls.client_cert_chain`): a certificate caller is the same caller on HTTP as on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from nba_service.security.tls import ServerTls
from nba_service.transport.grpc_server import check_can_listen


class HttpServer:
    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        tls: ServerTls | None,
        reuse_port: bool,
        grace: float,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """`on_stop` runs first on stop: it ends what would otherwise wait out the grace (the panel's long polls)."""
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
            http=_TlsH11Protocol,
            timeout_graceful_shutdown=max(1, round(grace)),
        )
        config.load()
        if tls is not None:  # the gRPC listener's policy: TLS 1.2+, a client certificate from the CA when mutual
            config.ssl = tls.ssl_context()
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self._on_stop = on_stop

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http")
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # raises what stopped it
            raise OSError(f"the HTTP listener on {self.address} stopped at once")

    async def stop(self) -> None:
        """Takes no new connection, lets requests in flight finish (up to the grace), then closes."""
        if self._on_stop is not None:
            self._on_stop()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close()


class _TlsH11Protocol(H11Protocol):
    """One instance per connection: the handshake is over when it is made, so the peer's certificate is known."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            return
        tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)], "tls_version": None, "cipher_suite": None}
        app = self.app

        async def with_certificate(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_certificate
