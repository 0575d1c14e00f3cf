"""The projection's fast paths for plain values give exactly what `normalise`, the definition of a fact's value,
gives: the same facts with the same types (a number fact is always a float), the same missing facts and the
same problems, for every kind of raw value a profile or an event can hold."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nba_service.domain import facts
from nba_service.domain.facts import Projection, live_events, normalise, project
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import FieldSpec
from nba_service.domain.profile import Event, Profile

RULESET = load_ruleset_file(Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml")
SPECS = RULESET.fact_fields()
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

raw_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.sampled_from([2**1023, -(2**1023), 2**1023 - 1, 2**1024 - 1, 2**1024, 2**53 + 1, 0, -0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan]),
    st.text(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _by_definition(specs: dict[str, FieldSpec], values: dict[str, Any]) -> Projection:
    """Every field through `normalise`, as the projection did before its fast paths."""
    projection = Projection({})
    for name, raw in values.items():
        spec = specs[name]
        value = normalise(spec, raw)
        if value is not None:
            projection.facts[name] = value
        elif raw is not None:
            projection.problems.append(
                f"{name}: {type(raw).__name__} value is not a valid {spec.type}; treated as missing"
            )
    return projection


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert type(got[name]) is type(value), name
        assert repr(got[name]) == repr(value), name  # -0.0 keeps its sign


event_types = sorted(RULESET.events)


@given(
    attributes=st.fixed_dictionaries({}, optional=dict.fromkeys(RULESET.fields, raw_values)),
    event_type=st.sampled_from(event_types),
    event_values=st.dictionaries(st.text(max_size=4), raw_values, max_size=2),
    event_attributes=st.data(),
)
def test_projection_agrees_with_normalise_for_every_kind_of_value(
    attributes: dict[str, Any], event_type: str, event_values: dict[str, Any], event_attributes: st.DataObject
) -> None:
    declared = {a.name: event_attributes.draw(raw_values) for a in RULESET.events[event_type].attributes}
    event = Event(event_type, NOW - timedelta(hours=3), {**event_values, **declared})
    profile = Profile("CUST-1", attributes, (event,))
    got = project(RULESET, profile, NOW, SPECS)

    values = {name: attributes.get(name) for name in RULESET.fields}
    values |= {f"events.{event_type}.{name}": value for name, value in declared.items()}
    want = _by_definition(SPECS, values)
    want.facts[f"events.{event_type}.age_hours"] = 3.0

    _same(got.facts, want.facts)
    assert sorted(got.problems) == sorted(want.problems)
    assert got.newest_events == live_events(profile, NOW)


def test_ints_at_the_edge_of_the_float_range() -> None:
    spec = FieldSpec("n", "number")
    for raw in (2**1023, -(2**1023), 2**1024 - 1, 2**1024, -(2**1024), 10**400):
        values = {"n": raw}
        projection = Projection({})
        facts._put(projection, spec, "n", raw)
        _same(projection.facts, _by_definition({"n": spec}, values).facts)
