"""The access policy and authorisation: the loader reports every problem with file and line, identities
resolve to roles and scopes, one table says who may make which call, and the settings refuse a server that
would be open beyond the local quick start. Also what accountability needs from the embedded store: callers in
records and outcomes, and a schema-2 file upgraded in place."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from nba_service._proto.nba.v1 import admin_pb2, nba_pb2, review_pb2
from nba_service.domain.model import Channel
from nba_service.domain.profile import Event, Outcome, OutcomeKind
from nba_service.domain.records import DecisionRecord, RulesetRef, outcome_from_json, outcome_to_json
from nba_service.errors import AccessPolicyInvalid, PermissionDenied, Unauthenticated
from nba_service.security.access import AccessControl
from nba_service.security.authn import Authenticator, TokenRules
from nba_service.security.authz import PERMISSIONS, Ask, authorize, is_open
from nba_service.security.identity import ANONYMOUS, Identity
from nba_service.security.policy import (
    ALL_ROLES,
    Caller,
    Role,
    Scope,
    load_access_policy,
    load_access_policy_text,
)
from nba_service.settings import Settings
from nba_service.stores import sqlite as sqlite_module
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import RULESET_PATH
from tests.security_pki import AUDIENCE, ISSUER, Pki, make_pki

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "operators" / "access-policy.example.yaml"

GOOD = """\
description: Who may call the next-best-action service.
callers:
  - name: desktop gateway
    match: {certificate_cn: desk-01}
    roles: [desktop]
  - name: mass-market desks
    match: {certificate_san: "URI:spiffe://bank/desk-mass"}
    roles: [desktop]
    scope: {segments: [mass]}
  - name: dialers
    match: {token_claim: roles, contains: dialer}
    roles: [dialer]
  - name: tenant desks
    match: {token_claim: roles, contains: desktop}
    roles: [desktop]
    scope:
      tenant: {attribute: tenant_id, claim: tenant}
  - name: bank-a ingest
    match: {token_subject: ingest-svc}
    roles: [ingest]
    scope:
      tenant: {attribute: tenant_id, value: bank-a}
  - name: reviewers
    match: {token_claim: dept, equals: compliance}
    roles: [reviewer]
  - name: operators
    match: {certificate_cn: admin-01}
    roles: [admin, reviewer]
