"""What was shown, what was held out, and who converted: the counts the report is built from.

The unit of measurement is a customer and an action, at the customer's first exposure to the action in the
report's window: the first delivered decision that showed it, or held it out. Holdout assignment is random per
customer and action, so the shown and held-out units of an action differ only by chance and by being shown;
counting each customer once keeps the units independent, which the interval around the uplift assumes.

A unit converts when the action's conversion (an event with conditions) happens within the action's window after
that first exposure, or when an agent records a `converted` outcome for the action within the same window. A unit
whose window has not closed by the end of the report is not yet counted in the rates: it is reported as still
open, since counting it would pull both groups' rates, and the uplift, toward zero.

This module is the plain reference for what every store computes: the embedded store runs it over its rows; the
PostgreSQL store runs the same definitions as SQL in the database, and a test holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nba_service.domain.facts import FactValue, normalise
from nba_service.domain.model import Conversion, EventSpec, Ruleset
from nba_service.domain.records import DecisionRecord
from nba_service.domain.reference import when_holds

HELD_OUT = "held_out"


@dataclass(frozen=True, slots=True)
class Exposure:
    """An action a decision showed (`held_out` false) or held out: one row of the stores' `exposures` table."""

    decision_id: str
    action_id: str
    held_out: bool
    customer_id: str
    decided_at: datetime
    rule_id: str
    channel: str
    direction: str | None
    ruleset_name: str
    ruleset_version: str
    journey_stage: str | None


