"""`nba rulesets diff --population store` against PostgreSQL: the customers of the database a running
`nba serve --store postgres` serves, read as the service reads them, after a few of them were given events and
an outcome through the gRPC API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel
from nba_service.domain.profile import Profile
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import RULESET_PATH
from tests.e2e.test_review_diff import (
    REMOVED_ACTION,
    assert_known_change,
    assert_matches,
    change_some_customers,
    expected_moves,
    run_diff,
    store_profiles,
    write_changed_copy,
)
from tests.e2e_pg._pg_support import seed_sync
from tests.e2e_pg.conftest import StartPgServer
from tests.pg import run_sync

pytestmark = pytest.mark.e2e

COUNT = 200


def test_diff_over_the_postgres_store_of_a_running_server(pg_dsn: str, start_pg: StartPgServer, tmp_path: Path) -> None:
    """A seeded database served by `nba serve --store postgres`; three customers get a large deposit and one an
    accepted outcome over gRPC. The diff with NBA_STORE=postgres and NBA_DSN counts every movement the reference
    evaluator gives for the profiles PostgreSQL holds at the same moment (read by the store's own get_profile),
    the deposits show up as term deposit rates lost by those customers, and the same population generated
    without the API's changes would not have them lose it."""
    seeded_at = datetime.now(UTC)
    seed_sync(pg_dsn, COUNT, seeded_at)
    server = start_pg(pg_dsn)
    changed = write_changed_copy(tmp_path)
    versions = [load_ruleset_file(RULESET_PATH), load_ruleset_file(changed)]
    event_types = sorted({event for ruleset in versions for event in ruleset.events})
    history = max(contact_history_window(ruleset) for ruleset in versions)

    async def read(at: datetime) -> list[Profile]:
        pool = await create_pool(pg_dsn, max_size=2)
        store = PostgresProfileStore(pool, history=history, event_types=event_types, timeout=5.0, clock=lambda: at)
        try:
            return await store_profiles(store)
        finally:
            await store.close()

    chosen = change_some_customers(server, run_sync(read(datetime.now(UTC))))
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    env = {"NBA_STORE": "postgres", "NBA_DSN": pg_dsn}
    result = run_diff(
        str(RULESET_PATH), str(changed), "--population", "store", "--at", at.isoformat(), "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["impact"]["population"] == "the PostgreSQL store (NBA_DSN)"
    assert report["impact"]["customers"] == COUNT

    expected = expected_moves(RULESET_PATH, changed, run_sync(read(at)), at)
    assert_matches(report, expected)
    assert_known_change(report)
    assert set(chosen) <= expected[Channel.AGENT_DESKTOP].customers_who(REMOVED_ACTION, "lost")
    seeded = generate_profiles(COUNT, seed=DEFAULT_SEED, now=seeded_at)
    plain = expected_moves(RULESET_PATH, changed, seeded, at)[Channel.AGENT_DESKTOP]
    assert not set(chosen) & plain.customers_who(REMOVED_ACTION, "lost"), "the API's changes must show"


def test_unreachable_postgres_is_exit_3(tmp_path: Path) -> None:
    """A DSN nobody answers on: exit 3 and a message naming PostgreSQL, without the password."""
    env = {"NBA_STORE": "postgres", "NBA_DSN": "postgresql://nba:secret@127.0.0.1:1/nba"}
    result = run_diff(str(RULESET_PATH), str(RULESET_PATH), "--population", "store", env=env)
    assert result.returncode == 3, result.stderr
    assert "cannot reach PostgreSQL" in result.stderr
    assert "secret" not in result.stderr
