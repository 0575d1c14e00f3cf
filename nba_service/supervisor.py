"""`nba serve --workers N`: N worker processes serve one port, and one supervisor keeps them serving.

Processes, not threads: a CPython process decides on one core at a time, and durable_rules keeps the
memory of every ruleset version a process has evaluated, so a ruleset deploy replaces the workers (SIGHUP:
a new generation starts, and the old one stops once every new worker serves) instead of reloading in place.

The workers listen on the same port with SO_REUSEPORT and the kernel spreads new connections over them.
The supervisor serves no call. For the whole run it holds a socket bound to the port but never listening
(with SO_REUSEPORT only, so workers may join it and `nba serve` elsewhere is still refused): the port stays
ours while workers come and go, and port 0 becomes one port for every worker. The stores are shared (one
SQLite file in WAL mode, or PostgreSQL) and each decision record is committed before its answer leaves, so an
outcome may be recorded through any worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from nba_service.deploy.control import WorkerInfo
from nba_service.deploy.startup import follow_configured_files
from nba_service.deploy.state import Activation, DeployState, VersionInfo
from nba_service.deploy.supervised import Generation, SupervisorDeploys
from nba_service.errors import StartFailed, WorkersFailing
from nba_service.security.panel_session import new_secret
from nba_service.settings import Settings
from nba_service.telemetry.endpoint import MULTIPROC_ENV, ScrapeEndpoint, WorkerMetricsFolder, serve_scrape
from nba_service.telemetry.metrics import DeployMetrics, quiet_exposition
from nba_service.telemetry.otlp import OtlpMetrics, otlp_requested
from nba_service.worker import ACTIVATION_ENV, DEPLOY_SOCKET_ENV, PANEL_SECRET_ENV, RETIRE_DRAIN_S, SETTINGS_ENV

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 60.0  # a worker that neither serves nor fails by then is stopped and counted as failed
STOP_MARGIN_S = 5.0  # beyond grace + drain, before a worker that will not stop is killed
CRASH_WINDOW_S = 30.0
CRASH_LIMIT = 5  # this many unexpected exits within the window: the fault is not passing, so stop
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
CONTROL_LINE_LIMIT = 1 << 20  # a start failure lists every problem of a ruleset


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process and what its control messages and its exit said."""

    index: int
    generation: int
    process: asyncio.subprocess.Process
    settled: asyncio.Future[None]  # it reported ready, or exited first
    reaped: asyncio.Future[None]
    ready: bool | None = None  # the store's readiness when it reported ready; None until then
    error: str = ""  # the last start failure it reported
    problems: tuple[str, ...] = ()  # and each problem it named (failing scenarios, invalid lines)
    version: VersionInfo | None = None  # the ruleset version it serves, as it reported when ready
    retiring: bool = False  # stopped on purpose: its exit is no failure
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return str(-self.returncode)

    def exit_text(self) -> str:
        return f"signal {self.signal_name}" if self.signal_name else f"code {self.returncode}"

    def exit_reason(self) -> str:
        return f"worker {self.index} (pid {self.pid}) exited with {self.exit_text()}"

    def start_exit(self) -> str:
        return f"{self.exit_reason()} {'before serving' if self.ready is None else 'as soon as it served'}"

    def failure(self) -> str:
        """Why it did not start: its own report when it made one."""
        return self.error or self.start_exit()

    def last_words(self) -> str:
        """Its exit and the last line of its error, for a log line that must stay one line."""
        text = self.exit_reason()
        if self.error:
            text += f": {self.error.strip().splitlines()[-1].strip()}"
        return text


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
MIGRATE_REQ_HINT = (
    "a worker leaving the port (a deploy, a worker replaced) resets the connections it had queued but not yet "
    "accepted, and their calls fail UNAVAILABLE (connection reset by peer); with net.ipv4.tcp_migrate_req=1 "
    "(Linux 5.14+, per network namespace) the kernel hands them to the other workers instead"
)


