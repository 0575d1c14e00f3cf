"""What a dialer needs beyond the decision itself: the number to call, when it may ring, why not, and a key.

Pure functions of the decision pipeline's result and the profile, so the campaign (`DecisionService.
decide_batch`) stays a loop around the one pipeline: the pipeline decides the action (consent, do-not-call,
quiet hours, suppressions and caps included); this module only turns that answer into a call-list row, or
into the one reason the customer is left out.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta

from nba_service.domain.contact_points import PhoneNumber
from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.pipeline import Evaluation
from nba_service.domain.policy import customer_zone
from nba_service.domain.profile import Contact, OutcomeKind, Profile
from nba_service.domain.records import DecisionRecord, Delivery

MINUTES_PER_DAY = 24 * 60
_WINDOW = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
KEY_PREFIX = "nba1-"


class Exclusion(enum.StrEnum):
    """Why a customer of a campaign must not be called now, most important first: when several apply, the
    first in this order is reported (a do-not-contact listing matters more than a frequency cap)."""

    DO_NOT_CONTACT = "do_not_contact"
    DO_NOT_CALL = "do_not_call"
    NO_CONSENT = "no_consent"
    QUIET_HOURS = "quiet_hours"
    SUPPRESSION = "suppression"
    CONSTRAINT = "constraint"
    FREQUENCY_CAP = "frequency_cap"
    NO_ACTION = "no_action"
    NO_CALLABLE_NUMBER = "no_callable_number"
    OUTSIDE_LEGAL_WINDOW = "outside_legal_window"


# The pipeline's drop reasons that name a contact policy, in `Exclusion` order.
_POLICY_REASONS = (
    Exclusion.DO_NOT_CONTACT,
    Exclusion.DO_NOT_CALL,
    Exclusion.NO_CONSENT,
    Exclusion.QUIET_HOURS,
    Exclusion.SUPPRESSION,
    Exclusion.CONSTRAINT,
    Exclusion.FREQUENCY_CAP,
)


@dataclass(frozen=True, slots=True)
class LegalWindow:
    """The hours the law (or the business) allows calls in, in the customer's own time zone: [start, end)."""

    start_minute: int = 8 * 60
    end_minute: int = 21 * 60

    def __str__(self) -> str:
        return f"{_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"


DEFAULT_LEGAL_WINDOW = LegalWindow()


def parse_legal_window(text: str) -> LegalWindow:
    """`HH:MM-HH:MM` within one day (24:00 allowed as an end); raises ValueError saying what is wrong."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:32]!r} is not HH:MM-HH:MM (e.g. 08:00-21:00)")
    start = int(match[1]) * 60 + int(match[2])
    end = int(match[3]) * 60 + int(match[4])
    if end > MINUTES_PER_DAY or end <= start:
        raise ValueError(f"{text!r}: the end must be after the start on the same day (at most 24:00)")
    return LegalWindow(start, end)


@dataclass(frozen=True, slots=True)
class CallWindow:
    """When the call may ring, as aware times in the customer's zone (`time_zone`, IANA)."""

    time_zone: str
    earliest: datetime
    latest: datetime


def allowed_intervals(ruleset: Ruleset, legal: LegalWindow) -> list[tuple[int, int]]:
    """Minutes of the local day [start, end) inside the legal window and outside the ruleset's quiet hours."""
    quiet = ruleset.policies.quiet_hours
    blocked: list[tuple[int, int]] = []
    if quiet is not None:
        if quiet.start_minute < quiet.end_minute:
            blocked.append((quiet.start_minute, quiet.end_minute))
        else:  # spans midnight: 20:00-09:00 blocks the evening and the early morning
            blocked += [(quiet.start_minute, MINUTES_PER_DAY), (0, quiet.end_minute)]
    free = [(legal.start_minute, legal.end_minute)]
    for low, high in blocked:
        free = [part for start, end in free for part in _minus(start, end, low, high)]
    return sorted(free)


def call_window(ruleset: Ruleset, profile: Profile, at: datetime, legal: LegalWindow) -> CallWindow | None:
    """The stretch of the customer's local day, from `at` on, in which a call is allowed; None when none is left
    today. Reckoned on the wall clock of the customer's zone, so a day with a DST change still runs 08:00-21:00
    local (its UTC length differs by the hour the clocks moved)."""
    zone = customer_zone(ruleset, profile)
    local = at.astimezone(zone)
    now_minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    for start, end in allowed_intervals(ruleset, legal):
        if end <= now_minute:
            continue
        earliest = local if start <= now_minute else _local(local, start)
        return CallWindow(zone.key, earliest, _local(local, end))
    return None


