"""Projects a live profile onto the typed facts a ruleset reads.

Both evaluators (durable_rules and the reference) see exactly this projection, so type coercion
happens once, here: a value of the wrong type, a non-finite number or a null becomes a missing fact,
and the problem is kept for the decision record instead of failing the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nba_service.domain.model import FieldSpec, Ruleset
from nba_service.domain.profile import AttributeValue, Event, Profile

FactValue = str | float | bool
Facts = dict[str, FactValue]


@dataclass(slots=True)
class Projection:
    facts: Facts
    problems: list[str] = field(default_factory=list)
    newest_events: dict[str, Event] = field(default_factory=dict)


def normalise(spec: FieldSpec, value: object) -> FactValue | None:
    """The fact value for a raw value, or None when it cannot stand for the declared type."""
    if value is None:
        return None
    if spec.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if spec.type == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else None


def live_events(profile: Profile, now: datetime) -> dict[str, Event]:
    """The newest unexpired event of each type; events from the future count as happening now."""
    newest: dict[str, Event] = {}
    for event in profile.events:
        if event.expires_at is not None and event.expires_at <= now:
            continue
        current = newest.get(event.type)
        if current is None or event.time > current.time:
            newest[event.type] = event
    return newest


def project(
    ruleset: Ruleset, profile: Profile, now: datetime, fact_fields: Mapping[str, FieldSpec] | None = None
) -> Projection:
    specs = fact_fields if fact_fields is not None else ruleset.fact_fields()
    projection = Projection({})
    for name, spec in ruleset.fields.items():
        raw: AttributeValue = profile.attributes.get(name)
        _put(projection, spec, name, raw)
    newest = live_events(profile, now)
    projection.newest_events = newest
    for event_type, event in newest.items():
        if event_type not in ruleset.events:
            continue
        age = max(0.0, (now - event.time).total_seconds() / 3600.0)
        projection.facts[f"events.{event_type}.age_hours"] = age
        for attribute in ruleset.events[event_type].attributes:
            name = f"events.{event_type}.{attribute.name}"
            _put(projection, specs[name], name, event.attributes.get(attribute.name))
    return projection


def _put(projection: Projection, spec: FieldSpec, name: str, raw: object) -> None:
    value = normalise(spec, raw)
    if value is not None:
        projection.facts[name] = value
    elif raw is not None:
        projection.problems.append(f"{name}: {type(raw).__name__} value is not a valid {spec.type}; treated as missing")
