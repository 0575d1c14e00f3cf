"""Roles on PostgreSQL: a few cells of the role table (tests/e2e/test_roles.py has all of them), scoping that
looks like an unknown customer, and who asked kept in the `caller` and `recorded_by` columns and the export."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.export import export_records
from nba_service.settings import Settings
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._roles_support import CERTIFICATES, POLICY, UNKNOWN_CUSTOMER, decide_request, make_callers, tls_args
from tests.e2e._support import RULESET_PATH
from tests.e2e_pg._pg_support import fetch, seed_sync
from tests.e2e_pg.conftest import StartPgServer
from tests.security_pki import make_pki

pytestmark = pytest.mark.e2e

COUNT = 60


def test_roles_scoping_and_callers_on_postgres(
    pg_dsn: str, start_pg: StartPgServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seeded_at = datetime.now(UTC)
    seed_sync(pg_dsn, COUNT, seeded_at)
    segments = {
        p.customer_id: str(p.attributes.get("segment"))
        for p in generate_profiles(COUNT, now=seeded_at, seed=DEFAULT_SEED)
    }
    pki = make_pki(tmp_path_factory.mktemp("pki"), clients=CERTIFICATES)
    policy = tmp_path_factory.mktemp("policy") / "access.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    server = start_pg(pg_dsn, *tls_args(pki, policy))
    callers = make_callers(pki, server.address)
    desk, dialer, ingest, mass = callers["desktop"], callers["dialer"], callers["ingest"], callers["mass"]
    try:
        decision = None
        for customer in sorted(c for c, s in segments.items() if s != "mass"):
            answer = desk.call(desk.nba.Decide, decide_request(customer, nba_pb2.AGENT_DESKTOP))
            if answer.actions:
                decision, desk_customer = answer, customer
                break
        assert decision is not None, "no seeded customer outside the mass segment gets a desktop action"

        # A few cells of the table.
        with pytest.raises(grpc.RpcError) as denied:
            dialer.call(dialer.nba.Decide, decide_request(desk_customer, nba_pb2.AGENT_DESKTOP))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == "Decide on agent_desktop needs the role desktop; you have: dialer"
        with pytest.raises(grpc.RpcError) as unauthenticated:
            callers["expired"].call(dialer.nba.Decide, decide_request(desk_customer, nba_pb2.OUTBOUND_DIALER))
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        dialed = dialer.call(dialer.nba.Decide, decide_request(desk_customer, nba_pb2.OUTBOUND_DIALER))
        event = ingest.call(
            ingest.nba.IngestEvent,
            nba_pb2.IngestEventRequest(
                customer_id=desk_customer,
                type="large_deposit",
                attributes={"amount": nba_pb2.AttributeValue(number_value=30000.0)},
            ),
        )
        outcome = nba_pb2.RecordOutcomeRequest(
            decision_id=decision.decision_id, action_id=decision.actions[0].action_id, outcome=nba_pb2.NOT_OFFERED
        )
        assert desk.call(desk.nba.RecordOutcome, outcome).customer_id == desk_customer
        assert dialer.call(dialer.nba.RecordOutcome, outcome).customer_id == ""

        # Scoping: another segment's customer looks exactly like one that does not exist.
        errors = {}
        for customer in (desk_customer, UNKNOWN_CUSTOMER):
            with pytest.raises(grpc.RpcError) as info:
                mass.call(mass.nba.Decide, decide_request(customer, nba_pb2.AGENT_DESKTOP))
            errors[customer] = info.value
        assert {e.code() for e in errors.values()} == {grpc.StatusCode.NOT_FOUND}
        assert {e.details().replace(c, "<id>") for c, e in errors.items()} == {"customer '<id>' not found"}
    finally:
        server.stop(signal.SIGTERM, timeout=40)

    rows = fetch(pg_dsn, "SELECT decision_id::text, caller FROM decisions")
    callers_by_decision = {r["decision_id"]: r["caller"] for r in rows}
    assert callers_by_decision[decision.decision_id] == desk.principal
    assert callers_by_decision[dialed.decision_id] == dialer.principal
    recorded = fetch(pg_dsn, "SELECT recorded_by FROM outcomes WHERE decision_id = $1::uuid", decision.decision_id)
    assert sorted(r["recorded_by"] for r in recorded) == sorted([desk.principal, dialer.principal])
    stored = fetch(pg_dsn, "SELECT customer_id, recorded_by FROM events WHERE event_id = $1::uuid", event.event_id)
    assert [(r["customer_id"], r["recorded_by"]) for r in stored] == [(desk_customer, ingest.principal)]

    lines: list[str] = []
    settings = Settings(store="postgres", dsn=pg_dsn, rulesets=RULESET_PATH)
    asyncio.run(export_records(settings, lines.append, customer_id=desk_customer))
    exported = [json.loads(line) for line in lines]
    by_kind = {(r["kind"], r.get("caller", r.get("recorded_by"))) for r in exported}
    assert ("decision", desk.principal) in by_kind
    assert ("decision", dialer.principal) in by_kind
    assert ("outcome", desk.principal) in by_kind
    assert ("outcome", dialer.principal) in by_kind
