"""Seeding the PostgreSQL store with the synthetic population: exact rows, refusal, force, progress."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from nba_service.domain.model import Channel
from nba_service.domain.profile import AttributeValue, Contact, Event, OutcomeKind, Profile
from nba_service.errors import InvalidArgument, NbaError
from nba_service.stores.postgres.seed import (
    SchemaNotMigrated,
    SeedRefused,
    SeedReport,
    event_id,
    profile_rows,
    seed,
)
from nba_service.synthetic import generate_profile, generate_profiles

# Seconds and microseconds on purpose: every stored time must survive to the microsecond.
NOW = datetime(2031, 5, 17, 8, 42, 13, 250_000, tzinfo=UTC)
COUNT = 500
# A seed whose first customers include mortgage rates expiring in 0 days (an event that expires the
# instant it happens), so the one event the seed leaves out is exercised against the database.
SEED = 2


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def _dead(event: Event) -> bool:
    return event.expires_at is not None and event.expires_at <= event.time


def _expected_report(profiles: list[Profile]) -> dict[str, int]:
    return {
        "customers": len(profiles),
        "consents": sum(1 for p in profiles for name in p.attributes if name.startswith("consent_")),
        "do_not_call": sum(1 for p in profiles if p.attributes["do_not_call"] is True),
        "events": sum(1 for p in profiles for e in p.events if not _dead(e)),
        "contacts": sum(len(p.contacts) for p in profiles),
        "skipped_events": sum(1 for p in profiles for e in p.events if _dead(e)),
    }


async def _table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table}")
        for table in ("customers", "consents", "do_not_call", "events", "contacts", "decisions")
    }


async def _read_profile(conn: asyncpg.Connection, customer: str, *, seed_value: int) -> Profile:
    """The stored rows folded back into a Profile, the way the profile store does, without its filters."""
    raw = await conn.fetchval("SELECT attributes FROM customers WHERE customer_id = $1", customer)
    attributes: dict[str, AttributeValue] = json.loads(raw)
    for row in await conn.fetch("SELECT purpose, granted FROM consents WHERE customer_id = $1", customer):
        attributes[f"consent_{row['purpose']}"] = row["granted"]
    source = await conn.fetchval("SELECT source FROM do_not_call WHERE customer_id = $1", customer)
    assert source in (None, "synthetic")
    attributes["do_not_call"] = source is not None
    rows = await conn.fetch(
        "SELECT event_id, type, time, attributes, expires_at FROM events WHERE customer_id = $1", customer
    )
    # Event ids are derived from the position in the generated profile, which also orders ties in time.
    position = {event_id(seed_value, customer, index): index for index in range(len(rows) + 8)}
    rows = sorted(rows, key=lambda row: position[row["event_id"]])
    events = tuple(Event(row["type"], row["time"], json.loads(row["attributes"]), row["expires_at"]) for row in rows)
    contact_rows = await conn.fetch(
        "SELECT decision_id, action_id, channel, time, outcome, note FROM contacts WHERE customer_id = $1"
        " ORDER BY contact_id",
        customer,
    )
    assert all(row["decision_id"] is None and row["note"] == "" for row in contact_rows)
    contacts = tuple(
        Contact(row["action_id"], Channel(row["channel"]), row["time"], OutcomeKind(row["outcome"]), "", row["note"])
        for row in contact_rows
    )
    return Profile(customer, attributes, events, contacts)


async def _insert_decision(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO decisions (decision_id, decided_at, customer_id, channel, ruleset_name, ruleset_version,
                               ruleset_hash, engine, rules_fired, dropped, actions, latency_ms)
        VALUES (gen_random_uuid(), now(), 'CUST-000001', 'agent_desktop', 'r', '1', 'h', 'durable_rules',
                '[]', '[]', '[]', 1.0)
        """
    )


def _typed(attributes: object) -> dict[str, tuple[type, object]]:
    """Attributes with their types, so True never passes for 1, nor 5 for 5.0."""
    assert isinstance(attributes, dict)
    return {name: (type(value), value) for name, value in attributes.items()}


async def test_seeds_exactly_the_rows_the_generator_implies(conn: asyncpg.Connection) -> None:
    profiles = list(generate_profiles(COUNT, seed=SEED, now=NOW))
    expected = _expected_report(profiles)

    report = await seed(conn, COUNT, seed=SEED, now=NOW, batch_size=128)

    assert isinstance(report, SeedReport)
    assert {name: getattr(report, name) for name in expected} == expected
    assert report.replaced == 0
    assert report.seconds > 0
    counts = await _table_counts(conn)
    assert counts == {name: expected[name] for name in counts if name != "decisions"} | {"decisions": 0}
    assert await conn.fetchval("SELECT count(DISTINCT event_id) FROM events") == expected["events"]


