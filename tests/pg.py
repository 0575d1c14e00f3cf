"""Real PostgreSQL for the tests: throwaway clusters, the shared server, and a database per test.

* `ThrowawayCluster` runs `initdb` into a fresh temp dir (on /dev/shm when it can) and a private postmaster
  on a free port of 127.0.0.1 (trust auth, user postgres). Tests that stop, restart or crash PostgreSQL use
  one of these, never the machine's shared server. As root, `initdb`/`pg_ctl` run as the `postgres` user via `runuser`.
* `find_server()` finds an already running server to create test databases on.
* `DatabaseFactory` hands out uniquely named, migrated databases (`nba_test_<pid>_<random>`), cloned
  from a migrated template, and drops them all again.

Durability settings of a throwaway cluster: `fsync=off` and `full_page_writes=off` only lose data when
the *operating system* crashes, which these tests never cause; a fast shutdown, an immediate shutdown
(`kill()`) or a crashed backend all recover completely. `synchronous_commit` stays `on` on purpose: with
it off, a commit is acknowledged before its WAL leaves PostgreSQL's memory, so `kill()` could lose
acknowledged writes and a test of "acknowledged means durable" would lie. With fsync off it costs
nothing measurable.

The cluster methods are blocking (subprocesses only, no event loop). From an async test that must keep
traffic flowing while PostgreSQL goes down, call them as `await asyncio.to_thread(cluster.restart)`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from nba_service.stores.postgres.migrate import Migration, migrate

T = TypeVar("T")

SUPERUSER = "postgres"
DEFAULT_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_DSN_ENV = "NBA_TEST_PG_DSN"
BINDIR_ENV = "PG_BIN"
TMPDIR_ENV = "NBA_TEST_PG_TMPDIR"
DB_PREFIX = "nba_test_"
CLUSTER_DIR_PREFIX = "nba-pg-"
NBA_DB = "nba"
_OWNER_FILE = "owner.pid"
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "pg_isready")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL can be had for the tests (binaries, user or server missing); the message says why."""


class ClusterError(RuntimeError):
    """A throwaway cluster failed to do what it was asked; the message carries the server log's tail."""


# --------------------------------------------------------------------------------------------------
# Binaries


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def find_bindir() -> Path:
    """The PostgreSQL server binaries: `$PG_BIN`, else the newest /usr/lib/postgresql/*/bin, else `pg_config`."""
    tried: list[str] = []
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        path = Path(explicit)
        missing = [name for name in _REQUIRED_BINARIES if not os.access(path / name, os.X_OK)]
        if missing:
            raise PostgresUnavailable(f"${BINDIR_ENV}={explicit} lacks executable {', '.join(missing)}")
        return path

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for path in debian:
        if _has_binaries(path):
            return path
    tried.append(f"/usr/lib/postgresql/*/bin ({len(debian)} found, none with {', '.join(_REQUIRED_BINARIES)})")

    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(result.stdout.strip())
        if result.returncode == 0 and _has_binaries(path):
            return path
        tried.append(f"pg_config --bindir ({result.stdout.strip() or result.stderr.strip()})")
    else:
        tried.append("pg_config (not on PATH)")

    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and _has_binaries(Path(pg_ctl).parent):
        return Path(pg_ctl).parent
    tried.append("pg_ctl on PATH")
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_isready) not found; tried "
        + "; ".join(tried)
        + f". Install them (Debian: apt-get install postgresql) or set ${BINDIR_ENV}."
    )


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs server binaries as a non-root user, and that user when it is needed."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and initdb/pg_ctl refuse root, but there is no '{SUPERUSER}' user to run them as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, and initdb/pg_ctl refuse root, but `runuser` is not on PATH")
    return [runuser, "-u", SUPERUSER, "--"], user