def connection_migration(path: Path = MIGRATE_REQ) -> bool | None:
    """Whether Linux moves the connections queued on a closing SO_REUSEPORT listener to another listener of the
    port, None where that cannot be read (not Linux, a kernel before 5.14). Measured with two listeners and 40
    queued connections: with it off, the 22 queued on the one shut down were reset; with it on, none."""
    try:
        return path.read_text().strip() != "0"
    except OSError:
        return None


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Binds the port on every address `host` names, without listening; returns the sockets and the port
    (the one the OS chose for port 0). Connections go only to listening sockets, so these never take one."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {_shown(host, port)}: {exc.strerror}") from exc
    held: list[socket.socket] = []
    chosen = port
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address[0], chosen, *address[2:]))
            chosen = sock.getsockname()[1]
    except OSError as exc:
        for sock in held:
            sock.close()
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise OSError(f"cannot listen on {_shown(host, port)}: {reason}") from exc
    return held, chosen


def worker_settings(settings: Settings) -> Settings:
    """The settings a worker runs with. Workers keep no deploy state: several would write it at once, and
    deploying is the supervisor's part (a new generation of workers)."""
    return settings.model_copy(update={"deploy_dir": None})


async def prepare(settings: Settings) -> None:
    """Creates and seeds a new embedded database once, before any worker starts, so that N workers never
    race to seed it. PostgreSQL needs nothing here: each worker checks its schema itself."""
    if settings.store != "sqlite":
        return
    from nba_service.app import choose_ruleset, open_sqlite  # noqa: PLC0415
    from nba_service.domain.loader import load_ruleset_dir  # noqa: PLC0415

    ruleset = choose_ruleset(load_ruleset_dir(settings.rulesets), settings.ruleset, str(settings.rulesets))
    store = await open_sqlite(settings, ruleset)
    await store.close()


