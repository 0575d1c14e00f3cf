"""Purposes and constraint pauses on PostgreSQL: the same checks as on the embedded store
(tests/e2e/_constraint_support.py), against `nba serve --store postgres`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nba_service.synthetic import generate_profiles
from tests.e2e import _constraint_support as checks
from tests.e2e_pg._pg_support import seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 60


def test_consent_per_purpose_declines_and_not_now_on_postgres(
    pg_dsn: str, start_pg: StartPgServer, tmp_path: Path
) -> None:
    seeded_at = datetime.now(UTC)
    seed_sync(pg_dsn, COUNT, seeded_at)
    ruleset = checks.write_ruleset(tmp_path / "rulesets")
    server = start_pg(pg_dsn, "--workers", "1", "--rulesets", str(ruleset))
    ids = [p.customer_id for p in generate_profiles(COUNT, now=seeded_at)]
    both, service_only = checks.customers(server, ids)
    assert len(both) >= 2, "the population must have customers who consent to offers"
    assert service_only, "the population must have customers who do not consent to offers"
    checks.check_consent_is_asked_for_marketing_only(server, service_only[0])
    checks.check_two_declines_pause_the_offer(server, both[0])
    checks.check_not_now_defers_without_counting_as_a_decline(server, both[1])
