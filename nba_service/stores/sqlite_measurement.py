"""The report's counts from the embedded database: its rows, run through the reference definitions.

The embedded store holds what one machine decides, so reading the window's rows into the process and counting
them with `domain.measurement` (the definitions the PostgreSQL SQL is tested against) costs seconds at most.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta

from nba_service.domain.measurement import (
    Exposure,
    Measurements,
    MeasureQuery,
    ObservedConversion,
    RecordedOutcome,
    TriggerEvent,
    conversion_event_types,
    cycle_times,
    longest_window,
    matching_actions,
    measure,
)
from nba_service.domain.model import EventSpec
from nba_service.stores.sqlite_time import stamp

_EXPOSURES = """
SELECT e.decision_id, e.action_id, e.held_out, e.customer_id, e.decided_at, e.rule_id, e.channel, e.direction,
       e.ruleset_name, e.ruleset_version, e.journey_stage
  FROM exposures AS e JOIN decisions AS d USING (decision_id)
 WHERE e.decided_at >= ? AND e.decided_at < ? AND e.ruleset_name = ? AND d.delivery = 'sent'
"""


def read_measurements(
    conn: sqlite3.Connection,
    query: MeasureQuery,
    events: Mapping[str, EventSpec],
    lifetimes: Mapping[str, tuple[timedelta, tuple[str, ...]]],
) -> Measurements:
    since, until = stamp(query.since), stamp(query.until)
    exposures = [
        Exposure(r[0], r[1], bool(r[2]), r[3], _time(r[4]), r[5], r[6], r[7], r[8], r[9], r[10])
        for r in conn.execute(_EXPOSURES, (since, until, query.ruleset_name))
    ]
    horizon = stamp(query.until + longest_window(query.conversions, query.default_within))
    types = conversion_event_types(query.conversions)
    conversions: list[ObservedConversion] = []
    if types:
        marks = ", ".join("?" * len(types))
        for customer_id, kind, time, attributes in conn.execute(
            f"SELECT customer_id, type, time, attributes FROM events WHERE type IN ({marks})"  # noqa: S608
            " AND time > ? AND time <= ?",
            (*types, since, horizon),
        ):
            for action_id in matching_actions(query.conversions, events, kind, json.loads(attributes)):
                conversions.append(ObservedConversion(customer_id, action_id, _time(time)))
    outcomes = [
        RecordedOutcome(r[0], r[1], r[2], r[3], _time(r[4]))
        for r in conn.execute(
            "SELECT decision_id, customer_id, action_id, outcome, time FROM outcomes WHERE time >= ?", (since,)
        )
    ]
    triggers: list[TriggerEvent] = []
    if lifetimes:
        marks = ", ".join("?" * len(lifetimes))
        triggers = [
            TriggerEvent(r[0], r[1], _time(r[2]))
            for r in conn.execute(
                f"SELECT customer_id, type, time FROM events WHERE type IN ({marks})"  # noqa: S608
                " AND time >= ? AND time < ?",
                (*lifetimes, since, until),
            )
        ]
    return Measurements(
        measure(query, exposures, conversions, outcomes),
        tuple(cycle_times(query, lifetimes, triggers, exposures)),
        len(exposures),
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
