"""Schema migrations against a real PostgreSQL: applied once, in order, refused when history disagrees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from nba_service.stores.postgres.migrate import MigrationError, migrate, migrations, pending


@pytest.fixture
async def empty(pg_empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_empty_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def migrated(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def _advisory_locks_held(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")


def test_the_initial_migration_is_known() -> None:
    assert [(m.version, m.name) for m in migrations()][:1] == [(1, "initial")]


async def test_migrate_applies_the_initial_migration_to_a_new_database(empty: asyncpg.Connection) -> None:
    assert await empty.fetchval("SELECT to_regclass('customers')") is None

    applied = await migrate(empty)

    assert [(m.version, m.name) for m in applied] == [(m.version, m.name) for m in migrations()]
    assert applied[0].version == 1
    assert applied[0].name == "initial"
    assert await empty.fetchval("SELECT to_regclass('customers')") is not None
    rows = await empty.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in migrations()
    ]
    assert await _advisory_locks_held(empty) == 0


async def test_a_second_run_applies_nothing(empty: asyncpg.Connection) -> None:
    await migrate(empty)
    before = await empty.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY version")

    assert await migrate(empty) == []
    assert await empty.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY version") == before


async def test_an_edited_migration_is_refused_and_named(migrated: asyncpg.Connection) -> None:
    await migrated.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(MigrationError, match=r"0001_initial was changed after it was applied"):
        await migrate(migrated)
    assert await _advisory_locks_held(migrated) == 0  # the lock is released on failure too


async def test_a_newer_unknown_migration_is_refused(migrated: asyncpg.Connection) -> None:
    await migrated.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')"
    )

    with pytest.raises(MigrationError, match=r"does not know: \[9999\]"):
        await migrate(migrated)
    assert await _advisory_locks_held(migrated) == 0


async def test_pending_lists_what_is_missing(empty: asyncpg.Connection, migrated: asyncpg.Connection) -> None:
    assert [m.version for m in await pending(empty)] == [m.version for m in migrations()]  # no table at all yet
    assert await pending(migrated) == []

    await migrated.execute("DELETE FROM schema_migrations WHERE version = 1")
    assert [m.version for m in await pending(migrated)] == [1]


async def test_concurrent_migrators_apply_each_migration_once(pg_empty_dsn: str) -> None:
    conns = [await asyncpg.connect(pg_empty_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations())]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(migrations())
    finally:
        for conn in conns:
            await conn.close()