async def test_rows_read_back_into_the_generated_profiles(conn: asyncpg.Connection) -> None:
    await seed(conn, COUNT, seed=SEED, now=NOW)

    for profile in generate_profiles(COUNT, seed=SEED, now=NOW):
        stored = await _read_profile(conn, profile.customer_id, seed_value=SEED)
        assert _typed(stored.attributes) == _typed(dict(profile.attributes)), profile.customer_id
        live = tuple(event for event in profile.events if not _dead(event))
        assert [(e.type, e.time, _typed(e.attributes), e.expires_at) for e in stored.events] == [
            (e.type, e.time, _typed(dict(e.attributes)), e.expires_at) for e in live
        ], profile.customer_id
        assert stored.contacts == profile.contacts, profile.customer_id


async def test_consents_and_do_not_call_are_rows_not_attributes(conn: asyncpg.Connection) -> None:
    await seed(conn, COUNT, seed=SEED, now=NOW)

    keys = await conn.fetch("SELECT DISTINCT jsonb_object_keys(attributes) AS key FROM customers")
    names = {row["key"] for row in keys}
    assert "do_not_call" not in names
    assert not any(name.startswith("consent_") for name in names)
    assert {row["purpose"] for row in await conn.fetch("SELECT DISTINCT purpose FROM consents")} == {
        "marketing_calls",
        "agent_offers",
    }
    # None stays in the jsonb as JSON null (customers without a satisfaction score).
    nulls = await conn.fetchval("SELECT count(*) FROM customers WHERE attributes -> 'satisfaction_score' = 'null'")
    assert nulls == sum(
        1 for p in generate_profiles(COUNT, seed=SEED, now=NOW) if p.attributes["satisfaction_score"] is None
    )
    assert nulls > 0


async def test_a_second_seed_without_force_is_refused_naming_what_it_found(conn: asyncpg.Connection) -> None:
    report = await seed(conn, COUNT, seed=SEED, now=NOW)
    before = await _table_counts(conn)

    with pytest.raises(SeedRefused) as caught:
        await seed(conn, COUNT, seed=SEED, now=NOW)

    assert isinstance(caught.value, NbaError)
    message = str(caught.value)
    assert f"{report.customers} customers" in message
    assert f"{report.events} events" in message
    assert f"{report.contacts} contacts" in message
    assert "decision" not in message  # the decision log is empty, so it is not mentioned
    assert "--force" in message
    assert await _table_counts(conn) == before


async def test_decisions_alone_are_enough_to_refuse(conn: asyncpg.Connection) -> None:
    await _insert_decision(conn)
    with pytest.raises(SeedRefused, match=r"already holds 1 decision;"):
        await seed(conn, 10, now=NOW)
    assert (await _table_counts(conn))["customers"] == 0


async def test_force_replaces_the_synthetic_ids_and_is_idempotent(conn: asyncpg.Connection) -> None:
    async def snapshot() -> dict[str, list[tuple[object, ...]]]:
        queries = {
            "customers": "SELECT customer_id, attributes FROM customers ORDER BY 1",
            "consents": "SELECT customer_id, purpose, granted FROM consents ORDER BY 1, 2",
            "do_not_call": "SELECT customer_id, source FROM do_not_call ORDER BY 1",
            "events": "SELECT event_id, customer_id, type, time, attributes, expires_at FROM events ORDER BY 1",
            "contacts": "SELECT customer_id, decision_id, action_id, channel, time, outcome, note FROM contacts"
            " ORDER BY contact_id",
            "decisions": "SELECT decision_id FROM decisions ORDER BY 1",
        }
        return {table: [tuple(row) for row in await conn.fetch(sql)] for table, sql in queries.items()}

    # Someone else's customer and a decision: force must leave both alone.
    await conn.execute("INSERT INTO customers (customer_id, attributes) VALUES ('REAL-1', '{\"segment\": \"mass\"}')")
    await conn.execute(
        "INSERT INTO events (event_id, customer_id, type, time) VALUES (gen_random_uuid(), 'REAL-1', 'x', now())"
    )
    await _insert_decision(conn)
    assert (await seed(conn, 40, seed=SEED, now=NOW, force=True)).replaced == 0
    first = await snapshot()
    # An outcome the service recorded for a synthetic customer goes with the customer it belongs to.
    await conn.execute(
        "INSERT INTO contacts (customer_id, action_id, channel, time, outcome)"
        " VALUES ('CUST-000001', 'welcome-call', 'agent_desktop', now(), 'accepted')"
    )

    again = await seed(conn, 40, seed=SEED, now=NOW, force=True, batch_size=7)
    assert (again.customers, again.replaced) == (40, 40)
    second = await snapshot()
    assert second == first

    third = await seed(conn, 40, seed=SEED, now=NOW, force=True)
    assert third.replaced == 40
    assert await snapshot() == second
    assert await conn.fetchval("SELECT count(*) FROM customers WHERE customer_id = 'REAL-1'") == 1
    assert await conn.fetchval("SELECT count(*) FROM events WHERE customer_id = 'REAL-1'") == 1

    # Force onto a larger population adds the new ids and replaces the old ones.
    wider = await seed(conn, 60, seed=SEED, now=NOW, force=True)
    assert (wider.customers, wider.replaced) == (60, 40)
    counts = await _table_counts(conn)
    assert (counts["customers"], counts["decisions"]) == (61, 1)


