"""The PostgreSQL profile store, in process, against real databases.

A seeded population reads back as exactly the profiles the generator made (the shape every store returns);
the read stays one bounded statement however many events and outcomes a customer piles up; outcomes keep
one contact per offered action plus every audit row; migration 0002 turns old contact history into that
shape; and `open_postgres` wires the store for the application, refusing a schema that is behind.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.profile import Contact, Event, Outcome, OutcomeKind, Profile
from nba_service.errors import NotFound, SchemaNotReadyError, Unavailable
from nba_service.settings import Settings
from nba_service.stores.postgres import migrate as migrate_module
from nba_service.stores.postgres import open_postgres
from nba_service.stores.postgres.decision_log import PostgresRecordSink
from nba_service.stores.postgres.migrate import migrate, migrations
from nba_service.stores.postgres.profiles import PROFILE_SQL, PostgresProfileStore, create_pool
from nba_service.stores.postgres.seed import seed
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import RULESET_PATH
from tests.pg import FlakyPool, free_port

# A Wednesday afternoon in UTC, with microseconds: every stored time must survive to the microsecond.
NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)
COUNT = 200


def _ruleset() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


def _typed(attributes: Any) -> dict[str, tuple[type, Any]]:
    """Attributes with their types, so True never passes for 1, nor 5 for 5.0."""
    return {name: (type(value), value) for name, value in dict(attributes).items()}


@dataclass
class Seeded:
    ruleset: Ruleset
    profiles: dict[str, Profile]
    store: PostgresProfileStore
    pool: asyncpg.Pool
    dsn: str

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def count(self, query: str, *args: Any) -> int:
        return int((await self.sql(query, *args))[0][0])


@pytest.fixture
async def seeded(pg_dsn: str) -> AsyncIterator[Seeded]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await seed(conn, COUNT, seed=DEFAULT_SEED, now=NOW)
    finally:
        await conn.close()
    ruleset = _ruleset()
    pool = await create_pool(pg_dsn)
    store = PostgresProfileStore(
        pool, history=contact_history_window(ruleset), event_types=tuple(ruleset.events), clock=lambda: NOW
    )
    profiles = {p.customer_id: p for p in generate_profiles(COUNT, now=NOW, seed=DEFAULT_SEED)}
    try:
        yield Seeded(ruleset, profiles, store, pool, pg_dsn)
    finally:
        await store.close()


def _outcome(decision_id: str, kind: OutcomeKind, at: datetime, customer: str = "CUST-000001", **more: Any) -> Outcome:
    return Outcome(
        decision_id, customer, more.pop("action", "term-deposit-rates"), Channel.AGENT_DESKTOP, kind, at, **more
    )


# --------------------------------------------------------------------------------------------------
# Reading profiles


async def test_get_profile_folds_the_tables_into_the_live_profile(seeded: Seeded) -> None:
    """Every seeded customer reads back with the generator's attributes and exact types (consent_* and
    do_not_call included), the newest unexpired event of each declared type (times to the microsecond,
    attributes typed), and the contact history inside the longest frequency-cap window, oldest first."""
    window = contact_history_window(seeded.ruleset)
    dnc = consents = 0
    for customer, generated in seeded.profiles.items():
        profile = await seeded.store.get_profile(customer)
        assert profile.customer_id == customer
        assert _typed(profile.attributes) == _typed(generated.attributes), customer
        consents += sum(1 for name, value in profile.attributes.items() if name.startswith("consent_") and value)
        dnc += profile.attributes["do_not_call"] is True

        live = [e for e in generated.events if e.expires_at is None or e.expires_at > NOW]
        newest: dict[str, list[Event]] = {}
        for event in live:
            best = newest.get(event.type)
            if best is None or event.time > best[0].time:
                newest[event.type] = [event]
            elif event.time == best[0].time:
                best.append(event)
        assert sorted(e.type for e in profile.events) == sorted(newest), customer
        assert [e.time for e in profile.events] == sorted(e.time for e in profile.events), customer
        for event in profile.events:
            assert any(
                (event.time, _typed(event.attributes), event.expires_at)
                == (want.time, _typed(want.attributes), want.expires_at)
                for want in newest[event.type]
            ), (customer, event)

        expected_contacts = sorted(
            (c for c in generated.contacts if c.time > NOW - window), key=lambda c: (c.time, c.action_id)
        )
        assert sorted(profile.contacts, key=lambda c: (c.time, c.action_id)) == expected_contacts, customer
        assert [c.time for c in profile.contacts] == sorted(c.time for c in profile.contacts)
    assert 0 < dnc < COUNT
    assert consents > 0


async def test_events_written_by_another_system_are_seen_by_the_next_read(seeded: Seeded) -> None:
    """An event inserted straight into the events table (as another system writes it) is in the very next
    profile read, replacing an older one of its type; one that expired, or of a type the ruleset does not
    declare, is not."""
    customer = "CUST-000007"
    fresh = {"amount": 48250.75, "account_last4": "7781"}
    await seeded.sql(
        "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at) VALUES"
        " ($1, $2, 'large_deposit', $3, $4, NULL),"
        " ($5, $2, 'large_deposit', $6, '{}'::jsonb, $7),"
        " ($8, $2, 'not_in_the_ruleset', $6, '{}'::jsonb, NULL)",
        uuid.uuid4(),
        customer,
        NOW - timedelta(minutes=5),
        fresh,
        uuid.uuid4(),
        NOW - timedelta(minutes=1),
        NOW - timedelta(seconds=1),
        uuid.uuid4(),
    )
    events = {e.type: e for e in (await seeded.store.get_profile(customer)).events}
    assert "not_in_the_ruleset" not in events
    assert events["large_deposit"].time == NOW - timedelta(minutes=5)
    assert _typed(events["large_deposit"].attributes) == _typed(fresh)


async def test_a_live_trigger_is_found_among_thousands_of_other_events(seeded: Seeded) -> None:
    """A customer with a live large_deposit and, after it, 6,000 events of an undeclared type and 2,000 of
    another declared type: the read still has the large deposit, the newest of the other declared type and
    nothing undeclared, in one statement that looks events up by (customer, type) through the index
    instead of reading the customer's event history."""
    customer = "CUST-000011"
    deposit = Event("large_deposit", NOW - timedelta(days=1), {"amount": 30000.0}, NOW + timedelta(days=2))
    rows = [
        (uuid.uuid4(), customer, deposit.type, deposit.time, dict(deposit.attributes), deposit.expires_at),
        *(
            (uuid.uuid4(), customer, "page_view", NOW - timedelta(hours=20, seconds=n), {"n": n}, None)
            for n in range(6000)
        ),
        *(
            (uuid.uuid4(), customer, "app_login_failures", NOW - timedelta(hours=10, seconds=n), {"failures": n}, None)
            for n in range(2000)
        ),
    ]
    async with seeded.pool.acquire() as conn:
        await conn.execute("DELETE FROM events WHERE customer_id = $1", customer)
        await conn.executemany(
            "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )
        await conn.execute("ANALYZE events")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + PROFILE_SQL, customer, NOW, NOW - timedelta(days=90), sorted(seeded.ruleset.events)
            )
        )
    profile = await seeded.store.get_profile(customer)
    assert {e.type: e for e in profile.events} == {
        "large_deposit": deposit,
        "app_login_failures": Event("app_login_failures", NOW - timedelta(hours=10), {"failures": 0}),
    }
    assert "events_customer_type_time" in plan, plan


