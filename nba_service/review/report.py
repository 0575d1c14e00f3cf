"""`nba report`: what each action adds, for the people who fund the programme.

Built from a store's `Measurements` (see `domain.measurement` for what a unit, an exposure and a conversion are)
and the ruleset's own words. The uplift of an action is the conversion rate of customers shown it minus that of
customers held out of it, with Newcombe's interval for a difference of two independent proportions (statsmodels);
held-out customers were chosen at random among those who would have been shown it, so the difference is what
showing it did. Without held-out customers there is no comparison, and the report says so instead of a number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nba_service.domain.measurement import Cell, CellKey, CycleTimes, Measurements, MeasureQuery
from nba_service.domain.model import Ruleset
from nba_service.domain.wording import duration_text, when_text

CONFIDENCE = 0.95
DIMENSIONS = ("rule", "channel", "ruleset_version", "journey_stage")
NOT_RECORDED = "(not recorded)"


@dataclass(frozen=True, slots=True)
class Uplift:
    """Shown against held-out units whose conversion window has closed."""

    shown: int
    shown_converted: int
    held_out: int
    held_out_converted: int
    # None when a group is empty: there is nothing to compare.
    difference: float | None
    low: float | None
    high: float | None
    # False when the action declares no conversion: agents' records alone, only of shown customers, prove nothing.
    measured: bool = True

    @property
    def shown_rate(self) -> float | None:
        return self.shown_converted / self.shown if self.shown else None

    @property
    def held_out_rate(self) -> float | None:
        return self.held_out_converted / self.held_out if self.held_out else None

    def to_json(self) -> dict[str, Any]:
        return {
            "shown": self.shown,
            "shown_converted": self.shown_converted,
            "shown_rate": self.shown_rate,
            "held_out": self.held_out,
            "held_out_converted": self.held_out_converted,
            "held_out_rate": self.held_out_rate,
            "uplift": self.difference,
            "uplift_low": self.low,
            "uplift_high": self.high,
            "conversion_declared": self.measured,
        }


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the conversions of shown and held-out units came from: the event only, an agent only, or both."""

    event: int
    agent: int
    both: int

    def to_json(self) -> dict[str, int]:
        return {"event": self.event, "agent": self.agent, "both": self.both}


@dataclass(frozen=True, slots=True)
class Offers:
    delivered: int
    accepted: int
    declined: int
    not_now: int
    converted: int

    def to_json(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "accepted": self.accepted,
            "declined": self.declined,
            "not_now": self.not_now,
            "converted": self.converted,
        }