"""


def cert(cn: str, *names: str) -> Identity:
    return Identity(f"cert:CN={cn},O=Bank", "certificate", cn, names)


def token(sub: str, **claims: object) -> Identity:
    return Identity(f"jwt:https://idp#{sub}", "token", sub, (), {"sub": sub, **claims})


def problems_of(text: str) -> list[str]:
    with pytest.raises(AccessPolicyInvalid) as info:
        load_access_policy_text(text, "access.yaml")
    return [str(p) for p in info.value.policy_problems]


def line_of(text: str, marker: str) -> int:
    """The 1-based line of the first line holding `marker`: where a problem must be reported."""
    return next(n for n, line in enumerate(text.splitlines(), start=1) if marker in line)


class TestLoader:
    def test_a_good_policy_loads_every_entry(self) -> None:
        policy = load_access_policy_text(GOOD, "access.yaml")
        assert [e.name for e in policy.callers] == [
            "desktop gateway",
            "mass-market desks",
            "dialers",
            "tenant desks",
            "bank-a ingest",
            "reviewers",
            "operators",
        ]
        assert policy.callers[1].segments == frozenset({"mass"})
        tenant = policy.callers[3].tenant
        assert tenant is not None
        assert tenant.claim == "tenant"
        assert policy.callers[6].roles == {Role.ADMIN, Role.REVIEWER}
        assert len(policy.content_hash) == 64

    def test_the_documented_example_loads(self) -> None:
        policy = load_access_policy(EXAMPLE)
        assert policy.callers
        assert {role for entry in policy.callers for role in entry.roles} == set(ALL_ROLES)

    @pytest.mark.parametrize(
        ("text", "marker", "expected"),
        [
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    roles: [desktop, superuser]\n",
                "superuser",
                "caller 'x' roles.1: unknown role 'superuser' (roles: desktop, dialer, ingest, reviewer, admin)",
                id="unknown-role",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    role: [desktop]\n",
                "role:",
                "caller 'x' role: unknown key 'role' (check the spelling; allowed here: name, description, match, "
                "roles, scope)",
                id="misspelt-key",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a, token_subject: b}\n    roles: [desktop]\n",
                "match:",
                "caller 'x' match: give exactly one of certificate_cn, certificate_san, token_subject, token_claim "
                "(given: certificate_cn, token_subject)",
                id="two-matches",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {contains: a}\n    roles: [desktop]\n",
                "match:",
                "caller 'x' match: give exactly one of certificate_cn, certificate_san, token_subject, token_claim "
                "(given: none of them)",
                id="no-match",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {token_subject: a, equals: b}\n    roles: [desktop]\n",
                "match:",
                "caller 'x' match.equals: equals only goes with token_claim",
                id="equals-without-claim",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {token_claim: roles}\n    roles: [desktop]\n",
                "match:",
                "caller 'x' match: token_claim needs exactly one of contains (an item of the claim) or equals "
                "(its value)",
                id="claim-without-test",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    roles: [desktop]\n"
                "    scope:\n      tenant: {attribute: tenant_id, value: a, claim: t}\n",
                "tenant:",
                "caller 'x' scope.tenant: give exactly one of value (a fixed tenant) or claim (the token claim that "
                "names it)",
                id="tenant-value-and-claim",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    roles: [desktop]\n"
                "    scope:\n      tenant:\n        attribute: tenant_id\n        claim: tenant\n",
                "claim: tenant",
                "caller 'x' scope.tenant.claim: a tenant read from a token claim needs a token match, not "
                "certificate_cn",
                id="claim-tenant-for-a-certificate",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    roles: [desktop]\n"
                "    scope:\n      segments: []\n",
                "segments",
                "caller 'x' scope.segments: [] should be non-empty",
                id="empty-segments",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n    roles: [desktop]\n"
                "  - name: x  # again\n    match: {certificate_cn: b}\n    roles: [dialer]\n",
                "# again",
                "caller 'x' name: duplicate name 'x' (first at caller #1)",
                id="duplicate-name",
            ),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a}\n",
                "name: x",
                "caller 'x': 'roles' is a required property",
                id="no-roles",
            ),
            pytest.param("callers: []\n", "callers", "callers: [] should be non-empty", id="no-callers"),
            pytest.param("callerz: []\n", "callerz", "'callers' is a required property", id="no-callers-key"),
            pytest.param(
                "callers:\n  - name: x\n    match: {certificate_cn: a\n    roles: [desktop]\n",
                "roles",
                "YAML syntax: ",
                id="yaml-syntax",
            ),
        ],
    )
    def test_each_problem_is_reported_with_its_line(self, text: str, marker: str, expected: str) -> None:
        found = problems_of(text)
        line = line_of(text, marker)
        assert any(p.startswith(f"access.yaml:{line}: {expected}") for p in found), found

    def test_every_problem_is_reported_at_once_in_file_order(self) -> None:
        text = textwrap.dedent("""\
            callers:
              - name: a
                match: {certificate_cn: a}
                roles: [root]
              - name: b
                match: {token_claim: roles, contains: dialer}
              - name: c
                match: {certificate_cn: c}
                roles: [dialer]
                scope: {segmnets: [mass]}
            """)
        found = problems_of(text)
        assert [p.split(":")[1] for p in found] == [
            str(line_of(text, "[root]")),
            str(line_of(text, "name: b")),
            str(line_of(text, "segmnets")),
        ]

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"- just\n- a list\n", "access.yaml: the file must hold a mapping with a list of callers"),
            (b"callers: \xff\n", "access.yaml: not UTF-8 text"),
        ],
    )
    def test_files_that_are_not_policies(self, data: bytes, expected: str) -> None:
        with pytest.raises(AccessPolicyInvalid) as info:
            load_access_policy_text(data, "access.yaml")
        assert str(info.value.policy_problems[0]).startswith(expected)
        assert info.value.message.startswith("the access policy is invalid:\naccess.yaml")

    def test_a_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(AccessPolicyInvalid) as info:
            load_access_policy(tmp_path / "nope.yaml")
        assert (
            str(info.value.policy_problems[0])
            == f"{tmp_path / 'nope.yaml'}: cannot read file: No such file or directory"
        )


class TestResolve:
    policy = load_access_policy_text(GOOD, "access.yaml")

    @pytest.mark.parametrize(
        ("identity", "roles", "scope"),
        [
            (cert("desk-01"), {Role.DESKTOP}, Scope()),
            (cert("desk-02"), set(), Scope()),
            (cert("any", "URI:spiffe://bank/desk-mass"), {Role.DESKTOP}, Scope(frozenset({"mass"}))),
            # A SAN may be written without its type.
            (cert("any", "DNS:other", "URI:spiffe://bank/desk-mass"), {Role.DESKTOP}, Scope(frozenset({"mass"}))),
            (cert("admin-01"), {Role.ADMIN, Role.REVIEWER}, Scope()),
            # A token never matches a certificate entry, whatever its subject.
            (token("desk-01"), set(), Scope()),
            (token("x", roles=["dialer"]), {Role.DIALER}, Scope()),
            (token("x", roles="reader dialer"), {Role.DIALER}, Scope()),
            (token("x", roles=["dialers"]), set(), Scope()),
            (
                token("x", roles=["dialer", "desktop"], tenant="bank-b"),
                {Role.DIALER, Role.DESKTOP},
                Scope(tenants=(("tenant_id", "bank-b"),)),
            ),
            (
                token("x", roles=["desktop"]),
                {Role.DESKTOP},
                Scope(problem="your token lacks the claim 'tenant' that your tenant is read from"),
            ),
            (token("ingest-svc"), {Role.INGEST}, Scope(tenants=(("tenant_id", "bank-a"),))),
            (token("x", dept="compliance"), {Role.REVIEWER}, Scope()),
            (token("x", dept=["compliance"]), set(), Scope()),
            (ANONYMOUS, set(), Scope()),
        ],
    )
    def test_identity_to_roles_and_scope(self, identity: Identity, roles: set[Role], scope: Scope) -> None:
        caller = self.policy.resolve(identity)
        assert caller.principal == identity.principal
        assert caller.roles == roles
        assert caller.scope == scope

    def test_scopes_of_every_matching_entry_narrow_together(self) -> None:
        policy = load_access_policy_text(
            textwrap.dedent("""\
                callers:
                  - name: all dialers
                    match: {token_claim: roles, contains: dialer}
                    roles: [dialer]
                  - name: alice
                    match: {token_subject: alice}
                    roles: [desktop]
                    scope: {segments: [mass, affluent]}
                  - name: premier team
                    match: {token_claim: team, equals: premier}
                    roles: [desktop]
                    scope: {segments: [affluent, premier]}
                """)
        )
        alice = policy.resolve(token("alice", roles=["dialer"], team="premier"))
        assert alice.roles == {Role.DIALER, Role.DESKTOP}
        assert alice.scope.segments == {"affluent"}
        assert alice.entries == ("all dialers", "alice", "premier team")

    def test_nested_claims_are_read_by_a_dotted_name(self) -> None:
        policy = load_access_policy_text(
            "callers:\n  - name: k\n    match: {token_claim: realm_access.roles, contains: ingest}\n"
            "    roles: [ingest]\n"
        )
        assert policy.resolve(token("x", realm_access={"roles": ["ingest"]})).roles == {Role.INGEST}
        assert policy.resolve(token("x", realm_access={"roles": "ingest"})).roles == {Role.INGEST}
        assert policy.resolve(token("x", realm_access=["ingest"])).roles == set()


class TestScope:
    @pytest.mark.parametrize(
        ("scope", "attributes", "admitted"),
        [
            (Scope(), {}, True),
            (Scope(frozenset({"mass"})), {"segment": "mass"}, True),
            (Scope(frozenset({"mass"})), {"segment": "premier"}, False),
            (Scope(frozenset({"mass"})), {}, False),
            (Scope(tenants=(("tenant_id", "a"),)), {"tenant_id": "a", "segment": "x"}, True),
            (Scope(tenants=(("tenant_id", "a"),)), {"tenant_id": "b"}, False),
            (Scope(tenants=(("tenant_id", "7"),)), {"tenant_id": 7}, True),
            (Scope(tenants=(("tenant_id", "True"),)), {"tenant_id": True}, False),
            (Scope(tenants=(("tenant_id", "a"),)), {}, False),
            (Scope(problem="no claim"), {"segment": "mass"}, False),
        ],
    )
    def test_admits(self, scope: Scope, attributes: dict[str, object], admitted: bool) -> None:
        assert scope.admits(attributes) is admitted  # type: ignore[arg-type]


NBA = "/nba.v1.NextBestAction/"
REVIEW = "/nba.v1.Review/"
ADMIN = "/nba.v1.RulesetAdmin/"
DESK, DIAL = Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER

# (the call, roles any one of which allows it, the words a refusal names it by)
WHO_MAY = [
    (Ask(NBA + "Decide", DESK), {"desktop"}, "Decide on agent_desktop"),
    (Ask(NBA + "Decide", DIAL), {"dialer"}, "Decide on outbound_dialer"),
    (Ask(NBA + "Decide", DESK, dry_run=True), {"reviewer"}, "Decide with dry_run"),
    (Ask(NBA + "Decide", DIAL, dry_run=True), {"reviewer"}, "Decide with dry_run"),
    (Ask(NBA + "Decide"), {"desktop", "dialer"}, "Decide"),
    (Ask(NBA + "RecordOutcome"), {"desktop", "dialer"}, "RecordOutcome"),
    (Ask(NBA + "IngestEvent"), {"ingest"}, "IngestEvent"),
    (Ask(NBA + "DecideBatch"), {"dialer"}, "DecideBatch"),
    (Ask(REVIEW + "ListRulesets"), {"reviewer"}, "ListRulesets"),
    (Ask(REVIEW + "GetRuleset"), {"reviewer"}, "GetRuleset"),
    (Ask(REVIEW + "ExplainDecision"), {"reviewer"}, "ExplainDecision"),
    (Ask(REVIEW + "WhyNot"), {"reviewer"}, "WhyNot"),
    (Ask(ADMIN + "Activate"), {"admin"}, "Activate"),
    (Ask(ADMIN + "Rollback"), {"admin"}, "Rollback"),
    (Ask(ADMIN + "Status"), {"admin", "reviewer"}, "Status"),
]


class TestAuthorize:
    @pytest.mark.parametrize(("ask", "allowed", "what"), WHO_MAY, ids=[w[2] + str(i) for i, w in enumerate(WHO_MAY)])
    @pytest.mark.parametrize("role", [*sorted(Role), None])
    def test_every_role_against_every_call(self, ask: Ask, allowed: set[str], what: str, role: Role | None) -> None:
        roles = frozenset() if role is None else frozenset({role})
        caller = Caller("p", roles)
        if role in allowed:
            authorize(caller, ask)
            return
        with pytest.raises(PermissionDenied) as info:
            authorize(caller, ask)
        needed = " or ".join(sorted(allowed))
        have = "no role" if role is None else role.value
        assert info.value.message == f"{what} needs the role {needed}; you have: {have}"

    def test_the_refusal_lists_every_role_held(self) -> None:
        with pytest.raises(PermissionDenied) as info:
            authorize(Caller("p", frozenset({Role.INGEST, Role.DESKTOP})), Ask(NBA + "Decide", DIAL))
        assert info.value.message == "Decide on outbound_dialer needs the role dialer; you have: desktop, ingest"

    def test_an_unresolved_scope_refuses_every_call(self) -> None:
        caller = Caller("p", frozenset({Role.DESKTOP}), Scope(problem="your token lacks the claim 'tenant'"))
        with pytest.raises(PermissionDenied) as info:
            authorize(caller, Ask(NBA + "Decide", DESK))
        assert info.value.message == "Decide on agent_desktop: your token lacks the claim 'tenant'"

    def test_health_and_reflection_are_open_and_anything_unlisted_is_closed(self) -> None:
        for method in (
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ):
            assert is_open(method)
            authorize(Caller("p", frozenset()), Ask(method))
        with pytest.raises(PermissionDenied, match=r"^Frobnicate is open to no role$"):
            authorize(Caller.trusted("p"), Ask(NBA + "Frobnicate"))

    def test_every_rpc_the_contract_declares_has_a_rule(self) -> None:
        """A new RPC must be given to a role here before anyone may call it."""
        declared = {
            f"/{service.full_name}/{method.name}"
            for module in (nba_pb2, review_pb2, admin_pb2)
            for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods
        }
        assert declared <= set(PERMISSIONS)
        assert declared >= {m for m in PERMISSIONS if not m.endswith("/DecideBatch")}


class TestAccessControl:
    def test_without_a_policy_everyone_may_do_everything(self) -> None:
        access = AccessControl(Authenticator(), None)
        caller = access.caller((), {})
        assert caller == Caller.trusted("anonymous")

    def test_with_a_policy_an_anonymous_caller_is_unauthenticated(self) -> None:
        access = AccessControl(Authenticator(), load_access_policy_text(GOOD))
        with pytest.raises(Unauthenticated, match="no credentials"):
            access.caller((), {})

    async def test_a_bad_file_on_reload_keeps_the_policy_in_force(self, tmp_path: Path) -> None:
        path = tmp_path / "access.yaml"
        path.write_text(GOOD)
        access = AccessControl(Authenticator(), load_access_policy(path), path)
        before = access.policy
        path.write_text(GOOD.replace("roles: [dialer]", "roles: [dialler]"))
        with capture_logs() as logs:
            assert not await access.reload()
        assert access.policy is before
        failed = next(e for e in logs if e["event"] == "access_policy_reload_failed")
        line = line_of(path.read_text(), "dialler")
        assert failed["problems"] == [
            f"{path}:{line}: caller 'dialers' roles.0: unknown role 'dialler' "
            "(roles: desktop, dialer, ingest, reviewer, admin)"
        ]
        path.write_text(GOOD.replace("roles: [dialer]", "roles: [dialer, ingest]"))
        with capture_logs() as logs:
            assert await access.reload()
        assert access.policy is not before
        assert access.policy is not None
        assert access.policy.callers[2].roles == {Role.DIALER, Role.INGEST}
        assert [e["event"] for e in logs] == ["access_policy_reloaded"]


class TestCallersKeptForTheirCredentials:
    """Checking credentials is most of what authorisation costs, so a caller is kept for its credentials: never
    past its token's expiry, and never across a policy reload."""

    @pytest.fixture(scope="class")
    @classmethod
    def pki(cls, tmp_path_factory: pytest.TempPathFactory) -> Pki:
        return make_pki(tmp_path_factory.mktemp("pki"), clients=())

    def _access(self, pki: Pki, policy: str = GOOD, path: Path | None = None) -> AccessControl:
        rules = TokenRules(ISSUER, AUDIENCE, leeway_seconds=0)
        return AccessControl(Authenticator(jwks=pki.jwks, rules=rules), load_access_policy_text(policy), path)

    def test_a_kept_caller_never_outlives_its_token(self, pki: Pki) -> None:
        access = self._access(pki)
        expires = int(time.time()) + 2
        metadata = (("authorization", f"Bearer {pki.token(sub='d', roles=['dialer'], exp=expires)}"),)
        assert access.caller(metadata, {}).roles == {Role.DIALER}
        assert access.caller(metadata, {}).roles == {Role.DIALER}
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        with pytest.raises(Unauthenticated, match="the token has expired"):
            access.caller(metadata, {})

    async def test_a_reload_forgets_every_kept_caller(self, pki: Pki, tmp_path: Path) -> None:
        path = tmp_path / "access.yaml"
        path.write_text(GOOD)
        access = self._access(pki, path=path)
        metadata = (("authorization", f"Bearer {pki.token(sub='d', roles=['dialer'])}"),)
        assert access.caller(metadata, {}).roles == {Role.DIALER}
        path.write_text(GOOD.replace("roles: [dialer]", "roles: [dialer, ingest]"))
        assert await access.reload()
        assert access.caller(metadata, {}).roles == {Role.DIALER, Role.INGEST}