def cluster_parent_dir() -> Path:
    """Where clusters live: `$NBA_TEST_PG_TMPDIR`, else /dev/shm when it is a roomy tmpfs, else the temp dir.

    On tmpfs a cluster's ~1,000 files are created in ~0.05 s instead of ~1 s on a busy disk, and with
    fsync off nothing needs a disk: a cluster's data is as disposable as its processes.
    """
    explicit = os.environ.get(TMPDIR_ENV)
    if explicit:
        return Path(explicit)
    shm = Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= 2 * 1024**3:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (exited, not yet reaped by a lax init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


# --------------------------------------------------------------------------------------------------
# Throwaway clusters

_live_clusters: weakref.WeakSet[ThrowawayCluster] = weakref.WeakSet()


class ThrowawayCluster:
    """A private PostgreSQL cluster in a temp dir on a free 127.0.0.1 port; `cleanup()` leaves nothing behind.

    Usage: `with ThrowawayCluster() as cluster: asyncpg.connect(cluster.dsn())`. The constructor makes the
    data directory: the first cluster of a process runs `initdb` once into a pristine copy (~0.5 s on tmpfs), every
    cluster then copies that (~0.05 s; `reuse_initdb=False` runs `initdb` afresh). `start()` (~0.2 s) is
    separate so that a test can inspect a stopped cluster.
    """

    def __init__(
        self, *, settings: dict[str, str] | None = None, timeout: float = 30.0, reuse_initdb: bool = True
    ) -> None:
        self.bindir = find_bindir()
        self._prefix, self._user = _run_as()
        self.timeout = timeout
        self.settings = dict(settings or {})
        self.port = free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX, dir=cluster_parent_dir()))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir
        self.log_file = self.base_dir / "server.log"
        _live_clusters.add(self)
        try:
            (self.base_dir / _OWNER_FILE).write_text(str(os.getpid()))
            self._chown(self.base_dir)
            if reuse_initdb:
                self._copy_data_dir(_pristine_data_dir(self.bindir))
            else:
                self._initdb()
            self._write_settings()
        except BaseException:
            self.cleanup()
            raise

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid, follow_symlinks=False)

    def _copy_data_dir(self, source: Path) -> None:
        cp = shutil.which("cp")
        if cp is None:
            shutil.copytree(source, self.data_dir, symlinks=True)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                self._chown(path)
            return
        command = [*self._prefix, cp, "-a", str(source), str(self.data_dir)]  # as the owner: no chown walk
        result = subprocess.run(command, cwd=self.base_dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ClusterError(f"copying the initdb output failed: {' '.join(command)}\n{result.stderr}")

    def _initdb(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"),
            what="initdb",
        )

    # -- process plumbing ------------------------------------------------------------------------

    def _run(self, binary: str, *args: str, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self._prefix, str(self.bindir / binary), *args]
        result = subprocess.run(
            command,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.timeout + 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{self.log_text()}"
            )
        return result

    def _pg_ctl(self, action: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-t",
            str(int(self.timeout)),
            *args,
            what=f"pg_ctl {action}",
            check=check,
        )

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        # postgresql.auto.conf is read last; ALTER SYSTEM keeps what is written here.
        lines = [f"{key} = {value}\n" for key, value in settings.items()]
        (self.data_dir / "postgresql.auto.conf").write_text("".join(lines))

    def log_text(self, tail: int = 60) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-tail:])

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the server and waits until it accepts TCP connections; retries once on a port clash."""
        for attempt in range(3):
            result = self._pg_ctl("start", "-w", check=False)
            if result.returncode == 0:
                self.wait_ready()
                return
            if attempt < 2 and "could not bind" in self.log_text(20) and not self.is_running():
                self.port = free_port()  # someone took the port between free_port() and the bind
                self._write_settings()
                continue
            break
        raise ClusterError(
            f"PostgreSQL did not start on 127.0.0.1:{self.port} (pg_ctl exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}\n--- server log ---\n{self.log_text()}"
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Polls `pg_isready` over TCP until the server accepts connections."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            result = self._run(
                "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2", what="pg_isready", check=False
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"PostgreSQL on 127.0.0.1:{self.port} not ready after {self.timeout} s "
                    f"(pg_isready exit {result.returncode})\n--- server log ---\n{self.log_text()}"
                )
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE` (smart, fast or immediate); waits until the postmaster has gone."""
        self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Stops (`-m MODE`) and starts again on the same port, waiting until it accepts connections."""
        self._pg_ctl("restart", "-w", "-m", mode)
        self.wait_ready()

    def kill(self) -> None:
        """Immediate shutdown: backends die without a checkpoint; the next `start()` runs crash recovery."""
        self.stop(mode="immediate")

    def is_running(self) -> bool:
        if not self.data_dir.exists():
            return False
        status = self._run("pg_ctl", "status", "-D", str(self.data_dir), what="pg_ctl status", check=False)
        return status.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def nba_dsn(self) -> str:
        """The DSN of the migrated `nba` database that the `pg_cluster` fixture creates."""
        return self.dsn(NBA_DB)

    def cleanup(self) -> None:
        """Stops the server (immediately: nothing here needs to be kept) and removes the temp dir."""
        _live_clusters.discard(self)
        if self.data_dir.exists() and self.is_running():
            self._pg_ctl("stop", "-w", "-m", "immediate", check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.is_running():
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"ThrowawayCluster(port={self.port}, base_dir={str(self.base_dir)!r})"


_pristine_lock = threading.Lock()
_pristine: dict[Path, ThrowawayCluster] = {}  # bindir -> a never-started cluster straight from initdb


def _pristine_data_dir(bindir: Path) -> Path:
    with _pristine_lock:
        cluster = _pristine.get(bindir)
        if cluster is None or not cluster.data_dir.is_dir():
            cluster = _pristine[bindir] = ThrowawayCluster(reuse_initdb=False)
        return cluster.data_dir


@atexit.register
def _cleanup_live_clusters() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.cleanup()


def sweep_stale_clusters(tmp_dir: str | Path | None = None) -> list[Path]:
    """Stops and removes throwaway clusters whose owning process died without cleaning up (a killed run)."""
    removed: list[Path] = []
    roots = {Path(tmp_dir)} if tmp_dir else {cluster_parent_dir(), Path(tempfile.gettempdir())}
    for base in sorted(path for root in roots for path in root.glob(f"{CLUSTER_DIR_PREFIX}*")):
        try:
            owner = int((base / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        if (base / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                prefix, _ = _run_as()
                pg_ctl = str(find_bindir() / "pg_ctl")
                subprocess.run(
                    [*prefix, pg_ctl, "stop", "-D", str(base / "data"), "-m", "immediate", "-w", "-t", "30"],
                    cwd=base,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


# --------------------------------------------------------------------------------------------------
# Running coroutines from sync code


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion on a private event loop, from sync code or from inside a running loop.

    Unlike `asyncio.run`, it never replaces the thread's current event loop (pytest-asyncio's).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(run_sync(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="tests.pg.run_sync")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


# --------------------------------------------------------------------------------------------------
# Finding a server


def with_database(dsn: str, dbname: str) -> str:
    """The same server DSN pointing at another database (query parameters are kept)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URI: {dsn!r}")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


