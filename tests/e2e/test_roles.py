"""Who may do what, against the real server over real TLS: mutual TLS, bearer tokens checked against a JWKS,
and an access policy giving one client certificate or one token to each role.

Every RPC is tried by every role (and by a token that matches no entry, and by an expired token) and the
status is checked against the one table below, written from the roles' definitions, not from the server.
Then what the table cannot show: scoping that looks exactly like an unknown customer or decision, the
caller kept in every record, RecordOutcome naming the customer only to the caller who got the decision,
deploys that record who asked, health and reflection open, `--no-reflection`, policy reloads and a bad
policy refused at start-up. One server for the whole module: the matrix is many calls, not many servers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nba_service._proto.nba.v1 import (
    admin_pb2,
    nba_pb2,
    nba_pb2_grpc,
    review_pb2,
)
from nba_service.domain.loader import TESTS_SUFFIX
from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e._roles_support import (
    CERTIFICATES,
    POLICY,
    UNKNOWN_CUSTOMER,
    Caller,
    decide_request,
    make_callers,
    tls_args,
    tls_channel,
)
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, ServerHandle, server_env, start_server, utcnow
from tests.security_pki import Pki, make_pki

pytestmark = pytest.mark.e2e

OK = "OK"
DENIED = "PERMISSION_DENIED"
UNAUTH = "UNAUTHENTICATED"

# Who may do what (docs/operators/access-policy.md). `norole` holds a valid token no policy entry matches;
# `expired` an expired token beside a valid client certificate.
CALLERS = ("desktop", "dialer", "ingest", "reviewer", "admin", "norole", "expired")
WHO_MAY: dict[str, tuple[str, ...]] = {
    #                    desktop dialer  ingest  reviewer admin   norole  expired
    "Decide desktop":   (OK,     DENIED, DENIED, DENIED,  DENIED, DENIED, UNAUTH),
    "Decide dialer":    (DENIED, OK,     DENIED, DENIED,  DENIED, DENIED, UNAUTH),
    "Decide dry_run":   (DENIED, DENIED, DENIED, OK,      DENIED, DENIED, UNAUTH),
    "RecordOutcome":    (OK,     OK,     DENIED, DENIED,  DENIED, DENIED, UNAUTH),
    "IngestEvent":      (DENIED, DENIED, OK,     DENIED,  DENIED, DENIED, UNAUTH),
    "ListRulesets":     (DENIED, DENIED, DENIED, OK,      DENIED, DENIED, UNAUTH),
    "GetRuleset":       (DENIED, DENIED, DENIED, OK,      DENIED, DENIED, UNAUTH),
    "ExplainDecision":  (DENIED, DENIED, DENIED, OK,      DENIED, DENIED, UNAUTH),
    "WhyNot":           (DENIED, DENIED, DENIED, OK,      DENIED, DENIED, UNAUTH),
    "Activate":         (DENIED, DENIED, DENIED, DENIED,  OK,     DENIED, UNAUTH),
    "Rollback":         (DENIED, DENIED, DENIED, DENIED,  OK,     DENIED, UNAUTH),
    "Status":           (DENIED, DENIED, DENIED, OK,      OK,     DENIED, UNAUTH),
}  # fmt: skip


@dataclasses.dataclass
class World:
    pki: Pki
    server: ServerHandle
    workdir: Path
    policy: Path
    callers: dict[str, Caller]
    desk_customer: str  # has an action on the desktop, outside the mass segment
    mass_customer: str
    ingest_customer: str
    decision: nba_pb2.DecideResponse  # made by `desktop` for desk_customer
    responses: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)  # (rpc, caller): answer or error
    found: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # rpc: the status per caller


def _segments() -> dict[str, str]:
    return {p.customer_id: str(p.attributes.get("segment")) for p in read_sample(SAMPLE_PATH, utcnow())}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pki = make_pki(tmp_path_factory.mktemp("pki"), clients=CERTIFICATES)
    workdir = tmp_path_factory.mktemp("nba-roles")
    policy = workdir / "access.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    server = start_server(workdir, *tls_args(pki, policy))

    callers = make_callers(pki, server.address)
    segments = _segments()
    desk = callers["desktop"]
    found: tuple[str, nba_pb2.DecideResponse] | None = None
    for customer in sorted(c for c, s in segments.items() if s != "mass"):
        response = desk.call(desk.nba.Decide, decide_request(customer, nba_pb2.AGENT_DESKTOP))
        if response.actions:
            found = customer, response
            break
    assert found is not None, "no sample customer outside the mass segment gets a desktop action"
    desk_customer, decision = found
    mass_customer = min(c for c, s in segments.items() if s == "mass")
    ingest_customer = max(c for c in segments if c not in (desk_customer, mass_customer))
    try:
        made = World(pki, server, workdir, policy, callers, desk_customer, mass_customer, ingest_customer, decision)
        # The table is called here, first, and not by a test: with the suite spread over processes, the tests
        # reading its answers may run in another process than the one asserting it, each with a world of its own.
        _call_the_table(made)
        yield made
    finally:
        for caller in callers.values():
            caller.channel.close()
        server.stop(signal.SIGTERM)


def _decide(world: World, caller: Caller, channel: int, dry_run: bool = False) -> Any:
    return caller.call(caller.nba.Decide, decide_request(world.desk_customer, channel, dry_run=dry_run))


def _ruleset_variant(world: World, version: str) -> admin_pb2.RulesetSource:
    text = re.sub(r"(?m)^  version: .*$", f"  version: {version}", RULESET_PATH.read_text(encoding="utf-8"), count=1)
    tests = RULESET_PATH.with_name(RULESET_PATH.name.removesuffix(".yaml") + TESTS_SUFFIX)
    return admin_pb2.RulesetSource(
        file_name=RULESET_PATH.name, content=text, tests_content=tests.read_text(encoding="utf-8")
    )


NEXT_VERSION = "9.9.9"


def rpc_calls(world: World) -> dict[str, Callable[[Caller], Any]]:
    """One valid request per RPC cell: a refusal can only come from who is asking, never from the request."""
    action = world.decision.actions[0].action_id
    return {
        "Decide desktop": lambda c: _decide(world, c, nba_pb2.AGENT_DESKTOP),
        "Decide dialer": lambda c: _decide(world, c, nba_pb2.OUTBOUND_DIALER),
        "Decide dry_run": lambda c: _decide(world, c, nba_pb2.OUTBOUND_DIALER, dry_run=True),
        "RecordOutcome": lambda c: c.call(
            c.nba.RecordOutcome,
            nba_pb2.RecordOutcomeRequest(
                decision_id=world.decision.decision_id, action_id=action, outcome=nba_pb2.NOT_OFFERED
            ),
        ),
        "IngestEvent": lambda c: c.call(
            c.nba.IngestEvent,
            nba_pb2.IngestEventRequest(
                customer_id=world.ingest_customer,
                type="large_deposit",
                attributes={"amount": nba_pb2.AttributeValue(number_value=25000.0)},
            ),
        ),
        "ListRulesets": lambda c: c.call(c.review.ListRulesets, review_pb2.ListRulesetsRequest()),
        "GetRuleset": lambda c: c.call(c.review.GetRuleset, review_pb2.GetRulesetRequest(name="retail-banking")),
        "ExplainDecision": lambda c: c.call(
            c.review.ExplainDecision, review_pb2.ExplainDecisionRequest(decision_id=world.decision.decision_id)
        ),
        "WhyNot": lambda c: c.call(
            c.review.WhyNot, review_pb2.WhyNotRequest(decision_id=world.decision.decision_id, action_id=action)
        ),
        "Activate": lambda c: c.call(
            c.admin.Activate, admin_pb2.ActivateRequest(ruleset=_ruleset_variant(world, NEXT_VERSION)), timeout=120
        ),
        "Rollback": lambda c: c.call(c.admin.Rollback, admin_pb2.RollbackRequest(), timeout=120),
        "Status": lambda c: c.call(c.admin.Status, admin_pb2.StatusRequest()),
    }


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _call_the_table(world: World) -> None:
    """Every RPC by every caller, in the order of rpc_calls; answers and errors kept in world.responses."""
    for rpc, call in rpc_calls(world).items():
        row = []
        for name in CALLERS:
            try:
                world.responses[(rpc, name)] = call(world.callers[name])
                row.append(OK)
            except grpc.RpcError as exc:
                row.append(exc.code().name)
                world.responses[(rpc, name)] = exc
        world.found[rpc] = tuple(row)


def test_every_rpc_with_every_role(world: World) -> None:
    """The whole table at once: a mismatch lists every wrong cell, not only the first."""
    assert set(rpc_calls(world)) == set(WHO_MAY) == set(world.found)
    found = world.found
    wrong = [
        f"{rpc} by {name}: expected {want}, got {got} ({_details(world.responses[(rpc, name)])})"
        for rpc, row in WHO_MAY.items()
        for name, want, got in zip(CALLERS, row, found[rpc], strict=True)
        if want != got
    ]
    assert not wrong, "\n".join(wrong)


def _details(response: Any) -> str:
    return response.details() if isinstance(response, grpc.RpcError) else "answered"


def test_refusals_name_what_was_missing(world: World) -> None:
    responses = world.responses
    assert responses[("Decide dialer", "desktop")].details() == (
        "Decide on outbound_dialer needs the role dialer; you have: desktop"
    )
    assert responses[("Decide dry_run", "dialer")].details() == (
        "Decide with dry_run needs the role reviewer; you have: dialer"
    )
    assert responses[("Status", "ingest")].details() == "Status needs the role admin or reviewer; you have: ingest"
    assert responses[("Activate", "norole")].details() == "Activate needs the role admin; you have: no role"
    assert responses[("RecordOutcome", "reviewer")].details() == (
        "RecordOutcome needs the role desktop or dialer; you have: reviewer"
    )
    assert responses[("Decide desktop", "expired")].details() == "the token has expired"


def test_a_caller_without_a_client_certificate_is_refused_in_the_handshake(world: World) -> None:
    with tls_channel(world.pki, world.server.address, None) as channel:
        error = refusal(
            lambda: nba_pb2_grpc.NextBestActionStub(channel).Decide(
                decide_request(world.desk_customer, nba_pb2.AGENT_DESKTOP), timeout=10
            )
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_the_policy_does_not_name_holds_no_role(world: World) -> None:
    gateway = world.callers["gateway"]
    error = refusal(lambda: _decide(world, gateway, nba_pb2.AGENT_DESKTOP))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "Decide on agent_desktop needs the role desktop; you have: no role"


def test_out_of_scope_customers_and_decisions_look_unknown(world: World) -> None:
    """The mass-market desk gets for a customer of another segment exactly what it gets for a customer that
    does not exist, and the same for that customer's decision."""
    mass = world.callers["mass"]
    assert mass.call(mass.nba.Decide, decide_request(world.mass_customer, nba_pb2.AGENT_DESKTOP)).decision_id

    def decide(customer: str) -> grpc.RpcError:
        return refusal(lambda: mass.call(mass.nba.Decide, decide_request(customer, nba_pb2.AGENT_DESKTOP)))

    outside, unknown = decide(world.desk_customer), decide(UNKNOWN_CUSTOMER)
    assert outside.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert outside.details().replace(world.desk_customer, "<id>") == unknown.details().replace(UNKNOWN_CUSTOMER, "<id>")

    def outcome(decision_id: str) -> grpc.RpcError:
        request = nba_pb2.RecordOutcomeRequest(
            decision_id=decision_id, action_id=world.decision.actions[0].action_id, outcome=nba_pb2.NOT_OFFERED
        )
        return refusal(lambda: mass.call(mass.nba.RecordOutcome, request))

    missing = str(uuid.uuid4())
    theirs, nobodys = outcome(world.decision.decision_id), outcome(missing)
    assert theirs.code() == nobodys.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.details().replace(world.decision.decision_id, "<id>") == nobodys.details().replace(missing, "<id>")