class TestSettings:
    """Open (no policy) only for plain text on loopback; a policy only where callers can prove who they are."""

    @pytest.fixture(scope="class")
    @classmethod
    def pki_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return make_pki(tmp_path_factory.mktemp("pki"), clients=()).directory

    def _settings(self, **values: object) -> Settings:
        return Settings(rulesets=RULESET_PATH, **values)  # type: ignore[arg-type]

    def test_the_quick_start_runs_open(self) -> None:
        assert self._settings().access_policy is None
        assert self._settings(host="::1").access_policy is None

    @pytest.mark.parametrize(
        ("values", "problem"),
        [
            ({"host": "0.0.0.0", "insecure": True}, "is required off loopback (--host 0.0.0.0)"),
            ({"tls": True}, "is required with TLS or bearer tokens"),
            ({"jwks": True}, "is required with TLS or bearer tokens"),
            ({"policy": True}, "needs callers who prove who they are"),
            ({"policy": True, "tls": True}, "needs callers who prove who they are"),
        ],
    )
    def test_refused(self, pki_dir: Path, tmp_path: Path, values: dict[str, object], problem: str) -> None:
        given: dict[str, object] = {k: v for k, v in values.items() if k in ("host", "insecure")}
        if values.get("tls"):
            given |= {"tls_cert": pki_dir / "server.pem", "tls_key": pki_dir / "server.key"}
        if values.get("jwks"):
            given |= {"jwks_file": pki_dir / "jwks.json", "jwt_issuer": "i", "jwt_audience": "a"}
        if values.get("policy"):
            (tmp_path / "access.yaml").write_text(GOOD)
            given["access_policy"] = tmp_path / "access.yaml"
        with pytest.raises(ValidationError) as info:
            self._settings(**given)
        assert f"--access-policy / NBA_ACCESS_POLICY {problem}" in str(info.value)

    def test_a_policy_with_client_certificates_or_tokens(self, pki_dir: Path, tmp_path: Path) -> None:
        (tmp_path / "access.yaml").write_text(GOOD)
        policy = tmp_path / "access.yaml"
        mutual = {
            "tls_cert": pki_dir / "server.pem",
            "tls_key": pki_dir / "server.key",
            "tls_client_ca": pki_dir / "ca.pem",
        }
        tokens = {"jwks_file": pki_dir / "jwks.json", "jwt_issuer": "i", "jwt_audience": "a"}
        assert self._settings(access_policy=policy, **mutual).access_policy == policy
        assert self._settings(access_policy=policy, **tokens).access_policy == policy
        with pytest.raises(ValidationError, match="does not exist"):
            self._settings(access_policy=tmp_path / "nope.yaml", **tokens)


