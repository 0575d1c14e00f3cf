"""The agent side panel: a small page a CRM frames beside its customer screen, served by the HTTP adapter.

The page is an HTML shell rendered here and one script and one stylesheet served from the package, so the
Content-Security-Policy can forbid every inline script and style and every other origin. The script calls the
public JSON API (`POST /v1/decide` on AGENT_DESKTOP, `POST /v1/outcomes`) like any CRM plugin, and two calls of
its own, left out of the OpenAPI document because only the panel uses them:

- `POST /panel/session`: exchanges the host's JWT (or a session about to expire) for a panel session
  (`security.panel_session`), so the panel needs no third-party cookie.
- `GET /panel/v1/changes?customer_id=&since=`: a long poll that answers the customer's profile version as soon
  as it differs from `since`, or after `PANEL_WAIT_S`. It wakes at once when this process stores an event or
  an outcome for the customer, and otherwise reads the profile every `PANEL_POLL_S`: another worker or
  replica, or an ingest straight into PostgreSQL's tables by another service, is seen there and nowhere else.
  The panel re-decides only when the version moved, because each decision is a compliance record.

A long poll holds no concurrency slot while it waits (a thousand open panels would fill the process cap) but
takes a token from the caller's rate like any call; server shutdown ends every wait at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files

import jinja2
import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from nba_service.domain.model import Channel
from nba_service.errors import InvalidArgument, Problems
from nba_service.security.access import AccessControl
from nba_service.security.authn import bearer_token
from nba_service.security.authz import NEXT_BEST_ACTION, Ask
from nba_service.security.identity import ANONYMOUS
from nba_service.security.panel_session import PanelSessions
from nba_service.security.policy import Caller
from nba_service.service import DecisionService, validate_customer_id

log = structlog.get_logger(__name__)

PANEL_WAIT_S = 25.0  # under the 30-60 s idle timeouts of common proxies and load balancers
PANEL_POLL_S = 2.0
ASSETS = files("nba_service.transport") / "panel_assets"
_STATIC_TYPES = {"panel.js": "text/javascript; charset=utf-8", "panel.css": "text/css; charset=utf-8"}
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_DECIDE = NEXT_BEST_ACTION + "Decide"
_AS_DESKTOP = Ask(_DECIDE, Channel.AGENT_DESKTOP)

Admit = Callable[[Request, Caller | None, Ask], Callable[[], None]]


class ProfileChanges:
    """Long polls of this process waiting on a customer, woken when this process stores something for them."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self.closed = False

    def notify(self, customer_id: str) -> None:
        for event in self._waiting.get(customer_id, ()):
            event.set()

    def close(self) -> None:
        """Ends every wait (shutdown): a long poll must not hold the server's graceful stop for its timeout."""
        self.closed = True
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def wait(self, customer_id: str, seconds: float) -> None:
        """Until this process stores something for the customer, the panel closes, or `seconds` pass."""
        event = asyncio.Event()
        waiting = self._waiting.setdefault(customer_id, set())
        waiting.add(event)
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            waiting.discard(event)
            if not waiting:
                self._waiting.pop(customer_id, None)


@dataclass(frozen=True)
class PanelConfig:
    sessions: PanelSessions
    origins: tuple[str, ...] = ()
    """Host origins that may frame the panel, besides this server itself."""
    changes: ProfileChanges = field(default_factory=ProfileChanges)

    @property
    def content_security_policy(self) -> str:
        ancestors = " ".join(("'self'", *self.origins))
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PanelSessionResponse(_Model):
    token: str = Field(description="send as `Authorization: Bearer <token>` on every call of this panel")
    expires_at: AwareDatetime
    renew_in_seconds: int = Field(description="when to renew it (POST /panel/session with this token)")


class ChangesResponse(_Model):
    version: str = Field(description="opaque; changes whenever anything a decision reads for the customer does")


