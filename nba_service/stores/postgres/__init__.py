"""The PostgreSQL store: everything the service needs from it, built from the settings in one call.

The composition root (`nba_service.app`) calls `open_postgres` and nothing else from this package, so
the pool, the schema check and the wiring of the decision records live beside the store they concern.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from nba_service.domain.model import Ruleset
from nba_service.errors import FailedPrecondition, SchemaNotReadyError
from nba_service.security.secrets import password_source, redact
from nba_service.settings import Settings
from nba_service.stores.postgres.archive import PostgresRulesetArchive
from nba_service.stores.postgres.decision_log import PostgresRecordExport, PostgresRecordSink
from nba_service.stores.postgres.migrate import pending
from nba_service.stores.postgres.profiles import CONNECTION_ERRORS, PostgresProfileStore, create_pool

log = structlog.get_logger(__name__)


async def open_postgres(
    settings: Settings, ruleset: Ruleset, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> tuple[PostgresProfileStore, PostgresRecordSink, PostgresRecordExport]:
    """The profile store, the sink a `GroupCommitWriter` commits decision records through (which also reads
    whole records back: `RecordReader`), and the export. `ruleset_archive(sink, settings)` gives the archive.

    Start-up never waits for the database: the pool connects on first use, and when the database cannot
    be reached now the service starts NOT_SERVING and recovers by itself. A reachable database with
    pending migrations is refused (`SchemaNotReadyError`), since the service would fail on every call.
    """
    # Imported here: nba_service.app imports this package to build the application.
    from nba_service.app import contact_history_window  # noqa: PLC0415

    if not settings.dsn:
        raise ValueError("store 'postgres' needs a DSN (settings.dsn)")
    pool = await create_pool(
        settings.dsn,
        min_size=0,
        max_size=settings.pool_max,
        connect_timeout=2.0,
        password=password_source(settings.dsn_password_file),
    )
    try:
        async with pool.acquire(timeout=3.0) as conn:
            missing = await pending(conn)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:  # a wrong password or role: waiting will not help
        await pool.close()
        raise FailedPrecondition(redact(f"PostgreSQL refused the credentials: {exc}")) from exc
    except CONNECTION_ERRORS as exc:
        log.warning(
            "database_unreachable_at_start",
            error=f"{type(exc).__name__}: {exc}",
            hint="serving NOT_SERVING until it answers",
        )
    else:
        if missing:
            await pool.close()
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
            raise SchemaNotReadyError(f"the database schema is not up to date (missing {names}); run `nba db migrate`")
    store = PostgresProfileStore(
        pool,
        history=contact_history_window(ruleset),
        event_types=tuple(ruleset.events),
        timeout=settings.db_timeout,
        clock=clock,
    )
    sink = PostgresRecordSink(pool, timeout=settings.db_timeout)
    return store, sink, PostgresRecordExport(pool)


def ruleset_archive(sink: PostgresRecordSink, settings: Settings) -> PostgresRulesetArchive:
    """The ruleset archive, on the pool the decision records use."""
    return PostgresRulesetArchive(sink.pool, timeout=settings.db_timeout)


__all__ = ["open_postgres", "ruleset_archive"]
