"""The live customer profile as every store returns it, and the outcome and event values written back.

Both stores (memory, PostgreSQL) produce exactly these shapes, so the engine cannot tell them apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nba_service.domain.contact_points import PhoneNumber
from nba_service.domain.model import Channel, Direction, default_direction

AttributeValue = str | int | float | bool | None


class OutcomeKind(enum.StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    NO_ANSWER = "no_answer"
    CONVERTED = "converted"
    CALLBACK_REQUESTED = "callback_requested"
    NOT_OFFERED = "not_offered"
    # The customer heard it and asked to come back to it later: defers without counting as a decline.
    NOT_NOW = "not_now"


# Outcomes that mean the customer was actually contacted about the action, so they count towards caps.
CONTACTED_OUTCOMES = frozenset(
    {
        OutcomeKind.ACCEPTED,
        OutcomeKind.DECLINED,
        OutcomeKind.CONVERTED,
        OutcomeKind.CALLBACK_REQUESTED,
        OutcomeKind.NOT_NOW,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    time: datetime
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    """One entry of contact history: an action that reached the customer, and how it ended."""

    action_id: str
    channel: Channel
    time: datetime
    outcome: OutcomeKind
    decision_id: str = ""
    note: str = ""
    reached: bool | None = None
    # None in history written before directions were kept: read as the channel's usual direction.
    direction: Direction | None = None
    # A dialer call exported but not yet reported on: it counts toward caps until its call window closes, so a
    # second campaign run before the dispositions are imported cannot list the same customer again.
    pending_until: datetime | None = None
    # The campaign that exported the pending call: a retry of that same campaign does not count it (see
    # nba_service.domain.dialer.own_calls_removed). "" for every other contact.
    campaign_id: str = ""

    @property
    def counts(self) -> bool:
        """Whether this contact counts toward caps: a later no-answer cannot undo an offer the customer heard."""
        return self.reached if self.reached is not None else self.outcome in CONTACTED_OUTCOMES

    def counts_at(self, now: datetime) -> bool:
        if self.pending_until is not None:
            return now < self.pending_until
        return self.counts

    @property
    def contact_direction(self) -> Direction:
        return self.direction if self.direction is not None else default_direction(self.channel)


class DoNotContactReason(enum.StrEnum):
    CUSTOMER_REQUEST = "customer_request"
    REGULATOR_LIST = "regulator_list"
    BEREAVEMENT = "bereavement"
    VULNERABILITY = "vulnerability"


@dataclass(frozen=True, slots=True)
class DoNotContact:
    """A listing that stops us contacting the customer (outbound) on a channel, or on every channel when `channel`
    is None, until it is removed or `expires_at` passes. Kept with who listed them and why, for compliance."""

    channel: Channel | None
    reason: DoNotContactReason
    source: str
    added_at: datetime
    expires_at: datetime | None = None
    added_by: str = ""
    note: str = ""

    def active(self, now: datetime) -> bool:
        return self.added_at <= now + timedelta(minutes=5) and (self.expires_at is None or now < self.expires_at)

    def covers(self, channel: Channel) -> bool:
        return self.channel is None or self.channel is channel


@dataclass(frozen=True, slots=True)
class Profile:
    customer_id: str
    attributes: Mapping[str, AttributeValue]
    events: tuple[Event, ...] = ()
    contacts: tuple[Contact, ...] = ()
    # The numbers a dialer may use, in the customer's order of preference. Rules never read them.
    phones: tuple[PhoneNumber, ...] = ()
    do_not_contact: tuple[DoNotContact, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    decision_id: str
    customer_id: str
    action_id: str
    channel: Channel
    outcome: OutcomeKind
    time: datetime
    note: str = ""
    recorded_by: str = ""
    """The principal that reported it ("" for outcomes reported before callers were recorded)."""
    idempotency_key: str = ""
    """When set, a second outcome with the same key is not stored again (dialer imports run twice)."""
    direction: Direction | None = None
    """The direction of the decision it answers (None: the channel's usual direction)."""
