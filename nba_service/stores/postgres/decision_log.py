"""The production decision log: every decision lands in PostgreSQL, off the request path, exactly once.

Decisions wait in a bounded queue; a writer copies them in batches (COPY into a temporary table,
then one INSERT ... ON CONFLICT DO NOTHING), so a batch retried after a lost acknowledgement never
duplicates a row and never fails on one. When the database is down the batch is kept and retried
with backoff; when the queue is full, decisions wait for room (the service slows down rather than
drops). On shutdown the queue is drained; if the database stays away past the drain timeout, what is
left is written to a local JSON lines file so it can be replayed, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from nba_service.domain.model import Channel
from nba_service.domain.profile import Outcome
from nba_service.domain.records import DecisionRecord, DecisionSummary
from nba_service.errors import Unavailable
from nba_service.stores.postgres.profiles import CONNECTION_ERRORS

log = structlog.get_logger(__name__)

_COLUMNS = (
    "decision_id",
    "decided_at",
    "customer_id",
    "channel",
    "ruleset_name",
    "ruleset_version",
    "ruleset_hash",
    "engine",
    "rules_fired",
    "dropped",
    "actions",
    "latency_ms",
    "context",
    "profile_problems",
)
_JSON_COLUMNS = frozenset({"rules_fired", "dropped", "actions", "context", "profile_problems"})
_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS decisions_stage (
    decision_id uuid, decided_at timestamptz, customer_id text, channel text, ruleset_name text,
    ruleset_version text, ruleset_hash text, engine text, rules_fired text, dropped text, actions text,
    latency_ms double precision, context text, profile_problems text
) ON COMMIT DELETE ROWS
"""
_INSERT = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) SELECT "  # noqa: S608 - constant column names only
    + ", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in _COLUMNS)
    + " FROM decisions_stage ON CONFLICT (decision_id) DO NOTHING"
)
_FIND = "SELECT customer_id, channel, actions, decided_at FROM decisions WHERE decision_id = $1"

QUEUE_SIZE = 10_000
BATCH_SIZE = 500
INDEX_SIZE = 50_000


def _row(record: DecisionRecord) -> tuple[Any, ...]:
    """Built from the record's fields directly: `asdict` on the hot writer path cost 3x as much."""
    return (
        uuid.UUID(record.decision_id),
        record.decided_at,
        record.customer_id,
        record.channel.value,
        record.ruleset.name,
        record.ruleset.version,
        record.ruleset.hash,
        record.engine,
        json.dumps(
            [
                {"rule_id": f.rule_id, "action_id": f.action_id, "priority": f.priority, "values": f.values}
                for f in record.rules_fired
            ],
            ensure_ascii=False,
            default=str,
        ),
        json.dumps(
            [
                {"rule_id": d.rule_id, "action_id": d.action_id, "reason": d.reason, "detail": d.detail}
                for d in record.dropped
            ],
            ensure_ascii=False,
        ),
        json.dumps(
            [
                {
                    "action_id": a.action_id,
                    "script": a.script,
                    "priority": a.priority,
                    "category": a.category,
                    "reason": a.reason,
                    "rule_id": a.rule_id,
                    "valid_until": a.valid_until.isoformat(),
                }
                for a in record.actions
            ],
            ensure_ascii=False,
        ),
        record.latency_ms,
        json.dumps({"reason": record.context_reason, "attributes": record.context}, ensure_ascii=False),
        json.dumps(list(record.profile_problems), ensure_ascii=False),
    )


def _row_from_json(data: dict[str, Any]) -> tuple[Any, ...]:
    """A decisions row from a record's JSON form (the queue's records, or a spilled file's lines)."""
    ruleset = data["ruleset"]
    return (
        uuid.UUID(data["decision_id"]),
        datetime.fromisoformat(data["decided_at"]),
        data["customer_id"],
        data["channel"],
        ruleset["name"],
        ruleset["version"],
        ruleset["hash"],
        data["engine"],
        json.dumps(data["rules_fired"], ensure_ascii=False, default=str),
        json.dumps(data["dropped"], ensure_ascii=False),
        json.dumps(data["actions"], ensure_ascii=False),
        float(data["latency_ms"]),
        json.dumps(
            {"reason": data.get("context_reason", ""), "attributes": data.get("context", {})}, ensure_ascii=False
        ),
        json.dumps(list(data.get("profile_problems", [])), ensure_ascii=False),
    )