class Supervisor:
    """Starts the workers, replaces one that dies, rolls a new generation on SIGHUP, stops them on SIGTERM.

    Every state change happens on the event loop; a worker's exit is handled by the task that watches it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Deploys happen here, so their counter lives here; the workers' instruments are summed from their files.
        quiet_exposition()
        self._deploy_registry = CollectorRegistry()
        deploy_metrics = self._deploy_metrics = DeployMetrics(self._deploy_registry)
        self._metrics_folder = None if settings.metrics_port is None else WorkerMetricsFolder()
        self._scrape: ScrapeEndpoint | None = None
        self._otlp: OtlpMetrics | None = None
        state = None if settings.deploy_dir is None else DeployState(settings.deploy_dir, deploy_metrics.outcome)
        self.deploys = None if state is None else SupervisorDeploys(settings, state)
        self._failed: Worker | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._workers: dict[int, Worker] = {}  # the serving generation, by index
        self._live: set[Worker] = set()  # every worker process not reaped yet, of any generation
        self._generation = 0
        self._serving = False
        self._stopping = asyncio.Event()
        self._exits: collections.deque[float] = collections.deque()
        # One random secret for every worker's panel sessions, so a session works on any of them; kept for the
        # supervisor's life, so replaced and redeployed workers accept the sessions already handed out.
        self._panel_secret = new_secret() if settings.panel_secret_file is None else None
        self._gave_up: str | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._restarts: dict[int, asyncio.Task[None]] = {}
        self._rolling: asyncio.Task[None] | None = None
        self._roll_next: Settings | None = None

    @property
    def pids(self) -> list[int]:
        return [self._workers[i].pid for i in sorted(self._workers)]

    async def run(self) -> None:
        """Serves until SIGTERM or SIGINT. Raises StartFailed when the workers cannot start, WorkersFailing
        when they keep dying."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        watch: asyncio.Task[None] | None = None
        if self.deploys is None:
            loop.add_signal_handler(signal.SIGHUP, lambda: self.request_roll(self.settings))
        if connection_migration() is False:
            log.warning("connection_migration_off", hint=MIGRATE_REQ_HINT)
        try:
            self._start_metrics()
            if await self._start():
                if self.deploys is not None:
                    watch = asyncio.create_task(
                        follow_configured_files(self.deploys.configured, self.deploys.follow_configured, loop),
                        name="rulesets-watch",
                    )
                await self._stopping.wait()
        finally:
            if watch is not None:
                watch.cancel()
            if self.deploys is not None:
                await self.deploys.close()
            await self._shutdown()
        log.info("stopped", pid=os.getpid(), workers=len(self._workers))
        if self._gave_up is not None:
            raise WorkersFailing(self._gave_up)

    def stop(self) -> None:
        self._stopping.set()

    def _start_metrics(self) -> None:
        """One scrape endpoint for the pod (the workers' values summed, and the deploys); OTLP of the deploys when
        asked for (each worker exports its own)."""
        if self._metrics_folder is not None and self.settings.metrics_port is not None:
            registry = self._metrics_folder.registry()
            registry.register(self._deploy_metrics.counter)
            self._scrape = serve_scrape(registry, self.settings.host, self.settings.metrics_port)
        if otlp_requested(os.environ):
            self._otlp = OtlpMetrics(self._deploy_registry)
            self._otlp.start()

    async def _stop_metrics(self) -> None:
        if self._otlp is not None:
            await self._otlp.close()
        if self._scrape is not None:
            self._scrape.stop()
        if self._metrics_folder is not None:
            self._metrics_folder.remove()

    async def _start(self) -> bool:
        """Prepares the store, then starts the first generation; False when told to stop meanwhile."""
        await prepare(self.settings)
        if self._stopping.is_set():
            return False
        settings = self.settings
        if self.deploys is not None:
            path, _ = self.deploys.first_version()
            settings = self.deploys.worker_settings(path)
        workers = [await self._spawn(i, settings, self._generation) for i in range(settings.workers)]
        failed = await self._until_ready(workers)
        fallback = None
        if failed is not None and self.deploys is not None:
            fallback = self.deploys.fallback(settings.rulesets, failed.failure(), failed.problems)
        if failed is not None and fallback is not None and self.deploys is not None:
            await self._retire(workers)
            settings = self.deploys.worker_settings(fallback)
            workers = [await self._spawn(i, settings, self._generation) for i in range(settings.workers)]
            failed = await self._until_ready(workers)
        if failed is not None:
            raise StartFailed("\n  ".join((failed.failure(), *failed.problems)))
        self.settings = settings
        if self._stopping.is_set():
            return False
        self._workers = {w.index: w for w in workers}
        self._serving = True
        if self.deploys is not None:
            await self.deploys.started(self)  # before `serving`: whoever waits for it may deploy at once
        addresses = {"address": _shown(self.settings.host, self.settings.port)} if self.settings.grpc else {}
        if self.settings.http_port is not None:
            addresses["http_address"] = _shown(self.settings.host, self.settings.http_port)
        log.info(
            "serving",
            **addresses,
            pid=os.getpid(),
            store=self.settings.store,
            ready=all(w.ready for w in workers),
            workers=len(workers),
            worker_pids=self.pids,
            **({} if self._scrape is None else {"metrics_address": self._scrape.address}),
        )
        return True

    def request_roll(self, settings: Settings) -> None:
        """Asks for a new generation of workers; one asked for during a roll runs after it, so that the last
        deploy always wins."""
        if not self._serving or self._stopping.is_set():
            log.warning("reload_ignored", reason="not serving yet" if not self._serving else "stopping")
            return
        if self._rolling is not None and not self._rolling.done():
            self._roll_next = settings
            log.info("reload_queued")
            return
        self._rolling = asyncio.create_task(self._roll_until_current(settings), name="roll")

    async def _roll_until_current(self, settings: Settings | None) -> None:
        while settings is not None and not self._stopping.is_set():
            await self.roll(settings)
            settings, self._roll_next = self._roll_next, None

    def recycle(self) -> None:
        self.request_roll(self.settings)

    def generation(self) -> Generation:
        return Generation(tuple(WorkerInfo(i, w.pid, w.version) for i, w in sorted(self._workers.items())))

    def failed_generation(self) -> Generation:
        failed = self._failed
        if failed is None:
            return Generation((), "the new workers did not start")
        return Generation((), failed.failure(), failed.problems)

    async def roll(
        self,
        settings: Settings,
        before_retire: Callable[[], Awaitable[None]] | None = None,
        activation: Activation | None = None,
    ) -> bool:
        """Replaces every worker by one started with `settings` (and `activation`, which they archive). The old
        workers serve until all the new ones do (they share the port, so no call is refused); if a new one fails,
        the old ones go on serving. Returns True only once the old workers have left the port and closed every
        connection, a couple of seconds."""
        generation = self._generation + 1
        log.info("reload_started", workers=settings.workers, serving=self.pids)
        try:
            new = [await self._spawn(i, settings, generation, activation) for i in range(settings.workers)]
        except OSError as exc:
            await self._retire([w for w in self._live if w.generation == generation])
            log.error("reload_refused", reason=f"cannot start a worker: {exc}", error=None, serving=self.pids)
            return False
        failed = await self._until_ready(new)
        if self._stopping.is_set():
            return False
        if failed is not None:
            self._failed = failed
            await self._retire(new)
            log.error(
                "reload_refused",
                reason=failed.start_exit(),
                error=failed.error or None,
                serving=self.pids,
            )
            return False
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()
        old = [w for w in self._live if w.generation < generation]
        self._generation, self.settings = generation, settings
        self._workers = {w.index: w for w in new}
        log.info("reload_done", worker_pids=self.pids, replaced=sorted(w.pid for w in old))
        if before_retire is not None:
            await before_retire()  # while the old workers still run: one of them may be waiting to answer
        # In the background: an old worker may be serving a call (another deploy, say) that waits for this roll's
        # caller to finish; the old ones stop gracefully whatever comes next.
        retiring = asyncio.create_task(self._retire(old), name=f"retire-generation-{generation - 1}")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        # Once this returns, the caller is told the new version serves: by then every connection to an old
        # worker has been closed, so no call made afterwards can still be answered by the old version.
        await asyncio.sleep(min(RETIRE_DRAIN_S, self.settings.grace_seconds))
        return True

    async def _spawn(
        self, index: int, settings: Settings, generation: int, activation: Activation | None = None
    ) -> Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nba_service.worker",
                str(index),
                str(theirs.fileno()),
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={
                    **os.environ,
                    SETTINGS_ENV: worker_settings(settings).model_dump_json(),
                    **self._deploy_env(),
                    **({} if activation is None else {ACTIVATION_ENV: json.dumps(activation.to_json())}),
                },
                # Out of the terminal's process group: Ctrl-C reaches the supervisor only, which stops the
                # workers in order instead of interrupting one in the middle of starting.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = Worker(index, generation, process, loop.create_future(), loop.create_future())
        self._live.add(worker)
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=CONTROL_LINE_LIMIT)
        watcher = asyncio.create_task(self._watch(worker, reader, writer), name=f"worker-{index}-{process.pid}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return worker

    def _deploy_env(self) -> dict[str, str]:
        env = {} if self.deploys is None else {DEPLOY_SOCKET_ENV: self.deploys.address}
        if self._metrics_folder is not None:
            env[MULTIPROC_ENV] = str(self._metrics_folder.path)
        if self._panel_secret is not None:
            env[PANEL_SECRET_ENV] = self._panel_secret.hex()
        return env

    async def _watch(self, worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                self._on_message(worker, line)
        except (OSError, ValueError) as exc:  # ValueError: a line over CONTROL_LINE_LIMIT
            log.warning("worker_control_failed", worker=worker.index, pid=worker.pid, error=str(exc))
        finally:
            writer.close()
        worker.returncode = await worker.process.wait()
        self._live.discard(worker)
        if self._metrics_folder is not None:
            self._metrics_folder.worker_exited(worker.pid)
        for future in (worker.settled, worker.reaped):
            if not future.done():
                future.set_result(None)
        self._exited(worker)

    def _on_message(self, worker: Worker, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("worker_message_unreadable", worker=worker.index, pid=worker.pid, line=line[:200].decode())
            return
        if kind == "ready":
            worker.ready = bool(message.get("ready"))
            with contextlib.suppress(KeyError, TypeError, ValueError):
                worker.version = VersionInfo.from_json(message["version"])
            if not worker.settled.done():
                worker.settled.set_result(None)
        elif kind == "failed":
            worker.error = str(message.get("error", ""))
            worker.problems = tuple(str(p) for p in message.get("problems") or ())
        else:
            log.debug("worker_message_ignored", worker=worker.index, type=kind)

    async def _until_ready(self, workers: list[Worker]) -> Worker | None:
        """Waits until every worker serves; returns the first that failed (or took too long) instead. Returns
        None at once when the supervisor is told to stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                failed = next((w for w in workers if w.reaped.done()), None)
                if failed is not None:
                    return failed
                waiting = [w.settled for w in workers if not w.settled.done()]
                if not waiting or self._stopping.is_set():
                    return None
                if loop.time() >= deadline:
                    late = next(w for w in workers if not w.settled.done())
                    late.error = f"worker {late.index} (pid {late.pid}) did not serve within {START_TIMEOUT_S:g} s"
                    return late
                pending: list[asyncio.Future[Any]] = [*waiting, stopping]
                await asyncio.wait(pending, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()

    def _exited(self, worker: Worker) -> None:
        """A serving worker died: replace it, unless workers keep dying."""
        if self._stopping.is_set() or worker.retiring or self._workers.get(worker.index) is not worker:
            return  # stopped on purpose, or still starting (whoever started it handles that)
        self._log_exit(worker)
        if not self._count_exit(worker.last_words()):
            self._restarts[worker.index] = asyncio.create_task(self._restart(worker.index), name="restart")

    def _log_exit(self, worker: Worker) -> None:
        log.warning(
            "worker_exited",
            worker=worker.index,
            pid=worker.pid,
            exit_code=worker.returncode,
            signal=worker.signal_name,
            error=worker.error or None,
        )

    def _count_exit(self, last: str) -> bool:
        """Counts an unexpected exit; True when there were too many lately, and the supervisor is stopping."""
        now = asyncio.get_running_loop().time()
        self._exits.append(now)
        while self._exits[0] < now - CRASH_WINDOW_S:
            self._exits.popleft()
        if len(self._exits) < CRASH_LIMIT:
            return False
        self._gave_up = f"workers keep exiting ({len(self._exits)} exits within {CRASH_WINDOW_S:g} s); the last: {last}"
        log.error("workers_keep_exiting", exits=len(self._exits), within_seconds=CRASH_WINDOW_S, last=last)
        self.stop()
        return True

    async def _restart(self, index: int) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(self._exits) - 1)))
            try:
                worker = await self._spawn(index, self.settings, self._generation)
            except OSError as exc:
                log.error("worker_start_failed", worker=index, error=str(exc))
                if self._count_exit(f"worker {index} could not be started: {exc}"):
                    return
                continue
            failed = await self._until_ready([worker])
            if self._stopping.is_set():
                return
            if failed is None:
                self._workers[index] = worker
                self._restarts.pop(index, None)
                log.info("worker_restarted", worker=index, pid=worker.pid, worker_pids=self.pids)
                return
            await self._retire([worker])
            self._log_exit(worker)
            if self._count_exit(worker.last_words()):
                return

    async def _retire(self, workers: list[Worker]) -> None:
        """SIGTERM, then grace + drain (+ a margin) for each to finish its calls and records; then SIGKILL."""
        alive = [w for w in workers if not w.reaped.done()]
        for worker in alive:
            worker.retiring = True
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        if not alive:
            return
        limit = self.settings.grace_seconds + self.settings.drain_seconds + STOP_MARGIN_S
        await asyncio.wait([w.reaped for w in alive], timeout=limit)
        for worker in alive:
            if not worker.reaped.done():
                log.error("worker_killed", worker=worker.index, pid=worker.pid, after_seconds=limit)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        await asyncio.wait([w.reaped for w in alive])

    async def _shutdown(self) -> None:
        self._stopping.set()
        tasks = [t for t in (self._rolling, *self._restarts.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._retire(list(self._live))
        await asyncio.gather(*self._watchers, return_exceptions=True)
        await self._stop_metrics()


def supervise(settings: Settings) -> None:
    """Runs `settings.workers` workers on the port until SIGTERM or SIGINT (see Supervisor.run)."""
    # Without gRPC the HTTP port is the one held (it is fixed: workers cannot share port 0).
    held, port = reserve_port(settings.host, settings.port if settings.grpc else settings.http_port or 0)
    update = {"port": port} if settings.grpc else {}
    try:
        asyncio.run(Supervisor(settings.model_copy(update=update)).run())
    finally:
        for sock in held:
            sock.close()
