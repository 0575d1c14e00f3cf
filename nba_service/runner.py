"""Runs the service until SIGTERM or SIGINT, then shuts down in order.

Order matters for "nothing lost": stop taking calls and let in-flight ones finish, then drain the
decision log, then release the engine.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable

import structlog

from nba_service.app import Application, build_application
from nba_service.settings import Settings
from nba_service.transport.grpc_server import GrpcServer

log = structlog.get_logger(__name__)


async def serve(settings: Settings, on_ready: Callable[[GrpcServer], None] | None = None) -> None:
    app: Application = await build_application(settings)
    # Start-up objects (rulesets, the sample) live for the whole process: keep full collections off them.
    gc.collect()
    gc.freeze()
    try:
        server = GrpcServer(app.service, settings.host, settings.port)
    except BaseException:
        await app.close()
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM that arrives the moment we report ready must still shut down gracefully.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    ready = await app.ready()
    await server.start(serving=ready)
    log.info("serving", address=server.address, pid=os.getpid(), store=settings.store, ready=ready)
    if on_ready is not None:
        on_ready(server)
    monitor = asyncio.create_task(_watch_store(app, server, ready), name="store-health")
    try:
        await stopping.wait()
    finally:
        log.info("shutting_down", grace_seconds=settings.grace_seconds)
        monitor.cancel()
        await server.stop(settings.grace_seconds)
        await app.close()
        stats = app.decision_log.stats
        log.info(
            "stopped",
            decisions_recorded=stats.written,
            dead_letters=stats.dead_letters,
            not_written=len(stats.unwritten),
        )


async def _watch_store(app: Application, server: GrpcServer, ready: bool, interval: float = 0.5) -> None:
    """Keeps gRPC health in step with the store, so load balancers stop sending while the database is away."""
    while True:
        await asyncio.sleep(interval)
        try:
            now_ready = await app.ready()
        except Exception:  # a broken check means "not ready", never a dead monitor
            log.exception("store_readiness_check_failed")
            now_ready = False
        if now_ready != ready:
            log.warning("store_readiness_changed", ready=now_ready, store=app.settings.store)
            await server.set_serving(now_ready)
            ready = now_ready
