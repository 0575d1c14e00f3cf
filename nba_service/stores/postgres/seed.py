"""Loads the synthetic population into the shared PostgreSQL store, fast, for demos and load tests.

Each profile from `nba_service.synthetic` becomes rows in the tables the PostgreSQL profile store
reads back into exactly the same `Profile`:

- `customers`: the attributes, except the consent and do-not-call flags, as a jsonb object
  (an attribute whose value is None stays in it as JSON null);
- `consents`: one row per boolean attribute `consent_<purpose>`;
- `do_not_call`: one row (source 'synthetic') when the attribute `do_not_call` is true, none when false;
- `events`: one row per event, keyed by a UUID derived from the seed, customer id and position
  (except an event that expires the instant it happens, which no reader could ever see and the
  table's CHECK forbids: the generator draws a few mortgage rates expiring in 0 days);
- `phones`: one row per phone number, in the profile's order (`position`), E.164 checked before COPY;
- `contacts`: one row per entry of contact history (generated ones have no decision id, an empty note and
  no `reached`, which the profile store reads as "judge by the outcome").

Batches are generated while the previous batch is being copied, and loaded with COPY, all in one
transaction, so an interrupted seed leaves nothing behind and can simply be run again.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import asyncpg

from nba_service.domain.contact_points import phone_problems
from nba_service.domain.profile import AttributeValue, Profile
from nba_service.errors import InvalidArgument, SchemaNotMigrated, SeedError, SeedRefused
from nba_service.stores.postgres.migrate import pending
from nba_service.synthetic import DEFAULT_SEED, MAX_CUSTOMERS, generate_profiles

CONSENT_PREFIX: Final = "consent_"
DO_NOT_CALL: Final = "do_not_call"
DO_NOT_CALL_SOURCE: Final = "synthetic"
DEFAULT_BATCH_SIZE: Final = 5000

# Fixed for ever: event ids must come out the same on every machine and every run.
_EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nba-service:synthetic:event")
# Tables whose rows mean "this database is in use"; consents and do_not_call need a customer anyway.
_GUARDED_TABLES: Final = ("customers", "events", "contacts", "decisions")
# jsonb goes over COPY as JSON text; one encoder, as the per-call set-up of json.dumps shows in profiles.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

_CUSTOMER_COLUMNS: Final = ("customer_id", "attributes")
_CONSENT_COLUMNS: Final = ("customer_id", "purpose", "granted")
_DO_NOT_CALL_COLUMNS: Final = ("customer_id", "source")
_EVENT_COLUMNS: Final = ("event_id", "customer_id", "type", "time", "attributes", "expires_at")
_PHONE_COLUMNS: Final = ("customer_id", "position", "number", "type", "consent", "wrong_number_at")
_CONTACT_COLUMNS: Final = (
    "customer_id",
    "decision_id",
    "action_id",
    "channel",
    "time",
    "outcome",
    "note",
    "reached",
    "direction",
)

Row = tuple[object, ...]
# When a generated number already marked wrong was marked: the generator makes none, a sample file may.
_NOW_MARK: Final = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SeedReport:
    """Rows written per table, and the wall-clock time the whole seed took."""

    customers: int
    events: int
    contacts: int
    consents: int
    do_not_call: int
    seconds: float
    # Generated events left out because they expire at the moment they happen (see `Batch.add`).
    skipped_events: int = 0
    # Existing customers with a synthetic id that `force` deleted (with all their rows) before loading.
    replaced: int = 0
    phones: int = 0


@dataclass(slots=True)
class Batch:
    """The rows for a run of profiles, in the column order of the `*_COLUMNS` tuples."""

    customer_ids: list[str] = field(default_factory=list)
    customers: list[Row] = field(default_factory=list)
    consents: list[Row] = field(default_factory=list)
    do_not_call: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    contacts: list[Row] = field(default_factory=list)
    phones: list[Row] = field(default_factory=list)
    skipped_events: int = 0

    def add(self, profile: Profile, *, seed: int) -> None:
        ident = profile.customer_id
        attributes = dict(profile.attributes)
        if DO_NOT_CALL in attributes:
            listed = attributes.pop(DO_NOT_CALL)
            if not isinstance(listed, bool):
                raise ValueError(f"{ident}: attribute {DO_NOT_CALL} must be a boolean, got {listed!r}")
            if listed:
                self.do_not_call.append((ident, DO_NOT_CALL_SOURCE))
        for name in [name for name in attributes if name.startswith(CONSENT_PREFIX)]:
            granted = attributes.pop(name)
            if not isinstance(granted, bool):
                raise ValueError(f"{ident}: attribute {name} must be a boolean, got {granted!r}")
            self.consents.append((ident, name.removeprefix(CONSENT_PREFIX), granted))
        problems = phone_problems(profile.phones)
        if problems:
            raise ValueError(f"{ident}: {'; '.join(problems)}")
        self.customer_ids.append(ident)
        self.customers.append((ident, _json(attributes)))
        for position, phone in enumerate(profile.phones):
            wrong = _NOW_MARK if phone.wrong_number else None
            self.phones.append((ident, position, phone.number, phone.type.value, phone.consent, wrong))
        for index, event in enumerate(profile.events):
            if event.expires_at is not None and event.expires_at <= event.time:
                # Expired the moment it happened (a rate expiring in 0 days): no reader ever shows it,
                # the service refuses to record one, and the events table's CHECK forbids it.
                self.skipped_events += 1
                continue
            self.events.append(
                (
                    event_id(seed, ident, index),
                    ident,
                    event.type,
                    event.time,
                    _json(event.attributes),
                    event.expires_at,
                )
            )
        for contact in profile.contacts:
            self.contacts.append(
                (
                    ident,
                    uuid.UUID(contact.decision_id) if contact.decision_id else None,
                    contact.action_id,
                    contact.channel.value,
                    contact.time,
                    contact.outcome.value,
                    contact.note,
                    contact.reached,
                    None if contact.direction is None else contact.direction.value,
                )
            )


def event_id(seed: int, customer: str, index: int) -> uuid.UUID:
    """The id of a customer's `index`-th generated event (0-based, in time order) for a seed."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{seed}:{customer}:{index}")