async def probe(dsn: str, connect_timeout: float = 3.0) -> str | None:
    """None if `dsn` can be used to create test databases, else why not."""
    timeout = connect_timeout
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"cannot connect: {type(exc).__name__}: {exc}"
    try:
        can_create = await conn.fetchval(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user", timeout=timeout
        )
        if not can_create:
            return "connected, but the role may not CREATE DATABASE"
        return None
    finally:
        await conn.close(timeout=timeout)


def find_server(tried: list[str] | None = None) -> str | None:
    """DSN of a running server usable for test databases: `$NBA_TEST_PG_DSN`, else 127.0.0.1:5432.

    An explicit `$NBA_TEST_PG_DSN` that does not work raises `PostgresUnavailable` rather than falling back.
    What was tried (and why it failed) is appended to `tried`.
    """
    explicit = os.environ.get(SERVER_DSN_ENV)
    if explicit:
        problem = run_sync(probe(explicit, connect_timeout=10.0))
        if problem:
            raise PostgresUnavailable(f"${SERVER_DSN_ENV}={explicit} is set but not usable: {problem}")
        return explicit
    problem = run_sync(probe(DEFAULT_SERVER_DSN, connect_timeout=2.0))
    if problem is None:
        return DEFAULT_SERVER_DSN
    if tried is not None:
        tried.append(f"existing server {DEFAULT_SERVER_DSN}: {problem}")
    return None


# --------------------------------------------------------------------------------------------------
# Databases


def database_name() -> str:
    """`nba_test_<pid>_<random>`: the pid says whose it is, so a run can sweep its own (and dead runs')."""
    return f"{DB_PREFIX}{os.getpid()}_{secrets.token_hex(5)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(server_dsn: str, name: str | None = None, *, template: str | None = None) -> str:
    """Creates a database (optionally cloned from `template`) and returns its DSN."""
    name = name or database_name()
    sql = f"CREATE DATABASE {_ident(name)}" + (f" TEMPLATE {_ident(template)}" if template else "")
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        for attempt in range(20):
            try:
                await conn.execute(sql)
                break
            except asyncpg.ObjectInUseError:  # the template's last connection is still on its way out
                if attempt == 19:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return with_database(server_dsn, name)