@dataclass(frozen=True)
class _Assets:
    template: jinja2.Template
    static: dict[str, tuple[bytes, str]]
    version: str

    @classmethod
    def load(cls) -> _Assets:
        static = {}
        digest = hashlib.sha256()
        for name in sorted(_STATIC_TYPES):
            data = (ASSETS / name).read_bytes()
            digest.update(data)
            static[name] = (data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')
        environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        template = environment.from_string((ASSETS / "panel.html").read_text("utf-8"))
        return cls(template, static, digest.hexdigest()[:12])


def add_panel(
    app: FastAPI,
    service: DecisionService,
    access: AccessControl | None,
    panel: PanelConfig,
    admitted: Admit,
    authenticated: Callable[..., object],
) -> None:
    """Mounts the page, its two files and its two calls on the HTTP app."""
    assets = _Assets.load()
    sessions = panel.sessions
    service.on_profile_change(panel.changes.notify)
    security_headers = {
        "Content-Security-Policy": panel.content_security_policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    tokens_needed = access is not None and access.policy is not None
    who = Depends(authenticated)

    @app.get("/panel", include_in_schema=False)
    async def page(customer_id: str = "", conversation_id: str = "") -> HTMLResponse:
        problems = Problems()
        validate_customer_id(customer_id, problems)
        if conversation_id and not _CONVERSATION_ID.fullmatch(conversation_id):
            problems.add(
                "conversation_id", "must be 1-128 letters, digits, '_', '.', ':' or '-', starting alphanumeric"
            )
        try:
            problems.raise_if_any()
            shown: list[str] = []
        except InvalidArgument as exc:
            shown = [f"{p.field} {p.problem}" for p in exc.problems]
        body = assets.template.render(
            customer_id=customer_id,
            conversation_id=conversation_id,
            auth="token" if tokens_needed else "none",
            origins=" ".join(panel.origins),
            version=assets.version,
            problems=shown,
        )
        headers = {**security_headers, "Cache-Control": "no-store"}
        return HTMLResponse(body, status_code=400 if shown else 200, headers=headers)

    @app.get("/panel/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        found = assets.static.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain", headers=security_headers)
        data, etag = found
        headers = {**security_headers, "ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=_STATIC_TYPES[name], headers=headers)

    @app.post("/panel/session", include_in_schema=False, response_model_exclude_none=True)
    async def session(request: Request) -> PanelSessionResponse:
        """The host's JWT (or a live panel session, to renew it) for a new panel session."""
        token = bearer_token([("authorization", v) for v in request.headers.getlist("authorization")])
        renewing = token is not None and PanelSessions.is_session(token)
        if token is not None and renewing:
            identity, started = sessions.verify(token)
        elif access is None:
            identity, started = ANONYMOUS, None
        else:
            headers = [("authorization", f"Bearer {token}")] if token is not None else []
            identity, started = access.authenticator.authenticate(headers, {}), None
        caller = None if access is None else access.resolve(identity)
        admitted(request, caller, _AS_DESKTOP)()  # the desktop role, checked before anything is issued
        issued = sessions.issue(identity, started)
        log.info("panel_session_issued", principal=identity.principal, renewed=renewing, expires=issued.expires_at)
        remaining = (issued.expires_at - datetime.now(UTC)).total_seconds()
        return PanelSessionResponse(
            token=issued.token, expires_at=issued.expires_at, renew_in_seconds=max(5, int(remaining * 0.8))
        )

    @app.get("/panel/v1/changes", include_in_schema=False)
    async def changes(
        request: Request, customer_id: str = "", since: str = "", wait: bool = True, caller: Caller | None = who
    ) -> ChangesResponse:
        """The customer's profile version, once it differs from `since` (at once when `wait` is false)."""
        admitted(request, caller, _AS_DESKTOP)()  # a token from the caller's rate; no slot held while waiting
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PANEL_WAIT_S
        while True:
            profile = await service.current_profile(customer_id, caller)
            version = sessions.profile_version(profile, service.active.ruleset.content_hash)
            remaining = deadline - loop.time()
            done = version != since or not wait or remaining <= 0 or panel.changes.closed
            if done or await request.is_disconnected():  # a client gone stops the reads; nobody reads the answer
                return ChangesResponse(version=version)
            await panel.changes.wait(customer_id, min(PANEL_POLL_S, remaining))
