"""Decision records in PostgreSQL: the group-commit writer's sink, the export, and replay of spilled files.

`GroupCommitWriter` (stores/group_commit.py) decides when to commit; this module decides how. A batch is
one transaction, usually one statement: INSERT ... SELECT FROM unnest(arrays) (plain parameters for a
single record) ... ON CONFLICT DO NOTHING, so a batch retried after a lost acknowledgement never duplicates
a row and never fails on one; delivery corrections are applied in the same transaction. Every answer
waits for its commit, so the round trips and the driver's CPU per commit are the cost of durability.

What PostgreSQL refuses because of the content itself (a NUL character, a number jsonb cannot hold, a
value past a size limit) can never succeed on a retry, and would block every record behind it if it were
retried for ever. `is_refusal` tells such errors from a database that is away, so the writer can split the
batch and set the refused record aside in `dead_letters`, escaped so that even NUL fits, with its error.

Records and the export use the one versioned record format (`domain/records.py`), so a spilled file, a
dead letter and an exported decision all read back into the same `DecisionRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from nba_service.domain.dialer import pending_call
from nba_service.domain.model import Channel, Direction
from nba_service.domain.profile import Outcome, OutcomeKind
from nba_service.domain.records import (
    RECORD_FORMAT,
    DecisionRecord,
    DecisionSummary,
    Delivery,
    DeliveryUpdate,
    RecordUpdate,
    ShadowUpdate,
    outcome_to_json,
)
from nba_service.errors import Unavailable
from nba_service.json_text import dumps as _dumps
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
    "delivery",
    "shadow",
    "inputs",
    "caller",
    "trace_id",
    "direction",
    "journey_stage",
)
_JSON_COLUMNS = frozenset({"rules_fired", "dropped", "actions", "context", "profile_problems", "shadow", "inputs"})
_TYPES = (
    "uuid",
    "timestamptz",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "float8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
)
# One statement, so a batch without corrections is one round trip and its own transaction. COPY through
# a staging table cost four round trips: measured here, 1.9 ms against 0.8 ms for a one-record commit (the
# size of most batches under group commit), and no less per record at a hundred records.
_INSERT = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) SELECT "  # noqa: S608 - constant column names only
    + ", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in _COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${n}::{t}[]" for n, t in enumerate(_TYPES, start=1))
    + f") AS r({', '.join(_COLUMNS)}) ON CONFLICT (decision_id) DO NOTHING"
)
# The common batch under group commit is a single record: plain parameters cost the driver about a quarter
# less than fifteen one-element arrays (measured: 116 against 158 us of CPU per commit).
_INSERT_ONE = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) VALUES ("  # noqa: S608 - constant column names only
    + ", ".join(
        f"${n}::{t}" + ("::jsonb" if c in _JSON_COLUMNS else "")
        for n, (c, t) in enumerate(zip(_COLUMNS, _TYPES, strict=True), start=1)
    )
    + ") ON CONFLICT (decision_id) DO NOTHING"
)
_UPDATE = """
UPDATE decisions d SET delivery = u.delivery
  FROM unnest($1::uuid[], $2::text[]) AS u(decision_id, delivery)
 WHERE d.decision_id = u.decision_id
RETURNING d.decision_id
"""
# A shadow run's verdict, added after the answer (see `DecisionService.decide`).
_SHADOW = """
UPDATE decisions d SET shadow = u.shadow::jsonb
  FROM unnest($1::uuid[], $2::text[]) AS u(decision_id, shadow)
 WHERE d.decision_id = u.decision_id
RETURNING d.decision_id
"""
# The dialer calls among the records (nba_service.domain.dialer.pending_call), each a pending contact written in
# the records' own transaction. A retry of the same campaign supersedes the earlier attempt's pending row for the
# same customer and action, so a call counts once; a customer deleted meanwhile gets none (no foreign-key failure
# can set a record aside for a contact's sake).
_PENDING = """
WITH calls AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
        AS c(customer_id, decision_id, action_id, time, pending_until, campaign_id)
), superseded AS (
    DELETE FROM contacts
     WHERE contact_id IN (
        SELECT p.contact_id
          FROM calls c CROSS JOIN LATERAL (
                SELECT k.contact_id FROM contacts k
                 WHERE k.customer_id = c.customer_id AND k.action_id = c.action_id AND k.campaign_id = c.campaign_id
                   AND k.pending_until IS NOT NULL AND k.decision_id <> c.decision_id
                OFFSET 0  -- not flattened: one index lookup per call, whatever the statistics say
               ) p
     )
    RETURNING 1
)
INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, note, reached, pending_until,
                      campaign_id)