def test_every_record_says_who_asked(world: World) -> None:
    """Decisions (in the export), outcomes (in the export) and events (in the store) keep the principal."""
    callers = world.callers
    dialer_decision = world.responses[("Decide dialer", "dialer")]
    decisions = world.server.wait_for_decisions([world.decision.decision_id, dialer_decision.decision_id])
    assert decisions[world.decision.decision_id]["caller"] == callers["desktop"].principal
    assert decisions[dialer_decision.decision_id]["caller"] == callers["dialer"].principal
    outcomes = [
        r for r in world.server.records() if r["kind"] == "outcome" and r["decision_id"] == world.decision.decision_id
    ]
    assert sorted(o["recorded_by"] for o in outcomes) == sorted(
        [callers["desktop"].principal, callers["dialer"].principal]
    )
    event_id = world.responses[("IngestEvent", "ingest")].event_id
    with sqlite3.connect(world.server.database) as conn:
        row = conn.execute("SELECT customer_id, recorded_by FROM events WHERE event_id = ?", (event_id,)).fetchone()
    assert row == (world.ingest_customer, callers["ingest"].principal)


def test_record_outcome_names_the_customer_only_to_whoever_got_the_decision(world: World) -> None:
    assert world.responses[("RecordOutcome", "desktop")].customer_id == world.desk_customer
    assert world.responses[("RecordOutcome", "dialer")].customer_id == ""


