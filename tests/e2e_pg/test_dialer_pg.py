"""Dialer campaigns on PostgreSQL: the seeded numbers, DecideBatch over loopback against `nba serve --store
postgres`, the export and the disposition import, and what they leave in the tables."""

from __future__ import annotations

import csv
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.synthetic import generate_profiles
from tests.e2e._support import NBA_SCRIPT, server_env
from tests.e2e_pg._pg_support import fetch, fetchval, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 1200  # more than two pages (500 profiles per round trip) of every customer


def _nba(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=server_env(), check=False
    )


def test_a_campaign_on_postgres_from_export_to_dispositions(
    pg_dsn: str, start_pg: StartPgServer, tmp_path: Path
) -> None:
    """The seed stores every generated number in `phones`; a campaign over every customer streams one result per
    customer, each recorded in `decisions` with the campaign; a listed campaign with an unknown id records
    nothing; the export's VICIdial file splits the numbers; the disposition import stores its rows once in
    `outcomes` (with their keys), marks the wrong number in `phones`, and a second import stores nothing; a
    campaign over everyone run afterwards skips the exported calls nobody has reported on yet."""
    seeded_at = datetime.now(UTC)
    seed_sync(pg_dsn, COUNT, seeded_at)
    generated = {p.customer_id: p for p in generate_profiles(COUNT, now=seeded_at)}
    stored = fetch(pg_dsn, "SELECT customer_id, number, type, consent FROM phones ORDER BY customer_id, position")
    assert [(r["customer_id"], r["number"], r["type"], r["consent"]) for r in stored] == [
        (ident, p.number, p.type.value, p.consent)
        for ident, profile in sorted(generated.items())
        for p in profile.phones
    ]
    server = start_pg(pg_dsn, "--workers", "1")

    before = fetchval(pg_dsn, "SELECT count(*) FROM decisions")
    listed = nba_pb2.DecideBatchRequest(
        campaign_id="pg-bad",
        channel=nba_pb2.OUTBOUND_DIALER,
        customer_ids=nba_pb2.CustomerList(ids=["CUST-000001", "CUST-999999"]),
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.DecideBatch(listed, timeout=30))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert fetchval(pg_dsn, "SELECT count(*) FROM decisions") == before

    target = ("--target", server.address)
    export = _nba(
        "dialer", "export", "--campaign", "pg-vici", "--segment", "segment=affluent", "--format", "vicidial",
        "--list-id", "1001", "--out", "leads.tsv", "--excluded", "excluded.csv", *target, cwd=tmp_path,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    leads = list(csv.DictReader((tmp_path / "leads.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert len(leads) >= 2
    for lead in leads:
        numbers = {p.number for p in generated[lead["vendor_lead_code"]].phones}
        assert f"+{lead['phone_code']}{lead['phone_number']}" in numbers
        assert lead["list_id"] == "1001"

    now = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
    wrong, sold = leads[0], leads[1]
    header = ["source_id", "nba_action_id", "phone_code", "phone_number", "call_date", "status"]
    with (tmp_path / "calls.tsv").open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(header)
        for lead, status in ((wrong, "DC"), (sold, "SALE")):
            writer.writerow(
                [lead["source_id"], lead["nba_action_id"], lead["phone_code"], lead["phone_number"], now, status]
            )
    first = _nba("dialer", "results", "calls.tsv", "--format", "vicidial", *target, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 rows read: 2 outcomes recorded" in first.stdout
    again = _nba("dialer", "results", "calls.tsv", "--format", "vicidial", *target, cwd=tmp_path)
    assert "2 rows read: 0 outcomes recorded, 2 already recorded" in again.stdout
    outcomes = fetch(
        pg_dsn,
        "SELECT decision_id::text AS id, outcome, idempotency_key FROM outcomes WHERE decision_id = ANY($1::uuid[])",
        [wrong["source_id"], sold["source_id"]],
    )
    assert sorted((r["id"], r["outcome"]) for r in outcomes) == sorted(
        [(wrong["source_id"], "not_offered"), (sold["source_id"], "converted")]
    )
    assert all(r["idempotency_key"].startswith("dsp1-") for r in outcomes)
    marked = fetch(pg_dsn, "SELECT customer_id, number FROM phones WHERE wrong_number_at IS NOT NULL")
    assert [(r["customer_id"], r["number"]) for r in marked] == [
        (wrong["vendor_lead_code"], f"+{wrong['phone_code']}{wrong['phone_number']}")
    ]

    # A campaign over everyone after the export: the exported calls nobody reported on are pending (one row each in
    # `contacts`), so their customers are not called again.
    request = nba_pb2.DecideBatchRequest(
        campaign_id="pg-all", channel=nba_pb2.OUTBOUND_DIALER, segment=nba_pb2.Segment(all_customers=True)
    )
    results = list(server.stub.DecideBatch(request, timeout=120))
    assert sorted(r.customer_id for r in results) == sorted(generated)
    recorded = fetch(
        pg_dsn,
        "SELECT decision_id::text AS id, context FROM decisions WHERE context->'attributes'->>'campaign_id' = $1",
        "pg-all",
    )
    assert {r["id"] for r in recorded} == {r.decision_id for r in results}
    unreported = {lead["vendor_lead_code"] for lead in leads[2:]}
    by_customer = {r.customer_id: r for r in results}
    assert unreported
    reasons = {ident: nba_pb2.ExclusionReason.Name(by_customer[ident].excluded.reason) for ident in unreported}
    # None is called again: the pending call caps the action it was about (its own cap, or dialer-daily); the
    # exclusion names the most important reason among all the drops, so another candidate's suppression, or the
    # missing marketing consent of a customer the first campaign called about a service matter, may show.
    assert set(reasons.values()) <= {"FREQUENCY_CAP", "SUPPRESSION", "NO_CONSENT"}
    assert "FREQUENCY_CAP" in reasons.values()
    pending = fetch(
        pg_dsn,
        "SELECT customer_id, campaign_id FROM contacts WHERE pending_until IS NOT NULL AND campaign_id = 'pg-vici'",
    )
    assert {r["customer_id"] for r in pending} == unreported
