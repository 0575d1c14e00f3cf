"""Where the customers of an impact run come from: the bundled sample, a population file, or the store.

Every source hands out the same chunks, so the run does not care where profiles come from. A file is handed
out as raw lines with their line numbers and parsed in the worker processes (parsing costs about a third of
an evaluation, and the main process would otherwise be the bottleneck); a bad line is refused naming the
file and the line. The store is read the way the service reads it: `get_profile` for each customer, after
`set_reads` with every event type and the longest contact history that either version reads, and with the
store's clock set to the moment of the run, so events and history are cut where a decision then would cut
them.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, Self, TypeVar, cast

from nba_service.domain.model import Ruleset
from nba_service.domain.ports import ProfileStore
from nba_service.domain.profile import Profile
from nba_service.errors import InvalidArgument, NotFound, SchemaNotReadyError, Unavailable
from nba_service.security.secrets import password_source
from nba_service.settings import Settings
from nba_service.synthetic import SAMPLE_PATH, record_to_profile

SAMPLE = "sample"
STORE = "store"
CHUNK = 500
_ID_PAGE = 10_000
_READS_IN_FLIGHT = 16
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LineChunk:
    """Raw lines of a population file; `first_line` numbers the first of them from 1."""

    source: str
    first_line: int
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProfileChunk:
    profiles: tuple[Profile, ...]


Chunk = LineChunk | ProfileChunk


def chunk_size(chunk: Chunk) -> int:
    """How many customers a chunk holds, for the progress bar (a file's blank lines hold none)."""
    if isinstance(chunk, ProfileChunk):
        return len(chunk.profiles)
    return sum(1 for text in chunk.lines if text.strip())


def chunk_profiles(chunk: Chunk, now: datetime) -> Iterator[Profile]:
    """The profiles of a chunk; a file's are anchored at `now`, as `nba serve` anchors the sample it loads."""
    if isinstance(chunk, ProfileChunk):
        yield from chunk.profiles
        return
    for offset, text in enumerate(chunk.lines):
        if text.strip():
            yield parse_line(text, chunk.source, chunk.first_line + offset, now)


def parse_line(text: str, source: str, line: int, now: datetime) -> Profile:
    where = f"{source}:{line}"
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument.of(where, f"not a JSON line ({exc})") from exc
    if not isinstance(record, dict):
        raise InvalidArgument.of(where, f"a customer must be a JSON object, not {type(record).__name__}")
    try:
        return record_to_profile(record, now)
    except KeyError as exc:
        raise InvalidArgument.of(where, f"missing {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument.of(where, f"not a customer as `nba sample generate` writes one ({exc})") from exc


class Population(Protocol):
    """Customers to run both versions over; open while in its `with` block."""

    label: str

    def count(self) -> int: ...

    def chunks(self, size: int = CHUNK) -> Iterator[Chunk]: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class FilePopulation:
    """JSON lines as `nba sample generate` writes them (`.gz` compressed or not); the bundled sample is one."""

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = path
        self.label = label or str(path)

    @classmethod
    def sample(cls) -> FilePopulation:
        return cls(SAMPLE_PATH, "the bundled sample")

    def __enter__(self) -> Self:
        if not self.path.is_file():
            raise InvalidArgument.of("--population", f"{self.path} is not a file (nor 'sample' or 'store')")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Nothing stays open between calls."""

    def _open(self) -> BinaryIO:
        if self.path.name.endswith(".gz"):
            return cast(BinaryIO, gzip.open(self.path, "rb"))
        return self.path.open("rb")

    def _lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text), decoded line by line so that a bad byte is reported on its own line."""
        number = 0
        try:
            with self._open() as stream:
                for raw in stream:
                    number += 1
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise InvalidArgument.of(f"{self.label}:{number}", f"not UTF-8 text ({exc.reason})") from exc
                    yield number, text
        except (OSError, EOFError) as exc:
            raise InvalidArgument.of(f"{self.label}:{number + 1}", f"cannot be read ({exc})") from exc

    def count(self) -> int:
        return sum(1 for _, text in self._lines() if text.strip())

    def chunks(self, size: int = CHUNK) -> Iterator[Chunk]:
        lines: list[str] = []
        first = 1
        for number, text in self._lines():
            if not lines:
                first = number
            lines.append(text)
            if len(lines) == size:
                yield LineChunk(self.label, first, tuple(lines))
                lines = []
        if lines:
            yield LineChunk(self.label, first, tuple(lines))


def reads(rulesets: Sequence[Ruleset]) -> tuple[tuple[str, ...], timedelta]:
    """What a profile read must return so that every version sees what it would see when serving: every event
    type any of them declares, and the longest contact history any of them needs."""
    from nba_service.app import contact_history_window  # noqa: PLC0415 - the service's own rule, not a copy

    event_types = sorted({event for ruleset in rulesets for event in ruleset.events})
    return tuple(event_types), max(contact_history_window(ruleset) for ruleset in rulesets)


class StoreReads(ProfileStore, Protocol):
    async def customer_ids(self, after: str = "", limit: int = _ID_PAGE) -> list[str]: ...


class StorePopulation:
    """Every customer of the configured store (`nba serve`'s settings: SQLite file or PostgreSQL), by id.

    The store runs on an event loop of its own, in a thread, so the run itself stays synchronous: the worker
    processes evaluate the queued chunks while the next one is read.
    """

    def __init__(self, settings: Settings, at: datetime, rulesets: Sequence[Ruleset]) -> None:
        self.settings = settings
        self.at = at
        self.event_types, self.history = reads(rulesets)
        self.label = (
            "the PostgreSQL store (NBA_DSN)" if settings.store == "postgres" else f"the store {settings.db_path}"
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="population-store", daemon=True)
        self._store: StoreReads | None = None
        self._ids: list[str] = []

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._store = self._call(open_store(self.settings, self.at))
            self._store.set_reads(self.event_types, self.history)
            self._ids = self._call(_all_ids(self._store))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._store is not None:
                self._call(self._store.close())
                self._store = None
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def count(self) -> int:
        return len(self._ids)

    def chunks(self, size: int = CHUNK) -> Iterator[Chunk]:
        store = self._store
        if store is None:
            raise RuntimeError("StorePopulation is read inside its with block")
        for start in range(0, len(self._ids), size):
            yield ProfileChunk(self._call(_read_profiles(store, self._ids[start : start + size])))


async def _all_ids(store: StoreReads) -> list[str]:
    ids: list[str] = []
    while True:
        page = await store.customer_ids(ids[-1] if ids else "", _ID_PAGE)
        ids.extend(page)
        if len(page) < _ID_PAGE:
            return ids


async def _read_profiles(store: StoreReads, ids: Sequence[str]) -> tuple[Profile, ...]:
    """These customers' profiles, a few reads in flight; a customer deleted since it was listed is left out."""
    found: list[Profile] = []
    for start in range(0, len(ids), _READS_IN_FLIGHT):
        batch = ids[start : start + _READS_IN_FLIGHT]
        results = await asyncio.gather(*(store.get_profile(i) for i in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, NotFound):
                continue
            if isinstance(result, BaseException):
                raise result
            found.append(result)
    return tuple(found)


async def open_store(settings: Settings, at: datetime) -> StoreReads:
    """The profile store `nba serve` would open with these settings, reading as of `at`; nothing is created."""
    if settings.store == "postgres":
        return await _open_postgres(settings, at)
    from nba_service.stores.sqlite import SqliteStore  # noqa: PLC0415

    if not settings.db_path.exists():
        raise NotFound(f"no embedded database at {settings.db_path} (run `nba serve` here first, or give --db-path)")
    store = SqliteStore(
        settings.db_path, event_types=(), history=timedelta(days=1), timeout=settings.db_timeout, clock=lambda: at
    )
    try:
        await store.open()
    except sqlite3.Error as exc:
        await store.close()
        raise Unavailable(f"cannot open the embedded database {settings.db_path}: {exc}") from exc
    return store


async def _open_postgres(settings: Settings, at: datetime) -> StoreReads:
    # asyncpg only when asked for
    from nba_service.stores.postgres.migrate import pending  # noqa: PLC0415
    from nba_service.stores.postgres.profiles import (  # noqa: PLC0415
        CONNECTION_ERRORS,
        PostgresProfileStore,
        create_pool,
    )

    if not settings.dsn:
        raise InvalidArgument.of("NBA_DSN", "is required to read customers from PostgreSQL")
    timeout = max(2.0, settings.db_timeout)
    pool = await create_pool(
        settings.dsn, password=password_source(settings.dsn_password_file), max_size=4, connect_timeout=timeout
    )
    try:
        async with pool.acquire(timeout=timeout) as conn:
            missing = await pending(conn)
    except CONNECTION_ERRORS as exc:
        pool.terminate()
        raise Unavailable(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from exc
    if missing:
        await pool.close()
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise SchemaNotReadyError(f"the database schema is not up to date (missing {names}); run `nba db migrate`")
    return PostgresProfileStore(
        pool, history=timedelta(days=1), event_types=(), timeout=settings.db_timeout, clock=lambda: at
    )