def test_deploys_record_who_asked(world: World) -> None:
    admin = world.callers["admin"].principal
    activated = world.responses[("Activate", "admin")]
    assert activated.active.version == NEXT_VERSION
    assert not activated.unchanged
    rolled_back = world.responses[("Rollback", "admin")]
    assert rolled_back.active.version != NEXT_VERSION
    state = json.loads((world.workdir / "var" / "rulesets" / "state.json").read_text())
    assert state["active"]["activated_by"] == admin
    assert state["active"]["source"] == "rollback"
    assert state["previous"]["activated_by"] == admin
    assert state["previous"]["version"] == NEXT_VERSION
    assert rolled_back.active.activated_by == admin
    assert rolled_back.previous.activated_by == admin
    lines = [e for e in world.server.log_events() if e.get("event") == "ruleset_activated"]
    assert [(e["origin"], e["by"]) for e in lines] == [("activate", admin), ("rollback", admin)]


def test_a_refused_deploy_records_who_asked(world: World) -> None:
    """A refused Activate is part of the audit trail too: who tried to put what in front of customers."""
    admin = world.callers["admin"]
    broken = admin_pb2.RulesetSource(file_name="broken.yaml", content="ruleset: [not closed")
    error = refusal(lambda: admin.call(admin.admin.Activate, admin_pb2.ActivateRequest(ruleset=broken), timeout=120))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = admin.call(admin.admin.Status, admin_pb2.StatusRequest())
    assert status.last_refusal.reason == "broken.yaml is not a valid ruleset"
    assert (status.last_refusal.origin, status.last_refusal.requested_by) == ("activate", admin.principal)
    state = json.loads((world.workdir / "var" / "rulesets" / "state.json").read_text())
    assert (state["last_refusal"]["origin"], state["last_refusal"]["by"]) == ("activate", admin.principal)
    lines = [e for e in world.server.log_events() if e.get("event") == "ruleset_refused"]
    assert (lines[-1]["origin"], lines[-1]["by"]) == ("activate", admin.principal)
    certificate = world.pki.client("admin-01")
    tls = ["--cacert", str(world.pki.ca_cert), "--cert", str(certificate.cert), "--key", str(certificate.key)]
    shown = subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "status", "--target", world.server.address, *tls],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(),
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"Z (activate by {admin.principal}): broken.yaml is not a valid ruleset" in shown.stdout, shown.stdout
    assert f"(rollback by {admin.principal})" in shown.stdout, shown.stdout


