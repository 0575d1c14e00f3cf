"""`nba rulesets starved --population store` against PostgreSQL: the customers of the database a running
`nba serve --store postgres` serves, read as the service reads them, after some of them had an event reported
through the gRPC API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.profile import Profile
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from tests.e2e._support import RULESET_PATH
from tests.e2e.test_review_diff import ingest, store_profiles
from tests.e2e.test_review_starved import assert_report_matches, expected_starvation, run_starved
from tests.e2e_pg._pg_support import seed_sync
from tests.e2e_pg.conftest import StartPgServer
from tests.pg import run_sync

pytestmark = pytest.mark.e2e

COUNT = 200


def test_starved_over_the_postgres_store_of_a_running_server(pg_dsn: str, start_pg: StartPgServer) -> None:
    """A seeded database served by `nba serve --store postgres`; three customers no rule matched get a card
    declined abroad over gRPC. The report with NBA_STORE=postgres and NBA_DSN counts exactly what the reference
    evaluator gives for the profiles PostgreSQL holds at the same moment, and those customers are helped."""
    seed_sync(pg_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_dsn)
    ruleset = load_ruleset_file(RULESET_PATH)

    async def read(at: datetime) -> list[Profile]:
        pool = await create_pool(pg_dsn, max_size=2)
        store = PostgresProfileStore(
            pool,
            history=contact_history_window(ruleset),
            event_types=sorted(ruleset.events),
            timeout=5.0,
            clock=lambda: at,
        )
        try:
            return await store_profiles(store)
        finally:
            await store.close()

    before = expected_starvation(datetime.now(UTC), run_sync(read(datetime.now(UTC))))
    helped = sorted(before["agent_desktop"].no_rule)[:3]
    assert len(helped) == 3, "the seeded customers must leave someone without a matching rule"
    for customer_id in helped:
        ingest(server, customer_id, "card_declined_abroad", {"country": "ES", "amount": 80.0, "merchant": "Hotel"})
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    env = {"NBA_STORE": "postgres", "NBA_DSN": pg_dsn}
    result = run_starved(str(RULESET_PATH), "--population", "store", "--at", at.isoformat(), "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = expected_starvation(at, run_sync(read(at)))
    assert_report_matches(report, expected, COUNT)
    assert not set(helped) & expected["agent_desktop"].no_rule
