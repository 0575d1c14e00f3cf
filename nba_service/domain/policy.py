"""Contact policy applied after the engine: what may be said to this customer, on this channel, now.

Each check returns the reason a candidate is dropped, so the decision record can show a reviewer
exactly why a matching rule produced nothing.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from nba_service.domain.facts import Projection
from nba_service.domain.model import (
    Action,
    Channel,
    Constraint,
    Direction,
    FrequencyCap,
    Policies,
    QuietHours,
    Rule,
    Ruleset,
)
from nba_service.domain.profile import Contact, Profile
from nba_service.domain.records import DroppedCandidate
from nba_service.domain.reference import when_holds


@dataclass(frozen=True, slots=True)
class Candidate:
    rule_index: int
    rule: Rule
    action: Action


DO_NOT_CONTACT = "do_not_contact"
"""The policy id of a do-not-contact listing: kept by the service for every ruleset, not declared in one."""

Block = tuple[str, str, str]
"""(reason, detail, policy id) of what drops a candidate."""


def _do_not_contact(profile: Profile, channel: Channel, direction: Direction, now: datetime) -> Block | None:
    """A listing stops us contacting the customer; a customer who calls in is still helped. The detail names the
    reason and the expiry only: it reaches dialer exclusion files, and the listing's free-text source stays in
    the register and the decision record's inputs."""
    if direction is not Direction.OUTBOUND:
        return None
    for entry in profile.do_not_contact:
        if entry.covers(channel) and entry.active(now):
            detail = f"listed ({entry.reason.value}"
            if entry.expires_at is not None:
                detail += f", until {entry.expires_at.isoformat()}"
            return DO_NOT_CONTACT, detail + ")", DO_NOT_CONTACT
    return None


def _no_consent(
    ruleset: Ruleset, profile: Profile, action: Action, channel: Channel, direction: Direction
) -> Block | None:
    for consent in ruleset.policies.consent:
        if consent.applies(channel, action.purpose, direction) and profile.attributes.get(consent.field) is not True:
            purpose = f" for {action.purpose}" if consent.purposes is not None else ""
            return "no_consent", f"{consent.field} is not true{purpose}", consent.id
    return None


def _call_block(ruleset: Ruleset, profile: Profile, direction: Direction, now: datetime) -> Block | None:
    """What stops every call we make, whatever its purpose and whoever places it (the dialer, or an agent calling
    out): the do-not-call register and the quiet hours. A customer who calls in is answered at any hour."""
    policies = ruleset.policies
    if direction is Direction.OUTBOUND:
        if policies.do_not_call_field is not None and profile.attributes.get(policies.do_not_call_field) is not False:
            # Unknown do-not-call status is treated as "do not call": the safe side for a dialer.
            return "do_not_call", f"{policies.do_not_call_field} is not false", "do_not_call"
        if policies.quiet_hours is not None and in_quiet_hours(policies.quiet_hours, profile, now):
            return "quiet_hours", "inside the quiet hours for calls in the customer's time zone", "quiet_hours"
    return None


def _zone(quiet: QuietHours, profile: Profile) -> zoneinfo.ZoneInfo:
    """The customer's time zone, or the ruleset's default when the profile has none or an unknown one."""
    return profile_zone(profile, quiet.timezone_field, quiet.default_timezone)