def test_health_and_reflection_stay_open(world: World) -> None:
    for name in ("gateway", "norole", "expired"):
        channel = world.callers[name].channel
        metadata = world.callers[name].metadata
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert "nba.v1.Review" in reflected(channel, metadata)


def reflected(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10, metadata=metadata
    )
    return {s.name for r in responses for s in r.list_services_response.service}


def test_a_reloaded_policy_applies_and_a_bad_one_is_kept_out(world: World) -> None:
    """SIGHUP reads the policy again: a new entry takes effect without a restart; a broken file is logged and the
    policy in force stays."""
    norole = world.callers["norole"]
    world.policy.write_text(
        POLICY + "  - name: visitors\n    match: {token_claim: roles, contains: visitor}\n    roles: [reviewer]\n"
    )
    world.server.process.send_signal(signal.SIGHUP)
    status = _eventually(lambda: norole.call(norole.admin.Status, admin_pb2.StatusRequest()))
    assert status.active.version
    world.policy.write_text(POLICY.replace("roles: [admin]", "roles: [administrator]"))
    world.server.process.send_signal(signal.SIGHUP)
    failed = _eventually(
        lambda: next(e for e in world.server.log_events() if e.get("event") == "access_policy_reload_failed")
    )
    line = next(n for n, text in enumerate(world.policy.read_text().splitlines(), 1) if "administrator" in text)
    assert failed["problems"] == [
        f"{world.policy}:{line}: caller 'release managers' roles.0: unknown role 'administrator' "
        "(roles: desktop, dialer, ingest, reviewer, admin)"
    ]
    assert norole.call(norole.admin.Status, admin_pb2.StatusRequest()).active.version  # still the reloaded policy
    world.policy.write_text(POLICY)