@dataclass(frozen=True, slots=True)
class Worth:
    """What the uplift is worth over the shown units, in the ruleset's currency, with the uplift's interval."""

    value: float
    incremental: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "incremental": self.incremental, "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class Line:
    """One row of a table: an action, or an action within one value of a dimension."""

    action_id: str
    label: str
    offers: Offers
    uplift: Uplift
    sources: Sources
    open_units: int
    worth: Worth | None

    def to_json(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "label": self.label,
            "offers": self.offers.to_json(),
            **self.uplift.to_json(),
            "sources": self.sources.to_json(),
            "open_units": self.open_units,
            "worth": None if self.worth is None else self.worth.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ActionInfo:
    action_id: str
    category: str
    description: str
    conversion: str
    value: float | None
    holdout: float

    def to_json(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "category": self.category,
            "description": self.description,
            "conversion": self.conversion,
            "value": self.value,
            "holdout": self.holdout,
        }


@dataclass(frozen=True, slots=True)
class Report:
    ruleset: str
    ruleset_version: str
    since: datetime
    until: datetime
    generated_at: datetime
    exposures: int
    actions: tuple[ActionInfo, ...]
    by_action: tuple[Line, ...]
    breakdowns: dict[str, tuple[Line, ...]]
    referral_by_stage: tuple[Line, ...]
    referral_by_trigger: tuple[Line, ...]
    cycles: tuple[CycleTimes, ...]
    totals: Line

    @property
    def incremental_worth(self) -> float:
        """The sum of each action's estimate (their intervals do not add up to an interval of the sum)."""
        return sum(line.worth.incremental for line in self.by_action if line.worth is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "nba.report/1",
            "ruleset": {"name": self.ruleset, "version": self.ruleset_version},
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "confidence": CONFIDENCE,
            "exposures_read": self.exposures,
            "actions": [a.to_json() for a in self.actions],
            "totals": self.totals.to_json(),
            "incremental_worth": self.incremental_worth,
            "by_action": [line.to_json() for line in self.by_action],
            "breakdowns": {name: [line.to_json() for line in lines] for name, lines in self.breakdowns.items()},
            "referrals": {
                "by_journey_stage": [line.to_json() for line in self.referral_by_stage],
                "by_trigger": [line.to_json() for line in self.referral_by_trigger],
            },
            "cycle_times": [
                {
                    "event": c.event_type,
                    "triggers": c.triggers,
                    "offered": c.offered,
                    "expired_unoffered": c.expired,
                    "still_open": c.open,
                    "median_s": c.median_s,
                    "p90_s": c.p90_s,
                }
                for c in self.cycles
            ],
        }


def uplift(shown: int, shown_converted: int, held_out: int, held_out_converted: int) -> Uplift:
    if not shown or not held_out:
        return Uplift(shown, shown_converted, held_out, held_out_converted, None, None, None)
    from statsmodels.stats.proportion import confint_proportions_2indep  # noqa: PLC0415 - a second to import

    low, high = confint_proportions_2indep(
        shown_converted,
        shown,
        held_out_converted,
        held_out,
        method="newcomb",
        compare="diff",
        alpha=1 - CONFIDENCE,
    )
    difference = shown_converted / shown - held_out_converted / held_out
    return Uplift(shown, shown_converted, held_out, held_out_converted, difference, float(low), float(high))


def build_report(
    ruleset: Ruleset,
    query: MeasureQuery,
    measurements: Measurements,
    generated_at: datetime,
    referral_categories: Iterable[str] = ("referral",),
) -> Report:
    cells = measurements.cells
    action_ids = sorted({key[0] for key in cells} | {a.id for a in ruleset.actions.values() if a.conversion})
    infos = tuple(_info(ruleset, a) for a in action_ids)
    values = {info.action_id: info.value for info in infos}
    # Without a declared conversion only agents record one, and only for customers shown the action: no uplift.
    measurable = frozenset(a.id for a in ruleset.actions.values() if a.conversion is not None)
    by_action = tuple(_lines(cells, lambda key: key[0], values, lambda key: key[0], measurable))
    breakdowns: dict[str, tuple[Line, ...]] = {}
    for index, name in enumerate(DIMENSIONS, start=1):
        breakdowns[name] = tuple(_lines(cells, _by(index), values, _labelled(index), measurable))
    referral = set(referral_categories)
    referral_cells = {
        key: cell
        for key, cell in cells.items()
        if (action := ruleset.actions.get(key[0])) is not None and action.category in referral
    }
    moments = _moments(ruleset)
    by_stage = tuple(
        _lines(referral_cells, lambda key: _label(key[4]), {}, lambda key: _label(key[4]), measurable, action="")
    )
    by_trigger = tuple(
        _lines(
            referral_cells,
            lambda key: moments.get(key[1], key[1]),
            {},
            lambda key: moments.get(key[1], key[1]),
            measurable,
        )
    )
    return Report(
        ruleset.meta.name,
        ruleset.meta.version,
        query.since,
        query.until,
        generated_at,
        measurements.exposures,
        infos,
        by_action,
        breakdowns,
        by_stage,
        by_trigger,
        measurements.cycles,
        _lines(cells, lambda key: "", {}, lambda key: "all actions", frozenset(), action="")[0]
        if cells
        else _line("", "all actions", [], None),
    )


def _by(index: int) -> Callable[[CellKey], tuple[str, str]]:
    return lambda key: (key[0], _label(key[index]))


def _labelled(index: int) -> Callable[[CellKey], str]:
    return lambda key: _label(key[index])


def _label(value: object) -> str:
    return NOT_RECORDED if value is None else str(value)


def _moments(ruleset: Ruleset) -> dict[str, str]:
    """Each rule as the moment it stands for: the events it reads, else its own id."""
    found: dict[str, str] = {}
    for rule in ruleset.rules:
        events = sorted({c.field.split(".")[1] for c in rule.when.conditions() if c.field.startswith("events.")})
        found[rule.id] = f"{', '.join(events)} ({rule.id})" if events else rule.id
    return found


def _info(ruleset: Ruleset, action_id: str) -> ActionInfo:
    action = ruleset.actions.get(action_id)
    if action is None:
        return ActionInfo(action_id, "", "(no longer in the ruleset)", "", None, 0.0)
    conversion = ""
    if action.conversion is not None:
        conditions = action.conversion.when
        detail = f" where {when_text(conditions, ruleset)}" if conditions.conditions() else ""
        conversion = f"{action.conversion.event}{detail} within {duration_text(action.conversion.within)}"
    return ActionInfo(action.id, action.category, action.description, conversion, action.value, action.holdout)


def _lines(
    cells: Mapping[CellKey, Cell],
    group: Callable[[CellKey], Any],
    values: Mapping[str, float | None],
    label: Callable[[CellKey], str],
    measurable: frozenset[str],
    action: str | None = None,
) -> list[Line]:
    """One line per group of cells, shown and held-out kept apart; `action` "" for lines across actions. A line
    gets an uplift only when every action in it is `measurable` (declares a conversion)."""
    shown: dict[Any, list[Cell]] = {}
    held: dict[Any, list[Cell]] = {}
    names: dict[Any, tuple[str, str]] = {}
    actions: dict[Any, set[str]] = {}
    for key, cell in sorted(cells.items(), key=lambda item: tuple("" if v is None else str(v) for v in item[0])):
        where = group(key)
        (held if key[5] else shown).setdefault(where, []).append(cell)
        held.setdefault(where, [])
        shown.setdefault(where, [])
        names.setdefault(where, (key[0] if action is None else action, label(key)))
        actions.setdefault(where, set()).add(key[0])
    return [
        _line(
            names[where][0],
            names[where][1],
            shown[where],
            values.get(names[where][0]),
            held[where],
            measured=actions[where] <= measurable,
        )
        for where in sorted(names, key=lambda w: tuple(w) if isinstance(w, tuple) else (w,))
    ]


def _line(
    action_id: str,
    label: str,
    shown: list[Cell],
    value: float | None,
    held: list[Cell] | None = None,
    *,
    measured: bool = True,
) -> Line:
    s, h = Cell(), Cell()
    for cell in shown:
        s.add(cell)
    for cell in held or []:
        h.add(cell)
    up = (
        uplift(s.mature, s.converted, h.mature, h.converted)
        if measured
        else Uplift(s.mature, s.converted, h.mature, h.converted, None, None, None, measured=False)
    )
    worth = None
    if value is not None and up.difference is not None and up.low is not None and up.high is not None:
        worth = Worth(value, up.difference * s.mature * value, up.low * s.mature * value, up.high * s.mature * value)
    return Line(
        action_id,
        label,
        Offers(s.offers, s.accepted, s.declined, s.not_now, s.recorded_converted),
        up,
        Sources(
            s.converted_event + h.converted_event,
            s.converted_agent + h.converted_agent,
            s.converted_both + h.converted_both,
        ),
        (s.units - s.mature) + (h.units - h.mature),
        worth,
    )
