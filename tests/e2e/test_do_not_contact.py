"""The do-not-contact register end to end on the embedded store: `nba dnc` writes the file a running `nba serve`
reads, and the next decision over gRPC obeys it; the dialer export leaves the customer out saying why; an
inbound caller is still helped; lifting the listing lifts the block; the export shows the whole history."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.do_not_contact import EXPORT_COLUMNS
from nba_service.domain.model import Channel
from tests.e2e._support import NBA_SCRIPT, ServerHandle, server_env
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e


def nba(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**server_env(), **(env or {})},
        check=False,
    )


def campaign(server: ServerHandle, campaign_id: str, customers: Sequence[str] = ()) -> list[Any]:
    who: dict[str, Any] = (
        {"customer_ids": nba_pb2.CustomerList(ids=list(customers))}
        if customers
        else {"segment": nba_pb2.Segment(all_customers=True)}
    )
    request = nba_pb2.DecideBatchRequest(campaign_id=campaign_id, channel=nba_pb2.OUTBOUND_DIALER, **who)
    return list(server.stub.DecideBatch(request, timeout=120))


def callable_customer(server: ServerHandle, results: list[Any]) -> str:
    """A customer the first campaign calls and whom an agent would offer something on an inbound call."""
    for result in results:
        if result.WhichOneof("result") != "call":
            continue
        answer = server.stub.Decide(
            nba_pb2.DecideRequest(customer_id=result.customer_id, channel=nba_pb2.AGENT_DESKTOP, dry_run=True),
            timeout=10,
        )
        if answer.actions:
            return str(result.customer_id)
    pytest.fail("no customer is both called by the campaign and offered something inbound")


@pytest.mark.slow
def test_a_listing_stops_the_dialer_but_not_an_inbound_caller(start_fresh_server: StartServer, tmp_path: Path) -> None:
    """A customer the first campaign called is listed with `nba dnc add`: a dialer Decide then offers nothing
    and records every candidate dropped as do_not_contact (with the listing in the recorded profile, and
    `nba explain` says so in words); an agent-desktop Decide for the same customer still answers; a later
    campaign and `nba dialer export` leave them out as DO_NOT_CONTACT. Repeats, bad fields and unknown
    customers are refused with exit code 2 naming the problem. `nba dnc remove` lifts the block, and the export
    shows who listed and who lifted, and when."""
    server = start_fresh_server()
    store = ("--db-path", str(server.database))
    customer = callable_customer(server, campaign(server, "before-listing"))

    added = nba(
        "dnc", "add", customer, "--channel", "outbound_dialer", "--reason", "customer_request",
        "--source", "inbound call", "--note", "asked not to be called", "--by", "alice", *store, cwd=tmp_path,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == (
        f"listed {customer} on outbound_dialer for customer_request (listing 1, by alice, no expiry)"
    )

    dialer = server.decide(customer, Channel.OUTBOUND_DIALER)
    assert list(dialer.actions) == []
    record = server.wait_for_decisions([dialer.decision_id])[dialer.decision_id]
    assert record["dropped"]
    assert {(d["reason"], d["policy"]) for d in record["dropped"]} == {("do_not_contact", "do_not_contact")}
    [kept] = record["inputs"]["profile"]["do_not_contact"]
    assert (kept["channel"], kept["reason"], kept["source"], kept["added_by"]) == (
        "outbound_dialer",
        "customer_request",
        "inbound call",
        "alice",
    )
    explained = nba("explain", dialer.decision_id, "--target", server.address, cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    assert "the customer is listed as do-not-contact for this channel (customer request)" in explained.stdout
    assert f"  customer {customer}, outbound_dialer (outbound), at " in explained.stdout

    inbound = server.decide(customer, Channel.AGENT_DESKTOP)
    assert list(inbound.actions)

    [later] = campaign(server, "after-listing", [customer])
    assert later.WhichOneof("result") == "excluded"
    assert nba_pb2.ExclusionReason.Name(later.excluded.reason) == "DO_NOT_CONTACT"
    assert later.excluded.detail == "listed (customer_request)"
    assert "asked not to be called" not in later.excluded.detail
    (tmp_path / "ids.txt").write_text(f"{customer}\n", encoding="utf-8")
    exported = nba(
        "dialer", "export", "--campaign", "export-after-listing", "--customers", "ids.txt", "--out", "calls.csv",
        "--excluded", "excluded.csv", "--target", server.address, cwd=tmp_path,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert customer not in (tmp_path / "calls.csv").read_text(encoding="utf-8")
    [left_out] = list(csv.DictReader((tmp_path / "excluded.csv").open(encoding="utf-8")))
    assert (left_out["customer_id"], left_out["reason"]) == (customer, "do_not_contact")
    assert "excluded by reason: do_not_contact 1" in exported.stdout

    again = nba(
        "dnc", "add", customer, "--channel", "outbound_dialer", "--reason", "customer_request", "--source", "letter",
        "--by", "alice", *store, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "already listed for customer_request on outbound_dialer (listing 1" in again.stderr
    bad = nba(
        "dnc", "add", customer, "--channel", "all", "--reason", "bereavement", "--source", " ", "--expires",
        "2020-01-01", "--by", "alice", *store, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "source: is empty" in bad.stderr
    assert "expires_at: 2020-01-01T00:00:00+00:00 is in the past" in bad.stderr
    unknown = nba(
        "dnc", "add", "CUST-999999", "--channel", "all", "--reason", "bereavement", "--source", "x", "--by", "alice",
        *store, cwd=tmp_path,
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "customer 'CUST-999999' not found" in unknown.stderr
    no_name = nba(
        "dnc", "add", customer, "--channel", "all", "--reason", "bereavement", "--source", "x", *store,
        cwd=tmp_path, env={"USER": ""},
    )  # fmt: skip
    assert no_name.returncode == 2
    assert "added_by: is empty" in no_name.stderr

    listed = nba("dnc", "list", customer, *store, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "ID", "CUSTOMER", "CHANNEL", "REASON", "STATE", "ADDED", "EXPIRES", "SOURCE",
    ]  # fmt: skip
    assert len(listed.stdout.splitlines()) == 2

    removed = nba("dnc", "remove", customer, "--by", "bob", "--note", "wants offers again", *store, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"lifted 1 listing of {customer}:")
    lifted = server.decide(customer, Channel.OUTBOUND_DIALER)
    after = server.wait_for_decisions([lifted.decision_id])[lifted.decision_id]
    assert "do_not_contact" not in {d["reason"] for d in after["dropped"]}
    assert "do_not_contact" not in after["inputs"]["profile"]
    twice = nba("dnc", "remove", customer, "--by", "bob", *store, cwd=tmp_path)
    assert twice.returncode == 2
    assert "no active do-not-contact listing" in twice.stderr
    assert nba("dnc", "list", customer, *store, cwd=tmp_path).stdout.strip() == f"no active listing for {customer}"

    history = nba("dnc", "export", "--format", "jsonl", *store, cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    [row] = [json.loads(line) for line in history.stdout.splitlines()]
    assert {k: row[k] for k in ("customer_id", "channel", "added_by", "removed_by", "removal_note", "state")} == {
        "customer_id": customer,
        "channel": "outbound_dialer",
        "added_by": "alice",
        "removed_by": "bob",
        "removal_note": "wants offers again",
        "state": "removed",
    }
    assert row["added_at"] < row["removed_at"]
    as_csv = nba("dnc", "export", "-o", "dnc.csv", *store, cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stderr.strip() == "1 listings exported"
    rows = list(csv.DictReader((tmp_path / "dnc.csv").open(encoding="utf-8")))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert (rows[0]["customer_id"], rows[0]["removed_by"], rows[0]["expires_at"]) == (customer, "bob", "")


def test_nba_dnc_on_a_missing_database_says_where_it_looked(tmp_path: Path) -> None:
    result = nba("dnc", "list", "--db-path", str(tmp_path / "none.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"no embedded database at {tmp_path / 'none.db'}" in result.stderr
    assert not (tmp_path / "none.db").exists()