NOW = datetime(2031, 5, 14, 13, 37, 21, tzinfo=UTC)


def _record(decision_id: str, caller: str) -> DecisionRecord:
    return DecisionRecord(
        decision_id,
        NOW,
        "CUST-000001",
        Channel.AGENT_DESKTOP,
        RulesetRef("r", "1.0.0", "a" * 64),
        "e",
        (),
        (),
        (),
        1.0,
        caller=caller,
    )


class TestRecordsKeepTheCaller:
    def test_the_record_format_round_trips_and_reads_old_records(self) -> None:
        record = _record("d-1", "cert:CN=desk-01,O=Bank")
        data = record.to_json()
        assert data["caller"] == "cert:CN=desk-01,O=Bank"
        assert DecisionRecord.from_json(json.loads(json.dumps(data))) == record
        del data["caller"]  # written before callers were recorded
        assert DecisionRecord.from_json(data).caller == ""
        outcome = Outcome("d-1", "C", "a", Channel.AGENT_DESKTOP, OutcomeKind.ACCEPTED, NOW, "", "jwt:i#bob")
        assert outcome_from_json(json.loads(json.dumps(outcome_to_json(outcome)))) == outcome

    async def test_a_schema_2_file_upgrades_and_keeps_who_reported_what(self, tmp_path: Path) -> None:
        path = tmp_path / "v2.db"
        with sqlite3.connect(path) as conn:
            for statement in (*sqlite_module._SCHEMA, *sqlite_module._MIGRATIONS[2]):
                conn.execute(statement)
            # Files from before schema 4 have no phone numbers.
            sqlite_module._load(
                conn, (replace(p, phones=()) for p in generate_profiles(3, now=NOW, seed=DEFAULT_SEED)), NOW
            )
            conn.execute("PRAGMA user_version = 2")
            events_before = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        store = SqliteStore(path, event_types=("large_deposit",), history=timedelta(days=90), clock=lambda: NOW)
        with capture_logs() as logs:
            await store.open()
        assert {
            "event": "embedded_database_upgraded",
            "schema_from": 2,
            "schema_to": sqlite_module.SCHEMA_VERSION,
            "log_level": "info",
        } in logs
        try:
            await store.write([_record("11111111-1111-1111-1111-111111111111", "jwt:i#desk")], ())
            summary = await store.find("11111111-1111-1111-1111-111111111111")
            assert summary is not None
            assert summary.caller == "jwt:i#desk"
            event_id = await store.add_event("CUST-000001", Event("large_deposit", NOW, {"amount": 1.0}), "jwt:i#feed")
            outcome = Outcome(
                "11111111-1111-1111-1111-111111111111",
                "CUST-000001",
                "a",
                Channel.AGENT_DESKTOP,
                OutcomeKind.ACCEPTED,
                NOW,
                "",
                "jwt:i#desk",
            )
            await store.add_outcome(outcome)
            exported = [item async for item in store.export(None, None, None)]
        finally:
            await store.close()
        assert [e["caller"] for e in exported if e["kind"] == "decision"] == ["jwt:i#desk"]
        assert [e["recorded_by"] for e in exported if e["kind"] == "outcome"] == ["jwt:i#desk"]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
            rows = dict(conn.execute("SELECT event_id, recorded_by FROM events").fetchall())
        assert rows[event_id] == "jwt:i#feed"
        assert list(rows.values()).count(None) == events_before


def test_every_role_is_in_the_schema() -> None:
    schema = json.loads((REPO / "nba_service" / "security" / "access.schema.json").read_text())
    roles = schema["properties"]["callers"]["items"]["properties"]["roles"]["items"]["enum"]
    assert roles == [role.value for role in Role]
