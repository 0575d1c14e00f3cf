"""Which customers a dialer campaign covers when it names no list: a segment, as attribute equalities.

Kept deliberately small and explicit (every condition is `attribute = value`, all must hold, or "every
customer" said in so many words) so a compliance reviewer can read a campaign's reach from its request.
Conditions are checked against the fields the active ruleset declares, with the declared type, so a typo
(`segmnet=mass`) is refused instead of silently selecting nobody. Contact permissions (consents,
do-not-call) are not segment conditions: they are checked per customer by the contact policy, and a customer
they exclude is reported with that reason rather than silently left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nba_service.domain.model import Ruleset
from nba_service.errors import Problems

SegmentValue = str | float | bool
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_CONDITIONS = 20


@dataclass(frozen=True, slots=True)
class Segment:
    """`equals` (attribute, typed value) pairs that must all hold; `everyone` for a campaign over all customers."""

    equals: tuple[tuple[str, SegmentValue], ...] = ()
    everyone: bool = False

    def describe(self) -> str:
        if self.everyone:
            return "every customer"
        return " and ".join(f"{name}={_shown(value)}" for name, value in self.equals)


def parse_segment(
    ruleset: Ruleset, equals: Mapping[str, str], everyone: bool, problems: Problems, field: str = "segment"
) -> Segment:
    """Typed conditions from text values (as a request or a command line gives them). Problems name
    `segment.equals[NAME]`; the result is only meaningful when no problem was added."""
    if everyone and equals:
        problems.add(field, "give conditions or all_customers, not both")
    if not everyone and not equals:
        problems.add(field, "needs at least one condition (attribute=value), or all_customers for every customer")
    if len(equals) > MAX_CONDITIONS:
        problems.add(f"{field}.equals", f"at most {MAX_CONDITIONS} conditions")
        return Segment()
    consent_fields = set(ruleset.policies.consent_fields())
    if ruleset.policies.do_not_call_field is not None:
        consent_fields.add(ruleset.policies.do_not_call_field)
    conditions: list[tuple[str, SegmentValue]] = []
    for name, text in sorted(equals.items()):
        where = f"{field}.equals[{name[:64]}]"
        spec = ruleset.fields.get(name)
        if not _NAME.fullmatch(name) or spec is None:
            problems.add(where, f"is not an attribute the ruleset declares ({len(ruleset.fields)} declared)")
            continue
        if name in consent_fields:
            problems.add(
                where,
                "is a contact permission: it is checked for every customer, and those it excludes are reported "
                "with the reason",
            )
            continue
        value = _typed(text, spec.type)
        if value is None:
            problems.add(where, f"{text[:64]!r} is not a {spec.type}")
        elif spec.values is not None and isinstance(value, str) and value not in spec.values:
            problems.add(where, f"{text[:64]!r} is not one of {', '.join(spec.values)}")
        else:
            conditions.append((name, value))
    return Segment(tuple(conditions), everyone)


def _typed(text: str, kind: str) -> SegmentValue | None:
    if kind == "boolean":
        return {"true": True, "false": False}.get(text)
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return text


def _shown(value: SegmentValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
