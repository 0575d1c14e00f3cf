"""Runs the service until SIGTERM or SIGINT, then shuts down in order.

Order matters for "nothing lost": stop taking calls and let in-flight ones finish, then drain the
decision log, then release the engine, and last export the spans still buffered.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from nba_service.app import Application, build_application, configured_ruleset
from nba_service.deploy.control import RulesetControl
from nba_service.deploy.startup import follow_configured_files
from nba_service.deploy.state import Activation, VersionInfo
from nba_service.errors import FailedPrecondition, NbaError, RulesetInvalid
from nba_service.review.queries import ReviewQueries
from nba_service.security.access import AccessControl, access_from_settings
from nba_service.security.limits import CallLimits, Rate
from nba_service.security.panel_session import PanelSessions, new_secret, read_secret_file
from nba_service.security.tls import PLAIN_TEXT_HINT, ServerTls, listener_security
from nba_service.settings import Settings
from nba_service.telemetry import tracing
from nba_service.telemetry.endpoint import serve_scrape
from nba_service.telemetry.metrics import ServiceMetrics, process_metrics
from nba_service.telemetry.otlp import OtlpMetrics, otlp_requested
from nba_service.transport.grpc_admin import ADMIN_SERVICE_NAME, add_admin
from nba_service.transport.grpc_review import REVIEW_SERVICE_NAME, ReviewServicer, add_review
from nba_service.transport.grpc_server import GrpcServer
from nba_service.transport.grpc_tracing import tracing_interceptors
from nba_service.worker import CONNECTION_AGE_S, RETIRE_DRAIN_S

if TYPE_CHECKING:  # the HTTP side (FastAPI, a quarter of a second to import) is imported only with --http-port
    from nba_service.transport.http_server import HttpServer

log = structlog.get_logger(__name__)


async def serve(
    settings: Settings,
    on_ready: Callable[[GrpcServer, bool, VersionInfo | None], None] | None = None,
    *,
    worker: int | None = None,
    control: RulesetControl | None = None,
    panel_secret: bytes | None = None,
    activation: Activation | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT. `on_ready(server, store_ready, version)` is called once calls are taken.

    `worker` is this process's index among a supervisor's workers: it then shares the port with the others
    and logs `worker_serving`, leaving the one `serving` event, which people and tools wait for, to the supervisor.
    `panel_secret` signs agent panel sessions when no `--panel-secret-file` is set: a supervisor gives every
    worker the same one; a lone server makes its own. `activation`: how a supervisor's deploy brought this
    worker's version, and who asked, for the archive.

    Traces are set up here, from the `OTEL_*` variables (`nba_service.telemetry.tracing`), once per process: each
    of a supervisor's workers has its own provider, and flushes it when it stops.
    """
    traced = tracing.configure()
    try:
        await _serve(
            settings, on_ready, worker=worker, control=control, panel_secret=panel_secret, activation=activation
        )
    finally:
        if traced:
            await asyncio.to_thread(tracing.shutdown)


async def _serve(
    settings: Settings,
    on_ready: Callable[[GrpcServer, bool, VersionInfo | None], None] | None,
    *,
    worker: int | None,
    control: RulesetControl | None,
    panel_secret: bytes | None,
    activation: Activation | None,
) -> None:
    tls = listener_security(settings)  # before anything is loaded: plain text off loopback fails at once
    access = access_from_settings(settings)  # a bad policy file, too
    metrics = process_metrics(settings)
    app: Application = await build_application(settings, metrics, activation=activation)
    # Start-up objects (rulesets, the sample) live for the whole process: keep full collections off them.
    gc.collect()
    gc.freeze()
    try:
        server = GrpcServer(
            app.service,
            settings.host,
            settings.port if settings.grpc else None,
            reuse_port=worker is not None,
            connection_age=None if worker is None else CONNECTION_AGE_S,
            credentials=None if tls is None else tls.grpc_credentials(),
            limits=call_limits(settings),
            access=access,
            reflection=settings.reflection,
            metrics=metrics,
            outer=tracing_interceptors(),
        )
        admin = app.rulesets if app.rulesets is not None else control
        if admin is not None:
            add_admin(admin, server.server)
            server.reflect(ADMIN_SERVICE_NAME)
        review = ReviewQueries(app.archive, app.records, app.service, admin)
        add_review(ReviewServicer(review), server.server)
        server.reflect(REVIEW_SERVICE_NAME)
        http = _http_server(settings, app, server, access, tls, worker, panel_secret, review, metrics)
        # A supervisor serves its workers' metrics; a lone server its own.
        scrape = None
        if metrics is not None and worker is None and settings.metrics_port is not None:
            scrape = serve_scrape(metrics.registry, settings.host, settings.metrics_port)
    except BaseException:
        await app.close()
        raise
    otlp = None
    if metrics is not None and otlp_requested(os.environ):
        otlp = OtlpMetrics(metrics.registry, worker=worker)
        otlp.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM that arrives the moment we report ready must still shut down gracefully.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    background: list[asyncio.Task[None]] = []
    if app.rulesets is not None:
        rulesets = app.rulesets

        async def follow(origin: str) -> None:
            await rulesets.follow_configured(lambda: configured_ruleset(settings), origin)

        watch = follow_configured_files(settings, follow, loop, on_sighup=_reloads(access, background))
        background.append(asyncio.create_task(watch, name="rulesets-watch"))
    else:
        loop.add_signal_handler(signal.SIGHUP, _reloads(access, background))
    ready = await app.ready()
    await server.start(serving=ready)
    if http is not None:
        await http.start()
    event = "serving" if worker is None else "worker_serving"
    addresses = {"address": server.address} if server.listening else {}
    if http is not None:
        addresses["http_address"] = http.address
    if tls is None:
        log.warning("plain_text_listener", **addresses, hint=PLAIN_TEXT_HINT)
    if scrape is not None:
        addresses["metrics_address"] = scrape.address
    log.info(
        event,
        **addresses,
        pid=os.getpid(),
        store=settings.store,
        ready=ready,
        tls=_tls_mode(tls),
    )
    if on_ready is not None:
        on_ready(server, ready, app.version)
    background.append(asyncio.create_task(_watch_store(app, server, ready), name="store-health"))
    if metrics is not None:
        background.append(asyncio.create_task(_sample(metrics), name="metrics-sampler"))
    try:
        await stopping.wait()
    finally:
        log.info("shutting_down", grace_seconds=settings.grace_seconds)
        for task in background:
            task.cancel()
        if worker is not None:
            server.leave_port()
            # grpc.aio cancels the calls it has not started when it stops (grpc/grpc#41785). Having left the port,
            # the worker waits until its connections have aged out (GOAWAY, then the clients reconnect to the
            # other workers), so that stopping finds no call on its way in.
            await asyncio.sleep(min(RETIRE_DRAIN_S, settings.grace_seconds))
        if http is not None:
            await asyncio.gather(http.stop(), server.stop(settings.grace_seconds))
        else:
            await server.stop(settings.grace_seconds)
        await app.close()
        if metrics is not None:
            metrics.sample()
        if otlp is not None:
            await otlp.close()
        if scrape is not None:
            scrape.stop()
        stats = app.decision_log.stats
        log.info(
            "stopped",
            decisions_recorded=stats.written,
            dead_letters=stats.dead_letters,
            not_written=len(stats.unwritten),
        )


