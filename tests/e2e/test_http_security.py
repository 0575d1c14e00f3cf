"""The HTTP/JSON API under the same identities, roles, limits and review calls as gRPC, against a real
`nba serve --http-port 0` over mutual TLS with a JWKS and an access policy."""

from __future__ import annotations

import dataclasses
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e._roles_support import CERTIFICATES, POLICY, tls_args
from tests.e2e._support import ServerHandle, start_server, utcnow
from tests.security_pki import ISSUER, Pki, make_pki

pytestmark = pytest.mark.e2e


@dataclasses.dataclass
class World:
    pki: Pki
    server: ServerHandle
    tokens: dict[str, str]
    customer: str  # outside the mass segment, with a dialer action

    def client(self, cert: str | None = "gateway") -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if cert is not None:
            pair = self.pki.client(cert)
            context.load_cert_chain(str(pair.cert), str(pair.key))
        assert self.server.http_address is not None, "the serving event names no http_address"
        return httpx.Client(base_url=f"https://{self.server.http_address}", verify=context, timeout=30)

    def headers(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pki = make_pki(tmp_path_factory.mktemp("pki"), clients=CERTIFICATES)
    workdir = tmp_path_factory.mktemp("nba-http-roles")
    policy = workdir / "access.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    server = start_server(workdir, *tls_args(pki, policy), "--http-port", "0")
    tokens = {
        "dialer": pki.token(sub="dialer-7", roles=["dialer"]),
        "reviewer": pki.token("ec", sub="alice"),
        "norole": pki.token(sub="visitor-1", roles=["visitor"]),
        "expired": pki.token(sub="dialer-8", roles=["dialer"], iat=1_700_000_000, exp=1_700_003_600),
        "stranger": pki.token("other", sub="mallory", roles=["dialer"]),
    }
    world = World(pki, server, tokens, "")
    segments = {p.customer_id: str(p.attributes.get("segment")) for p in read_sample(SAMPLE_PATH, utcnow())}
    with world.client() as http:
        for customer in sorted(c for c, s in segments.items() if s != "mass"):
            response = http.post(
                "/v1/decide",
                json={"customer_id": customer, "channel": "OUTBOUND_DIALER"},
                headers=world.headers("dialer"),
            )
            assert response.status_code == 200, response.text
            if response.json()["actions"]:
                world.customer = customer
                break
    assert world.customer, "no sample customer outside the mass segment gets a dialer action"
    try:
        yield world
    finally:
        server.stop(signal.SIGTERM)


def _decide(world: World, http: httpx.Client, who: str, channel: str = "OUTBOUND_DIALER") -> httpx.Response:
    return http.post("/v1/decide", json={"customer_id": world.customer, "channel": channel}, headers=world.headers(who))


def test_no_token_bad_tokens_and_no_role(world: World) -> None:
    """401 for no, expired or foreign credentials (with the Bearer challenge), 403 naming the role needed."""
    with world.client() as http:
        bare = http.post("/v1/decide", json={"customer_id": world.customer, "channel": "OUTBOUND_DIALER"})
        assert bare.status_code == 403, bare.text  # a client certificate the policy does not name holds no role
        assert bare.json()["code"] == "PERMISSION_DENIED"
        for who in ("expired", "stranger"):
            refused = _decide(world, http, who)
            assert refused.status_code == 401, (who, refused.text)
            assert refused.json()["code"] == "UNAUTHENTICATED"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        garbage = http.post(
            "/v1/decide", json={"customer_id": world.customer}, headers={"authorization": "Bearer not.a.jwt"}
        )
        assert garbage.status_code == 401
        norole = _decide(world, http, "norole")
        assert norole.status_code == 403
        assert "dialer" in norole.json()["message"]


def test_a_client_certificate_identifies_the_caller_as_on_grpc(world: World) -> None:
    """The certificate verified in the handshake is the caller: desk-01 decides on the desktop, with no token."""
    with world.client(cert="desk-01") as http:
        decided = http.post("/v1/decide", json={"customer_id": world.customer, "channel": "AGENT_DESKTOP"})
        assert decided.status_code == 200, decided.text
        dialer = http.post("/v1/decide", json={"customer_id": world.customer, "channel": "OUTBOUND_DIALER"})
        assert dialer.status_code == 403
    records = world.server.wait_for_decisions([decided.json()["decision_id"]])
    assert records[decided.json()["decision_id"]]["caller"] == f"cert:{world.pki.client('desk-01').subject}"


def test_roles_as_on_grpc(world: World) -> None:
    with world.client() as http:
        assert _decide(world, http, "dialer").status_code == 200
        desk = _decide(world, http, "dialer", channel="AGENT_DESKTOP")
        assert desk.status_code == 403, desk.text
        assert "desktop" in desk.json()["message"]
        assert http.get("/v1/review/rulesets", headers=world.headers("dialer")).status_code == 403
        event = http.post(
            "/v1/events",
            json={"customer_id": world.customer, "type": "card_travel_block", "attributes": {}},
            headers=world.headers("reviewer"),
        )
        assert event.status_code == 403
        assert http.get("/healthz").json() == {"status": "SERVING"}


def test_a_connection_without_a_client_certificate_is_refused(world: World) -> None:
    with world.client(cert=None) as http, pytest.raises(httpx.TransportError):
        http.get("/healthz")


def test_review_over_http(world: World) -> None:
    """A reviewer lists versions, reads one, and has a recorded decision explained, as over gRPC."""
    with world.client() as http:
        decision = _decide(world, http, "dialer").json()
        reviewer = world.headers("reviewer")
        listed = http.get("/v1/review/rulesets", headers=reviewer)
        assert listed.status_code == 200, listed.text
        versions = listed.json()["rulesets"]
        assert [v for v in versions if v["active"]], versions
        active = next(v for v in versions if v["active"])
        # This server started on its files: nobody asked for it.
        assert (active["last_activated_by"], active["last_activation_origin"]) == ("", "start-up"), active
        by_hash = http.get("/v1/review/ruleset", params={"hash": active["hash"][:12]}, headers=reviewer)
        assert by_hash.status_code == 200, by_hash.text
        text = by_hash.json()
        assert text["ruleset"]["version"] == active["version"]
        assert text["markdown"].startswith("#")
        assert "rules:" in text["source"]
        explained = http.get(f"/v1/review/decisions/{decision['decision_id']}/explanation", headers=reviewer)
        assert explained.status_code == 200, explained.text
        body = explained.json()
        assert body["customer_id"] == world.customer
        assert body["channel"] == "OUTBOUND_DIALER"
        assert [a["action_id"] for a in body["actions"]] == [a["action_id"] for a in decision["actions"]]
        assert body["explanation"]["summary"]
        assert body["record"]["caller"] == f"jwt:{ISSUER}#dialer-7"
        offered = decision["actions"][0]["action_id"]
        why = http.get(f"/v1/review/decisions/{decision['decision_id']}/why-not/{offered}", headers=reviewer)
        assert why.status_code == 200, why.text
        assert why.json()["offered"] is True
        assert why.json()["stage"] == "offered"


def test_review_errors_name_fields(world: World) -> None:
    reviewer = world.headers("reviewer")
    with world.client() as http:
        missing = http.get("/v1/review/ruleset", headers=reviewer)
        assert missing.status_code == 400
        assert {f["field"] for f in missing.json()["fields"]} == {"name", "hash"}
        nul = http.get("/v1/review/ruleset", params={"name": "a\x00b"}, headers=reviewer)
        assert nul.status_code == 400
        assert nul.json()["fields"][0]["field"] == "name"
        unknown = http.get("/v1/review/decisions/no-such-decision/explanation", headers=reviewer)
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "NOT_FOUND"
        bad_id = http.get("/v1/review/decisions/%20bad/why-not/x", headers=reviewer)
        assert bad_id.status_code == 400
        assert bad_id.json()["fields"][0]["field"] == "decision_id"


def test_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    """One limit per caller and process whichever protocol it speaks: HTTP refusals carry Retry-After."""
    server = start_server(tmp_path, "--http-port", "0", "--rate-limit", "2", "--rate-burst", "2")
    try:
        assert server.http_address is not None
        statuses: list[Any] = []
        with httpx.Client(base_url=f"http://{server.http_address}", timeout=30) as http:
            for _ in range(8):
                response = http.post("/v1/decide", json={"customer_id": "CUST-000001", "channel": "AGENT_DESKTOP"})
                statuses.append(response.status_code)
                if response.status_code == 429:
                    assert response.json()["code"] == "RESOURCE_EXHAUSTED"
                    assert int(response.headers["retry-after"]) >= 1
            assert http.get("/healthz").status_code == 200  # probes are never limited
        assert 429 in statuses, statuses
        assert statuses.count(200) >= 2, statuses  # the burst goes through
    finally:
        server.stop(signal.SIGTERM)
