"""Explaining past decisions on PostgreSQL: `nba.v1.Review`, dry runs and `nba explain` against the real
`nba serve --store postgres` (the checks are the embedded store's, in `tests.e2e._review_support`)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import review_pb2
from nba_service.domain.model import Channel
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e import _review_support as support
from tests.e2e._support import ServerHandle
from tests.e2e_pg._pg_support import decision_ids, fetch, seed_sync, start_pg_server
from tests.e2e_pg.conftest import StartPgServer
from tests.pg import DatabaseFactory, ThrowawayCluster, run_sync

pytestmark = pytest.mark.e2e

COUNT = 300


def _seeded(dsn: str) -> support.Expect:
    seeded_at = datetime.now(UTC)
    seed_sync(dsn, COUNT, seeded_at)
    profiles = {p.customer_id: p for p in generate_profiles(COUNT, seed=DEFAULT_SEED, now=seeded_at)}
    return support.Expect(profiles, profiles)


@pytest.fixture(scope="module")
def review_db(pg_databases: DatabaseFactory) -> Iterator[str]:
    dsn = run_sync(pg_databases.create())
    try:
        yield dsn
    finally:
        run_sync(pg_databases.drop(dsn))


@pytest.fixture(scope="module")
def expect(review_db: str) -> support.Expect:
    return _seeded(review_db)


@pytest.fixture(scope="module")
def review_server(
    review_db: str, expect: support.Expect, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """One server for the read tests of this module, on a database of this module's own."""
    handle = start_pg_server(tmp_path_factory.mktemp("nba-pg-review"), review_db)
    yield handle
    handle.stop(signal.SIGTERM, timeout=40)


def test_explain_and_why_not_on_both_channels(review_server: ServerHandle, expect: support.Expect) -> None:
    """As on the embedded store: desktop, dialer and no-action decisions explained as the reference pipeline
    decides for the seeded profiles, and WhyNot for an offered, a dropped and a condition-kept-out action."""
    support.explain_both_channels_and_no_action(review_server, expect)


def test_dry_run_records_nothing_and_counts_toward_no_cap(
    review_server: ServerHandle, review_db: str, expect: support.Expect
) -> None:
    """A dry run leaves no row in `decisions`, is refused by RecordOutcome and unknown to ExplainDecision, and
    reaches no cap; an accepted real offer does, and WhyNot names that cap."""
    support.dry_run_records_nothing_and_counts_toward_no_cap(
        review_server, expect, lambda: set(decision_ids(review_db))
    )


def test_bad_requests_are_refused_naming_the_field(review_server: ServerHandle) -> None:
    support.bad_requests_are_refused_naming_the_field(review_server)


def _tamper_pg(dsn: str) -> Callable[[str], None]:
    def tamper(decision_id: str) -> None:
        """Withdraws the stored consent as if someone had edited the record's inputs in the table."""
        rows = fetch(
            dsn,
            "UPDATE decisions SET inputs = jsonb_set(inputs, '{profile,attributes,consent_agent_offers}', 'false')"
            " WHERE decision_id = $1::uuid RETURNING decision_id",
            decision_id,
        )
        assert len(rows) == 1

    return tamper


def test_replay_of_a_version_no_longer_active(
    review_server: ServerHandle, review_db: str, expect: support.Expect, tmp_path: Path
) -> None:
    """`nba explain ID --replay` replays a decision of the start-up version after another was activated (the
    archive and the inputs come from PostgreSQL), and exits 5 for a record whose stored inputs were edited.
    The bundled version is rolled back to afterwards, so the module's other tests see it whatever the order."""
    try:
        support.replay_after_activate(review_server, expect, tmp_path, _tamper_pg(review_db))
    finally:
        rolled = support.nba("rulesets", "rollback", "--target", review_server.address)
    assert rolled.returncode == 0, rolled.stderr
    # The shared archive in PostgreSQL names who asked for each version's latest activation, and how.
    listed = support.review(review_server).ListRulesets(review_pb2.ListRulesetsRequest(), timeout=30).rulesets
    assert [(r.active, r.last_activation_origin, r.last_activated_by) for r in listed] == [
        (True, "rollback", "anonymous"),
        (False, "activate", "anonymous"),
    ]


def test_database_down_is_unavailable(pg_cluster: ThrowawayCluster, start_pg: StartPgServer) -> None:
    """With PostgreSQL stopped under the running server, ExplainDecision and ListRulesets answer UNAVAILABLE
    (and `nba explain` exits 3), not INTERNAL or a hang."""
    seed_sync(pg_cluster.nba_dsn, 20, datetime.now(UTC))
    server = start_pg(pg_cluster.nba_dsn)
    decision = server.decide("CUST-000001", Channel.AGENT_DESKTOP)
    assert support.explain(server, decision.decision_id).decision_id == decision.decision_id
    pg_cluster.stop("fast")
    error = support.refused(lambda: support.explain(server, decision.decision_id))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    error = support.refused(lambda: support.review(server).ListRulesets(review_pb2.ListRulesetsRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    result = support.nba("explain", decision.decision_id, "--target", server.address)
    assert result.returncode == 3, result.stderr