async def test_unknown_customers_are_not_found_and_nothing_is_written(seeded: Seeded) -> None:
    """A customer the database does not hold: reading the profile, storing an event and storing an outcome
    all raise NotFound, and no row is written anywhere for it."""
    ghost = "CUST-999999"
    with pytest.raises(NotFound, match="CUST-999999"):
        await seeded.store.get_profile(ghost)
    with pytest.raises(NotFound, match="CUST-999999"):
        await seeded.store.add_event(ghost, Event("large_deposit", NOW, {"amount": 1.0}))
    with pytest.raises(NotFound, match="CUST-999999"):
        await seeded.store.add_outcome(_outcome(str(uuid.uuid4()), OutcomeKind.ACCEPTED, NOW, customer=ghost))
    for table in ("events", "contacts", "outcomes", "customers"):
        assert await seeded.count(f"SELECT count(*) FROM {table} WHERE customer_id = $1", ghost) == 0


# --------------------------------------------------------------------------------------------------
# Outcomes


async def _median_read_ms(store: PostgresProfileStore, customer: str, reads: int = 150) -> float:
    for _ in range(20):
        await store.get_profile(customer)
    took = []
    for _ in range(reads):
        started = time.perf_counter()
        await store.get_profile(customer)
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


async def test_outcomes_for_one_offer_keep_one_contact_and_every_audit_row(seeded: Seeded) -> None:
    """The measured defect: 2,000 replays of an outcome made 2,000 contact rows, and that customer's Decide
    median went from 1.3 to 23 ms. Now 2,000 outcomes for one offered action (accepted, then no-answers) leave
    one contact row holding the latest outcome, still reached (an offer the customer heard stays counted),
    and 2,000 rows in outcomes; the profile shows one contact for the offer and reads no slower."""
    customer = "CUST-000003"
    before = await _median_read_ms(seeded.store, customer)
    contacts_before = len((await seeded.store.get_profile(customer)).contacts)
    decision = str(uuid.uuid4())
    first = _outcome(decision, OutcomeKind.ACCEPTED, NOW - timedelta(hours=2), customer, note="keen")
    await seeded.store.add_outcome(first)
    for n in range(1999):
        at = NOW - timedelta(hours=1, seconds=-n)
        await seeded.store.add_outcome(_outcome(decision, OutcomeKind.NO_ANSWER, at, customer))
    last = NOW - timedelta(hours=1, seconds=-1998)

    assert await seeded.count("SELECT count(*) FROM contacts WHERE decision_id = $1", uuid.UUID(decision)) == 1
    assert await seeded.count("SELECT count(*) FROM outcomes WHERE decision_id = $1", uuid.UUID(decision)) == 2000
    assert await seeded.count("SELECT count(*) FROM outcomes WHERE outcome = 'accepted' AND note = 'keen'") == 1
    profile = await seeded.store.get_profile(customer)
    assert len(profile.contacts) == contacts_before + 1
    (offer,) = [c for c in profile.contacts if c.decision_id == decision]
    assert offer == Contact(
        "term-deposit-rates", Channel.AGENT_DESKTOP, last, OutcomeKind.NO_ANSWER, decision, reached=True
    )
    assert offer.counts

    after = await _median_read_ms(seeded.store, customer)
    assert after < max(3 * before, before + 2.0), f"profile read median {before:.2f} ms -> {after:.2f} ms"


