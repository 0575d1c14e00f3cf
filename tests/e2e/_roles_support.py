"""What the role tests share with their PostgreSQL slice: the policy, one client per role over real TLS, and
the server's security flags."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from nba_service._proto.nba.v1 import admin_pb2_grpc, nba_pb2, nba_pb2_grpc, review_pb2_grpc
from tests.security_pki import AUDIENCE, ISSUER, Pki

POLICY = """\
callers:
  - name: desktop gateway
    match: {certificate_cn: desk-01}
    roles: [desktop]
  - name: mass-market desk
    match: {certificate_cn: desk-mass}
    roles: [desktop]
    scope: {segments: [mass]}
  - name: dialers
    match: {token_claim: roles, contains: dialer}
    roles: [dialer]
  - name: event feed
    match: {certificate_san: "URI:spiffe://nba.test/ingest-01"}
    roles: [ingest]
  - name: reviewers
    match: {token_subject: alice}
    roles: [reviewer]
  - name: release managers
    match: {certificate_cn: admin-01}
    roles: [admin]
"""
CERTIFICATES = ("desk-01", "desk-mass", "ingest-01", "admin-01", "gateway")
UNKNOWN_CUSTOMER = "NOPE-000001"


@dataclasses.dataclass
class Caller:
    """One client: its own TLS channel (with its client certificate) and, for token callers, its token."""

    channel: grpc.Channel
    token: str | None = None
    principal: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else (("authorization", f"Bearer {self.token}"),)

    @property
    def nba(self) -> nba_pb2_grpc.NextBestActionStub:
        return nba_pb2_grpc.NextBestActionStub(self.channel)

    @property
    def review(self) -> review_pb2_grpc.ReviewStub:
        return review_pb2_grpc.ReviewStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.RulesetAdminStub:
        return admin_pb2_grpc.RulesetAdminStub(self.channel)

    def call(self, stub_method: Callable[..., Any], request: Any, timeout: float = 30) -> Any:
        return stub_method(request, timeout=timeout, metadata=self.metadata)


def tls_channel(pki: Pki, address: str, cert: str | None) -> grpc.Channel:
    pair = None if cert is None else pki.client(cert)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=None if pair is None else pair.key.read_bytes(),
        certificate_chain=None if pair is None else pair.cert.read_bytes(),
    )
    return grpc.secure_channel(address, credentials)


def tls_args(pki: Pki, policy: Path) -> tuple[str, ...]:
    return (
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca_cert),
        "--jwks-file",
        str(pki.jwks),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--access-policy",
        str(policy),
    )


def make_callers(pki: Pki, address: str) -> dict[str, Caller]:
    """One client per role, plus `norole` (a valid token no entry matches), `expired` (an expired token), `mass`
    (a desktop scoped to the mass segment) and `gateway` (a client certificate the policy does not name). Token
    callers present the gateway's certificate too: mutual TLS asks every connection for one."""

    def channel(cert: str) -> grpc.Channel:
        return tls_channel(pki, address, cert)

    cert = {name: f"cert:{pki.client(name).subject}" for name in CERTIFICATES}
    now = int(time.time())
    return {
        "desktop": Caller(channel("desk-01"), principal=cert["desk-01"]),
        "dialer": Caller(channel("gateway"), pki.token(sub="dialer-7", roles=["dialer"]), f"jwt:{ISSUER}#dialer-7"),
        "ingest": Caller(channel("ingest-01"), principal=cert["ingest-01"]),
        "reviewer": Caller(channel("gateway"), pki.token("ec", sub="alice"), f"jwt:{ISSUER}#alice"),
        "admin": Caller(channel("admin-01"), principal=cert["admin-01"]),
        "norole": Caller(channel("gateway"), pki.token(sub="visitor-1", roles=["visitor"]), f"jwt:{ISSUER}#visitor-1"),
        "expired": Caller(
            channel("gateway"), pki.token(sub="dialer-8", roles=["dialer"], iat=now - 7200, exp=now - 3600)
        ),
        "mass": Caller(channel("desk-mass"), principal=cert["desk-mass"]),
        "gateway": Caller(channel("gateway"), principal=cert["gateway"]),
    }


def decide_request(customer: str, channel: int, *, dry_run: bool = False) -> nba_pb2.DecideRequest:
    return nba_pb2.DecideRequest(customer_id=customer, channel=channel, dry_run=dry_run)
