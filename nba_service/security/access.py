"""The access control in force in one process: who is calling (the authenticator) and what they may be (the
policy), with the policy replaced on reload.

Built once in the composition root and read on every call by every transport. A reload that finds a bad file
keeps the policy in force and logs why: a typo in the policy must never open the service or lock everyone out.
Without a policy the server is open (every caller holds every role), which the settings allow only for plain
text on loopback, the local quick start, and which is logged loudly.

Who a set of credentials is does not change from one call to the next, and checking them is most of what
authorisation costs (measured here: about 90 us for a client certificate, 360 us for an RSA-signed token, on a
Decide of about a millisecond of CPU). So a caller is kept for the credentials it came with, for at most
`CALLER_CACHE_SECONDS` and never past its token's expiry; a reload forgets them all. A signing key removed from
the JWKS file therefore stops working within that time, not at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from nba_service.errors import AccessPolicyInvalid, Unauthenticated
from nba_service.security.authn import NO_CREDENTIALS, Authenticator, authenticator_from_settings
from nba_service.security.identity import Identity
from nba_service.security.policy import AccessPolicy, Caller, load_access_policy
from nba_service.settings import Settings

log = structlog.get_logger(__name__)

CALLER_CACHE_SECONDS = 30.0
CALLER_CACHE_SIZE = 4096
_Credentials = tuple[tuple[str | bytes, ...], bytes | None]


class AccessControl:
    def __init__(self, authenticator: Authenticator, policy: AccessPolicy | None, path: Path | None = None) -> None:
        self.authenticator = authenticator
        self._policy = policy
        self._path = path
        self._callers: OrderedDict[_Credentials, tuple[Caller, float]] = OrderedDict()

    @property
    def policy(self) -> AccessPolicy | None:
        """None: the server is open."""
        return self._policy

    def caller(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Caller:
        """Who is calling and what they may be; raises Unauthenticated naming what was wrong."""
        key = _credentials(metadata, auth_context)
        now = time.time()
        kept = self._callers.get(key)
        if kept is not None and kept[1] > now:
            self._callers.move_to_end(key)
            return kept[0]
        identity = self.authenticator.authenticate(metadata, auth_context)
        caller = self.resolve(identity)
        until = now + CALLER_CACHE_SECONDS
        expiry = identity.claims.get("exp")
        if isinstance(expiry, int | float) and not isinstance(expiry, bool):
            until = min(until, float(expiry))
        self._callers[key] = (caller, until)
        if len(self._callers) > CALLER_CACHE_SIZE:
            self._callers.popitem(last=False)
        return caller

    def resolve(self, identity: Identity) -> Caller:
        """The caller a verified identity is under the policy in force (a panel session's identity too)."""
        policy = self._policy
        if policy is None:
            return Caller.trusted(identity.principal)
        if identity.anonymous:
            raise Unauthenticated(NO_CREDENTIALS)
        return policy.resolve(identity)

    async def reload(self) -> bool:
        """Reads the policy file again; on any problem keeps the policy in force and logs why."""
        if self._path is None:
            return False
        try:
            policy = await asyncio.to_thread(load_access_policy, self._path)
        except AccessPolicyInvalid as exc:
            log.error(
                "access_policy_reload_failed",
                path=str(self._path),
                problems=[str(p) for p in exc.policy_problems][:20],
                kept=self._policy.content_hash[:12] if self._policy else None,
            )
            return False
        old = self._policy
        self._policy = policy
        self._callers.clear()
        log.info(
            "access_policy_reloaded",
            path=str(self._path),
            callers=len(policy.callers),
            hash=policy.content_hash[:12],
            changed=old is None or old.content_hash != policy.content_hash,
        )
        return True


def _credentials(
    metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
) -> _Credentials:
    """Everything the authenticator reads: the authorization headers and the verified client certificate."""
    tokens = tuple(value for key, value in metadata if key.lower() == "authorization")
    certificates = auth_context.get("x509_pem_cert") or ()
    return tokens, certificates[0] if certificates else None


def access_from_settings(settings: Settings) -> AccessControl:
    """Loads the policy (AccessPolicyInvalid: `cannot start`), and says loudly when the server runs open."""
    authenticator = authenticator_from_settings(settings)
    if settings.access_policy is None:
        log.warning(
            "access_open",
            reason="no --access-policy: every caller may make every call (allowed for plain text on loopback only)",
        )
        return AccessControl(authenticator, None)
    policy = load_access_policy(settings.access_policy)
    log.info(
        "access_policy_loaded",
        path=str(settings.access_policy),
        callers=len(policy.callers),
        hash=policy.content_hash[:12],
    )
    return AccessControl(authenticator, policy, settings.access_policy)