def profile_rows(profiles: Sequence[Profile], *, seed: int = DEFAULT_SEED) -> Batch:
    """The rows `seed` writes for these profiles (seed is only used to derive the event ids)."""
    batch = Batch()
    for profile in profiles:
        batch.add(profile, seed=seed)
    return batch


async def seed(
    conn: asyncpg.Connection,
    count: int,
    *,
    seed: int = DEFAULT_SEED,
    now: datetime,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> SeedReport:
    """Loads synthetic customers CUST-000001 .. `count` with their events and contact history.

    Refuses (`SeedRefused`, naming the row counts it found) when customers, events, contacts or
    decisions already hold rows, so a shared database is never mixed with made-up customers by
    accident. With `force=True` it loads anyway, and customers that already exist under one of the
    synthetic ids are deleted first, which cascades to their consents, do-not-call entry, events and
    contacts (including any the service recorded for them); other customers and the decision log are
    left alone. Seeding again with `force` is therefore idempotent: the same arguments give the same rows.

    Everything happens in one transaction: on any error nothing is written. `progress` is called after
    each batch with the number of customers just loaded (the calls add up to `count`).
    Raises `SchemaNotMigrated` when the schema is missing or behind (run `nba db migrate` first).
    """
    if not 0 <= count <= MAX_CUSTOMERS:
        raise InvalidArgument.of("count", f"must be between 0 and {MAX_CUSTOMERS}, got {count}")
    if batch_size < 1:
        raise InvalidArgument.of("batch_size", f"must be at least 1, got {batch_size}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument.of("now", "must be timezone-aware")
    started = time.perf_counter()
    await _check_schema(conn)
    totals = dict.fromkeys(
        ("customers", "events", "contacts", "consents", "do_not_call", "skipped_events", "replaced", "phones"), 0
    )
    loop = asyncio.get_running_loop()
    starts = range(1, count + 1, batch_size)

    def build(start: int) -> Batch:
        size = min(batch_size, count + 1 - start)
        return profile_rows(list(generate_profiles(size, seed=seed, now=now, start=start)), seed=seed)

    async with conn.transaction():
        in_use = await _row_counts(conn)
        if in_use and not force:
            raise SeedRefused(
                f"the database already holds {_describe(in_use)}; "
                "use --force to add the synthetic population anyway "
                "(customers with the same ids are replaced)"
            )
        # The next batch is generated in a worker thread while this one is copied, so Python
        # generation overlaps the server's work; batches are still loaded strictly in order.
        upcoming = iter(starts)

        def generate_next() -> asyncio.Future[Batch] | None:
            start = next(upcoming, None)
            return None if start is None else loop.run_in_executor(None, build, start)

        pending_batch = generate_next()
        try:
            while pending_batch is not None:
                batch = await pending_batch
                pending_batch = generate_next()
                if force and in_use:
                    deleted = await conn.execute(
                        "DELETE FROM customers WHERE customer_id = ANY($1::text[])", batch.customer_ids
                    )
                    totals["replaced"] += int(deleted.split()[-1])
                await copy_rows(conn, batch)
                totals["phones"] += len(batch.phones)
                totals["customers"] += len(batch.customers)
                totals["consents"] += len(batch.consents)
                totals["do_not_call"] += len(batch.do_not_call)
                totals["events"] += len(batch.events)
                totals["contacts"] += len(batch.contacts)
                totals["skipped_events"] += batch.skipped_events
                if progress is not None:
                    progress(len(batch.customers))
        finally:
            if pending_batch is not None:  # failed part-way: nobody will collect the batch being generated
                pending_batch.cancel()
    return SeedReport(**totals, seconds=time.perf_counter() - started)


async def copy_rows(conn: asyncpg.Connection, batch: Batch) -> None:
    """Loads a batch's rows, table by table in the order the foreign keys need."""
    await _copy(conn, "customers", _CUSTOMER_COLUMNS, batch.customers)
    await _copy(conn, "consents", _CONSENT_COLUMNS, batch.consents)
    await _copy(conn, "do_not_call", _DO_NOT_CALL_COLUMNS, batch.do_not_call)
    await _copy(conn, "events", _EVENT_COLUMNS, batch.events)
    await _copy(conn, "contacts", _CONTACT_COLUMNS, batch.contacts)
    await _copy(conn, "phones", _PHONE_COLUMNS, batch.phones)


async def _check_schema(conn: asyncpg.Connection) -> None:
    missing = await pending(conn)
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise SchemaNotMigrated(f"the database schema is not migrated (missing {names}); run `nba db migrate` first")


async def _row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Tables among `_GUARDED_TABLES` that hold rows, with their exact counts."""
    counts: dict[str, int] = {}
    for table in _GUARDED_TABLES:
        rows: int = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed table names)
        if rows:
            counts[table] = rows
    return counts


def _describe(counts: dict[str, int]) -> str:
    parts = [f"{rows} {table if rows != 1 else table.removesuffix('s')}" for table, rows in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


async def _copy(conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: list[Row]) -> None:
    if rows:
        await conn.copy_records_to_table(table, records=rows, columns=list(columns))


def _json(value: Mapping[str, AttributeValue]) -> str:
    return _ENCODER.encode(value) if value else "{}"


__all__ = [
    "Batch",
    "SchemaNotMigrated",
    "SeedError",
    "SeedRefused",
    "SeedReport",
    "copy_rows",
    "event_id",
    "profile_rows",
    "seed",
]