def _http_server(
    settings: Settings,
    app: Application,
    server: GrpcServer,
    access: AccessControl,
    tls: ServerTls | None,
    worker: int | None,
    panel_secret: bytes | None,
    review: ReviewQueries,
    metrics: ServiceMetrics | None,
) -> HttpServer | None:
    """The HTTP/JSON API beside gRPC (`--http-port`): same service, access control, limits and health state,
    and the agent side panel."""
    if settings.http_port is None:
        return None
    from nba_service.transport.http_api import create_app  # noqa: PLC0415
    from nba_service.transport.http_server import HttpServer  # noqa: PLC0415
    from nba_service.transport.http_tracing import TracingMiddleware  # noqa: PLC0415
    from nba_service.transport.panel import PanelConfig  # noqa: PLC0415

    if settings.panel_secret_file is not None:
        try:
            secret = read_secret_file(settings.panel_secret_file)
        except ValueError as exc:  # checked at start-up, but a mounted secret can change before the HTTP side starts
            raise FailedPrecondition(f"--panel-secret-file / NBA_PANEL_SECRET_FILE: {exc}") from exc
    else:
        secret = panel_secret or new_secret()
    panel = PanelConfig(PanelSessions(secret, settings.panel_session_seconds), settings.panel_origins)
    api = create_app(
        app.service,
        access=access,
        limits=server.limits,
        serving=lambda: server.serving,
        panel=panel,
        review=review,
        metrics=metrics,
    )
    tracer = tracing.tracer()
    if tracer is not None:
        api.add_middleware(TracingMiddleware, tracer=tracer)
    return HttpServer(
        api,
        settings.host,
        settings.http_port,
        tls=tls,
        reuse_port=worker is not None,
        grace=settings.grace_seconds,
        on_stop=panel.changes.close,
    )


async def _sample(metrics: ServiceMetrics, interval: float = 1.0) -> None:
    """Adds the decisions counted since the last turn to the counters and reads the gauges (decision-log queue,
    pool): the metrics are at most about a second behind."""
    while True:
        metrics.sample()
        await asyncio.sleep(interval)


def _reloads(access: AccessControl, tasks: list[asyncio.Task[None]]) -> Callable[[], None]:
    """What SIGHUP does to the access policy: read it again, off the signal handler (a bad file is logged and
    the policy in force stays)."""

    async def reload() -> None:
        await access.reload()

    def start() -> None:
        tasks.append(asyncio.create_task(reload(), name="access-policy-reload"))

    return start


def _tls_mode(tls: ServerTls | None) -> str:
    return "off" if tls is None else "mutual" if tls.mutual else "server"


def call_limits(settings: Settings) -> CallLimits:
    """The limits each process enforces (with --workers N, each of the N does: see docs/operators)."""
    rate = None
    if settings.rate_limit > 0:
        rate = Rate(settings.rate_limit, settings.rate_burst or max(1, math.ceil(settings.rate_limit)))
    return CallLimits(rate, settings.max_concurrent_calls, settings.max_streams_per_connection)


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


def start_failure(exc: BaseException) -> str | None:
    """What `cannot start: ...` says for a failure to start, or None for a bug (which keeps its traceback).

    One wording for the lone server and for a supervisor's workers, which report it to the supervisor.
    """
    if isinstance(exc, RulesetInvalid):
        return f"the rulesets are invalid:\n{exc}"
    if isinstance(exc, OSError | NbaError):
        return str(exc)
    return None


def leave_stuck_threads() -> None:
    """A database thread blocked on a stalled disk would hold the interpreter's exit for as long as the disk
    stalls; shutdown has already said what it could not write, so the process leaves without it."""
    stuck = [t.name for t in threading.enumerate() if t.name.startswith("sqlite-") and t.is_alive()]
    if stuck:
        log.error("left_threads_blocked_on_the_database", threads=stuck)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