SELECT c.customer_id, c.decision_id, c.action_id, 'outbound_dialer', c.time, 'not_offered', '', false,
       c.pending_until, c.campaign_id
  FROM calls c JOIN customers USING (customer_id)
ON CONFLICT (decision_id, action_id) WHERE decision_id IS NOT NULL DO NOTHING
"""
# An answer the stream never carried (a cancelled or late campaign) hands the dialer no call.
_WITHDRAW = "DELETE FROM contacts WHERE decision_id = ANY($1::uuid[]) AND pending_until IS NOT NULL"
_FIND = (
    "SELECT customer_id, channel, actions, decided_at, delivery, caller, direction FROM decisions"
    " WHERE decision_id = $1"
)
_GET = f"SELECT {', '.join(_COLUMNS)} FROM decisions WHERE decision_id = $1"  # noqa: S608 - constant column names
# A write that stores nothing but needs what a batch needs: the insert lock on `decisions` (a lock that
# holds the writer up holds this up too; a read-only server refuses it), and a transaction id, so its commit
# writes and flushes WAL like any other.
_PROBE = """
WITH probe AS (INSERT INTO decisions SELECT * FROM decisions WHERE false RETURNING 1)
SELECT pg_current_xact_id()
"""
# Idempotent, so replaying a file twice sets a refused record aside once.
_DEAD_LETTER = """
INSERT INTO dead_letters (decision_id, error, record)
SELECT $1, $2, $3
 WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE decision_id = $1 AND record = $3)
"""
_EXPORT_DECISIONS = f"""
SELECT {", ".join(_COLUMNS)} FROM decisions
 WHERE ($1::timestamptz IS NULL OR decided_at >= $1) AND ($2::timestamptz IS NULL OR decided_at < $2)
   AND ($3::text IS NULL OR customer_id = $3)
 ORDER BY decided_at, decision_id
"""  # noqa: S608 - constant column names only
_EXPORT_OUTCOMES = """
SELECT decision_id, customer_id, action_id, channel, outcome, time, note, recorded_by, direction FROM outcomes
 WHERE ($1::timestamptz IS NULL OR time >= $1) AND ($2::timestamptz IS NULL OR time < $2)
   AND ($3::text IS NULL OR customer_id = $3)
 ORDER BY time, outcome_id
"""

BATCH_SIZE = 500
# SQLSTATE classes that mean "this content can never be stored": 22 data exception (NUL, a number or a
# string the type cannot hold), 23 integrity constraint violation, 54 program limit exceeded (too large).
REFUSAL_CLASSES = frozenset({"22", "23", "54"})


class RecordUnstorable(ValueError):
    """A record whose fields cannot even be turned into a row (a decision id that is not a UUID)."""


def is_refusal(error: BaseException) -> bool:
    """Whether the database (or the driver, encoding the row) refused the content; retrying cannot help.

    Everything else (a lost connection, a timeout, a missing table, a cancelled query) is a store failure:
    the writer keeps the batch and retries it, so a record is never set aside because the database was away.
    """
    if isinstance(error, RecordUnstorable):
        return True
    # The driver's own "invalid input for query argument" is a PostgresError of class 22 too.
    if isinstance(error, asyncpg.PostgresError):
        state = str(getattr(error, "sqlstate", "") or "")
        return state[:2] in REFUSAL_CLASSES
    return False


def _row(record: DecisionRecord) -> tuple[Any, ...]:
    """The columns of one `decisions` row: the record's own JSON form, split where the table splits it."""
    try:
        decision_id = uuid.UUID(record.decision_id)
    except (ValueError, TypeError, AttributeError) as exc:
        raise RecordUnstorable(f"decision id {record.decision_id!r} is not a UUID") from exc
    data = record.to_json()
    finite = record.finite
    return (
        decision_id,
        record.decided_at,
        record.customer_id,
        record.channel.value,
        record.ruleset.name,
        record.ruleset.version,
        record.ruleset.hash,
        record.engine,
        _dumps(data["rules_fired"], finite=finite),
        _dumps(data["dropped"]),
        _dumps(data["actions"]),
        record.latency_ms,
        _dumps(data["context"]),
        _dumps(data["profile_problems"]),
        record.delivery.value,
        None if data["shadow"] is None else _dumps(data["shadow"]),  # SQL NULL, not JSON null: no candidate ran
        # SQL NULL: a record from before inputs were kept
        None if data["inputs"] is None else _dumps(data["inputs"], finite=finite),
        record.caller or None,  # SQL NULL: no caller recorded
        record.trace_id or None,  # SQL NULL: not traced
        None if record.direction is None else record.direction.value,  # SQL NULL: a record from before directions
        record.journey_stage,
    )