def exposures_of(record: DecisionRecord) -> list[Exposure]:
    """The record's shown actions, then the ones it held out; an action named twice (two rules) counts once."""
    seen: set[tuple[str, bool]] = set()
    found: list[Exposure] = []
    items = [(a.action_id, a.rule_id, False) for a in record.actions]
    items += [(d.action_id, d.rule_id, True) for d in record.dropped if d.reason == HELD_OUT]
    for action_id, rule_id, held_out in items:
        if (action_id, held_out) in seen:
            continue
        seen.add((action_id, held_out))
        found.append(
            Exposure(
                record.decision_id,
                action_id,
                held_out,
                record.customer_id,
                record.decided_at,
                rule_id,
                record.channel.value,
                None if record.direction is None else record.direction.value,
                record.ruleset.name,
                record.ruleset.version,
                record.journey_stage,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class ConversionDef:
    """An action's conversion as the report applies it; `conversion` None: only agents' outcomes count."""

    action_id: str
    conversion: Conversion | None
    # How long after the first exposure a conversion counts: the conversion's window, else the report's default.
    within: timedelta


@dataclass(frozen=True, slots=True)
class MeasureQuery:
    since: datetime
    until: datetime
    ruleset_name: str
    conversions: Mapping[str, ConversionDef]
    # Actions shown without a declared conversion: how long after the offer an agent's `converted` outcome counts.
    default_within: timedelta = timedelta(days=30)

    def within(self, action_id: str) -> timedelta:
        found = self.conversions.get(action_id)
        return found.within if found is not None else self.default_within


@dataclass(frozen=True, slots=True)
class ObservedConversion:
    """A conversion event that meets an action's definition (the event's own conditions, not yet its window)."""

    customer_id: str
    action_id: str
    time: datetime


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    decision_id: str
    customer_id: str
    action_id: str
    outcome: str
    time: datetime


CellKey = tuple[str, str, str, str, str | None, bool]
"""action, rule, channel, ruleset version, journey stage, held out."""


@dataclass(slots=True)
class Cell:
    """Counts for one combination of the report's dimensions and group.

    Unit counts (`units` .. `converted_both`) are keyed by the unit's first exposure; offer counts (`offers` ..
    `not_now`) by each exposure's own dimensions, every delivered one, not only the first.
    """

    units: int = 0
    mature: int = 0
    converted: int = 0
    converted_event: int = 0
    converted_agent: int = 0
    converted_both: int = 0
    offers: int = 0
    accepted: int = 0
    declined: int = 0
    recorded_converted: int = 0
    not_now: int = 0

    def add(self, other: Cell) -> None:
        for name in Cell.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def conversion_defs(ruleset: Ruleset, default_within: timedelta = timedelta(days=30)) -> dict[str, ConversionDef]:
    return {
        action.id: ConversionDef(
            action.id, action.conversion, action.conversion.within if action.conversion else default_within
        )
        for action in ruleset.actions.values()
    }


def conversion_event_types(conversions: Mapping[str, ConversionDef]) -> list[str]:
    return sorted({d.conversion.event for d in conversions.values() if d.conversion is not None})


def longest_window(conversions: Mapping[str, ConversionDef], default: timedelta) -> timedelta:
    return max([d.within for d in conversions.values()], default=default)


def matching_actions(
    conversions: Mapping[str, ConversionDef],
    events: Mapping[str, EventSpec],
    event_type: str,
    attributes: Mapping[str, object],
) -> list[str]:
    """The actions an event of this type with these attributes is a conversion of, by the engine's own reading
    of a condition (the reference evaluator), so the report cannot read a condition differently from the rules."""
    spec = events.get(event_type)
    facts: dict[str, FactValue] = {}
    if spec is not None:
        for attribute in spec.attributes:
            if attributes.get(attribute.name) is not None:
                value = normalise(attribute, attributes[attribute.name])
                if value is not None:
                    facts[attribute.name] = value
    return [
        d.action_id
        for d in conversions.values()
        if d.conversion is not None and d.conversion.event == event_type and when_holds(d.conversion.when, facts)
    ]


@dataclass(frozen=True, slots=True)
class _Unit:
    first: Exposure
    window_end: datetime


def measure(
    query: MeasureQuery,
    exposures: Iterable[Exposure],
    conversions: Iterable[ObservedConversion],
    outcomes: Iterable[RecordedOutcome],
) -> dict[CellKey, Cell]:
    """The cells, from the exposures of delivered decisions, the conversion events that match a definition, and the
    outcomes recorded since the window began."""
    first: dict[tuple[str, str], Exposure] = {}
    offers: list[Exposure] = []
    for exposure in sorted(exposures, key=lambda e: (e.decided_at, e.decision_id, e.held_out)):
        if not query.since <= exposure.decided_at < query.until or exposure.ruleset_name != query.ruleset_name:
            continue
        first.setdefault((exposure.customer_id, exposure.action_id), exposure)
        if not exposure.held_out:
            offers.append(exposure)
    events_by_unit: dict[tuple[str, str], list[datetime]] = {}
    for c in conversions:
        events_by_unit.setdefault((c.customer_id, c.action_id), []).append(c.time)
    agent_by_unit: dict[tuple[str, str], list[datetime]] = {}
    by_offer: dict[tuple[str, str], set[str]] = {}
    for o in outcomes:
        by_offer.setdefault((o.decision_id, o.action_id), set()).add(o.outcome)
        if o.outcome == "converted":
            agent_by_unit.setdefault((o.customer_id, o.action_id), []).append(o.time)

    cells: dict[CellKey, Cell] = {}
    for unit_key, exposure in first.items():
        cell = cells.setdefault(key_of(exposure), Cell())
        cell.units += 1
        end = exposure.decided_at + query.within(exposure.action_id)
        if end > query.until:
            continue
        cell.mature += 1
        by_event = any(exposure.decided_at < t <= end for t in events_by_unit.get(unit_key, ()))
        by_agent = any(exposure.decided_at <= t <= end for t in agent_by_unit.get(unit_key, ()))
        cell.converted += by_event or by_agent
        cell.converted_event += by_event and not by_agent
        cell.converted_agent += by_agent and not by_event
        cell.converted_both += by_event and by_agent
    for exposure in offers:
        cell = cells.setdefault(key_of(exposure), Cell())
        kinds = by_offer.get((exposure.decision_id, exposure.action_id), set())
        cell.offers += 1
        cell.accepted += "accepted" in kinds
        cell.declined += "declined" in kinds
        cell.recorded_converted += "converted" in kinds
        cell.not_now += "not_now" in kinds
    return cells


def key_of(exposure: Exposure) -> CellKey:
    return (
        exposure.action_id,
        exposure.rule_id,
        exposure.channel,
        exposure.ruleset_version,
        exposure.journey_stage,
        exposure.held_out,
    )


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    customer_id: str
    type: str
    time: datetime


@dataclass(frozen=True, slots=True)
class CycleTimes:
    """How quickly a trigger became an offer: event time to the first delivered offer of an action it triggers,
    within the trigger's lifetime. `expired` triggers ended unoffered; `open` ones may still be offered."""

    event_type: str
    triggers: int
    offered: int
    expired: int
    open: int
    median_s: float | None
    p90_s: float | None


def trigger_lifetimes(ruleset: Ruleset) -> dict[str, tuple[timedelta, tuple[str, ...]]]:
    """Per trigger event type: the longest lifetime any action gives it, and the actions it triggers."""
    found: dict[str, tuple[timedelta, tuple[str, ...]]] = {}
    for action in ruleset.actions.values():
        if action.trigger is None:
            continue
        lifetime, actions = found.get(action.trigger.event, (timedelta(0), ()))
        found[action.trigger.event] = (max(lifetime, action.trigger.lifetime), (*actions, action.id))
    return found


def cycle_times(
    query: MeasureQuery,
    lifetimes: Mapping[str, tuple[timedelta, tuple[str, ...]]],
    triggers: Iterable[TriggerEvent],
    exposures: Sequence[Exposure],
) -> list[CycleTimes]:
    """Triggers that happened in the window, each with its first delivered offer (shown, not held out)."""
    shown: dict[tuple[str, str], list[datetime]] = {}
    for e in exposures:
        if not e.held_out and e.ruleset_name == query.ruleset_name:
            shown.setdefault((e.customer_id, e.action_id), []).append(e.decided_at)
    durations: dict[str, list[float]] = {t: [] for t in lifetimes}
    counts: dict[str, list[int]] = {t: [0, 0, 0] for t in lifetimes}
    for trigger in triggers:
        if trigger.type not in lifetimes or not query.since <= trigger.time < query.until:
            continue
        lifetime, actions = lifetimes[trigger.type]
        end = trigger.time + lifetime
        times = [
            t
            for action in actions
            for t in shown.get((trigger.customer_id, action), ())
            if trigger.time <= t < end and t < query.until
        ]
        tally = counts[trigger.type]
        if times:
            durations[trigger.type].append((min(times) - trigger.time).total_seconds())
        elif end <= query.until:
            tally[0] += 1
        else:
            tally[1] += 1
        tally[2] += 1
    return [
        CycleTimes(
            event_type,
            counts[event_type][2],
            len(durations[event_type]),
            counts[event_type][0],
            counts[event_type][1],
            percentile(durations[event_type], 0.5),
            percentile(durations[event_type], 0.9),
        )
        for event_type in sorted(lifetimes)
    ]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks: PostgreSQL's `percentile_cont`, so both stores agree."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Measurements:
    """What a store hands the report: the cells, the cycle times, and how many exposures it read."""

    cells: dict[CellKey, Cell] = field(default_factory=dict)
    cycles: tuple[CycleTimes, ...] = ()
    exposures: int = 0