async def migrate_database(dsn: str) -> list[Migration]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def create_migrated_database(server_dsn: str, name: str | None = None) -> str:
    dsn = await create_database(server_dsn, name)
    try:
        await migrate_database(dsn)
    except BaseException:
        await drop_database(server_dsn, urlsplit(dsn).path.lstrip("/"))
        raise
    return dsn


async def drop_database(server_dsn: str, name: str) -> None:
    """Terminates the database's connections and drops it (`WITH (FORCE)` on PostgreSQL 13+); no-op if gone."""
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}{force}")
    finally:
        await conn.close()


async def list_databases(server_dsn: str, prefix: str = DB_PREFIX) -> list[str]:
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY datname", prefix
        )
    finally:
        await conn.close()
    return [row["datname"] for row in rows]


async def drop_databases(server_dsn: str, names: Iterable[str]) -> None:
    for name in names:
        await drop_database(server_dsn, name)


def _is_loopback(dsn: str) -> bool:
    host = urlsplit(dsn).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1") or (host or "").startswith("/")


async def sweep_databases(server_dsn: str, *, own_pid: int | None = None) -> list[str]:
    """Drops this run's test databases (`own_pid`, default this process), and on a local server those of
    test runs that have died. Databases of other live runs are never touched, so runs can share a server.
    Meant for the end of a session: it also drops databases that fixtures of this run still use.
    """
    mine = f"{DB_PREFIX}{os.getpid() if own_pid is None else own_pid}_"
    local = _is_loopback(server_dsn)
    doomed: list[str] = []
    for name in await list_databases(server_dsn):
        if name.startswith(mine):
            doomed.append(name)
            continue
        match = re.fullmatch(rf"{DB_PREFIX}(\d+)_[0-9a-f]+", name)
        if local and match and not pid_alive(int(match.group(1))):
            doomed.append(name)
    await drop_databases(server_dsn, doomed)
    return doomed


class DatabaseFactory:
    """Fresh migrated databases on one server, each cloned from a migrated template made on first use.

    `close()` drops every database it made, the template last (and only those: see `sweep_databases`).
    """

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.template: str | None = None
        self.created: list[str] = []

    async def create(self, *, migrated: bool = True) -> str:
        if not migrated:
            name = database_name()
            self.created.append(name)
            return await create_database(self.server_dsn, name)
        if self.template is None:
            name = database_name()
            self.created.append(name)  # before creating, so close() drops a half-made template too
            await create_migrated_database(self.server_dsn, name)
            self.template = name
        name = database_name()
        self.created.append(name)
        return await create_database(self.server_dsn, name, template=self.template)

    async def drop(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        await drop_database(self.server_dsn, name)
        with contextlib.suppress(ValueError):
            self.created.remove(name)

    async def close(self) -> None:
        template = [self.template] if self.template else []
        others = [name for name in self.created if name not in template]
        await drop_databases(self.server_dsn, [*others, *template])
        self.created.clear()
        self.template = None


# --------------------------------------------------------------------------------------------------
# Driver failures

# What asyncpg raises from `pool.release()` when PostgreSQL's fast shutdown reaches a pooled connection at
# the wrong moment (MagicStack/asyncpg#784); seen in about half of the fast restarts under load. The work
# done on the connection (a committed batch, say) may well have succeeded.
RELEASE_ERROR = "cannot switch to state 15; another operation (2) is in progress"


class FlakyPool:
    """A real pool whose next `failures` releases raise asyncpg's InternalClientError after the work is done."""

    def __init__(self, pool: asyncpg.Pool, failures: int) -> None:
        self._pool = pool
        self.failures = failures

    def acquire(self, *, timeout: float | None = None) -> _FlakyAcquire:
        return _FlakyAcquire(self, self._pool.acquire(timeout=timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _FlakyAcquire:
    def __init__(self, owner: FlakyPool, inner: Any) -> None:
        self._owner = owner
        self._inner = inner

    async def __aenter__(self) -> asyncpg.Connection:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)
        if self._owner.failures > 0:
            self._owner.failures -= 1
            raise asyncpg.InternalClientError(RELEASE_ERROR)
