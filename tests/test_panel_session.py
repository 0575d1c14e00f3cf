"""Panel sessions, frame-ancestor origins, the panel secret file and profile versions: pure and fast."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from nba_service.domain.model import Channel
from nba_service.domain.profile import Contact, Event, OutcomeKind, Profile
from nba_service.errors import Unauthenticated
from nba_service.security.identity import ANONYMOUS, Identity
from nba_service.security.panel_session import (
    MAX_SESSION_SECONDS,
    PanelSessions,
    frame_ancestors,
    profile_version,
    read_secret_file,
)
from nba_service.settings import Settings

SECRET = b"s" * 32
AGENT = Identity(
    principal="jwt:https://idp.example#agent-1",
    method="token",
    subject="agent-1",
    claims={"iss": "https://idp.example", "sub": "agent-1", "roles": ["desktop"], "tenant": "north"},
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class TestSessions:
    def test_carries_the_identity(self) -> None:
        """What was verified comes back whole: principal, method, subject and every claim (scopes read claims)."""
        sessions = PanelSessions(SECRET, 900)
        issued = sessions.issue(AGENT)
        identity, _ = sessions.verify(issued.token)
        assert identity == dataclasses.replace(AGENT, claims=identity.claims)
        assert dict(identity.claims) == dict(AGENT.claims)
        assert PanelSessions.is_session(issued.token)

    def test_anonymous_session_for_the_open_quick_start(self) -> None:
        sessions = PanelSessions(SECRET, 900)
        assert sessions.verify(sessions.issue(ANONYMOUS).token)[0].anonymous

    def test_expires(self) -> None:
        clock = Clock()
        sessions = PanelSessions(SECRET, 900, clock)
        token = sessions.issue(AGENT).token
        clock.now += 901
        with pytest.raises(Unauthenticated, match="expired"):
            sessions.verify(token)

    def test_another_secret_or_an_edit_does_not_verify(self) -> None:
        token = PanelSessions(SECRET, 900).issue(AGENT).token
        with pytest.raises(Unauthenticated, match="does not verify"):
            PanelSessions(b"t" * 32, 900).verify(token)
        header, payload, signature = token.split(".")
        forged = jwt.encode(
            {**jwt.decode(token, options={"verify_signature": False}), "sub": "jwt:x#boss"},
            "k" * 32,
            algorithm="HS256",
            headers={"typ": "nba-panel-session"},
        )
        with pytest.raises(Unauthenticated, match="does not verify"):
            PanelSessions(SECRET, 900).verify(forged)
        assert signature  # the original still verifies
        PanelSessions(SECRET, 900).verify(f"{header}.{payload}.{signature}")

    def test_renewal_keeps_the_start_and_stops_after_a_shift(self) -> None:
        """Renewed sessions run from the exchange of the host's token, never past MAX_SESSION_SECONDS of it."""
        clock = Clock()
        sessions = PanelSessions(SECRET, 3600, clock)
        started = clock.now
        token = sessions.issue(AGENT).token
        while clock.now + 3000 < started + MAX_SESSION_SECONDS:
            clock.now += 3000
            renewed = sessions.renew(token)
            token = renewed.token
            assert sessions.verify(token)[1] == started
        assert renewed.expires_at <= datetime.fromtimestamp(started + MAX_SESSION_SECONDS, UTC)
        clock.now = started + MAX_SESSION_SECONDS
        with pytest.raises(Unauthenticated, match="expired"):
            sessions.renew(token)

    def test_an_identity_providers_token_is_not_a_session(self) -> None:
        external = jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")
        assert not PanelSessions.is_session(external)
        assert not PanelSessions.is_session("not a jwt")

    def test_short_secret_refused(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            PanelSessions(b"short", 900)


class TestFrameAncestors:
    def test_normalised(self) -> None:
        assert frame_ancestors(
            "https://Acme.lightning.force.com/, https://*.mypurecloud.com  http://127.0.0.1:8080 https://acme.zendesk.com"
        ) == (
            "https://acme.lightning.force.com",
            "https://*.mypurecloud.com",
            "http://127.0.0.1:8080",
            "https://acme.zendesk.com",
        )

    @pytest.mark.parametrize(
        ("origin", "problem"),
        [
            ("https://acme.example.com/panel", "not an origin"),
            ("acme.example.com", "not an origin"),
            ("ftp://acme.example.com", "not an origin"),
            ("http://crm.example.com", "plain http"),
            ("https://*.com", "wildcard"),
            ("https://a.example.com:70000", "port"),
            ("'unsafe-inline'", "not an origin"),
            ("*", "not an origin"),
        ],
    )
    def test_refused(self, origin: str, problem: str) -> None:
        with pytest.raises(ValueError, match=problem):
            frame_ancestors(origin)

    def test_settings_name_the_flag_and_need_http(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="plain http is allowed for loopback hosts only"):
            Settings(http_port=8080, panel_frame_ancestors="http://crm.example.com")
        with pytest.raises(ValidationError, match="needs --http-port"):
            Settings(panel_frame_ancestors="https://crm.example.com")
        settings = Settings(http_port=8080, panel_frame_ancestors="https://crm.example.com,https://b.example.com")
        assert settings.panel_origins == ("https://crm.example.com", "https://b.example.com")


class TestSecretFile:
    def test_read_without_final_newline(self, tmp_path: Path) -> None:
        path = tmp_path / "secret"
        path.write_bytes(b"x" * 40 + b"\n")
        assert read_secret_file(path) == b"x" * 40

    def test_short_or_missing_file_is_named_not_quoted(self, tmp_path: Path) -> None:
        path = tmp_path / "secret"
        path.write_bytes(b"hunter2")
        with pytest.raises(ValueError, match="holds 7 bytes") as caught:
            read_secret_file(path)
        assert "hunter2" not in str(caught.value)
        with pytest.raises(ValueError, match="cannot read"):
            read_secret_file(tmp_path / "absent")
        with pytest.raises(ValidationError, match="holds 7 bytes"):
            Settings(http_port=8080, panel_secret_file=path)


class TestProfileVersion:
    NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    PROFILE = Profile(
        "C-1",
        {"segment": "mass", "first_name": "Ada"},
        (Event("large_deposit", NOW - timedelta(hours=2), {"amount": 48250.75}),),
        (Contact("loyalty-thanks", Channel.AGENT_DESKTOP, NOW - timedelta(days=3), OutcomeKind.ACCEPTED, "d-1"),),
    )

    def test_stable_and_order_free(self) -> None:
        key = b"k" * 32
        again = dataclasses.replace(self.PROFILE, attributes=dict(reversed(list(self.PROFILE.attributes.items()))))
        assert profile_version(key, self.PROFILE, "h") == profile_version(key, again, "h")

    @pytest.mark.parametrize(
        "change",
        [
            lambda p, now: dataclasses.replace(p, events=(*p.events, Event("complaint_opened", now, {}))),
            lambda p, now: dataclasses.replace(
                p,
                contacts=(*p.contacts, Contact("x", Channel.AGENT_DESKTOP, now, OutcomeKind.NOT_OFFERED, "d-2")),
            ),
            lambda p, now: dataclasses.replace(p, attributes={**p.attributes, "segment": "premier"}),
            lambda p, now: dataclasses.replace(p, events=(Event("large_deposit", now, {"amount": 48250.76}),)),
        ],
    )
    def test_moves_with_anything_a_decision_reads(self, change: object) -> None:
        key = b"k" * 32
        changed = change(self.PROFILE, self.NOW)  # type: ignore[operator]
        assert profile_version(key, changed, "h") != profile_version(key, self.PROFILE, "h")

    def test_keyed_and_tied_to_the_ruleset(self) -> None:
        """Another key or another active ruleset gives another version; the version shows no profile data."""
        version = profile_version(b"k" * 32, self.PROFILE, "h")
        assert version != profile_version(b"j" * 32, self.PROFILE, "h")
        assert version != profile_version(b"k" * 32, self.PROFILE, "h2")
        assert "48250" not in version
        assert len(version) == 32