def _local(day: datetime, minute: int) -> datetime:
    """The wall-clock `minute` of `day`'s date in `day`'s zone (24:00 is the next midnight)."""
    if minute >= MINUTES_PER_DAY:
        return datetime.combine(day.date() + timedelta(days=1), time(0, 0), tzinfo=day.tzinfo)
    return datetime.combine(day.date(), time(minute // 60, minute % 60), tzinfo=day.tzinfo)


def _minus(start: int, end: int, low: int, high: int) -> list[tuple[int, int]]:
    parts = []
    if start < min(end, low):
        parts.append((start, min(end, low)))
    if max(start, high) < end:
        parts.append((max(start, high), end))
    return parts


def exclusion(evaluation: Evaluation) -> tuple[Exclusion, str] | None:
    """Why the pipeline chose nothing to call about (reason, detail), or None when it chose an action. The detail
    is the policy's own words (`dialer-daily: at most 1 within 1 day, 0:00:00`): never a profile or trigger value."""
    if evaluation.actions:
        return None
    policy_drops = {d.reason: d for d in evaluation.dropped if d.stage == "policy"}
    for reason in _POLICY_REASONS:
        drop = policy_drops.get(reason.value)
        if drop is not None:
            return reason, drop.detail
    if evaluation.dropped:
        first = evaluation.dropped[0]
        return Exclusion.NO_ACTION, f"{first.action_id}: {first.reason}"
    return Exclusion.NO_ACTION, "no rule matched this customer"


def choose_number(profile: Profile) -> PhoneNumber | None:
    """The first number in the customer's order of preference that they consented to and that is not known to be
    wrong."""
    return next((phone for phone in profile.phones if phone.callable), None)


def idempotency_key(campaign_id: str, customer_id: str, action_id: str, number: str) -> str:
    """The same for the same campaign, customer, action and number, whenever the list is exported: a dialer that
    loads a re-export drops the rows it already holds instead of ringing the customer twice."""
    digest = hashlib.sha256("\x1f".join((campaign_id, customer_id, action_id, number)).encode()).hexdigest()
    return KEY_PREFIX + digest[:32]


def pending_call(record: DecisionRecord) -> Contact | None:
    """The contact an exported call counts as until its disposition arrives, or None for any other record.

    A campaign's call is handed to the dialer the moment its result is streamed, but the customer is reached (or
    not) only when the dialer rings, and we learn of it only when the dispositions are imported: without this, a
    second campaign run in between lists the same customer again despite the caps. It counts toward caps until
    the dialer may no longer place the call (the end of its call window, or the action's expiry if sooner), so a
    call never made does not hold the customer's cap for ever. Only an answer that was sent counts: a result the
    stream never carried (a cancelled or late campaign) was never handed over. The stores write it with the
    record, in the same transaction, and an outcome for the same decision and action replaces it.

    Derived from the record alone (its context carries the campaign and the window), so a record replayed from a
    spilled file makes the same contact."""
    context = record.context
    campaign_id = context.get("campaign_id", "")
    latest = context.get("call_latest", "")
    if (
        record.channel is not Channel.OUTBOUND_DIALER
        or record.delivery is not Delivery.SENT
        or not record.actions
        or not campaign_id
        or not latest
    ):
        return None
    action = record.actions[0]
    return Contact(
        action_id=action.action_id,
        channel=Channel.OUTBOUND_DIALER,
        time=record.decided_at,
        # Nothing is reported yet: not_offered is the nearest outcome kind, and caps go by `pending_until` alone.
        outcome=OutcomeKind.NOT_OFFERED,
        decision_id=record.decision_id,
        reached=False,
        pending_until=min(datetime.fromisoformat(latest), action.valid_until),
        campaign_id=campaign_id,
    )


def own_calls_removed(profile: Profile, campaign_id: str) -> Profile:
    """The profile without the calls this same campaign exported and nobody has reported on yet.

    A campaign run again under its id (a retry after a failed export) must list the customers its first attempt
    listed, with the same idempotency keys, so the dialer drops the rows it already holds instead of losing the
    calls it never got; its own pending calls must not cap it. Any other campaign sees them, and so does every
    reported outcome, whichever campaign it came from."""
    kept = tuple(c for c in profile.contacts if c.pending_until is None or c.campaign_id != campaign_id)
    if len(kept) == len(profile.contacts):
        return profile
    return replace(profile, contacts=kept)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
