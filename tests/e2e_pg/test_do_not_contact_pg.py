"""The do-not-contact register end to end on PostgreSQL: `nba dnc --store postgres` writes the table a running
`nba serve --store postgres` reads in the profile's one statement, and the next decision obeys it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from tests.e2e.test_do_not_contact import callable_customer, campaign, nba
from tests.e2e_pg._pg_support import fetch, pg_env, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 300


def stored_decision(dsn: str, decision_id: str) -> dict[str, object]:
    """The decision's dropped candidates and recorded profile, once the group-commit writer has stored it."""
    deadline = time.monotonic() + 10
    while True:
        rows = fetch(dsn, "SELECT dropped, inputs FROM decisions WHERE decision_id = $1::uuid", decision_id)
        if rows:
            return {"dropped": json.loads(rows[0]["dropped"]), "inputs": json.loads(rows[0]["inputs"])}
        if time.monotonic() > deadline:
            pytest.fail(f"decision {decision_id} was not stored")
        time.sleep(0.05)


def test_a_listing_on_postgres_stops_the_dialer_until_lifted(
    pg_dsn: str, start_pg: StartPgServer, tmp_path: Path
) -> None:
    """Listed with `nba dnc add --store postgres`, a customer the first campaign called gets nothing on the dialer
    (every candidate dropped as do_not_contact, the listing in the stored inputs, `nba explain` in words), is
    still answered on the agent desktop, and is excluded as DO_NOT_CONTACT by a later campaign; `nba dnc
    remove` lifts it; the table and the export keep both changes with who made them."""
    seed_sync(pg_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_dsn, "--workers", "1")
    store = ("--store", "postgres")
    env = pg_env(pg_dsn)
    customer = callable_customer(server, campaign(server, "pg-before-listing"))

    added = nba(
        "dnc", "add", customer, "--channel", "all", "--reason", "vulnerability", "--source", "branch visit",
        "--expires", "2099-01-01", "--by", "alice", *store, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == (
        f"listed {customer} on every channel for vulnerability (listing 1, by alice, until 2099-01-01T00:00:00Z)"
    )

    dialer = server.decide(customer, Channel.OUTBOUND_DIALER)
    assert list(dialer.actions) == []
    stored = stored_decision(pg_dsn, dialer.decision_id)
    assert stored["dropped"]
    assert {d["reason"] for d in stored["dropped"]} == {"do_not_contact"}  # type: ignore[attr-defined]
    [kept] = stored["inputs"]["profile"]["do_not_contact"]  # type: ignore[index]
    assert (kept["channel"], kept["reason"], kept["added_by"]) == (None, "vulnerability", "alice")
    explained = nba("explain", dialer.decision_id, "--target", server.address, cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    assert "listed as do-not-contact for this channel (vulnerability)" in explained.stdout

    assert list(server.decide(customer, Channel.AGENT_DESKTOP).actions)
    [later] = campaign(server, "pg-after-listing", [customer])
    assert nba_pb2.ExclusionReason.Name(later.excluded.reason) == "DO_NOT_CONTACT"

    removed = nba("dnc", "remove", customer, "--channel", "all", "--by", "bob", *store, cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    lifted = server.decide(customer, Channel.OUTBOUND_DIALER)
    after = stored_decision(pg_dsn, lifted.decision_id)
    assert "do_not_contact" not in {d["reason"] for d in after["dropped"]}  # type: ignore[attr-defined]

    [row] = fetch(pg_dsn, "SELECT added_by, removed_by, removed_at > added_at AS later FROM do_not_contact")
    assert (row["added_by"], row["removed_by"], row["later"]) == ("alice", "bob", True)
    history = nba("dnc", "list", "--all", "--json", *store, cwd=tmp_path, env=env)
    assert history.returncode == 0, history.stderr
    [listing] = [json.loads(line) for line in history.stdout.splitlines()]
    assert (listing["state"], listing["channel"], listing["removed_by"]) == ("removed", "all", "bob")


def test_nba_dnc_on_an_unreachable_database_exits_3(tmp_path: Path) -> None:
    result = nba(
        "dnc", "list", "--store", "postgres", cwd=tmp_path, env={"NBA_DSN": "postgresql://nba@127.0.0.1:9/nba"}
    )
    assert result.returncode == 3
    assert result.stderr.startswith("error: the profile database is unavailable")
