"""May this caller make this call? The one table of what each role may do, and the refusal that names
what was missing.

Every RPC the server registers must be in `PERMISSIONS` or be open (health, reflection); anything else is
refused to every caller, so a new RPC serves nobody until someone decides who may call it. Which customers a
call may touch needs the profile or the record, so scoping is enforced by the service with the caller passed
in (`DecisionService`), never here. Pure: no gRPC, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nba_service.domain.model import Channel
from nba_service.errors import PermissionDenied
from nba_service.security.policy import Caller, Role

NEXT_BEST_ACTION = "/nba.v1.NextBestAction/"
REVIEW = "/nba.v1.Review/"
ADMIN = "/nba.v1.RulesetAdmin/"
# Services every caller may use, with or without credentials: probes must work before anyone is configured,
# and reflection describes only the public contract (`--no-reflection` removes it).
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True, slots=True)
class Ask:
    """One call as authorisation sees it: the full gRPC method, and for Decide what the request asks."""

    method: str
    channel: Channel | None = None
    dry_run: bool = False

    @property
    def name(self) -> str:
        return self.method.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Need:
    """What a call asks for in words (`Decide on outbound_dialer`), and the roles any one of which allows it."""

    what: str
    roles: frozenset[Role]


def _decide(ask: Ask) -> Need:
    if ask.dry_run:
        return Need("Decide with dry_run", frozenset({Role.REVIEWER}))
    if ask.channel is Channel.AGENT_DESKTOP:
        return Need("Decide on agent_desktop", frozenset({Role.DESKTOP}))
    if ask.channel is Channel.OUTBOUND_DIALER:
        return Need("Decide on outbound_dialer", frozenset({Role.DIALER}))
    # No channel (or one the handler will refuse as invalid): either deciding role may hear what is wrong.
    return Need("Decide", frozenset({Role.DESKTOP, Role.DIALER}))


def _needs(*roles: Role) -> Callable[[Ask], Need]:
    return lambda ask: Need(ask.name, frozenset(roles))


PERMISSIONS: dict[str, Callable[[Ask], Need]] = {
    NEXT_BEST_ACTION + "Decide": _decide,
    NEXT_BEST_ACTION + "RecordOutcome": _needs(Role.DESKTOP, Role.DIALER),
    NEXT_BEST_ACTION + "IngestEvent": _needs(Role.INGEST),
    # The dialers' batch RPC, when it lands, is theirs alone.
    NEXT_BEST_ACTION + "DecideBatch": _needs(Role.DIALER),
    REVIEW + "ListRulesets": _needs(Role.REVIEWER),
    REVIEW + "GetRuleset": _needs(Role.REVIEWER),
    REVIEW + "ExplainDecision": _needs(Role.REVIEWER),
    REVIEW + "WhyNot": _needs(Role.REVIEWER),
    ADMIN + "Activate": _needs(Role.ADMIN),
    ADMIN + "Rollback": _needs(Role.ADMIN),
    # Read-only and what reviewers check before they sign off a deploy: which version serves, which is previous.
    ADMIN + "Status": _needs(Role.ADMIN, Role.REVIEWER),
}


def is_open(method: str) -> bool:
    return method.startswith(OPEN_SERVICES)


def need(ask: Ask) -> Need | None:
    """What the call needs; None for a method nobody may call."""
    rule = PERMISSIONS.get(ask.method)
    return None if rule is None else rule(ask)


def authorize(caller: Caller, ask: Ask) -> None:
    """Raises PermissionDenied naming the role the call needs and the roles the caller has (never what exists)."""
    if is_open(ask.method):
        return
    needed = need(ask)
    if needed is None:
        raise PermissionDenied(f"{ask.name} is open to no role")
    if caller.scope.problem:
        raise PermissionDenied(f"{needed.what}: {caller.scope.problem}")
    if caller.roles & needed.roles:
        return
    wanted = " or ".join(sorted(needed.roles))
    have = ", ".join(sorted(caller.roles)) or "no role"
    raise PermissionDenied(f"{needed.what} needs the role {wanted}; you have: {have}")
