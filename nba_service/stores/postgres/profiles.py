"""The production profile store: live profiles from a PostgreSQL database that other systems share.

One prepared statement returns the whole live profile in one round trip: attributes, consents and
do-not-call folded into the attributes the rulesets read, the newest unexpired event of each type the
ruleset declares, and the contact history (one row per offered action) inside the longest frequency-cap
window, and the customer's live do-not-contact listings. The read's cost therefore depends on the ruleset,
not on how many events or outcomes a customer has piled up. Any failure to reach the database becomes
`Unavailable`, quickly, so a decision never hangs past its deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from nba_service import json_text
from nba_service.domain.contact_points import PhoneNumber, PhoneType
from nba_service.domain.do_not_contact import (
    Listing,
    ListingState,
    Selection,
    already_listed,
    check_removal,
    duplicate_of,
    nothing_listed,
    unknown_customer,
)
from nba_service.domain.model import Channel, Direction
from nba_service.domain.profile import (
    CONTACTED_OUTCOMES,
    AttributeValue,
    Contact,
    DoNotContact,
    DoNotContactReason,
    Event,
    Outcome,
    OutcomeKind,
    Profile,
)
from nba_service.domain.segments import Segment
from nba_service.errors import InvalidArgument, NotFound, SchemaNotReadyError, Unavailable
from nba_service.stores.postgres.migrate import migrations

log = structlog.get_logger(__name__)

# The newest live event per *declared* type: one index scan (events_customer_type_time) per type the
# ruleset reads, so thousands of events of other types cost the read nothing and can never crowd out a
# live trigger. Contacts are one row per offered action, so an offer answered many times is read once.
_PROFILE_COLUMNS = """
SELECT c.customer_id, c.attributes,
       (SELECT coalesce(jsonb_object_agg('consent_' || k.purpose, k.granted), '{}'::jsonb)
          FROM consents k WHERE k.customer_id = c.customer_id) AS consents,
       EXISTS (SELECT 1 FROM do_not_call d WHERE d.customer_id = c.customer_id) AS do_not_call,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('type', e.type, 'time', e.time, 'attributes', e.attributes,
                                                     'expires_at', e.expires_at) ORDER BY e.time), '[]'::jsonb)
          FROM unnest($4::text[]) AS t(type)
          CROSS JOIN LATERAL (
                SELECT v.type, v.time, v.attributes, v.expires_at
                  FROM events v
                 WHERE v.customer_id = c.customer_id AND v.type = t.type
                   AND (v.expires_at IS NULL OR v.expires_at > $2)
                 ORDER BY v.time DESC
                 LIMIT 1) e) AS events,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('action_id', h.action_id, 'channel', h.channel, 'time', h.time,
                                                     'outcome', h.outcome, 'decision_id', h.decision_id,
                                                     'reached', h.reached, 'direction', h.direction,
                                                     'pending_until', h.pending_until,
                                                     'campaign_id', h.campaign_id)
                                  ORDER BY h.time), '[]'::jsonb)
          FROM contacts h WHERE h.customer_id = c.customer_id AND h.time > $3) AS contacts,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(p.number, p.type, p.consent, p.wrong_number_at IS NOT NULL)
                                  ORDER BY p.position), '[]'::jsonb)
          FROM phones p WHERE p.customer_id = c.customer_id) AS phones,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(l.channel, l.reason, l.source, l.added_at, l.expires_at,
                                                    l.added_by, l.note) ORDER BY l.listing_id), '[]'::jsonb)
          FROM do_not_contact l WHERE l.customer_id = c.customer_id AND l.removed_at IS NULL
           AND (l.expires_at IS NULL OR l.expires_at > $2)) AS do_not_contact
"""
PROFILE_SQL = _PROFILE_COLUMNS + "  FROM customers c WHERE c.customer_id = $1"
# A campaign's profiles, a batch per round trip, in the order asked (unknown ids are left out).
PROFILES_SQL = (
    _PROFILE_COLUMNS
    + "  FROM unnest($1::text[]) WITH ORDINALITY AS q(customer_id, n) JOIN customers c USING (customer_id)"
    + " ORDER BY q.n"
)
# A page of a segment in id order: keyset pagination on the primary key, the filter as jsonb containment.
SEGMENT_SQL = (
    _PROFILE_COLUMNS
    + "  FROM customers c WHERE c.customer_id > $1 AND c.attributes @> $5::jsonb ORDER BY c.customer_id LIMIT $6"
)
MISSING_SQL = """
SELECT q.n - 1 FROM unnest($1::text[]) WITH ORDINALITY AS q(customer_id, n)
 WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = q.customer_id) ORDER BY q.n
