"""Who is calling over HTTP: the process's one authenticator and policy, as a FastAPI dependency.

Shared by every HTTP router, so a caller is identified the same way on each path, before any body is read.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request

from nba_service.errors import NbaError
from nba_service.security.access import AccessControl
from nba_service.security.authn import bearer_token
from nba_service.security.panel_session import PanelSessions
from nba_service.security.policy import Caller

log = structlog.get_logger(__name__)


def peer(request: Request) -> str:
    """The client's address in gRPC's form, so one machine shares one count on both protocols."""
    if request.client is None:
        return "unknown"
    host, port = request.client.host, request.client.port
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


async def authenticated(request: Request) -> Caller | None:
    """Who is calling, by the process's one authenticator and policy; runs before the body is read. The client
    certificate, when there is one, was verified in the handshake (`http_server`), as gRPC's auth context is."""
    access: AccessControl | None = request.app.state.access
    if access is None:
        return None
    headers = [("authorization", value) for value in request.headers.getlist("authorization")]
    chain = ((request.scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    verified = {"x509_pem_cert": [chain[0].encode("ascii")]} if chain else {}
    try:
        sessions: PanelSessions | None = request.app.state.sessions
        token = bearer_token(headers) if sessions is not None else None
        if sessions is not None and token is not None and PanelSessions.is_session(token):
            identity, _ = sessions.verify(token)
            return access.resolve(identity)  # the policy in force, as for the token it was exchanged for
        return access.caller(headers, verified)
    except NbaError as exc:
        log.info("call_refused", path=request.url.path, code=exc.code.value, reason=exc.message)
        raise


CallerDep = Annotated[Caller | None, Depends(authenticated)]