def profile_zone(profile: Profile, field: str, default: str) -> zoneinfo.ZoneInfo:
    zone_name = profile.attributes.get(field)
    if isinstance(zone_name, str) and zone_name:
        try:
            return zoneinfo.ZoneInfo(zone_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return zoneinfo.ZoneInfo(default)


def customer_zone(ruleset: Ruleset, profile: Profile) -> zoneinfo.ZoneInfo:
    """The zone the ruleset's quiet hours are kept in for this customer (the `timezone` attribute, else UTC, for a
    ruleset without quiet hours): a dialer's call window must be reckoned in the very same zone."""
    quiet = ruleset.policies.quiet_hours
    if quiet is None:
        return profile_zone(profile, "timezone", "UTC")
    return _zone(quiet, profile)


def next_quiet_start(quiet: QuietHours, profile: Profile, now: datetime) -> datetime:
    local = now.astimezone(_zone(quiet, profile))
    start = local.replace(hour=quiet.start_minute // 60, minute=quiet.start_minute % 60, second=0, microsecond=0)
    if start <= local:
        start = (start + timedelta(days=1)).replace(hour=quiet.start_minute // 60, minute=quiet.start_minute % 60)
    return start.astimezone(now.tzinfo)


def in_quiet_hours(quiet: QuietHours, profile: Profile, now: datetime) -> bool:
    local = now.astimezone(_zone(quiet, profile))
    minute = local.hour * 60 + local.minute
    if quiet.start_minute < quiet.end_minute:
        return quiet.start_minute <= minute < quiet.end_minute
    return minute >= quiet.start_minute or minute < quiet.end_minute


Scoped = FrequencyCap | Constraint


def _cap_applies(cap: Scoped, action: Action, channel: Channel, direction: Direction) -> bool:
    if cap.channel is not None and cap.channel is not channel:
        return False
    if cap.direction is not None and cap.direction is not direction:
        return False
    if cap.action is not None:
        return cap.action == action.id
    if cap.category is not None:
        return cap.category == action.category
    if cap.purpose is not None:
        return cap.purpose == action.purpose
    return True


def _binds(cap: Scoped, action: Action, channel: Channel, direction: Direction) -> bool:
    """Whether the cap or constraint can stop this action: a mandatory notice is stopped only by one that names
    it (its own repeat limit), never by one it shares with other actions."""
    if action.mandatory and cap.action != action.id:
        return False
    return _cap_applies(cap, action, channel, direction)


class PolicyScopes:
    """Which constraints and caps bind an action on a channel and direction, and which caps count it, worked out
    once per action for a ruleset: asked afresh for every candidate against every cap, these checks were a third
    of a decision's policy time (88 per decision on the bundled ruleset). One per active ruleset."""

    __slots__ = ("_binding", "_counted", "_policies")

    def __init__(self, policies: Policies) -> None:
        self._policies = policies
        self._binding: dict[tuple[str, Channel, Direction], tuple[tuple[Constraint, ...], tuple[FrequencyCap, ...]]]
        self._binding = {}
        self._counted: dict[tuple[str, Channel, Direction], frozenset[str]] = {}

    def binding(
        self, action: Action, channel: Channel, direction: Direction
    ) -> tuple[tuple[Constraint, ...], tuple[FrequencyCap, ...]]:
        """The constraints and the caps that can stop this action (`_binds`), in the ruleset's order."""
        key = (action.id, channel, direction)
        found = self._binding.get(key)
        if found is None:
            policies = self._policies
            found = (
                tuple(c for c in policies.constraints if _binds(c, action, channel, direction)),
                tuple(c for c in policies.frequency_caps if _binds(c, action, channel, direction)),
            )
            self._binding[key] = found
        return found

    def counted_by(self, action: Action, channel: Channel, direction: Direction) -> frozenset[str]:
        """The ids of the caps this action counts toward once given (`_cap_applies`, mandatory or not)."""
        key = (action.id, channel, direction)
        found = self._counted.get(key)
        if found is None:
            found = frozenset(
                c.id for c in self._policies.frequency_caps if _cap_applies(c, action, channel, direction)
            )
            self._counted[key] = found
        return found


def _in_scope(cap: Scoped, ruleset: Ruleset, contact: Contact) -> bool:
    if cap.channel is not None and contact.channel is not cap.channel:
        return False
    if cap.direction is not None and contact.contact_direction is not cap.direction:
        return False
    if cap.action is not None:
        return contact.action_id == cap.action
    if cap.category is not None or cap.purpose is not None:
        past = ruleset.actions.get(contact.action_id)
        if past is None:
            return False
        if cap.category is not None:
            return past.category == cap.category
        return past.purpose == cap.purpose
    return True


def _cap_count(cap: FrequencyCap, ruleset: Ruleset, profile: Profile, now: datetime) -> int:
    return _count(cap, ruleset, profile, now, lambda contact: contact.counts_at(now))


def _constraint_count(constraint: Constraint, ruleset: Ruleset, profile: Profile, now: datetime, action: Action) -> int:
    def counts(contact: Contact) -> bool:
        # A call still with the dialer has no outcome yet, whatever its row says.
        return (
            contact.pending_until is None
            and contact.outcome.value in constraint.outcomes
            and (not constraint.per_action or contact.action_id == action.id)
        )

    return _count(constraint, ruleset, profile, now, counts)


def _count(cap: Scoped, ruleset: Ruleset, profile: Profile, now: datetime, counts: Callable[[Contact], bool]) -> int:
    since = now - cap.within
    count = 0
    seen: set[tuple[str, str]] = set()
    for contact in profile.contacts:
        if contact.time <= since or contact.time > now + timedelta(minutes=5):
            continue
        if not counts(contact) or not _in_scope(cap, ruleset, contact):
            continue
        if contact.decision_id:
            # Several outcomes for one offer (accepted, then converted) are still one contact.
            if (contact.decision_id, contact.action_id) in seen:
                continue
            seen.add((contact.decision_id, contact.action_id))
        count += 1
    return count


def apply_policies(
    ruleset: Ruleset,
    profile: Profile,
    projection: Projection,
    channel: Channel,
    now: datetime,
    candidates: list[Candidate],
    direction: Direction,
    scopes: PolicyScopes | None = None,
) -> tuple[list[Candidate], list[DroppedCandidate]]:
    """Checks in the order a reviewer reads them: do-not-contact, consent for the action's purpose, do-not-call,
    quiet hours, suppressions, channel fit, trigger, constraint pauses, frequency caps. A mandatory action skips
    suppressions and the pauses and caps it shares with other actions, never the first four."""
    kept: list[Candidate] = []
    dropped: list[DroppedCandidate] = []
    scopes = scopes or PolicyScopes(ruleset.policies)

    def drop(candidate: Candidate, reason: str, detail: str, policy: str = "") -> None:
        dropped.append(DroppedCandidate(candidate.rule.id, candidate.action.id, reason, detail, "policy", policy))

    listed = _do_not_contact(profile, channel, direction, now)
    block = _call_block(ruleset, profile, direction, now)
    suppressions = [
        s
        for s in ruleset.policies.suppressions
        if channel in s.channels and direction in s.directions and when_holds(s.when, projection.facts)
    ]
    cap_counts: dict[str, int] = {}
    constraint_counts: dict[str, int] = {}
    for candidate in candidates:
        action = candidate.action
        if listed is not None:
            drop(candidate, *listed)
            continue
        no_consent = _no_consent(ruleset, profile, action, channel, direction)
        if no_consent is not None:
            drop(candidate, *no_consent)
            continue
        if block is not None:
            drop(candidate, *block)
            continue
        suppression = next(
            (
                s
                for s in suppressions
                if action.category not in s.except_categories and action.purpose not in s.except_purposes
            ),
            None,
        )
        if suppression is not None and not action.mandatory:
            drop(candidate, "suppression", f"{suppression.id}: {suppression.description}", suppression.id)
            continue
        if channel not in action.scripts:
            drop(candidate, "channel_fit", f"action {action.id} has no script for {channel.value}")
            continue
        if action.trigger is not None:
            event = projection.newest_events.get(action.trigger.event)
            if event is None:
                drop(candidate, "missing_trigger", f"no live {action.trigger.event} event")
                continue
            if now - event.time > action.trigger.lifetime:
                drop(candidate, "expired_trigger", f"{action.trigger.event} is older than its lifetime")
                continue
        binding_constraints, binding_caps = scopes.binding(action, channel, direction)
        paused = None
        for constraint in binding_constraints:
            key = f"{constraint.id}\0{action.id}" if constraint.per_action else constraint.id
            if key not in constraint_counts:
                constraint_counts[key] = _constraint_count(constraint, ruleset, profile, now, action)
            if constraint_counts[key] >= constraint.after:
                paused = constraint
                break
        if paused is not None:
            outcomes = " or ".join(sorted(paused.outcomes))
            drop(
                candidate,
                "constraint",
                f"{paused.id}: paused after {paused.after} {outcomes} within {paused.within}",
                paused.id,
            )
            continue
        capped = None
        for cap in binding_caps:
            if cap.id not in cap_counts:
                cap_counts[cap.id] = _cap_count(cap, ruleset, profile, now)
            if cap_counts[cap.id] >= cap.max:
                capped = cap
                break
        if capped is not None:
            drop(candidate, "frequency_cap", f"{capped.id}: at most {capped.max} within {capped.within}", capped.id)
            continue
        kept.append(candidate)
    return kept, dropped


def valid_until(
    ruleset: Ruleset,
    candidate: Candidate,
    profile: Profile,
    projection: Projection,
    direction: Direction,
    now: datetime,
) -> datetime:
    """When the action stops being right: its trigger's end, the quiet hours of a call we make, or the default
    validity."""
    limit = now + ruleset.meta.valid_for
    quiet = ruleset.policies.quiet_hours
    if direction is Direction.OUTBOUND and quiet is not None:
        limit = min(limit, next_quiet_start(quiet, profile, now))
    trigger = candidate.action.trigger
    if trigger is not None:
        event = projection.newest_events.get(trigger.event)
        if event is not None:
            limit = min(limit, event.time + trigger.lifetime)
            if event.expires_at is not None:
                limit = min(limit, event.expires_at)
    return limit


def policy_ids(ruleset: Ruleset) -> list[str]:
    """Every id a dropped candidate's `policy` can carry under this ruleset, in the order the file declares them,
    so scenario coverage can say which contact policies no case ever saw act."""
    policies = ruleset.policies
    ids = list(dict.fromkeys(consent.id for consent in policies.consent))
    if policies.do_not_call_field is not None:
        ids.append("do_not_call")
    if policies.quiet_hours is not None:
        ids.append("quiet_hours")
    ids.extend(cap.id for cap in policies.frequency_caps)
    ids.extend(suppression.id for suppression in policies.suppressions)
    ids.extend(constraint.id for constraint in policies.constraints)
    return ids