async def _write_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    async with conn.transaction():
        await conn.execute(_STAGE)
        await conn.copy_records_to_table("decisions_stage", records=rows, columns=_COLUMNS)
        await conn.execute(_INSERT)


async def replay(conn: asyncpg.Connection, path: Path) -> tuple[int, int]:
    """Loads a spilled file into the decisions table; returns (records read, rows newly inserted)."""
    text = await asyncio.to_thread(path.read_text, "utf-8")
    rows = [_row_from_json(json.loads(line)) for line in text.splitlines() if line.strip()]
    before = await conn.fetchval("SELECT count(*) FROM decisions")
    for start in range(0, len(rows), BATCH_SIZE):
        await _write_rows(conn, rows[start : start + BATCH_SIZE])
    after = await conn.fetchval("SELECT count(*) FROM decisions")
    return len(rows), int(after - before)


class PostgresDecisionLog:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        spill_dir: Path,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
        drain_timeout: float = 30.0,
        timeout: float = 1.0,
        linger: float = 0.02,
    ) -> None:
        self._pool = pool
        self._spill_dir = spill_dir
        self._queue: asyncio.Queue[DecisionRecord | None] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._linger = linger
        self._drain_timeout = drain_timeout
        self._timeout = timeout
        self._recent: OrderedDict[str, DecisionSummary] = OrderedDict()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: list[DecisionRecord] = []
        self.written = 0
        self.spilled = 0

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._run(), name="postgres-decision-log")

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._pending)

    async def append(self, record: DecisionRecord) -> None:
        self._recent[record.decision_id] = record.summary()
        if len(self._recent) > INDEX_SIZE:
            self._recent.popitem(last=False)
        await self._queue.put(record)

    async def append_outcome(self, outcome: Outcome) -> None:
        """Outcomes are stored as contact history by the profile store; nothing more to log here."""
        return

    async def find(self, decision_id: str) -> DecisionSummary | None:
        summary = self._recent.get(decision_id)
        if summary is not None:
            return summary
        try:
            key = uuid.UUID(decision_id)
        except ValueError:
            return None
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                row = await conn.fetchrow(_FIND, key, timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the decision log database is unavailable: {type(exc).__name__}") from exc
        if row is None:
            return None
        actions = row["actions"]
        return DecisionSummary(
            decision_id,
            row["customer_id"],
            Channel(row["channel"]),
            tuple(a["action_id"] for a in actions),
            row["decided_at"],
        )

    async def _run(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is None:
                stop = True
            else:
                self._pending.append(item)
                # A short wait gathers a batch: fewer, larger transactions cost the database far less.
                await asyncio.sleep(self._linger)
            while len(self._pending) < self._batch_size and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stop = True
                    break
                self._pending.append(more)
            await self._flush()

    async def _flush(self) -> None:
        delay = 0.05
        while self._pending:
            batch = self._pending[: self._batch_size]
            try:
                await self._write(batch)
            except Exception as exc:  # the writer must never die: the batch is kept and retried
                log.warning(
                    "decision_log_write_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    batch=len(batch),
                    queued=self.queued,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            del self._pending[: len(batch)]
            self.written += len(batch)
            delay = 0.05

    async def _write(self, batch: list[DecisionRecord]) -> None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await _write_rows(conn, [_row(r) for r in batch])

    async def close(self) -> None:
        """Drains the queue into PostgreSQL; past the drain timeout, spills the rest to a local file."""
        if self._writer is None:
            return
        try:
            async with asyncio.timeout(self._drain_timeout):
                await self._queue.put(None)
                await asyncio.shield(self._writer)
        except TimeoutError:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            await self._spill()
        self._writer = None

    async def _spill(self) -> None:
        left = list(self._pending)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                left.append(item)
        if not left:
            return
        path = self._spill_dir / f"decisions-unsent-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.jsonl"
        lines = "".join(json.dumps(r.to_json(), ensure_ascii=False, default=str) + "\n" for r in left)
        await asyncio.to_thread(_write_file, path, lines)
        self.spilled = len(left)
        self._pending.clear()
        log.error(
            "decision_log_spilled",
            path=str(path),
            decisions=len(left),
            hint="the database stayed unavailable during shutdown; replay this file into the decisions table",
        )


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