async def test_the_latest_outcome_by_time_wins_and_reached_never_goes_back(seeded: Seeded) -> None:
    """Outcomes reported out of order: the contact keeps the one with the latest time (a later report wins a
    tie); an offer only ever unanswered is not reached and does not count toward caps, and one reached once
    stays reached whatever comes after."""
    customer = "CUST-000005"
    converted, unanswered = str(uuid.uuid4()), str(uuid.uuid4())
    await seeded.store.add_outcome(_outcome(converted, OutcomeKind.CONVERTED, NOW - timedelta(minutes=10), customer))
    await seeded.store.add_outcome(_outcome(converted, OutcomeKind.DECLINED, NOW - timedelta(minutes=20), customer))
    await seeded.store.add_outcome(_outcome(unanswered, OutcomeKind.NO_ANSWER, NOW - timedelta(minutes=5), customer))
    await seeded.store.add_outcome(_outcome(unanswered, OutcomeKind.NOT_OFFERED, NOW - timedelta(minutes=5), customer))
    contacts = {c.decision_id: c for c in (await seeded.store.get_profile(customer)).contacts if c.decision_id}
    assert (contacts[converted].outcome, contacts[converted].time, contacts[converted].reached) == (
        OutcomeKind.CONVERTED,
        NOW - timedelta(minutes=10),
        True,
    )
    assert (contacts[unanswered].outcome, contacts[unanswered].reached, contacts[unanswered].counts) == (
        OutcomeKind.NOT_OFFERED,
        False,
        False,
    )
    await seeded.store.add_outcome(_outcome(converted, OutcomeKind.NO_ANSWER, NOW - timedelta(minutes=1), customer))
    contacts = {c.decision_id: c for c in (await seeded.store.get_profile(customer)).contacts if c.decision_id}
    assert (contacts[converted].outcome, contacts[converted].reached) == (OutcomeKind.NO_ANSWER, True)
    assert await seeded.count("SELECT count(*) FROM outcomes WHERE customer_id = $1", customer) == 5


async def test_a_driver_error_on_release_is_unavailable_not_internal(pg_dsn: str) -> None:
    """A connection the driver gives up on while PostgreSQL shuts down is a database failure like any other:
    get_profile raises Unavailable (so Decide answers UNAVAILABLE, which clients retry), and ready() reports
    False (so the health monitor keeps running and turns NOT_SERVING)."""
    pool = await create_pool(pg_dsn)
    try:
        store = PostgresProfileStore(
            FlakyPool(pool, failures=2),
            history=timedelta(days=1),
            event_types=(),
            clock=lambda: NOW,
        )
        assert await store.ready() is False
        with pytest.raises(Unavailable, match="database"):
            await store.get_profile("CUST-000001")
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------------------
# Migration 0002 on data written under 0001


