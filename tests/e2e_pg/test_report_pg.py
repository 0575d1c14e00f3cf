"""The report's aggregation in PostgreSQL counts exactly what the reference definitions count.

A random history (tests/measurement_data.py) goes in through the store's own write paths: decision records through
the decision log (whose trigger fills `exposures`), events and outcomes through the profile store. The SQL of
stores/postgres/measurement.py must then give the same cells and cycle times as domain.measurement does in memory,
over the whole window and a narrower one, with records arriving out of order of time, with deliveries corrected
after the record was stored, and from two writers at once. Migrations 0011 and 0012 must also derive, from records
stored before them, what the triggers give new ones.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.measurement import exposures_of, trigger_lifetimes
from nba_service.domain.model import Ruleset
from nba_service.stores.postgres import migrate as migrate_module
from nba_service.stores.postgres.decision_log import PostgresRecordSink
from nba_service.stores.postgres.measurement import read_measurements
from nba_service.stores.postgres.migrate import migrate, migrations
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from nba_service.stores.postgres.seed import seed
from tests.e2e._support import RULESET_PATH
from tests.measurement_data import SINCE, UNTIL, History, make_history

CUSTOMERS = 40
WRITERS = 4


async def _seeded(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await seed(conn, CUSTOMERS, now=SINCE - timedelta(days=30))
    finally:
        await conn.close()


async def _assert_measures_as_defined(pool: asyncpg.Pool, history: History) -> None:
    lifetimes = trigger_lifetimes(history.ruleset)
    for query in (history.query(), history.query(SINCE + timedelta(days=20), UNTIL - timedelta(days=20))):
        expected = history.expected(query)
        async with pool.acquire() as conn:
            found = await read_measurements(conn, query, history.ruleset.events, lifetimes)
        assert found.exposures == expected.exposures > 50
        assert found.cells == expected.cells
        assert [c.event_type for c in found.cycles] == [c.event_type for c in expected.cycles]
        for got, want in zip(found.cycles, expected.cycles, strict=True):
            assert (got.triggers, got.offered, got.expired, got.open) == (
                want.triggers,
                want.offered,
                want.expired,
                want.open,
            )
            assert got.median_s == pytest.approx(want.median_s)
            assert got.p90_s == pytest.approx(want.p90_s)


def _profiles(pool: asyncpg.Pool, ruleset: Ruleset) -> PostgresProfileStore:
    return PostgresProfileStore(pool, history=contact_history_window(ruleset), event_types=tuple(ruleset.events))


@pytest.mark.parametrize(("history_seed", "late_deliveries"), [(1, False), (2, True)])
async def test_postgres_counts_what_the_definitions_count(
    pg_dsn: str, history_seed: int, late_deliveries: bool
) -> None:
    await _seeded(pg_dsn)
    ruleset = load_ruleset_file(RULESET_PATH)
    history = make_history(ruleset, [f"CUST-{i:06d}" for i in range(1, CUSTOMERS + 1)], history_seed)
    pool = await create_pool(pg_dsn)
    try:
        await history.load(PostgresRecordSink(pool), _profiles(pool, ruleset), late_deliveries=late_deliveries)
        await _assert_measures_as_defined(pool, history)
    finally:
        await pool.close()


async def test_writers_storing_one_customers_decisions_at_once_keep_the_units_exact(pg_dsn: str) -> None:
    """Several workers' writers storing decisions of the same customers at the same moment (the dialer and the desk
    deciding for one customer) leave the units as defined."""
    await _seeded(pg_dsn)
    ruleset = load_ruleset_file(RULESET_PATH)
    history = make_history(ruleset, ["CUST-000001", "CUST-000002"], 9, decisions=400)
    pools = [await create_pool(pg_dsn) for _ in range(WRITERS)]
    try:
        sinks = [PostgresRecordSink(pool) for pool in pools]

        async def write(index: int) -> None:
            for record in history.records[index::WRITERS]:
                await sinks[index].write([record], [])

        await asyncio.gather(*(write(i) for i in range(WRITERS)))
        profiles = _profiles(pools[0], ruleset)
        for customer, event in history.events:
            await profiles.add_event(customer, event)
        for outcome in history.outcomes:
            await profiles.add_outcome(outcome)
        await _assert_measures_as_defined(pools[0], history)
    finally:
        for pool in pools:
            await pool.close()


async def test_migration_0012_marks_and_counts_the_exposures_stored_before_it(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exposures and outcomes written under 0011 (out of order, some deliveries corrected later) get their delivery
    and their offers' outcomes from the migration, and the report then counts them as defined."""
    ruleset = load_ruleset_file(RULESET_PATH)
    history = make_history(ruleset, [f"CUST-{i:06d}" for i in range(1, CUSTOMERS + 1)], 6)
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: [m for m in migrations() if m.version <= 11])
        conn = await asyncpg.connect(pg_empty_dsn)
        try:
            await migrate(conn)
            await seed(conn, CUSTOMERS, now=SINCE - timedelta(days=30))
        finally:
            await conn.close()
        pool = await create_pool(pg_empty_dsn)
        try:
            await history.load(PostgresRecordSink(pool), _profiles(pool, ruleset), late_deliveries=True)
        finally:
            await pool.close()
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert [m.version for m in await migrate(conn)] == [m.version for m in migrations() if m.version >= 12]
    finally:
        await conn.close()
    pool = await create_pool(pg_empty_dsn)
    try:
        await _assert_measures_as_defined(pool, history)
    finally:
        await pool.close()


async def test_migration_0011_derives_the_exposures_of_records_stored_before_it(
    pg_empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written under 0010 get, from the migration, the exposures the trigger gives new records (without a
    journey stage, which was not recorded then)."""
    ruleset = load_ruleset_file(RULESET_PATH)
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(migrate_module, "migrations", lambda: [m for m in migrations() if m.version <= 10])
            await migrate(conn)
    finally:
        await conn.close()
    history = make_history(ruleset, [f"CUST-{i:06d}" for i in range(1, CUSTOMERS + 1)], 5, decisions=120)
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        for record in history.records:
            data = record.to_json()
            await conn.execute(
                "INSERT INTO decisions (decision_id, decided_at, customer_id, channel, ruleset_name,"
                " ruleset_version, ruleset_hash, engine, rules_fired, dropped, actions, latency_ms, delivery,"
                " direction) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, '[]', $9::jsonb, $10::jsonb, 1, $11,"
                " $12)",
                record.decision_id,
                record.decided_at,
                record.customer_id,
                record.channel.value,
                record.ruleset.name,
                record.ruleset.version,
                record.ruleset.hash,
                record.engine,
                json.dumps(data["dropped"]),
                json.dumps(data["actions"]),
                record.delivery.value,
                data["direction"],
            )
        await migrate(conn)
        rows = await conn.fetch(
            "SELECT decision_id::text, action_id, held_out, customer_id, decided_at, rule_id, channel, direction,"
            " ruleset_name, ruleset_version, journey_stage FROM exposures"
        )
    finally:
        await conn.close()
    found = sorted(tuple(r) for r in rows)
    expected = sorted(
        (
            e.decision_id,
            e.action_id,
            e.held_out,
            e.customer_id,
            e.decided_at,
            e.rule_id,
            e.channel,
            e.direction,
            e.ruleset_name,
            e.ruleset_version,
            None,
        )
        for r in history.records
        for e in exposures_of(r)
    )
    assert found == expected
    assert len(found) > 100
