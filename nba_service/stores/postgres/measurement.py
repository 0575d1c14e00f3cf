"""The report's counts, aggregated in PostgreSQL over the `exposures` table (migration 0011).

The definitions are `domain.measurement`'s, written as SQL; a test runs both over the same rows. Conversion events
are read once and matched in Python by the reference evaluator, so no condition is ever translated into SQL and
read differently; only the matches (customer, action, time) go back into the aggregation, which does the heavy
part (every exposure of the window) where the data is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta

import asyncpg

from nba_service.domain.measurement import (
    Cell,
    CellKey,
    CycleTimes,
    Measurements,
    MeasureQuery,
    conversion_event_types,
    longest_window,
    matching_actions,
)
from nba_service.domain.model import EventSpec

# Exposures of delivered decisions of the ruleset in the window ($1, $2, $3 in every query that uses it). Each query
# reads `exposures` itself rather than a temporary copy: writing twenty million rows out again cost more than the
# scans, and a temporary table is never scanned by parallel workers.
_WINDOW = """
window_exposures AS (
    SELECT e.decision_id, e.action_id, e.held_out, e.customer_id, e.decided_at, e.rule_id, e.channel,
           e.ruleset_version, e.journey_stage
      FROM exposures e
     WHERE e.decided_at >= $1 AND e.decided_at < $2 AND e.ruleset_name = $3 AND e.delivered
)"""
# A unit is the first delivered exposure of a customer and an action in the window: DISTINCT ON over the window's
# exposures. A hash of the customer leads the sort: every id starts "CUST-000", so PostgreSQL's abbreviated text
# keys would tell none apart and each comparison would fall back to comparing whole strings. Conversions join the
# units as one array of times per customer and action, tested in place when it holds one time (most do) and by a
# PARALLEL SAFE function (migration 0012) otherwise: no correlated subquery keeps the plan out of parallel workers.
_UNITS = f"""
WITH {_WINDOW}, windows AS (
    SELECT * FROM unnest($5::text[], $6::interval[]) AS w(action_id, within)
), by_event AS (
    SELECT customer_id, action_id, array_agg(time) AS times
      FROM unnest($8::text[], $9::text[], $10::timestamptz[]) AS c(customer_id, action_id, time)
     GROUP BY customer_id, action_id
), by_agent AS (
    SELECT customer_id, action_id, array_agg(time) AS times
      FROM outcomes
     WHERE outcome = 'converted' AND time >= $1
     GROUP BY customer_id, action_id
), units AS (
    SELECT DISTINCT ON (hashtextextended(customer_id, 0), customer_id, action_id) *
      FROM window_exposures
     ORDER BY hashtextextended(customer_id, 0), customer_id, action_id, decided_at, decision_id, held_out
), scored AS (
    SELECT u.*, u.decided_at + coalesce(w.within, $7::interval) AS window_end, ev.times AS event_times,
           ag.times AS agent_times
      FROM units u
      LEFT JOIN windows w USING (action_id)
      LEFT JOIN by_event ev USING (customer_id, action_id)
      LEFT JOIN by_agent ag USING (customer_id, action_id)
), flagged AS (
    SELECT s.action_id, s.rule_id, s.channel, s.ruleset_version, s.journey_stage, s.held_out,
           s.window_end <= $4 AS mature,
           CASE WHEN s.event_times IS NULL THEN false
                WHEN cardinality(s.event_times) = 1
                THEN s.event_times[1] > s.decided_at AND s.event_times[1] <= s.window_end
                ELSE report_any_within(s.event_times, s.decided_at, s.window_end, false) END AS ev,
           CASE WHEN s.agent_times IS NULL THEN false
                WHEN cardinality(s.agent_times) = 1
                THEN s.agent_times[1] >= s.decided_at AND s.agent_times[1] <= s.window_end
                ELSE report_any_within(s.agent_times, s.decided_at, s.window_end, true) END AS ag
      FROM scored s
)
SELECT action_id, rule_id, channel, ruleset_version, journey_stage, held_out,
       count(*) AS units,
       count(*) FILTER (WHERE mature) AS mature,
       count(*) FILTER (WHERE mature AND (ev OR ag)) AS converted,
       count(*) FILTER (WHERE mature AND ev AND NOT ag) AS converted_event,
       count(*) FILTER (WHERE mature AND ag AND NOT ev) AS converted_agent,
       count(*) FILTER (WHERE mature AND ev AND ag) AS converted_both
  FROM flagged
 GROUP BY action_id, rule_id, channel, ruleset_version, journey_stage, held_out
"""  # noqa: S608 - constant text only
# Outcomes per offer come kept (`offer_outcomes`, migration 0012): the latest time of each kind.
_OFFERS = f"""
WITH {_WINDOW}
SELECT e.action_id, e.rule_id, e.channel, e.ruleset_version, e.journey_stage, e.held_out,
       count(*) AS exposures,
       count(*) FILTER (WHERE NOT e.held_out) AS offers,
       count(*) FILTER (WHERE NOT e.held_out AND k.accepted_at >= $1) AS accepted,
       count(*) FILTER (WHERE NOT e.held_out AND k.declined_at >= $1) AS declined,
       count(*) FILTER (WHERE NOT e.held_out AND k.converted_at >= $1) AS recorded_converted,
       count(*) FILTER (WHERE NOT e.held_out AND k.not_now_at >= $1) AS not_now
  FROM window_exposures e LEFT JOIN offer_outcomes k USING (decision_id, action_id)
 GROUP BY e.action_id, e.rule_id, e.channel, e.ruleset_version, e.journey_stage, e.held_out