async def test_unmigrated_schema_is_a_clear_error(pg_empty_dsn: str) -> None:
    bare = await asyncpg.connect(pg_empty_dsn)
    try:
        with pytest.raises(SchemaNotMigrated, match=r"run `nba db migrate` first"):
            await seed(bare, 10, now=NOW)
        assert await bare.fetchval("SELECT to_regclass('customers')") is None
    finally:
        await bare.close()


async def test_progress_reports_each_batch_and_adds_up_to_count(conn: asyncpg.Connection) -> None:
    calls: list[int] = []
    await seed(conn, COUNT, seed=SEED, now=NOW, batch_size=64, progress=calls.append)
    assert calls == [64] * 7 + [52]
    assert sum(calls) == COUNT


async def test_a_failure_part_way_leaves_nothing_behind(conn: asyncpg.Connection) -> None:
    calls: list[int] = []

    def interrupt(loaded: int) -> None:
        calls.append(loaded)
        if len(calls) == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        await seed(conn, COUNT, seed=SEED, now=NOW, batch_size=100, progress=interrupt)
    assert calls == [100, 100]
    assert set((await _table_counts(conn)).values()) == {0}
    # Nothing was left behind, so a plain second run is not refused.
    assert (await seed(conn, 20, seed=SEED, now=NOW)).customers == 20


async def test_batching_does_not_change_the_rows(conn: asyncpg.Connection) -> None:
    report = await seed(conn, 30, seed=SEED, now=NOW, batch_size=1)
    rows = profile_rows(list(generate_profiles(30, seed=SEED, now=NOW)), seed=SEED)
    assert (report.customers, report.events, report.contacts) == (30, len(rows.events), len(rows.contacts))
    stored = await conn.fetch("SELECT event_id FROM events")
    assert {row["event_id"] for row in stored} == {row[0] for row in rows.events}


async def test_zero_customers_writes_nothing(conn: asyncpg.Connection) -> None:
    calls: list[int] = []
    report = await seed(conn, 0, now=NOW, progress=calls.append)
    assert (report.customers, report.events, calls) == (0, 0, [])
    assert set((await _table_counts(conn)).values()) == {0}


@pytest.mark.parametrize(
    ("count", "now", "batch_size", "field"),
    [
        (-1, NOW, 10, "count"),
        (1_000_000, NOW, 10, "count"),
        (10, NOW.replace(tzinfo=None), 10, "now"),
        (10, NOW, 0, "batch_size"),
    ],
)
async def test_bad_arguments_are_refused(
    conn: asyncpg.Connection, count: int, now: datetime, batch_size: int, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await seed(conn, count, now=now, batch_size=batch_size)
    assert caught.value.problems[0].field == field


def test_an_event_expiring_the_moment_it_happens_is_left_out() -> None:
    """The table refuses expires_at <= time; such an event (from another source) is skipped and counted."""
    generated = generate_profile(156, seed=SEED, now=NOW)
    first = generated.events[0]
    zero_day = Event(first.type, first.time, first.attributes, first.time)
    profile = Profile(
        generated.customer_id, generated.attributes, (zero_day, *generated.events[1:]), generated.contacts
    )
    dead = [index for index, event in enumerate(profile.events) if _dead(event)]
    assert dead == [0]
    rows = profile_rows([profile], seed=SEED)
    assert rows.skipped_events == len(dead)
    assert len(rows.events) == len(profile.events) - len(dead)
    assert {row[0] for row in rows.events} == {
        event_id(SEED, profile.customer_id, index) for index in range(len(profile.events)) if index not in dead
    }


def test_non_boolean_consent_is_refused() -> None:
    profile = Profile("CUST-000001", {"consent_marketing_calls": None, "do_not_call": False})
    with pytest.raises(ValueError, match="consent_marketing_calls must be a boolean"):
        profile_rows([profile])
