"""The live customer profile as every store returns it, and the outcome and event values written back.

Both stores (memory, PostgreSQL) produce exactly these shapes, so the engine cannot tell them apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nba_service.domain.contact_points import PhoneNumber
from nba_service.domain.model import Channel

AttributeValue = str | int | float | bool | None


class OutcomeKind(enum.StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    NO_ANSWER = "no_answer"
    CONVERTED = "converted"
    CALLBACK_REQUESTED = "callback_requested"
    NOT_OFFERED = "not_offered"


# Outcomes that mean the customer was actually contacted about the action, so they count towards caps.
CONTACTED_OUTCOMES = frozenset(
    {OutcomeKind.ACCEPTED, OutcomeKind.DECLINED, OutcomeKind.CONVERTED, OutcomeKind.CALLBACK_REQUESTED}
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

    @property
    def counts(self) -> bool:
        """Whether this contact counts toward caps: a later no-answer cannot undo an offer the customer heard."""
        return self.reached if self.reached is not None else self.outcome in CONTACTED_OUTCOMES


@dataclass(frozen=True, slots=True)
class Profile:
    customer_id: str
    attributes: Mapping[str, AttributeValue]
    events: tuple[Event, ...] = ()
    contacts: tuple[Contact, ...] = ()
    # The numbers a dialer may use, in the customer's order of preference. Rules never read them.
    phones: tuple[PhoneNumber, ...] = ()


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
