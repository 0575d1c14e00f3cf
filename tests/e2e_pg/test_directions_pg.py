"""Directions, mandatory actions and "not now" on PostgreSQL, against the real `nba serve --store postgres` over
gRPC and HTTP (the checks are the embedded store's, in `tests.e2e._direction_support`), and the columns that
hold them."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.e2e import _direction_support as support
from tests.e2e._support import ServerHandle
from tests.e2e_pg._pg_support import fetch, seed_sync, start_pg_server
from tests.pg import DatabaseFactory, run_sync

pytestmark = pytest.mark.e2e

COUNT = 300


@pytest.fixture(scope="module")
def direction_db(pg_databases: DatabaseFactory) -> Iterator[str]:
    dsn = run_sync(pg_databases.create())
    try:
        seed_sync(dsn, COUNT, datetime.now(UTC))
        yield dsn
    finally:
        run_sync(pg_databases.drop(dsn))


@pytest.fixture(scope="module")
def direction_server(direction_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    folder = tmp_path_factory.mktemp("nba-pg-directions")
    rulesets = support.mandatory_ruleset(folder / "rulesets")
    handle = start_pg_server(folder, direction_db, "--http-port", "0", "--rulesets", str(rulesets))
    yield handle
    handle.stop(signal.SIGTERM, timeout=40)


@pytest.fixture(scope="module")
def customer(direction_server: ServerHandle) -> str:
    return support.customer_with_notice_and_offer(direction_server)


def test_inbound_and_outbound_desktop_decisions_record_their_direction(
    direction_server: ServerHandle, direction_db: str, customer: str
) -> None:
    """As on the embedded store; and the `decisions.direction` column holds each decision's direction."""
    ids = support.directions_are_recorded_and_explained(direction_server, customer)
    rows = fetch(
        direction_db,
        "SELECT decision_id::text AS id, channel, direction FROM decisions WHERE decision_id = ANY($1::uuid[])",
        list(ids.values()),
    )
    stored = {r["id"]: (r["channel"], r["direction"]) for r in rows}
    assert {name: stored[decision_id] for name, decision_id in ids.items()} == {
        "inbound": ("agent_desktop", "inbound"),
        "outbound": ("agent_desktop", "outbound"),
        "unspecified": ("agent_desktop", "inbound"),
        "dialer": ("outbound_dialer", "outbound"),
    }


def test_a_dialer_never_answers_inbound(direction_server: ServerHandle, customer: str) -> None:
    support.dialer_inbound_is_refused_naming_the_field(direction_server, customer)


def test_mandatory_flag_reaches_grpc_and_http(direction_server: ServerHandle, customer: str) -> None:
    support.mandatory_reaches_both_answers(direction_server, customer)


def test_not_now_is_stored_in_the_contact_history_with_its_direction(
    direction_server: ServerHandle, direction_db: str, customer: str
) -> None:
    """As on the embedded store (the migration let `not_now` past the outcome CHECKs); the outcome's audit row
    and the contact row both hold the decision's direction."""
    contact = support.not_now_is_stored_with_its_direction(direction_server, customer)
    decision_id = uuid.UUID(contact["decision_id"])
    audit = fetch(direction_db, "SELECT outcome, direction FROM outcomes WHERE decision_id = $1", decision_id)
    history = fetch(
        direction_db, "SELECT outcome, direction, reached FROM contacts WHERE decision_id = $1", decision_id
    )
    assert [(r["outcome"], r["direction"]) for r in audit] == [("not_now", "outbound")]
    assert [(r["outcome"], r["direction"], r["reached"]) for r in history] == [("not_now", "outbound", True)]
