"""`nba db migrate` and `nba db seed`, run as a person runs them, against real databases."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime

from nba_service.stores.postgres.migrate import migrations
from nba_service.stores.postgres.seed import profile_rows
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import NBA_SCRIPT, server_env
from tests.e2e_pg._pg_support import fetch, fetchval

CUSTOMERS = 300
TABLES = ("customers", "consents", "do_not_call", "events", "contacts", "decisions")


def _nba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, env=server_env(), check=False
    )


def _counts(dsn: str) -> dict[str, int]:
    return {table: fetchval(dsn, f"SELECT count(*) FROM {table}") for table in TABLES}


def test_migrate_applies_the_schema_once(pg_empty_dsn: str) -> None:
    """On a database without the schema, `nba db migrate` applies 0001_initial, says so and records it; run
    again it applies nothing and says the schema is up to date."""
    names = [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert names[0] == "0001_initial"

    first = _nba("db", "migrate", "--dsn", pg_empty_dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in names]
    tables = {
        r["tablename"] for r in fetch(pg_empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {*TABLES, "schema_migrations"} <= tables
    recorded = fetch(pg_empty_dsn, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [(m.version, m.name) for m in migrations()]

    second = _nba("db", "migrate", "--dsn", pg_empty_dsn)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema is up to date; nothing applied"
    assert fetchval(pg_empty_dsn, "SELECT count(*) FROM schema_migrations") == len(names)


def test_seed_loads_the_population_then_refuses_a_second_time(pg_dsn: str) -> None:
    """`nba db seed --customers 300` on a fresh migrated database loads 300 customers with exactly the consents,
    do-not-call entries, events and contacts the generator implies, and reports those counts. A second run
    without --force exits non-zero, names what the database holds (300 customers, its events and contacts) and
    points at --force, leaving every table as it was."""
    expected = profile_rows(list(generate_profiles(CUSTOMERS, seed=DEFAULT_SEED, now=datetime.now(UTC))))
    want = {
        "customers": len(expected.customers),
        "consents": len(expected.consents),
        "do_not_call": len(expected.do_not_call),
        "events": len(expected.events),
        "contacts": len(expected.contacts),
        "decisions": 0,
    }
    assert want["customers"] == CUSTOMERS

    first = _nba("db", "seed", "--customers", str(CUSTOMERS), "--dsn", pg_dsn)
    assert first.returncode == 0, first.stderr
    counts = _counts(pg_dsn)
    assert counts == want
    assert (
        f"seeded {CUSTOMERS} customers, {want['events']} events, {want['contacts']} contacts, "
        f"{want['consents']} consents, {want['do_not_call']} do-not-call in" in first.stdout
    )
    ids = [r["customer_id"] for r in fetch(pg_dsn, "SELECT customer_id FROM customers ORDER BY customer_id")]
    assert ids == [f"CUST-{n:06d}" for n in range(1, CUSTOMERS + 1)]

    second = _nba("db", "seed", "--customers", str(CUSTOMERS), "--dsn", pg_dsn)
    assert second.returncode != 0
    message = " ".join(second.stderr.split())
    assert f"{CUSTOMERS} customers" in message, second.stderr
    assert f"{want['events']} events" in message, second.stderr
    assert f"{want['contacts']} contacts" in message, second.stderr
    assert "--force" in message
    assert "Traceback" not in second.stderr
    assert _counts(pg_dsn) == want


def test_seed_on_an_unmigrated_database_says_to_migrate(pg_empty_dsn: str) -> None:
    """`nba db seed` against a database without the schema exits non-zero telling to run `nba db migrate`,
    and creates nothing."""
    result = _nba("db", "seed", "--customers", "5", "--dsn", pg_empty_dsn)
    assert result.returncode != 0
    assert "nba db migrate" in result.stderr
    assert "Traceback" not in result.stderr
    tables = fetch(pg_empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert not [r for r in tables if re.fullmatch(r"customers|events|contacts", r["tablename"])]
