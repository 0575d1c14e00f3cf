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
from typing import Any

from nba_service.domain.model import FieldSpec, Ruleset
from nba_service.domain.profile import Event, Profile

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
    attributes = profile.attributes
    for name, spec in ruleset.fields.items():
        _put(projection, spec, name, attributes.get(name))
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


_FLOAT_LIMIT = 2.0**1023
"""An int below this in size converts to a finite float without rounding up past the float range."""


def _put(projection: Projection, spec: FieldSpec, name: str, raw: Any) -> None:
    # The plain cases first, exactly as `normalise` would take them (a fifth of a decision's pipeline went on
    # calling it for every field); anything else goes through `normalise`.
    if raw is None:
        return
    kind = type(raw)
    field_type = spec.type
    if kind is str:
        if field_type == "string":
            projection.facts[name] = raw
            return
    elif kind is bool:
        if field_type == "boolean":
            projection.facts[name] = raw
            return
    elif kind is float:
        if field_type == "number" and raw - raw == 0.0:  # finite: inf - inf is nan
            projection.facts[name] = raw
            return
    elif kind is int and field_type == "number" and -_FLOAT_LIMIT < raw < _FLOAT_LIMIT:
        projection.facts[name] = float(raw)
        return
    value = normalise(spec, raw)
    if value is not None:
        projection.facts[name] = value
    else:
        projection.problems.append(f"{name}: {type(raw).__name__} value is not a valid {spec.type}; treated as missing")
