"""The agent side panel's own short-lived sessions, and the host origins allowed to frame it.

A CRM embeds the panel in an iframe on another site, where third-party cookies are blocked or partitioned, so
the panel keeps no cookie. The host hands it a JWT once (URL fragment or postMessage); the panel exchanges it at
`/panel/session` for a session token signed here and sends that as its bearer token. The host's JWT is checked
exactly as any caller's (JWKS, issuer, audience, expiry, the access policy), and the session carries the verified
`Identity`, not the roles it resolved to: every call resolves it against the policy in force, so a reloaded
policy, a scope from a claim and the per-caller limits apply as they would to the JWT itself.

Sessions are HS256 JWTs with their own `typ`, issuer and audience, under a key derived from one secret. The
secret is a file (`--panel-secret-file`, the same for every replica) or random per server, which a supervisor
hands to its workers so that a session works on any of them. HMAC is refused for callers' own tokens
(`authn`): a panel session is a token this server signs for itself, never one a third party presents. The
profile versions the panel watches (`profile_version`) are keyed by the same secret, so they agree across
workers and reveal nothing about the profile they stand for.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt

from nba_service.domain.profile import Profile
from nba_service.errors import Unauthenticated
from nba_service.security.identity import Identity

SESSION_TYPE = "nba-panel-session"
SESSION_ISSUER = SESSION_AUDIENCE = "nba-panel"
SESSION_ALGORITHM = "HS256"
MAX_SESSION_SECONDS = 12 * 3600
"""Renewals end this long after the host's token was exchanged: a shift, after which the CRM signs in anew."""
MIN_SECRET_BYTES = 32
EXPIRED = "the panel session has expired: reopen the panel from the CRM"
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>(?:\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)
_LOOPBACK_NAMES = ("localhost",)


