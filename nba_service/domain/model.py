"""The ruleset model: what a compliance reviewer signs off, as typed, immutable values.

Everything after the loader (compiler, reference evaluator, policy, scripts) works on these types
only, never on YAML, so the ruleset format can change without touching the decision code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

Scalar = str | float | bool
FieldType = Literal["string", "number", "boolean"]


class Channel(enum.StrEnum):
    AGENT_DESKTOP = "agent_desktop"
    OUTBOUND_DIALER = "outbound_dialer"


class Direction(enum.StrEnum):
    """Who started the contact: the customer calling in (an agent answering), or us calling out."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


def default_direction(channel: Channel) -> Direction:
    """A dialer only ever calls out; an agent desktop is answering a call unless the request says otherwise."""
    return Direction.OUTBOUND if channel is Channel.OUTBOUND_DIALER else Direction.INBOUND


def direction_fits(channel: Channel, direction: Direction) -> bool:
    return not (channel is Channel.OUTBOUND_DIALER and direction is Direction.INBOUND)


class ActionType(enum.StrEnum):
    OFFER = "offer"
    # A regulatory notice: skips suppressions and the frequency caps and constraint pauses it shares with other
    # actions (one that names it still limits its repeats), never do-not-contact, do-not-call, consent for its
    # purpose or the calling window; ranks above every offer.
    MANDATORY = "mandatory"