"""  # noqa: S608 - constant text only
_CYCLES = f"""
WITH {_WINDOW}, lifetimes AS (
    SELECT * FROM unnest($4::text[], $5::interval[]) AS l(type, lifetime)
), triggered AS (
    SELECT * FROM unnest($6::text[], $7::text[]) AS t(type, action_id)
), triggers AS (
    SELECT t.event_id, t.customer_id, t.type, t.time, t.time + l.lifetime AS ends
      FROM events t JOIN lifetimes l USING (type)
     WHERE t.time >= $1 AND t.time < $2
), firsts AS (
    SELECT t.event_id, t.type, t.time, t.ends, min(e.decided_at) AS first
      FROM triggers t
      LEFT JOIN (triggered a JOIN window_exposures e ON e.action_id = a.action_id AND NOT e.held_out)
        ON a.type = t.type AND e.customer_id = t.customer_id AND e.decided_at >= t.time AND e.decided_at < t.ends
     GROUP BY t.event_id, t.type, t.time, t.ends
)
SELECT type,
       count(*) AS triggers,
       count(first) AS offered,
       count(*) FILTER (WHERE first IS NULL AND ends <= $2) AS expired,
       count(*) FILTER (WHERE first IS NULL AND ends > $2) AS open,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first - time)) AS median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM first - time)) AS p90_s
  FROM firsts
 GROUP BY type
"""  # noqa: S608 - constant text only


async def read_measurements(
    conn: asyncpg.Connection,
    query: MeasureQuery,
    events: Mapping[str, EventSpec],
    lifetimes: Mapping[str, tuple[timedelta, tuple[str, ...]]],
) -> Measurements:
    """One read-only, repeatable-read snapshot, so every count is of the same rows (and a replica can serve it)."""
    horizon = query.until + longest_window(query.conversions, query.default_within)
    window = (query.since, query.until, query.ruleset_name)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # The hash joins and aggregations need memory: on disk they take many times as long. A report is one
        # query at a time, so the budget is the report's alone.
        await conn.execute("SET LOCAL work_mem = '512MB'")
        matches = await _conversions(conn, query, events, horizon)
        windows = [(a, d.within) for a, d in query.conversions.items()]
        cells: dict[CellKey, Cell] = {}
        exposures = 0
        for row in await conn.fetch(
            _UNITS,
            *window,
            query.until,
            [a for a, _ in windows],
            [w for _, w in windows],
            query.default_within,
            *matches,
        ):
            cell = cells.setdefault(_key(row), Cell())
            for name in ("units", "mature", "converted", "converted_event", "converted_agent", "converted_both"):
                setattr(cell, name, int(row[name]))
        for row in await conn.fetch(_OFFERS, *window):
            exposures += int(row["exposures"])
            if row["offers"]:
                cell = cells.setdefault(_key(row), Cell())
                for name in ("offers", "accepted", "declined", "recorded_converted", "not_now"):
                    setattr(cell, name, int(row[name]))
        pairs = [(t, a) for t, (_, acts) in lifetimes.items() for a in acts]
        found = {
            row["type"]: row
            for row in await conn.fetch(
                _CYCLES,
                *window,
                list(lifetimes),
                [lifetime for lifetime, _ in lifetimes.values()],
                [t for t, _ in pairs],
                [a for _, a in pairs],
            )
        }
    cycles = tuple(_cycle(t, found.get(t)) for t in sorted(lifetimes))
    return Measurements(cells, cycles, exposures)


async def _conversions(
    conn: asyncpg.Connection, query: MeasureQuery, events: Mapping[str, EventSpec], horizon: datetime
) -> tuple[list[str], list[str], list[datetime]]:
    customers: list[str] = []
    actions: list[str] = []
    times: list[datetime] = []
    types = conversion_event_types(query.conversions)
    if not types:
        return customers, actions, times
    async for row in conn.cursor(
        "SELECT customer_id, type, time, attributes FROM events WHERE type = ANY($1::text[])"
        " AND time > $2 AND time <= $3",
        types,
        query.since,
        horizon,
        prefetch=5000,
    ):
        attributes = row["attributes"]
        if isinstance(attributes, str):
            attributes = json.loads(attributes)
        for action_id in matching_actions(query.conversions, events, row["type"], attributes):
            customers.append(row["customer_id"])
            actions.append(action_id)
            times.append(row["time"])
    return customers, actions, times


def _key(row: asyncpg.Record) -> CellKey:
    return (
        row["action_id"],
        row["rule_id"],
        row["channel"],
        row["ruleset_version"],
        row["journey_stage"],
        bool(row["held_out"]),
    )


def _cycle(event_type: str, row: asyncpg.Record | None) -> CycleTimes:
    if row is None:
        return CycleTimes(event_type, 0, 0, 0, 0, None, None)
    return CycleTimes(
        event_type,
        int(row["triggers"]),
        int(row["offered"]),
        int(row["expired"]),
        int(row["open"]),
        None if row["median_s"] is None else float(row["median_s"]),
        None if row["p90_s"] is None else float(row["p90_s"]),
    )