def frame_ancestors(text: str) -> tuple[str, ...]:
    """Host origins from a space- or comma-separated list, lower-cased, each checked; ValueError names the bad one.

    An origin is a scheme, a host (optionally `*.` for every subdomain, as CSP allows) and a port, nothing else:
    a path would be ignored by browsers and suggests a misunderstanding. Plain http is refused but for loopback,
    since a host page served in plain text can be altered on the way to frame anything."""
    origins: list[str] = []
    for item in text.replace(",", " ").split():
        origin = item.rstrip("/").lower()
        match = _ORIGIN.fullmatch(origin)
        if match is None:
            raise ValueError(
                f"{item!r} is not an origin: give scheme://host[:port] with no path, e.g. https://acme.my.salesforce.com"
            )
        host = match["host"]
        if host.startswith("*.") and host.count(".") < 2:
            raise ValueError(f"{item!r}: a wildcard must leave at least a registrable domain (https://*.example.com)")
        port = match["port"]
        if port is not None and not 0 < int(port) <= 65535:
            raise ValueError(f"{item!r}: the port must be between 1 and 65535")
        if match["scheme"] == "http" and not _is_loopback(host):
            raise ValueError(f"{item!r}: plain http is allowed for loopback hosts only; use https")
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path) -> bytes:
    """The secret kept in `path`, a final line break removed; ValueError names the file, never its content."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the panel secret file {path}: {exc.strerror or type(exc).__name__}") from exc
    secret = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the panel secret file {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed "
            "(e.g. `head -c 48 /dev/urandom | base64 > FILE`)"
        )
    return secret


def new_secret() -> bytes:
    return secrets.token_bytes(MIN_SECRET_BYTES)


@dataclass(frozen=True, slots=True)
class PanelSession:
    token: str
    expires_at: datetime
    identity: Identity


class PanelSessions:
    """Issues, renews and verifies panel sessions under one secret (keys derived per purpose)."""

    def __init__(self, secret: bytes, lifetime_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a panel secret needs at least {MIN_SECRET_BYTES} bytes")
        self._key = hmac.digest(secret, b"nba panel session v1", "sha256")
        self.version_key = hmac.digest(secret, b"nba panel profile version v1", "sha256")
        self.lifetime = float(lifetime_seconds)
        self._clock = clock

    @staticmethod
    def is_session(token: str) -> bool:
        """Whether a bearer token claims to be a panel session (its signature is checked by `verify`)."""
        try:
            return jwt.get_unverified_header(token).get("typ") == SESSION_TYPE
        except jwt.DecodeError:
            return False

    def issue(self, identity: Identity, auth_time: float | None = None) -> PanelSession:
        """A session for a verified identity; `auth_time` is when the host's token was exchanged (now if new)."""
        now = self._clock()
        started = now if auth_time is None else auth_time
        expires = min(now + self.lifetime, started + MAX_SESSION_SECONDS)
        if expires <= now:
            raise Unauthenticated(EXPIRED)
        claims = {
            "iss": SESSION_ISSUER,
            "aud": SESSION_AUDIENCE,
            "sub": identity.principal,
            "iat": int(now),
            "exp": int(expires),
            "auth_time": int(started),
            "idn": {
                "method": identity.method,
                "subject": identity.subject,
                "names": list(identity.names),
                "claims": dict(identity.claims),
            },
        }
        token = jwt.encode(claims, self._key, algorithm=SESSION_ALGORITHM, headers={"typ": SESSION_TYPE})
        return PanelSession(token, datetime.fromtimestamp(int(expires), UTC), identity)

    def verify(self, token: str) -> tuple[Identity, float]:
        """The identity a session stands for and when it began; Unauthenticated says why it does not hold."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[SESSION_ALGORITHM],
                audience=SESSION_AUDIENCE,
                issuer=SESSION_ISSUER,
                # Times are checked below, on this object's clock: the one that issued the session.
                options={"require": ["exp", "iat", "sub", "auth_time"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(
                "the panel session does not verify (altered, or signed by a server with another panel secret): "
                "reopen the panel from the CRM"
            ) from exc
        expiry = claims["exp"]
        if not isinstance(expiry, int | float) or isinstance(expiry, bool) or expiry <= self._clock():
            raise Unauthenticated(EXPIRED)
        held = claims.get("idn")
        if not isinstance(held, dict) or held.get("method") not in ("token", "certificate", "none"):
            raise Unauthenticated("the panel session carries no identity")
        identity = Identity(
            principal=str(claims["sub"]),
            method=held["method"],
            subject=str(held.get("subject", "")),
            names=tuple(str(n) for n in held.get("names", ())),
            claims=MappingProxyType(dict(held.get("claims") or {})),
        )
        return identity, float(claims["auth_time"])

    def renew(self, token: str) -> PanelSession:
        """A fresh session for the same identity, while the old one holds and the shift limit allows."""
        identity, started = self.verify(token)
        return self.issue(identity, started)

    def profile_version(self, profile: Profile, ruleset_hash: str) -> str:
        """An opaque value that changes whenever anything a decision reads for this customer does."""
        return profile_version(self.version_key, profile, ruleset_hash)


def profile_version(key: bytes, profile: Profile, ruleset_hash: str) -> str:
    """Keyed, so that equal versions say only "nothing changed": an unkeyed hash of a profile could be used to
    confirm a guessed amount or date, which the panel must never show."""

    def dumped(item: object) -> str:
        return json.dumps(item, separators=(",", ":"), default=str)

    events = sorted(
        dumped([e.type, e.time.isoformat(), sorted(e.attributes.items()), e.expires_at and e.expires_at.isoformat()])
        for e in profile.events
    )
    contacts = sorted(
        dumped([c.action_id, c.channel.value, c.time.isoformat(), c.outcome.value, c.decision_id, c.reached])
        for c in profile.contacts
    )
    canonical = dumped([ruleset_hash, profile.customer_id, sorted(profile.attributes.items()), events, contacts])
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()[:32]
