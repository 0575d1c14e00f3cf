"""The plain reference evaluator: the meaning of a ruleset, written as directly as Python allows.

durable_rules is fast but has sharp edges; this evaluator is what the engine is tested against, and
what the policy layer uses for suppressions (small, evaluated once per decision).
"""

from __future__ import annotations

from collections.abc import Mapping

from nba_service.domain.facts import FactValue
from nba_service.domain.model import Condition, Op, Ruleset, When


def condition_holds(condition: Condition, facts: Mapping[str, FactValue]) -> bool:
    present = condition.field in facts
    if condition.op is Op.EXISTS:
        return present
    if condition.op is Op.MISSING:
        return not present
    if not present:
        return False
    value = facts[condition.field]
    if condition.op is Op.IN:
        return any(_equal(value, c) for c in condition.values)
    if condition.op is Op.NOT_IN:
        return not any(_equal(value, c) for c in condition.values)
    constant = condition.value
    if condition.op is Op.EQ:
        return _equal(value, constant)
    if condition.op is Op.NE:
        return not _equal(value, constant)
    if isinstance(value, bool) or isinstance(constant, bool) or isinstance(value, str) or isinstance(constant, str):
        return False
    if condition.op is Op.LT:
        return value < constant
    if condition.op is Op.LTE:
        return value <= constant
    if condition.op is Op.GT:
        return value > constant
    return value >= constant


def _equal(value: FactValue, constant: FactValue) -> bool:
    # bool is an int subclass in Python: True == 1.0 must not hold across declared types.
    return type(value) is type(constant) and value == constant


def when_holds(when: When, facts: Mapping[str, FactValue]) -> bool:
    if not all(condition_holds(c, facts) for c in when.all):
        return False
    return not when.any or any(condition_holds(c, facts) for c in when.any)


class ReferenceEvaluator:
    """Evaluates every rule of a ruleset; returns the indices of the rules that match, in file order."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset

    def evaluate(self, facts: Mapping[str, FactValue]) -> list[int]:
        return [index for index, rule in enumerate(self.ruleset.rules) if when_holds(rule.when, facts)]

    def close(self) -> None:
        """Nothing to release: the reference holds no engine state."""