def _update_rows(updates: Sequence[RecordUpdate]) -> tuple[list[uuid.UUID], list[str]]:
    """The last correction per decision wins; one that names no UUID can match no row and is dropped."""
    latest: dict[uuid.UUID, str] = {}
    for update in updates:
        try:
            key = uuid.UUID(update.decision_id)
        except (ValueError, TypeError, AttributeError):
            log.warning(
                "delivery_update_ignored",
                decision_id=update.decision_id,
                reason="not a decision id",
                kind="delivery" if isinstance(update, DeliveryUpdate) else "shadow",
            )
            continue
        latest[key] = update.delivery.value if isinstance(update, DeliveryUpdate) else _dumps(update.shadow.to_json())
    return list(latest), list(latest.values())


async def write_records(
    conn: asyncpg.Connection,
    records: Sequence[DecisionRecord],
    updates: Sequence[RecordUpdate],
    *,
    budget: float | None = None,
) -> tuple[int, set[uuid.UUID]]:
    """One transaction: stores the records (once each) with the pending contacts of the dialer calls among them,
    and applies the corrections (an answer never delivered withdraws its pending call) and shadow runs. The
    pending contacts commit with their records, so no call is streamed that caps do not see, and none is counted
    for a record that was not stored.

    Returns how many records were new and the decision ids an update matched.
    """
    rows = [_row(r) for r in records]
    calls = [(r.customer_id, row[0], call) for r, row in zip(records, rows, strict=True) if (call := pending_call(r))]
    ids, deliveries = _update_rows([u for u in updates if isinstance(u, DeliveryUpdate)])
    withdrawn = [key for key, delivery in zip(ids, deliveries, strict=True) if delivery != Delivery.SENT.value]
    shadow_ids, shadows = _update_rows([u for u in updates if isinstance(u, ShadowUpdate)])
    inserted = 0
    matched: set[uuid.UUID] = set()
    started = time.monotonic()

    def left() -> float | None:
        return None if budget is None else max(0.05, budget - (time.monotonic() - started))

    async with contextlib.AsyncExitStack() as stack:
        if bool(rows) + bool(calls) + bool(ids) + bool(withdrawn) + bool(shadow_ids) > 1:
            await stack.enter_async_context(conn.transaction())
        if len(rows) == 1:
            status = await conn.execute(_INSERT_ONE, *rows[0], timeout=left())
            inserted = int(status.split()[-1])
        elif rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            status = await conn.execute(_INSERT, *columns, timeout=left())
            inserted = int(status.split()[-1])
        if calls:
            await conn.execute(
                _PENDING,
                [customer for customer, _, _ in calls],
                [key for _, key, _ in calls],
                [call.action_id for _, _, call in calls],
                [call.time for _, _, call in calls],
                [call.pending_until for _, _, call in calls],
                [call.campaign_id for _, _, call in calls],
                timeout=left(),
            )
        if ids:
            matched = {r[0] for r in await conn.fetch(_UPDATE, ids, deliveries, timeout=left())}
        if withdrawn:
            await conn.execute(_WITHDRAW, withdrawn, timeout=left())
        if shadow_ids:
            matched |= {r[0] for r in await conn.fetch(_SHADOW, shadow_ids, shadows, timeout=left())}
    return inserted, matched


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\\u0000")


