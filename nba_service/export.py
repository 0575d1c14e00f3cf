"""`nba decisions export`: the decision and outcome records of whichever store is configured, as JSON lines.

Auditors and other tools read one documented, versioned format (`nba.record/1`, see
`nba_service.domain.records`) and need no SQL; spill files and dead letters use the same format.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from nba_service.domain.ports import RecordExport
from nba_service.errors import InvalidArgument, NotFound
from nba_service.security.secrets import password_source
from nba_service.settings import Settings
from nba_service.stores.sqlite import SqliteStore

if TYPE_CHECKING:
    import asyncpg


@contextlib.asynccontextmanager
async def opened_store(settings: Settings, what: str) -> AsyncIterator[SqliteStore | asyncpg.Pool]:
    """The configured store, opened for reading by a command: the embedded database (which must exist already),
    or a one-connection PostgreSQL pool. `what` ends the error that a missing DSN gets ("to export from ...")."""
    if settings.store == "postgres":
        # asyncpg only when asked for
        from nba_service.stores.postgres.profiles import create_pool  # noqa: PLC0415

        if not settings.dsn:
            raise InvalidArgument.of("NBA_DSN", f"is required {what} PostgreSQL")
        pool = await create_pool(
            settings.dsn,
            password=password_source(settings.dsn_password_file),
            max_size=1,
            connect_timeout=max(2.0, settings.db_timeout),
        )
        try:
            yield pool
        finally:
            await pool.close()
        return
    if not settings.db_path.exists():
        raise NotFound(f"no embedded database at {settings.db_path} (run `nba serve` here first, or give --db-path)")
    store = SqliteStore(settings.db_path, event_types=(), history=timedelta(days=1), timeout=settings.db_timeout)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def export_records(
    settings: Settings,
    write: Callable[[str], None],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    customer_id: str | None = None,
) -> int:
    """Writes one JSON line per record, oldest first; returns how many were written."""
    count = 0
    async with opened_store(settings, "to export from") as opened:
        source: RecordExport
        if isinstance(opened, SqliteStore):
            source = opened
        else:
            from nba_service.stores.postgres.decision_log import PostgresRecordExport  # noqa: PLC0415

            source = PostgresRecordExport(opened)
        async for item in source.export(since, until, customer_id):
            write(json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str))
            count += 1
    return count