async def _migrate_to(conn: asyncpg.Connection, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: [m for m in migrations() if m.version <= version])
        await migrate(conn)


async def test_migration_0002_merges_contacts_per_offer_and_keeps_every_outcome(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contacts written under 0001 (one row per outcome) become one row per offered action holding the latest
    outcome, reached when any merged row was a contacted outcome; rows without a decision are left alone;
    every old outcome is in `outcomes`; old decisions count as sent; and the unique index now refuses a
    second row for an offer."""
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        await _migrate_to(conn, 1, monkeypatch)
        decision, other = uuid.uuid4(), uuid.uuid4()
        await conn.execute("INSERT INTO customers (customer_id) VALUES ('CUST-000001')")
        await conn.execute(
            "INSERT INTO decisions (decision_id, decided_at, customer_id, channel, ruleset_name, ruleset_version,"
            " ruleset_hash, engine, rules_fired, dropped, actions, latency_ms)"
            " VALUES ($1, $2, 'CUST-000001', 'agent_desktop', 'r', '1', 'h', 'durable_rules', '[]', '[]', '[]', 1.0)",
            decision,
            NOW,
        )
        old = [
            (decision, "term-deposit-rates", NOW - timedelta(hours=3), "accepted", "keen"),
            (decision, "term-deposit-rates", NOW - timedelta(hours=1), "no_answer", "last"),
            (decision, "term-deposit-rates", NOW - timedelta(hours=2), "declined", ""),
            (other, "loyalty-thanks", NOW - timedelta(hours=3), "no_answer", ""),
            (other, "loyalty-thanks", NOW - timedelta(hours=2), "not_offered", ""),
            (None, "loyalty-thanks", NOW - timedelta(days=3), "accepted", ""),
            (None, "loyalty-thanks", NOW - timedelta(days=3), "accepted", ""),
        ]
        await conn.executemany(
            "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, note)"
            " VALUES ('CUST-000001', $1, $2, 'agent_desktop', $3, $4, $5)",
            old,
        )

        assert [m.version for m in await migrate(conn)] == [m.version for m in migrations() if m.version >= 2]

        rows = await conn.fetch(
            "SELECT decision_id, action_id, time, outcome, note, reached FROM contacts ORDER BY time, action_id"
        )
        assert [tuple(r) for r in rows] == [
            (None, "loyalty-thanks", NOW - timedelta(days=3), "accepted", "", None),
            (None, "loyalty-thanks", NOW - timedelta(days=3), "accepted", "", None),
            (other, "loyalty-thanks", NOW - timedelta(hours=2), "not_offered", "", False),
            (decision, "term-deposit-rates", NOW - timedelta(hours=1), "no_answer", "last", True),
        ]
        outcomes = await conn.fetch(
            "SELECT decision_id, action_id, time, outcome, note FROM outcomes ORDER BY outcome_id"
        )
        assert [tuple(r) for r in outcomes] == [row for row in old if row[0] is not None]
        assert await conn.fetchval("SELECT delivery FROM decisions") == "sent"
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome)"
                " VALUES ('CUST-000001', $1, 'term-deposit-rates', 'agent_desktop', $2, 'accepted')",
                decision,
                NOW,
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE decisions SET delivery = 'lost'")
    finally:
        await conn.close()

    pool = await create_pool(pg_empty_dsn)
    try:
        store = PostgresProfileStore(pool, history=timedelta(days=30), event_types=(), clock=lambda: NOW)
        counted = {(c.decision_id, c.action_id): c.counts for c in (await store.get_profile("CUST-000001")).contacts}
        assert counted == {
            ("", "loyalty-thanks"): True,
            (str(other), "loyalty-thanks"): False,
            (str(decision), "term-deposit-rates"): True,
        }
    finally:
        await pool.close()


async def test_migration_0009_keeps_old_rows_unknown_and_takes_not_now(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions, outcomes and contacts written before directions read back with no direction (None: the
    channel's usual one); afterwards `not_now` is a stored outcome kind, and a direction or an outcome kind
    outside the lists is refused by each table."""
    conn = await asyncpg.connect(pg_empty_dsn)
    decision = uuid.uuid4()
    try:
        await _migrate_to(conn, 7, monkeypatch)
        await conn.execute("INSERT INTO customers (customer_id) VALUES ('CUST-000001')")
        await conn.execute(
            "INSERT INTO decisions (decision_id, decided_at, customer_id, channel, ruleset_name, ruleset_version,"
            " ruleset_hash, engine, rules_fired, dropped, actions, latency_ms)"
            " VALUES ($1, $2, 'CUST-000001', 'outbound_dialer', 'r', '1', 'h', 'durable_rules', '[]', '[]',"
            ' \'[{"action_id": "loyalty-thanks"}]\', 1.0)',
            decision,
            NOW,
        )
        await conn.execute(
            "INSERT INTO outcomes (decision_id, customer_id, action_id, channel, outcome, time)"
            " VALUES ($1, 'CUST-000001', 'loyalty-thanks', 'outbound_dialer', 'accepted', $2)",
            decision,
            NOW,
        )
        await conn.execute(
            "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached)"
            " VALUES ('CUST-000001', $1, 'loyalty-thanks', 'outbound_dialer', $2, 'accepted', true)",
            decision,
            NOW,
        )
        assert 9 in [m.version for m in await migrate(conn)]
        for table in ("decisions", "outcomes", "contacts"):
            assert await conn.fetchval(f"SELECT array_agg(direction) FROM {table}") == [None]
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE {table} SET direction = 'sideways'")
        for table in ("outcomes", "contacts"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE {table} SET outcome = 'maybe'")
    finally:
        await conn.close()

    pool = await create_pool(pg_empty_dsn)
    try:
        summary = await PostgresRecordSink(pool).find(str(decision))
        assert summary is not None
        assert summary.direction is None
        store = PostgresProfileStore(pool, history=timedelta(days=30), event_types=(), clock=lambda: NOW)
        [old] = (await store.get_profile("CUST-000001")).contacts
        assert (old.direction, old.contact_direction) == (None, Direction.OUTBOUND)
        later = Outcome(
            str(decision),
            "CUST-000001",
            "loyalty-thanks",
            Channel.OUTBOUND_DIALER,
            OutcomeKind.NOT_NOW,
            NOW + timedelta(minutes=1),
            direction=Direction.OUTBOUND,
        )
        assert await store.add_outcome(later)
        [now_contact] = (await store.get_profile("CUST-000001")).contacts
        # The offer's contact row takes the latest outcome; a row that had no direction learns it.
        assert (now_contact.outcome, now_contact.direction, now_contact.counts) == (
            OutcomeKind.NOT_NOW,
            Direction.OUTBOUND,
            True,
        )
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------------------
# The factory the application calls


def _settings(dsn: str, tmp_path: Path, **more: Any) -> Settings:
    return Settings(store="postgres", dsn=dsn, rulesets=RULESET_PATH, spill_dir=tmp_path, **more)


async def test_open_postgres_wires_the_store_the_sink_and_the_export(seeded: Seeded, tmp_path: Path) -> None:
    """On a migrated, seeded database the factory's store is ready and reads profiles of the ruleset's event
    types, its sink finds nothing for an unknown decision, and its export is empty."""
    store, sink, export = await open_postgres(_settings(seeded.dsn, tmp_path, db_timeout=0.5), seeded.ruleset)
    try:
        assert await store.ready()
        profile = await store.get_profile("CUST-000001")
        assert {e.type for e in profile.events} <= set(seeded.ruleset.events)
        assert await sink.find(str(uuid.uuid4())) is None
        assert [item async for item in export.export(None, None, None)] == []
    finally:
        await store.close()


async def test_open_postgres_refuses_a_schema_that_is_behind(
    pg_empty_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reachable database without migration 0002 is refused at start, naming it and the fix."""
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        await _migrate_to(conn, 1, monkeypatch)
    finally:
        await conn.close()
    latest = migrations()[-1]
    with pytest.raises(SchemaNotReadyError, match=rf"{latest.version:04d}_{latest.name}.*nba db migrate"):
        await open_postgres(_settings(pg_empty_dsn, tmp_path), _ruleset())


async def test_open_postgres_starts_while_the_database_is_unreachable(tmp_path: Path) -> None:
    """Nothing listens at the DSN: the factory still returns (the service starts NOT_SERVING), the store is not
    ready, and a profile read fails with Unavailable within the database time limit."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nba"
    store, _, _ = await open_postgres(_settings(dsn, tmp_path, db_timeout=0.5), _ruleset())
    try:
        assert await store.ready() is False
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.get_profile("CUST-000001")
        assert time.monotonic() - started < 3.0
    finally:
        await asyncio.wait_for(store.close(), timeout=10)