async def dead_letter(
    conn: asyncpg.Connection, record: DecisionRecord, error: str, *, budget: float | None = None
) -> None:
    """Sets a refused record aside; ASCII-escaped JSON holds any content, so only a failing store can fail this."""
    try:
        text = json.dumps(record.to_json(), ensure_ascii=True, default=str)
    except (TypeError, ValueError, AttributeError):  # a record too malformed for its own format: keep what it is
        text = json.dumps({"unformattable": repr(record)}, ensure_ascii=True)
    await conn.execute(_DEAD_LETTER, _no_nul(str(record.decision_id)), _no_nul(error), text, timeout=budget)


class PostgresRecordSink:
    """The `RecordSink` a `GroupCommitWriter` commits through; every call takes a pooled connection."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 1.0) -> None:
        self._pool = pool
        # The answers waiting for a write wait this long too: a write that takes longer has failed them all,
        # so it is a store failure (the writer turns unhealthy and retries) rather than a wait on a stuck
        # database, and cutting it off cancels its statement, so no row claims an answer that was refused.
        self._timeout = timeout

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool the records are written through; the ruleset archive shares it."""
        return self._pool

    async def write(self, records: Sequence[DecisionRecord], updates: Sequence[RecordUpdate]) -> None:
        started = time.monotonic()
        # No time limit on the acquire itself (it cost a quarter of a one-record commit's CPU): the pool
        # waits for a read that must end within its own limit, or connects within the pool's connect timeout.
        async with self._pool.acquire() as conn:
            budget = max(0.05, self._timeout - (time.monotonic() - started))
            await write_records(conn, records, updates, budget=budget)

    async def dead_letter(self, record: DecisionRecord, error: str) -> None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await dead_letter(conn, record, error, budget=self._timeout)

    def is_refusal(self, error: BaseException) -> bool:
        return is_refusal(error)

    async def probe(self) -> None:
        async with self._pool.acquire(timeout=self._timeout) as conn:
            await conn.execute(_PROBE, timeout=self._timeout)

    async def _row_of(self, query: str, decision_id: str) -> tuple[uuid.UUID, asyncpg.Record] | None:
        """A decision's row by id; None for an id that is not a UUID, since no row can have it."""
        try:
            key = uuid.UUID(decision_id)
        except ValueError:
            return None
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                row = await conn.fetchrow(query, key, timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the decision database is unavailable: {type(exc).__name__}") from exc
        return None if row is None else (key, row)

    async def find(self, decision_id: str) -> DecisionSummary | None:
        found = await self._row_of(_FIND, decision_id)
        if found is None:
            return None
        key, row = found
        return DecisionSummary(
            str(key),
            row["customer_id"],
            Channel(row["channel"]),
            tuple(a["action_id"] for a in _json(row["actions"])),
            row["decided_at"],
            Delivery(row["delivery"]),
            row["caller"] or "",
            None if row["direction"] is None else Direction(row["direction"]),
        )

    async def get_record(self, decision_id: str) -> DecisionRecord | None:
        """`RecordReader`: the whole record; a dead-lettered one is not in `decisions`, so it is None too."""
        found = await self._row_of(_GET, decision_id)
        return None if found is None else DecisionRecord.from_json(decision_json(found[1]))


# --------------------------------------------------------------------------------------------------
# Export


def _json(value: Any) -> Any:
    """jsonb as the pool's codec decodes it, or as text from a bare connection."""
    return json.loads(value) if isinstance(value, str) else value


def decision_json(row: asyncpg.Record) -> dict[str, Any]:
    """A decisions row in the record format, exactly as `DecisionRecord.to_json()` wrote it."""
    data = {
        "format": RECORD_FORMAT,
        "kind": "decision",
        "decision_id": str(row["decision_id"]),
        "decided_at": row["decided_at"].isoformat(),
        "customer_id": row["customer_id"],
        "channel": row["channel"],
        "ruleset": {"name": row["ruleset_name"], "version": row["ruleset_version"], "hash": row["ruleset_hash"]},
        "engine": row["engine"],
        "rules_fired": _json(row["rules_fired"]),
        "dropped": _json(row["dropped"]),
        "actions": _json(row["actions"]),
        "latency_ms": row["latency_ms"],
        "context": _json(row["context"]),
        "profile_problems": _json(row["profile_problems"]),
        "delivery": row["delivery"],
        "shadow": _json(row["shadow"]),
        "inputs": _json(row["inputs"]),
        "caller": row["caller"] or "",
        "trace_id": row["trace_id"] or "",
        "direction": row["direction"],
        "journey_stage": row["journey_stage"],
    }
    # Through the record type, so the export can never drift from the one format.
    return DecisionRecord.from_json(data).to_json()


def outcome_json(row: asyncpg.Record) -> dict[str, Any]:
    return outcome_to_json(
        Outcome(
            str(row["decision_id"]),
            row["customer_id"],
            row["action_id"],
            Channel(row["channel"]),
            OutcomeKind(row["outcome"]),
            row["time"],
            row["note"],
            row["recorded_by"] or "",
            direction=None if row["direction"] is None else Direction(row["direction"]),
        )
    )


class PostgresRecordExport:
    """`RecordExport`: decisions and outcomes, oldest first, streamed from one consistent snapshot."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 30.0, prefetch: int = 500) -> None:
        self._pool = pool
        self._timeout = timeout
        self._prefetch = prefetch

    async def export(
        self, since: datetime | None, until: datetime | None, customer_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with (
                self._pool.acquire(timeout=self._timeout) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                args = (since, until, customer_id)
                decisions = conn.cursor(_EXPORT_DECISIONS, *args, prefetch=self._prefetch, timeout=self._timeout)
                outcomes = conn.cursor(_EXPORT_OUTCOMES, *args, prefetch=self._prefetch, timeout=self._timeout)
                merged = _merge(
                    (decisions.__aiter__(), lambda r: r["decided_at"], decision_json),
                    (outcomes.__aiter__(), lambda r: r["time"], outcome_json),
                )
                async with contextlib.aclosing(merged):
                    async for item in merged:
                        yield item
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the decision database is unavailable: {type(exc).__name__}") from exc


_Source = tuple[AsyncIterator[Any], Callable[[Any], datetime], Callable[[Any], dict[str, Any]]]


async def _merge(first: _Source, second: _Source) -> AsyncGenerator[dict[str, Any], None]:
    """Two time-ordered streams as one; a decision comes before an outcome of the same instant."""
    sources = (first, second)
    heads: list[Any] = [await anext(source[0], None) for source in sources]
    while heads[0] is not None or heads[1] is not None:
        if heads[1] is None or (heads[0] is not None and sources[0][1](heads[0]) <= sources[1][1](heads[1])):
            pick = 0
        else:
            pick = 1
        yield sources[pick][2](heads[pick])
        heads[pick] = await anext(sources[pick][0], None)


# --------------------------------------------------------------------------------------------------
# Replay of spilled files


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    """A line that was not loaded, located so an operator can find it."""

    path: Path
    line: int
    error: str
    dead_lettered: bool = False

    def __str__(self) -> str:
        where = "; set aside in dead_letters" if self.dead_lettered else ""
        return f"{self.path}:{self.line}: {self.error}{where}"


@dataclass(slots=True)
class FileReplay:
    """What one file held and what became of it."""

    path: Path
    lines: int = 0
    decisions: int = 0
    inserted: int = 0
    updates: int = 0
    updated: int = 0
    moot: int = 0  # "not delivered" corrections, or shadow runs, for decisions that were never stored
    problems: list[ReplayProblem] = field(default_factory=list)

    @property
    def refused_decisions(self) -> int:
        return sum(1 for p in self.problems if p.dead_lettered)

    @property
    def already_stored(self) -> int:
        return self.decisions - self.inserted - self.refused_decisions


@dataclass(slots=True)
class _Parsed:
    report: FileReplay
    records: list[tuple[int, DecisionRecord]] = field(default_factory=list)
    updates: list[tuple[int, RecordUpdate]] = field(default_factory=list)


def _read_line(chunk: bytes) -> DecisionRecord | RecordUpdate:
    """One line in the record format; ValueError (JSON, encoding and format errors are all ValueErrors)."""
    item = json.loads(chunk.decode("utf-8"))
    if not isinstance(item, dict):
        raise ValueError("a record must be a JSON object")
    kind = item.get("kind")
    if kind == "decision":
        return DecisionRecord.from_json(item)
    if kind == "delivery":
        return DeliveryUpdate.from_json(item)
    if kind == "shadow":
        return ShadowUpdate.from_json(item)
    if item.get("format") != RECORD_FORMAT:
        raise ValueError(f"unknown record format {item.get('format')!r} (this version reads {RECORD_FORMAT!r})")
    raise ValueError(f"a {kind!r} record is not replayed (only decision, delivery and shadow records are)")


def _parse(path: Path, data: bytes) -> _Parsed:
    parsed = _Parsed(FileReplay(path))
    report = parsed.report
    chunks = data.split(b"\n")
    torn = chunks[-1] != b""  # a file written whole ends with a newline; one cut short does not
    if not torn:
        chunks.pop()
    for number, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        report.lines += 1
        try:
            item = _read_line(chunk)
        except ValueError as exc:
            what = "torn last line (the file ends mid-record)" if torn and number == len(chunks) else "not loaded"
            report.problems.append(ReplayProblem(path, number, f"{what}: {exc}"))
            continue
        if isinstance(item, DecisionRecord):
            report.decisions += 1
            parsed.records.append((number, item))
        else:
            report.updates += 1
            parsed.updates.append((number, item))
    return parsed


async def _store(conn: asyncpg.Connection, parsed: _Parsed, batch: list[tuple[int, DecisionRecord]]) -> None:
    """Stores a batch; a refused one is halved until the refused record stands alone, then set aside."""
    try:
        inserted, _ = await write_records(conn, [r for _, r in batch], ())
    except Exception as exc:
        if not is_refusal(exc):
            raise
        if len(batch) == 1:
            number, record = batch[0]
            error = f"{type(exc).__name__}: {exc}"
            await dead_letter(conn, record, error)
            one_line = " ".join(error.split())  # PostgreSQL's DETAIL comes on a line of its own
            parsed.report.problems.append(
                ReplayProblem(parsed.report.path, number, f"refused by PostgreSQL: {one_line}", dead_lettered=True)
            )
            return
        middle = len(batch) // 2
        await _store(conn, parsed, batch[:middle])
        await _store(conn, parsed, batch[middle:])
        return
    parsed.report.inserted += inserted


async def replay(conn: asyncpg.Connection, paths: Sequence[Path]) -> list[FileReplay]:
    """Loads spilled files: every record once (a second replay inserts nothing), then every correction.

    Corrections go last, after the records of all files, so one in an earlier file still finds its record
    in a later one. Nothing is raised for bad content: each line not loaded is reported with its file and
    line, and a record PostgreSQL refuses is set aside in `dead_letters`. A database that fails raises.
    """
    files: list[_Parsed] = []
    for path in paths:
        files.append(_parse(path, await asyncio.to_thread(path.read_bytes)))
    for parsed in files:
        for start in range(0, len(parsed.records), BATCH_SIZE):
            await _store(conn, parsed, parsed.records[start : start + BATCH_SIZE])
    for parsed in files:
        for start in range(0, len(parsed.updates), BATCH_SIZE):
            batch = parsed.updates[start : start + BATCH_SIZE]
            _, matched = await write_records(conn, (), [u for _, u in batch])
            parsed.report.updated += sum(1 for _, u in batch if _uuid(u.decision_id) in matched)
            for number, update in batch:
                if _uuid(update.decision_id) in matched:
                    continue
                if isinstance(update, ShadowUpdate) or update.delivery is not Delivery.SENT:
                    # "Never delivered" for a record that was never stored: nothing claims otherwise; and a
                    # shadow run is evidence about a candidate, with nothing to attach to.
                    parsed.report.moot += 1
                else:
                    parsed.report.problems.append(
                        ReplayProblem(
                            parsed.report.path,
                            number,
                            f"delivery update for decision {update.decision_id}, which is not stored",
                        )
                    )
    for parsed in files:
        parsed.report.problems.sort(key=lambda p: p.line)
    return [parsed.report for parsed in files]


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
