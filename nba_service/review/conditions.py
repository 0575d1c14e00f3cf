"""Whether conditions can hold together, and whether one `when` implies another: decided exactly, by the engine's
own meaning of a condition.

Every question is answered by asking the reference evaluator (`condition_holds`) about a finite set of witness
values, so the checker cannot read a condition differently from the engine. The set is complete because each
fact is compared with constants only: with constants c1 < ... < cn, every comparison has the same truth on each
constant and on each open interval between them, so the constants, one float between each pair (the next one
up, when there is one), the float below the lowest and the one above the highest decide every conjunction on a
number; for a string the constants and one other string; for a boolean
true and false; and for every fact "missing". A string field with declared `values` is taken to hold only those.

Facts are independent of each other but for what the projection guarantees of an event: `events.X.age_hours` is
never negative, and every `events.X.*` fact is missing when there is no live X event, and `age_hours` present
when there is one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from nba_service.domain.facts import FactValue
from nba_service.domain.model import Condition, FieldSpec, Op, When
from nba_service.domain.reference import condition_holds

Conjunction = tuple[Condition, ...]
MAX_NEGATED_BRANCHES: Final = 4096  # an `any` group of 12 conditions; beyond that implication is not attempted


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
Witness = FactValue | _Missing

_NEGATED: Final = {
    Op.EQ: Op.NE,
    Op.NE: Op.EQ,
    Op.LT: Op.GTE,
    Op.LTE: Op.GT,
    Op.GT: Op.LTE,
    Op.GTE: Op.LT,
    Op.IN: Op.NOT_IN,
    Op.NOT_IN: Op.IN,
}


def event_of(field: str) -> str | None:
    """The event type an `events.<type>.<name>` fact belongs to; None for a profile attribute."""
    parts = field.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "events" else None


def _is_age(field: str) -> bool:
    return event_of(field) is not None and field.endswith(".age_hours")


def holds(condition: Condition, value: Witness) -> bool:
    facts: dict[str, FactValue] = {} if isinstance(value, _Missing) else {condition.field: value}
    return condition_holds(condition, facts)


def witnesses(spec: FieldSpec, conditions: Iterable[Condition]) -> list[Witness]:
    """One value for each piece of the field's domain on which every given condition keeps the same truth."""
    constants = [v for c in conditions for v in c.values]
    found: list[Witness] = [MISSING]
    if spec.type == "boolean":
        return [*found, True, False]
    if spec.type == "string":
        if spec.values is not None:
            return [*found, *spec.values]
        texts = sorted({str(v) for v in constants})
        other = "~" * (max((len(t) for t in texts), default=0) + 1)  # differs from every constant
        return [*found, *texts, other]
    numbers = {float(v) for v in constants if isinstance(v, int | float) and not isinstance(v, bool)}
    if _is_age(spec.name):
        numbers.add(0.0)
    points = sorted(numbers) or [0.0]
    # Facts are floats: the next float up is inside an open interval whenever any float is.
    between = [after for a, b in itertools.pairwise(points) if (after := math.nextafter(a, b)) < b]
    values = [math.nextafter(points[0], -math.inf), *points, *between, math.nextafter(points[-1], math.inf)]
    lowest = 0.0 if _is_age(spec.name) else -math.inf  # the projection never gives a negative age
    return [*found, *(v for v in values if math.isfinite(v) and v >= lowest)]


def allowed(spec: FieldSpec, conditions: Sequence[Condition]) -> list[Witness]:
    """The witnesses of the field that satisfy every condition (all on this field)."""
    return [w for w in witnesses(spec, conditions) if all(holds(c, w) for c in conditions)]


def satisfiable(conditions: Iterable[Condition], fields: Mapping[str, FieldSpec]) -> bool:
    """Whether some facts make every condition hold at once."""
    by_field: dict[str, list[Condition]] = {}
    for condition in conditions:
        by_field.setdefault(condition.field, []).append(condition)
    values = {name: allowed(fields[name], group) for name, group in by_field.items()}
    if any(not found for found in values.values()):
        return False
    events: dict[str, list[str]] = {}
    for name in values:
        event = event_of(name)
        if event is not None:
            events.setdefault(event, []).append(name)
    for event, names in events.items():
        absent = all(MISSING in values[name] for name in names)
        age = f"events.{event}.age_hours"
        present = age not in values or any(not isinstance(w, _Missing) for w in values[age])
        if not (absent or present):
            return False
    return True


def conflict(conditions: Sequence[Condition], fields: Mapping[str, FieldSpec]) -> tuple[int, ...]:
    """The positions of the fewest given (jointly impossible) conditions that already cannot hold together: one,
    or the first pair to complete a contradiction, or else all of them."""
    for position, single in enumerate(conditions):
        if not satisfiable([single], fields):
            return (position,)
    for later in range(len(conditions)):
        for earlier in range(later):
            if not satisfiable((conditions[earlier], conditions[later]), fields):
                return (earlier, later)
    return tuple(range(len(conditions)))


def branches(when: When) -> list[Conjunction]:
    """The `when` as alternatives, each a plain conjunction: `all` plus one of `any` (or `all` alone)."""
    if not when.any:
        return [when.all]
    return [(*when.all, option) for option in when.any]


def negation(condition: Condition) -> list[Condition]:
    """Conditions one of which holds exactly when `condition` does not (a missing fact fails every comparison)."""
    if condition.op is Op.EXISTS:
        return [Condition(condition.field, Op.MISSING)]
    if condition.op is Op.MISSING:
        return [Condition(condition.field, Op.EXISTS)]
    return [
        Condition(condition.field, Op.MISSING),
        Condition(condition.field, _NEGATED[condition.op], condition.values),
    ]


def negated(when: When) -> list[Conjunction] | None:
    """`not when` as alternatives, or None when there would be too many to try."""
    found: list[Conjunction] = [(alternative,) for c in when.all for alternative in negation(c)]
    if when.any:
        size = 2 ** len(when.any)
        if size > MAX_NEGATED_BRANCHES:
            return None
        found.extend(itertools.product(*(negation(c) for c in when.any)))
    return found


def implies(premise: When, conclusion: When, fields: Mapping[str, FieldSpec]) -> bool:
    """Whether every set of facts that satisfies `premise` satisfies `conclusion` (False when undecided)."""
    counter = negated(conclusion)
    if counter is None:
        return False
    return not any(satisfiable((*branch, *other), fields) for branch in branches(premise) for other in counter)


def can_hold(when: When, fields: Mapping[str, FieldSpec]) -> bool:
    return any(satisfiable(branch, fields) for branch in branches(when))


def equivalent(first: When, second: When, fields: Mapping[str, FieldSpec]) -> bool:
    return implies(first, second, fields) and implies(second, first, fields)
