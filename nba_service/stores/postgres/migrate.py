"""Versioned schema migrations: numbered SQL files applied once each, in order, under a lock.

Idempotent by construction: applied versions are recorded with a checksum, a second run applies
nothing, and a migration file edited after it was applied is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from nba_service.errors import MigrationError

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK_KEY = 0x6E6261  # "nba": one migrator at a time across replicas


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("nba_service.stores.postgres").joinpath("migrations").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Applies what is missing and returns it; each migration commits on its own.

    A statement the server refuses (most often: a role without the right to create tables) is a
    `MigrationError` with the server's words and, for a migration file, its name: for the operator to fix,
    never a traceback.
    """
    try:
        return await _migrate(conn)
    except asyncpg.PostgresError as exc:
        raise MigrationError(_refused(exc, conn)) from exc


def _refused(exc: asyncpg.PostgresError, conn: asyncpg.Connection) -> str:
    hint = ""
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        user = getattr(conn.get_settings(), "session_authorization", "") or "this role"
        hint = f"; {user} needs CREATE on the schema, or run `nba db migrate` as the schema's owner"
    return f"the database refused the migration: {exc}{hint}"


async def _migrate(conn: asyncpg.Connection) -> list[Migration]:
    # Lock first: concurrent CREATE TABLE IF NOT EXISTS from replicas starting together would collide.
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
        known = {m.version for m in migrations()}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations this version does not know: {unknown}; upgrade the service"
            )
        done: list[Migration] = []
        for migration in migrations():
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                applied_now = ", ".join(f"{m.version:04d}_{m.name}" for m in done) or "none"
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was not applied (applied before it in this "
                    f"run: {applied_now}): {_refused(exc, conn)}"
                ) from exc
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: set[int] = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in migrations() if m.version not in applied]