"""

_CONTACTED_SQL = ", ".join(f"'{kind.value}'" for kind in sorted(CONTACTED_OUTCOMES))
# One statement, so one round trip and one transaction: the offer's contact row takes the latest outcome
# (by its time; a later report wins a tie) and stays reached once any outcome reached the customer, and
# the audit row is appended. A foreign-key failure (unknown customer) leaves neither.
# One statement, so one round trip and one transaction: the audit row is appended unless an outcome with the
# same idempotency key is already stored, and only then the offer's contact row takes the latest outcome (by
# its time; a later report wins a tie) and stays reached once any outcome reached the customer. A pending dialer
# call's row is replaced outright, and so is any pending row a retry of the same campaign made for the same
# customer and action (the dialer places one call per idempotency key). A foreign-key failure (unknown
# customer) leaves neither. Returns how many audit rows were written (0 or 1).
ADD_OUTCOME_SQL = f"""
WITH audit AS (
    INSERT INTO outcomes (decision_id, customer_id, action_id, channel, outcome, time, note, recorded_by,
                          idempotency_key, direction)
    VALUES ($2, $1, $3, $4, $6, $5, $7, $9, $10, $11)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING 1
), contact AS (
    INSERT INTO contacts AS k (customer_id, decision_id, action_id, channel, time, outcome, note, reached, direction)
    SELECT $1::text, $2::uuid, $3::text, $4::text, $5::timestamptz, $6::text, $7::text, $8::boolean, $11::text
     WHERE EXISTS (SELECT 1 FROM audit)
    ON CONFLICT (decision_id, action_id) WHERE decision_id IS NOT NULL DO UPDATE
       SET outcome = CASE WHEN k.pending_until IS NOT NULL OR excluded.time >= k.time
                          THEN excluded.outcome ELSE k.outcome END,
           note = CASE WHEN k.pending_until IS NOT NULL OR excluded.time >= k.time THEN excluded.note ELSE k.note END,
           time = CASE WHEN k.pending_until IS NOT NULL THEN excluded.time ELSE greatest(k.time, excluded.time) END,
           reached = CASE WHEN k.pending_until IS NOT NULL THEN excluded.reached
                          ELSE coalesce(k.reached, k.outcome IN ({_CONTACTED_SQL})) OR excluded.reached END,
           direction = coalesce(k.direction, excluded.direction),
           pending_until = NULL
    RETURNING 1
), retried AS (
    DELETE FROM contacts r
     WHERE EXISTS (SELECT 1 FROM audit) AND r.customer_id = $1 AND r.action_id = $3
       AND r.pending_until IS NOT NULL AND r.decision_id <> $2::uuid
       AND r.campaign_id = (SELECT d.context->'attributes'->>'campaign_id' FROM decisions d
                             WHERE d.decision_id = $2::uuid)
    RETURNING 1
)
SELECT (SELECT count(*) FROM audit) + 0 * (SELECT count(*) FROM contact) + 0 * (SELECT count(*) FROM retried)
"""  # noqa: S608 - the interpolated list is the fixed outcome names

_SCHEMA_VERSION = "SELECT max(version) FROM schema_migrations"

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    # Raised by the pool when a server shutdown reaches a pooled connection mid-operation (asyncpg#784).
    asyncpg.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json_text.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skips asyncpg's reset round trip on release: the service keeps no session state on pooled connections."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 0,
    max_size: int = 10,
    connect_timeout: float = 2.0,
    password: Callable[[], str] | None = None,
) -> asyncpg.Pool:
    """A pool that never blocks start-up: no connection is made until one is needed. `password`, when given,
    is asked for at each new connection (nba_service.security.secrets.password_source)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        password=password,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        init=_init_connection,
        reset=_no_reset,
        max_inactive_connection_lifetime=60.0,
    )
    return pool


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _profile(row: Any) -> Profile:
    attributes: dict[str, AttributeValue] = dict(row["attributes"])
    attributes.update(row["consents"])
    attributes["do_not_call"] = bool(row["do_not_call"])
    events = tuple(
        Event(
            e["type"],
            _time(e["time"]),
            e["attributes"],
            _time(e["expires_at"]) if e["expires_at"] is not None else None,
        )
        for e in row["events"]
    )
    contacts = tuple(
        Contact(
            c["action_id"],
            Channel(c["channel"]),
            _time(c["time"]),
            OutcomeKind(c["outcome"]),
            c["decision_id"] or "",
            reached=c["reached"],
            direction=None if c["direction"] is None else Direction(c["direction"]),
            pending_until=None if c.get("pending_until") is None else _time(c["pending_until"]),
            campaign_id=c.get("campaign_id") or "",
        )
        for c in row["contacts"]
    )
    phones = tuple(
        PhoneNumber(number, PhoneType(kind), consent, wrong) for number, kind, consent, wrong in row["phones"]
    )
    listings = tuple(
        DoNotContact(
            None if channel is None else Channel(channel),
            DoNotContactReason(reason),
            source,
            _time(added_at),
            None if expires_at is None else _time(expires_at),
            added_by,
            note,
        )
        for channel, reason, source, added_at, expires_at, added_by, note in row["do_not_contact"]
    )
    return Profile(row["customer_id"], attributes, events, contacts, phones, listings)