def _eventually(attempt: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except (grpc.RpcError, StopIteration):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_no_reflection_turns_it_off(tmp_path: Path) -> None:
    """On the quick start (plain text, loopback, no policy) with `--no-reflection`: reflection is gone, health
    and decisions are not."""
    server = start_server(tmp_path, "--no-reflection")
    try:
        channel = server.new_channel()
        error = refusal(lambda: reflected(channel))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert server.health_status() == health_pb2.HealthCheckResponse.SERVING
        assert any(e.get("event") == "access_open" for e in server.log_events())
    finally:
        server.stop(signal.SIGTERM)


def test_a_bad_policy_stops_the_start(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "access.yaml"
    bad.write_text(POLICY.replace("certificate_cn: desk-01", "certificate_cn: desk-01, token_subject: x"))
    result = subprocess.run(
        [str(NBA_SCRIPT), "serve", "--port", "0", "--workers", "1", "--rulesets", str(RULESET_PATH),
         *tls_args(world.pki, bad)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=server_env(), check=False,
    )  # fmt: skip
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "token_subject: x" in text)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-2:] == [
        "cannot start: the access policy is invalid:",
        f"{bad}:{line}: caller 'desktop gateway' match: give exactly one of certificate_cn, certificate_san, "
        "token_subject, token_claim (given: certificate_cn, token_subject)",
    ]


def test_workers_each_load_the_policy_and_a_bad_one_leaves_them_serving(world: World, tmp_path: Path) -> None:
    """With `--workers 2` every worker enforces the policy; SIGHUP rolls new workers, which load the file again,
    and when it is broken they fail to start and the old ones go on serving under the policy they have."""
    policy = tmp_path / "access.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    server = start_server(tmp_path / "run", "--workers", "2", *tls_args(world.pki, policy))
    callers = make_callers(world.pki, server.address)
    try:
        desk, dialer = callers["desktop"], callers["dialer"]
        assert desk.call(desk.nba.Decide, decide_request(world.desk_customer, nba_pb2.AGENT_DESKTOP)).decision_id
        error = refusal(
            lambda: dialer.call(dialer.nba.Decide, decide_request(world.desk_customer, nba_pb2.AGENT_DESKTOP))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        loaded = [e for e in server.log_events() if e.get("event") == "access_policy_loaded"]
        assert sorted(e["worker"] for e in loaded) == [0, 1]
        policy.write_text(POLICY.replace("roles: [dialer]", "roles: [dialler]"), encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        refused = _eventually(
            lambda: next(e for e in server.log_events() if e.get("event") == "reload_refused"), timeout=60
        )
        line = next(n for n, text in enumerate(policy.read_text().splitlines(), 1) if "dialler" in text)
        assert refused["error"] == (
            f"the access policy is invalid:\n{policy}:{line}: caller 'dialers' roles.0: unknown role 'dialler' "
            "(roles: desktop, dialer, ingest, reviewer, admin)"
        )
        # The policy in force still makes the dialer a dialer, which the broken file would not have.
        dialed = dialer.call(dialer.nba.Decide, decide_request(world.desk_customer, nba_pb2.OUTBOUND_DIALER))
        assert dialed.decision_id
    finally:
        for caller in callers.values():
            caller.channel.close()
        server.stop(signal.SIGTERM)
