"""The ruleset archive in PostgreSQL (`RulesetArchive`): every version that served, by content hash.

Workers starting together on one version each keep it: the source insert is idempotent, and the activation
is noted under a transaction-scoped advisory lock per ruleset name, so "not again while it is the latest"
holds however many processes keep the same version at once.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from nba_service.domain.archive import ArchivedSource, ArchivedVersion, ambiguous, archivable_text, hash_prefix
from nba_service.domain.model import Ruleset
from nba_service.errors import Unavailable
from nba_service.stores.postgres.profiles import CONNECTION_ERRORS

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('nba.ruleset_activations:' || $1, 0))"
_KEEP_SOURCE = """
INSERT INTO ruleset_sources (hash, name, version, source) VALUES ($1, $2, $3, $4)
ON CONFLICT (hash) DO NOTHING
"""
_LATEST = """
SELECT hash FROM ruleset_activations WHERE name = $1 ORDER BY activated_at DESC, id DESC LIMIT 1
"""
_ACTIVATE = """
INSERT INTO ruleset_activations (name, hash, activated_at, activated_by, origin) VALUES ($1, $2, $3, $4, $5)
"""
_SOURCE = "SELECT hash, name, version, source FROM ruleset_sources WHERE hash LIKE $1 || '%' LIMIT 2"
_VERSIONS = """
SELECT s.name, s.version, s.hash, min(a.activated_at) AS first, max(a.activated_at) AS last, count(*) AS n,
       (array_agg(a.activated_by ORDER BY a.id DESC))[1] AS by,
       (array_agg(a.origin ORDER BY a.id DESC))[1] AS origin
  FROM ruleset_activations a JOIN ruleset_sources s ON s.hash = a.hash
 WHERE $1::text IS NULL OR a.name = $1
 GROUP BY s.hash
 ORDER BY max(a.activated_at) DESC, max(a.id) DESC
"""


class PostgresRulesetArchive:
    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 1.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def keep(self, ruleset: Ruleset, activated_at: datetime, *, by: str = "", origin: str = "") -> None:
        text = archivable_text(ruleset)
        meta = ruleset.meta
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.execute(_LOCK, meta.name, timeout=self._timeout)
                await conn.execute(_KEEP_SOURCE, ruleset.content_hash, meta.name, meta.version, text)
                latest = await conn.fetchval(_LATEST, meta.name, timeout=self._timeout)
                if latest != ruleset.content_hash:
                    await conn.execute(
                        _ACTIVATE, meta.name, ruleset.content_hash, activated_at, by, origin, timeout=self._timeout
                    )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise Unavailable(
                f"the ruleset archive cannot be written ({meta.name} {meta.version}): {type(exc).__name__}: {exc}"
            ) from exc

    async def source(self, ruleset_hash: str) -> ArchivedSource | None:
        prefix = hash_prefix(ruleset_hash)
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                rows = await conn.fetch(_SOURCE, prefix, timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the ruleset archive is unavailable: {type(exc).__name__}") from exc
        if len(rows) > 1:
            raise ambiguous(prefix, [r["hash"] for r in rows])
        if not rows:
            return None
        row = rows[0]
        return ArchivedSource(row["name"], row["version"], row["hash"], row["source"])

    async def versions(self, name: str | None = None) -> list[ArchivedVersion]:
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                rows = await conn.fetch(_VERSIONS, name, timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the ruleset archive is unavailable: {type(exc).__name__}") from exc
        return [
            ArchivedVersion(
                r["name"], r["version"], r["hash"], r["first"], r["last"], int(r["n"]), r["by"], r["origin"]
            )
            for r in rows
        ]