_CUSTOMER_EXISTS = "SELECT 1 FROM customers WHERE customer_id = $1"
_LISTING_COLUMNS = (
    "SELECT listing_id, customer_id, channel, reason, source, added_at, expires_at, added_by, note, removed_at,"
    " removed_by, removal_note FROM do_not_contact"
)
_EXPORT_PAGE = 1000


async def _lock_customer(conn: asyncpg.Connection, customer_id: str, budget: float) -> None:
    """Two people listing one customer at once: the second sees the first's listing and is refused."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('nba-dnc:' || $1))", customer_id, timeout=budget)


async def _listings(conn: asyncpg.Connection, budget: float, customer_id: str | None, after: int = 0) -> list[Listing]:
    """One customer's listings, or a page of everyone's after that listing id, in id order."""
    if customer_id is not None:
        rows = await conn.fetch(
            f"{_LISTING_COLUMNS} WHERE customer_id = $1 ORDER BY listing_id", customer_id, timeout=budget
        )
    else:
        rows = await conn.fetch(
            f"{_LISTING_COLUMNS} WHERE listing_id > $1 ORDER BY listing_id LIMIT $2",
            after,
            _EXPORT_PAGE,
            timeout=budget,
        )
    return [
        Listing(
            int(r["listing_id"]),
            r["customer_id"],
            DoNotContact(
                None if r["channel"] is None else Channel(r["channel"]),
                DoNotContactReason(r["reason"]),
                r["source"],
                r["added_at"],
                r["expires_at"],
                r["added_by"],
                r["note"],
            ),
            r["removed_at"],
            r["removed_by"] or "",
            r["removal_note"] or "",
        )
        for r in rows
    ]


class PostgresProfileStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        history: timedelta,
        event_types: Iterable[str],
        timeout: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._schema_version = max(m.version for m in migrations())
        self._history = history
        # Only the types the ruleset reads: an undeclared type can never change a decision.
        self._event_types = sorted(set(event_types))
        self._timeout = timeout
        self._clock = clock

    def set_reads(self, event_types: Iterable[str], history: timedelta) -> None:
        """What a profile read returns from now on: a newly deployed version may read other event types."""
        self._event_types = sorted(set(event_types))
        self._history = history

    async def _run(self, what: str, call: Callable[[asyncpg.Connection, float], Any]) -> Any:
        """One database call within one time budget, waiting for a connection included.

        asyncpg's own timeouts are used rather than cancelling from outside: a cancelled query on a hung
        server makes the connection's release wait for the server, while a timed-out one is dropped.
        """
        started = time.monotonic()
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                remaining = max(0.05, self._timeout - (time.monotonic() - started))
                return await call(conn, remaining)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the profile database is unavailable ({what}): {type(exc).__name__}") from exc

    async def add_customers(self, profiles: Sequence[Profile]) -> int:
        """CustomerLoader: the rows `nba db seed` writes for these profiles, with COPY, in one transaction."""
        from nba_service.stores.postgres.seed import copy_rows, profile_rows  # noqa: PLC0415 - seed imports the generator

        batch = profile_rows(list(profiles))
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                # COPY is binary, and the pool's JSON codecs are text: the seed's own JSON text goes in as it does
                # on the seed's plain connection, and the pool's codecs come back before the connection does.
                for name in ("json", "jsonb"):
                    await conn.reset_type_codec(name, schema="pg_catalog")
                try:
                    async with conn.transaction():
                        await copy_rows(conn, batch)
                finally:
                    await _init_connection(conn)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"the profile database is unavailable (adding customers): {type(exc).__name__}") from exc
        return len(batch.customers)

    async def get_profile(self, customer_id: str) -> Profile:
        now = self._clock()

        async def read(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.fetchrow(
                PROFILE_SQL, customer_id, now, now - self._history, self._event_types, timeout=budget
            )

        row = await self._run("reading a profile", read)
        if row is None:
            raise NotFound(f"customer {customer_id!r} not found")
        return _profile(row)

    async def get_profiles(self, customer_ids: Sequence[str]) -> list[Profile]:
        """The live profiles of these customers in one round trip, in the order asked; unknown ones left out."""
        now = self._clock()

        async def read(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.fetch(
                PROFILES_SQL, list(customer_ids), now, now - self._history, self._event_types, timeout=budget
            )

        return [_profile(row) for row in await self._run("reading profiles", read)]

    async def missing_customers(self, customer_ids: Sequence[str]) -> list[int]:
        """Positions in `customer_ids` of the customers this store does not hold."""

        async def read(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.fetch(MISSING_SQL, list(customer_ids), timeout=budget)

        return [int(row[0]) for row in await self._run("checking customers", read)]

    async def segment_page(self, segment: Segment, after: str, limit: int) -> list[Profile]:
        """Up to `limit` profiles of the segment's customers with ids after `after`, in id order."""
        now = self._clock()
        wanted = dict(segment.equals)

        async def read(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.fetch(
                SEGMENT_SQL, after, now, now - self._history, self._event_types, wanted, limit, timeout=budget
            )

        return [_profile(row) for row in await self._run("reading a segment", read)]

    async def mark_wrong_number(self, customer_id: str, number: str, when: datetime) -> bool:
        """Marks one of the customer's numbers as not reaching them; False when the customer has no such number.
        Marking again keeps the first time."""

        async def mark(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.execute(
                "UPDATE phones SET wrong_number_at = coalesce(wrong_number_at, $3), updated_at = now()"
                " WHERE customer_id = $1 AND number = $2",
                customer_id,
                number,
                when,
                timeout=budget,
            )

        status: str = await self._run("marking a wrong number", mark)
        return status != "UPDATE 0"

    async def customer_ids(self, after: str = "", limit: int = 10_000) -> list[str]:
        """A page of customer ids in order, those after `after`: how `nba rulesets diff` walks the store."""

        async def page(conn: asyncpg.Connection, budget: float) -> list[str]:
            rows = await conn.fetch(
                "SELECT customer_id FROM customers WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
                after,
                limit,
                timeout=budget,
            )
            return [row["customer_id"] for row in rows]

        ids: list[str] = await self._run("listing customers", page)
        return ids

    async def add_event(self, customer_id: str, event: Event, recorded_by: str = "") -> str:
        event_id = uuid.uuid4()

        async def insert(conn: asyncpg.Connection, budget: float) -> None:
            await conn.execute(
                "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at, recorded_by)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                event_id,
                customer_id,
                event.type,
                event.time,
                dict(event.attributes),
                event.expires_at,
                recorded_by or None,
                timeout=budget,
            )

        try:
            await self._run("storing an event", insert)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"customer {customer_id!r} not found") from exc
        return str(event_id)

    async def add_outcome(self, outcome: Outcome) -> bool:
        try:
            decision_id = uuid.UUID(outcome.decision_id)
        except ValueError as exc:
            raise InvalidArgument.of("decision_id", f"{outcome.decision_id!r} is not a decision id") from exc

        async def upsert(conn: asyncpg.Connection, budget: float) -> Any:
            return await conn.fetchval(
                ADD_OUTCOME_SQL,
                outcome.customer_id,
                decision_id,
                outcome.action_id,
                outcome.channel.value,
                outcome.time,
                outcome.outcome.value,
                outcome.note,
                outcome.outcome in CONTACTED_OUTCOMES,
                outcome.recorded_by or None,
                outcome.idempotency_key or None,
                None if outcome.direction is None else outcome.direction.value,
                timeout=budget,
            )

        try:
            written = await self._run("storing an outcome", upsert)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"customer {outcome.customer_id!r} not found") from exc
        return bool(written)

    # ------------------------------------------------------------------ DoNotContactRegistry

    async def _register(self, what: str, call: Callable[[asyncpg.Connection, float], Any]) -> Any:
        """A call on the register, in one transaction under the customer's lock where it writes."""
        try:
            return await self._run(what, call)
        except asyncpg.UndefinedTableError as exc:
            raise SchemaNotReadyError(
                "the database has no do_not_contact table (migration 0008); run `nba db migrate`"
            ) from exc

    async def add_listing(self, customer_id: str, entry: DoNotContact) -> Listing:
        """Refuses a repeat of an active listing (same channel and reason): see do_not_contact.already_listed."""

        async def insert(conn: asyncpg.Connection, budget: float) -> Listing:
            async with conn.transaction():
                await _lock_customer(conn, customer_id, budget)
                if await conn.fetchval(_CUSTOMER_EXISTS, customer_id, timeout=budget) is None:
                    raise unknown_customer(customer_id)
                existing = await _listings(conn, budget, customer_id)
                duplicate = duplicate_of(existing, entry, entry.added_at)
                if duplicate is not None:
                    raise already_listed(duplicate)
                ident = await conn.fetchval(
                    "INSERT INTO do_not_contact (customer_id, channel, reason, source, note, added_by, added_at,"
                    " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING listing_id",
                    customer_id,
                    None if entry.channel is None else entry.channel.value,
                    entry.reason.value,
                    entry.source,
                    entry.note,
                    entry.added_by,
                    entry.added_at,
                    entry.expires_at,
                    timeout=budget,
                )
            return Listing(int(ident), customer_id, entry)

        listing: Listing = await self._register("adding a do-not-contact listing", insert)
        return listing

    async def remove_listings(
        self, customer_id: str, selection: Selection, removed_by: str, note: str = ""
    ) -> list[Listing]:
        check_removal(removed_by, note)
        now = self._clock()
        by, why = removed_by.strip(), note.strip()

        async def lift(conn: asyncpg.Connection, budget: float) -> list[Listing]:
            async with conn.transaction():
                await _lock_customer(conn, customer_id, budget)
                if await conn.fetchval(_CUSTOMER_EXISTS, customer_id, timeout=budget) is None:
                    raise unknown_customer(customer_id)
                chosen = [
                    listing
                    for listing in await _listings(conn, budget, customer_id)
                    if listing.state(now) is ListingState.ACTIVE and selection.matches(listing)
                ]
                if not chosen:
                    raise nothing_listed(customer_id, selection)
                await conn.execute(
                    "UPDATE do_not_contact SET removed_at = $2, removed_by = $3, removal_note = $4"
                    " WHERE listing_id = ANY($1::bigint[])",
                    [listing.listing_id for listing in chosen],
                    now,
                    by,
                    why,
                    timeout=budget,
                )
            return [dataclasses.replace(x, removed_at=now, removed_by=by, removal_note=why) for x in chosen]

        lifted: list[Listing] = await self._register("removing a do-not-contact listing", lift)
        return lifted

    async def listings(self, customer_id: str | None = None, *, include_inactive: bool = False) -> list[Listing]:
        now = self._clock()
        if customer_id is None:
            found = [listing async for listing in self.export_listings()]
        else:
            found = await self._register(
                "reading do-not-contact listings", lambda conn, budget: _listings(conn, budget, customer_id)
            )
        return [listing for listing in found if include_inactive or listing.state(now) is ListingState.ACTIVE]

    async def export_listings(self) -> AsyncIterator[Listing]:
        after = 0
        while True:
            read = functools.partial(_listings, customer_id=None, after=after)
            page: list[Listing] = await self._register("exporting do-not-contact listings", read)
            for listing in page:
                yield listing
            if len(page) < _EXPORT_PAGE:
                return
            after = page[-1].listing_id

    async def ready(self) -> bool:
        """Reachable and migrated: a database restored without the schema must not look healthy."""
        try:
            version = await self._run(
                "health check", lambda conn, budget: conn.fetchval(_SCHEMA_VERSION, timeout=budget)
            )
        except (Unavailable, asyncpg.PostgresError):
            return False
        return version is not None and version >= self._schema_version

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except CONNECTION_ERRORS:
            self._pool.terminate()