class Op(enum.StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    MISSING = "missing"


ORDERING_OPS = frozenset({Op.LT, Op.LTE, Op.GT, Op.GTE})
SET_OPS = frozenset({Op.IN, Op.NOT_IN})
PRESENCE_OPS = frozenset({Op.EXISTS, Op.MISSING})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A fact the rules may read: a profile attribute or a derived event fact."""

    name: str
    type: FieldType
    description: str = ""
    values: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    type: str
    description: str
    attributes: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class Condition:
    """One comparison of a fact with constants. A missing or null fact fails every comparison."""

    field: str
    op: Op
    values: tuple[Scalar, ...] = ()

    @property
    def value(self) -> Scalar:
        return self.values[0]


@dataclass(frozen=True, slots=True)
class When:
    """Every condition in `all` holds, and (when `any` is given) at least one in `any`."""

    all: tuple[Condition, ...] = ()
    any: tuple[Condition, ...] = ()

    def conditions(self) -> tuple[Condition, ...]:
        return self.all + self.any


@dataclass(frozen=True, slots=True)
class Trigger:
    event: str
    lifetime: timedelta


@dataclass(frozen=True, slots=True)
class Conversion:
    """What counts as the action working: an event of this type whose attributes meet `when` (no conditions: any
    such event), within `within` of the decision. Observed for every customer the decision considered, shown
    the action or held out, so the two groups can be compared."""

    event: str
    within: timedelta
    when: When = When()


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    category: str
    scripts: dict[Channel, str]
    description: str = ""
    trigger: Trigger | None = None
    # What the contact is for (`service`, `marketing`, ...), from the ruleset's `purposes`; "" when the ruleset
    # declares none. Consent is given per purpose and channel.
    purpose: str = ""
    type: ActionType = ActionType.OFFER
    conversion: Conversion | None = None
    # What one conversion is worth, in the ruleset's currency; None when not declared.
    value: float | None = None
    # The share of eligible customers held out of this action (decided, recorded, not shown), from `holdouts`.
    holdout: float = 0.0

    @property
    def mandatory(self) -> bool:
        return self.type is ActionType.MANDATORY


@dataclass(frozen=True, slots=True)
class Purpose:
    id: str
    description: str
    categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    when: When
    action: str
    priority: int
    reason: str


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    id: str
    max: int
    within: timedelta
    action: str | None = None
    category: str | None = None
    channel: Channel | None = None
    description: str = ""
    purpose: str | None = None
    direction: Direction | None = None


@dataclass(frozen=True, slots=True)
class Constraint:
    """Pauses an action, a category, a purpose or a whole channel for a customer once `after` contacts of theirs
    in scope ended with one of `outcomes` within `within` (two declines in 90 days, three no answers in a week).
    Scoped like a frequency cap: every field left out matches everything."""

    id: str
    outcomes: frozenset[str]
    after: int
    within: timedelta
    action: str | None = None
    category: str | None = None
    purpose: str | None = None
    channel: Channel | None = None
    direction: Direction | None = None
    description: str = ""
    # Count each action's own outcomes apart ("an offer declined twice is not raised again") instead of the
    # whole scope together ("four marketing declines pause all marketing").
    per_action: bool = False


@dataclass(frozen=True, slots=True)
class Suppression:
    id: str
    description: str
    when: When
    channels: frozenset[Channel] = frozenset(Channel)
    except_categories: frozenset[str] = frozenset()
    directions: frozenset[Direction] = frozenset(Direction)
    except_purposes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Consent:
    """The customer must have said yes (`field` is true) before `channel` may carry actions of these purposes
    (every purpose when `purposes` is None) in these directions."""

    field: str
    channel: Channel
    purposes: frozenset[str] | None = None
    directions: frozenset[Direction] = frozenset(Direction)
    description: str = ""

    @property
    def id(self) -> str:
        """`consent:<channel>`, with the purposes before the channel and the direction after it when scoped."""
        parts = ["consent"]
        if self.purposes is not None:
            parts.append("+".join(sorted(self.purposes)))
        parts.append(self.channel.value)
        if self.directions != frozenset(Direction):
            parts.extend(sorted(d.value for d in self.directions))
        return ":".join(parts)

    def applies(self, channel: Channel, purpose: str, direction: Direction) -> bool:
        return (
            channel is self.channel
            and direction in self.directions
            and (self.purposes is None or purpose in self.purposes)
        )


@dataclass(frozen=True, slots=True)
class QuietHours:
    start_minute: int
    end_minute: int
    timezone_field: str
    default_timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Policies:
    consent: tuple[Consent, ...] = ()
    do_not_call_field: str | None = None
    frequency_caps: tuple[FrequencyCap, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    quiet_hours: QuietHours | None = None
    constraints: tuple[Constraint, ...] = ()

    def consent_fields(self) -> list[str]:
        return list(dict.fromkeys(c.field for c in self.consent))


@dataclass(frozen=True, slots=True)
class Holdouts:
    """Who is held out is redrawn every `period` (counted from 1970-01-01 UTC), so a customer stays in or out of
    an action's holdout for that long; `seed` keeps assignments apart between programmes."""

    period: timedelta = timedelta(days=90)
    seed: str = ""


@dataclass(frozen=True, slots=True)
class RulesetMeta:
    name: str
    version: str
    owner: str
    description: str
    valid_for: timedelta = timedelta(hours=1)
    # The profile field holding the customer's journey stage, recorded with each decision for the report; "" none.
    journey_field: str = ""


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A validated ruleset. `content_hash` identifies the exact text that was signed off."""

    meta: RulesetMeta
    fields: dict[str, FieldSpec]
    events: dict[str, EventSpec]
    actions: dict[str, Action]
    rules: tuple[Rule, ...]
    policies: Policies
    content_hash: str
    source: str = ""
    purposes: dict[str, Purpose] = field(default_factory=dict)
    holdouts: Holdouts = Holdouts()
    # The file's text exactly as signed off (its UTF-8 bytes hash to `content_hash`): what the ruleset archive
    # keeps, so a past decision can be explained by the very version that made it.
    text: str = field(default="", repr=False, compare=False)

    def fact_fields(self) -> dict[str, FieldSpec]:
        """Every name a condition may use: attributes, then the derived event facts."""
        names = dict(self.fields)
        for event in self.events.values():
            age = f"events.{event.type}.age_hours"
            names[age] = FieldSpec(age, "number", f"Hours since the newest {event.type} event")
            for attribute in event.attributes:
                name = f"events.{event.type}.{attribute.name}"
                names[name] = FieldSpec(name, attribute.type, attribute.description, attribute.values)
        return names
