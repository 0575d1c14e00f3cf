"""What a unit, an exposure and a conversion are (domain.measurement), and the embedded store counting them.

The definitions are checked on small hand-made histories whose answer is worked out in the test; then the
embedded database, loaded through its own write paths with a random history, must count exactly what the
definitions count in memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.measurement import (
    Cell,
    Exposure,
    MeasureQuery,
    ObservedConversion,
    RecordedOutcome,
    TriggerEvent,
    conversion_defs,
    cycle_times,
    exposures_of,
    matching_actions,
    measure,
    percentile,
    trigger_lifetimes,
)
from nba_service.domain.model import Ruleset
from nba_service.stores.sqlite import SqliteStore
from nba_service.stores.sqlite_time import stamp
from nba_service.synthetic import generate_profiles
from tests.e2e._support import RULESET_PATH
from tests.measurement_data import SINCE, UNTIL, make_history

T0 = datetime(2031, 2, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


def _exposure(
    customer: str, action: str, at: datetime, *, held_out: bool = False, decision: str = "", stage: str | None = None
) -> Exposure:
    return Exposure(
        decision or f"{customer}-{action}-{at.isoformat()}-{held_out}",
        action,
        held_out,
        customer,
        at,
        f"{action}-rule",
        "agent_desktop",
        "inbound",
        "retail-banking",
        "1.4.0",
        stage,
    )


def _query(ruleset: Ruleset, since: datetime = T0 - timedelta(days=10), until: datetime = T0 + timedelta(days=60)):
    return MeasureQuery(since, until, "retail-banking", conversion_defs(ruleset))


def _only(cells: dict[tuple[object, ...], Cell], held_out: bool) -> Cell:
    total = Cell()
    for key, cell in cells.items():
        if key[5] is held_out:
            total.add(cell)
    return total


def test_a_customer_counts_once_per_action_from_the_first_exposure(ruleset: Ruleset) -> None:
    """Held out first, shown later (a new holdout period): the unit stays held out, as first assigned."""
    exposures = [
        _exposure("C1", "term-deposit-rates", T0 + timedelta(days=3)),
        _exposure("C1", "term-deposit-rates", T0, held_out=True),
        _exposure("C1", "term-deposit-rates", T0 + timedelta(days=5)),
    ]
    cells = measure(_query(ruleset), exposures, [], [])
    assert _only(cells, True).units == 1
    assert _only(cells, False).units == 0
    assert _only(cells, False).offers == 2, "every delivered showing is an offer"


def test_a_conversion_counts_after_the_first_exposure_and_up_to_the_end_of_its_window(ruleset: Ruleset) -> None:
    within = ruleset.actions["term-deposit-rates"].conversion.within  # type: ignore[union-attr]
    query = _query(ruleset)
    cases = {
        "at the exposure itself": (T0, 0),
        "a microsecond after": (T0 + timedelta(microseconds=1), 1),
        "at the end of the window": (T0 + within, 1),
        "a microsecond after the window": (T0 + within + timedelta(microseconds=1), 0),
        "before the exposure": (T0 - timedelta(days=1), 0),
    }
    for name, (when, converted) in cases.items():
        cells = measure(
            query,
            [_exposure("C1", "term-deposit-rates", T0)],
            [ObservedConversion("C1", "term-deposit-rates", when)],
            [],
        )
        assert _only(cells, False).converted == converted, name


def test_only_closed_windows_are_in_the_rates(ruleset: Ruleset) -> None:
    within = ruleset.actions["term-deposit-rates"].conversion.within  # type: ignore[union-attr]
    query = _query(ruleset, until=T0 + within)
    cells = measure(
        query,
        [
            _exposure("C1", "term-deposit-rates", T0),
            _exposure("C2", "term-deposit-rates", T0 + timedelta(seconds=1)),
        ],
        [ObservedConversion("C2", "term-deposit-rates", T0 + timedelta(days=1))],
        [],
    )
    shown = _only(cells, False)
    assert (shown.units, shown.mature, shown.converted) == (2, 1, 0), "C2 converted but its window is still open"


def test_agent_recorded_conversions_count_and_keep_their_source(ruleset: Ruleset) -> None:
    query = _query(ruleset)
    exposures = [
        _exposure("C1", "term-deposit-rates", T0, decision="d1"),
        _exposure("C2", "term-deposit-rates", T0, decision="d2"),
        _exposure("C3", "term-deposit-rates", T0, decision="d3"),
    ]
    later = T0 + timedelta(days=2)
    conversions = [
        ObservedConversion("C1", "term-deposit-rates", later),
        ObservedConversion("C3", "term-deposit-rates", later),
    ]
    outcomes = [
        RecordedOutcome("d2", "C2", "term-deposit-rates", "converted", later),
        RecordedOutcome("d3", "C3", "term-deposit-rates", "converted", later),
        RecordedOutcome("d3", "C3", "term-deposit-rates", "accepted", T0),
    ]
    shown = _only(measure(query, exposures, conversions, outcomes), False)
    assert (shown.converted, shown.converted_event, shown.converted_agent, shown.converted_both) == (3, 1, 1, 1)
    assert (shown.accepted, shown.recorded_converted) == (1, 2)


def test_exposures_outside_the_window_or_of_another_ruleset_are_not_counted(ruleset: Ruleset) -> None:
    query = _query(ruleset)
    outside = _exposure("C1", "term-deposit-rates", query.until)
    before = _exposure("C2", "term-deposit-rates", query.since - timedelta(microseconds=1))
    other = Exposure("x", "term-deposit-rates", False, "C3", T0, "r", "agent_desktop", None, "other", "1", None)
    assert measure(query, [outside, before, other], [], []) == {}


def test_conversions_are_read_by_the_engine_s_own_meaning_of_a_condition(ruleset: Ruleset) -> None:
    conversions = conversion_defs(ruleset)
    opened = matching_actions(conversions, ruleset.events, "product_opened", {"product": "savings"})
    assert set(opened) == {
        a.id
        for a in ruleset.actions.values()
        if a.conversion is not None and a.conversion.event == "product_opened" and "savings" in str(a.conversion.when)
    }
    assert matching_actions(conversions, ruleset.events, "product_opened", {"product": None}) == []
    assert matching_actions(conversions, ruleset.events, "product_opened", {}) == []
    assert matching_actions(conversions, ruleset.events, "product_opened", {"product": "SAVINGS"}) == []
    assert matching_actions(conversions, ruleset.events, "no_such_event", {"product": "savings"}) == []


def test_an_action_named_twice_in_a_decision_counts_once_per_group(ruleset: Ruleset) -> None:
    history = make_history(ruleset, ["CUST-000001"], seed=3, decisions=60)
    for record in history.records:
        found = exposures_of(record)
        keys = [(e.action_id, e.held_out) for e in found]
        assert len(keys) == len(set(keys))
        assert {a for a, held in keys if not held} == {a.action_id for a in record.actions}


def test_cycle_times_from_trigger_to_first_delivered_offer(ruleset: Ruleset) -> None:
    lifetimes = trigger_lifetimes(ruleset)
    lifetime, actions = lifetimes["large_deposit"]
    query = _query(ruleset, until=T0 + timedelta(days=20))
    triggers = [
        TriggerEvent("C1", "large_deposit", T0),
        TriggerEvent("C2", "large_deposit", T0),
        TriggerEvent("C3", "large_deposit", T0),
        TriggerEvent("C4", "large_deposit", query.until - timedelta(hours=1)),
    ]
    exposures = [
        _exposure("C1", actions[0], T0 + timedelta(hours=2)),
        _exposure("C1", actions[-1], T0 + timedelta(hours=1)),
        _exposure("C2", actions[0], T0 + timedelta(hours=5)),
        _exposure("C3", actions[0], T0 + lifetime, held_out=False),  # too late: the trigger had expired
        _exposure("C3", actions[0], T0 + timedelta(hours=1), held_out=True),  # held out: not an offer
    ]
    (cycle,) = [c for c in cycle_times(query, lifetimes, triggers, exposures) if c.event_type == "large_deposit"]
    assert (cycle.triggers, cycle.offered, cycle.expired, cycle.open) == (4, 2, 1, 1)
    assert cycle.median_s == pytest.approx(3 * 3600)
    assert cycle.p90_s == pytest.approx(3600 + 0.9 * 4 * 3600)


def test_percentile_interpolates_as_postgresql_does() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0, 20.0], 0.9) == pytest.approx(18.0)


@pytest.fixture
async def sqlite_store(tmp_path: Path, ruleset: Ruleset) -> AsyncIterator[SqliteStore]:
    at = SINCE - timedelta(days=30)
    store = SqliteStore(
        tmp_path / "nba.db",
        event_types=tuple(ruleset.events),
        history=contact_history_window(ruleset),
        clock=lambda: at,
    )
    await store.open(seed=lambda: generate_profiles(40, now=at))
    yield store
    await store.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_embedded_store_counts_what_the_definitions_count(
    sqlite_store: SqliteStore, ruleset: Ruleset, seed: int
) -> None:
    customers = [f"CUST-{i:06d}" for i in range(1, 41)]
    history = make_history(ruleset, customers, seed)
    await history.load(sqlite_store, sqlite_store)
    lifetimes = trigger_lifetimes(ruleset)
    for query in (history.query(), history.query(SINCE + timedelta(days=20), UNTIL - timedelta(days=20))):
        expected = history.expected(query)
        found = await sqlite_store.measurements(query, ruleset.events, lifetimes)
        assert found.exposures == expected.exposures > 50
        assert found.cells == expected.cells
        assert found.cycles == expected.cycles
        assert sum(c.converted for c in found.cells.values()) > 0
        assert sum(c.units for k, c in found.cells.items() if k[5]) > 0, "some units are held out"


async def test_a_version_7_database_derives_the_exposures_of_its_stored_records(
    tmp_path: Path, ruleset: Ruleset
) -> None:
    """Opening a file made before exposures were kept fills them from its decision records, as new records fill
    them (without a journey stage, which was not recorded then); a record SQLite cannot read as JSON has none."""
    at = SINCE - timedelta(days=30)
    path = tmp_path / "old.db"
    store = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: at)
    await store.open(seed=lambda: generate_profiles(10, now=at))
    history = make_history(ruleset, [f"CUST-{i:06d}" for i in range(1, 11)], 4, decisions=80)
    try:
        await store.write(history.records, [])
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE exposures")
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN activated_by")  # what schema 9 adds
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN origin")
        conn.execute(
            "INSERT INTO decisions VALUES ('not-json', ?, 'CUST-000001', 'sent', '{\"actions\": [NaN', ?)",
            (SINCE.isoformat(), SINCE.isoformat()),
        )
        conn.execute("PRAGMA user_version = 7")
    reopened = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: at)
    await reopened.open()
    await reopened.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM exposures").fetchall()
    expected = [
        (
            e.decision_id,
            e.action_id,
            int(e.held_out),
            e.customer_id,
            stamp(e.decided_at),
            e.rule_id,
            e.channel,
            e.direction,
            e.ruleset_name,
            e.ruleset_version,
            None,
        )
        for r in history.records
        for e in exposures_of(r)
    ]
    assert sorted(rows) == sorted(expected)
    assert len(rows) > 60
