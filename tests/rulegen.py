"""Hypothesis strategies for rulesets and profiles that stress the engine across every type and size.

Rulesets are produced as documents and go through the real loader (as JSON, which is YAML), so the
tests cover exactly "any ruleset the loader accepts". Values come from a small universe per field so
that rules and profiles actually meet, plus neighbours (the next float up or down), wrong types,
nulls, huge integers and odd Unicode so the edges are crossed too.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Ruleset
from nba_service.domain.profile import Profile

SPECIAL_FLOATS = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    0.1,
    1 / 3,
    1.0,
    -1.0,
    123456.789,
    2.0**53,
    -(2.0**53),
    1e20,
    1e300,
    sys.float_info.max,
    -sys.float_info.max,
]
SPECIAL_STRINGS = [
    "",
    " ",
    "a",
    "A",
    "é",
    "e\u0301",
    "Zoë",
    "美咲",
    "🙂",
    "nul\x00inside",
    'quote"and\\backslash',
    "{first_name}",
    "line\nbreak",
    "x" * 47,
    "y" * 48,
    "z" * 49,
    "long-" + "w" * 200,
    "ümlaut-" + "ü" * 30,
]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@st.composite
def field_universe(draw: st.DrawFn, field_type: str) -> list[Any]:
    if field_type == "number":
        floats = st.one_of(
            st.sampled_from(SPECIAL_FLOATS),
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(-(2**53), 2**53).map(float),
            st.integers(-1000, 1000).map(float),
        )
        return draw(st.lists(floats, min_size=1, max_size=5, unique_by=repr))
    if field_type == "string":
        return draw(st.lists(st.one_of(st.sampled_from(SPECIAL_STRINGS), TEXT), min_size=1, max_size=5, unique=True))
    return [True, False]


@dataclass
class Spec:
    document: dict[str, Any]
    types: dict[str, str]
    universes: dict[str, list[Any]]

    def load(self) -> Ruleset:
        return load_ruleset_text(json.dumps(self.document, ensure_ascii=True), "<generated>")


_OPS = {
    "number": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists", "missing"],
    "string": ["eq", "ne", "in", "not_in", "exists", "missing"],
    "boolean": ["eq", "ne", "exists", "missing"],
}


@st.composite
def condition(draw: st.DrawFn, spec: Spec) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(spec.types)))
    field_type = spec.types[name]
    op = draw(st.sampled_from(_OPS[field_type]))
    universe = spec.universes[name]
    if op in ("exists", "missing"):
        return {"field": name, "op": op}
    if op in ("in", "not_in"):
        values = draw(st.lists(st.sampled_from(universe), min_size=1, max_size=3, unique_by=repr))
        return {"field": name, "op": op, "value": values}
    return {"field": name, "op": op, "value": draw(st.sampled_from(universe))}


def base_document(types: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ruleset": {"name": "generated", "version": "1.0.0", "owner": "tests", "description": "generated"},
        "fields": [{"name": name, "type": t} for name, t in types.items()],
        "actions": [{"id": "act", "category": "service", "scripts": {"agent_desktop": "Help the customer."}}],
        "rules": rules,
    }


def rule_document(index: int, all_: list[dict[str, Any]], any_: list[dict[str, Any]]) -> dict[str, Any]:
    when: dict[str, Any] = {}
    if all_:
        when["all"] = all_
    if any_:
        when["any"] = any_
    return {
        "id": f"r{index}",
        "description": "generated",
        "reason": "generated",
        "priority": index % 1000,
        "action": "act",
        "when": when,
    }


@st.composite
def rulesets(draw: st.DrawFn, max_rules: int = 60, max_fields: int = 12) -> Spec:
    count = draw(st.integers(1, max_fields))
    types = {
        f"f{i}_{draw(st.sampled_from(['a', 'z', 'q']))}": draw(st.sampled_from(["number", "string", "boolean"]))
        for i in range(count)
    }
    universes = {name: draw(field_universe(t)) for name, t in types.items()}
    spec = Spec({}, types, universes)
    rules = []
    for index in range(draw(st.integers(1, max_rules))):
        all_ = draw(st.lists(condition(spec), min_size=0, max_size=4))
        any_ = draw(st.lists(condition(spec), min_size=0 if all_ else 1, max_size=2))
        rules.append(rule_document(index, all_, any_))
    spec.document = base_document(types, rules)
    return spec


def _neighbours(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [math.nextafter(value, math.inf), math.nextafter(value, -math.inf)]
    return []


@st.composite
def raw_value(draw: st.DrawFn, field_type: str, universe: list[Any]) -> Any:
    """A value as a store might hand it over: usually meaningful, sometimes null, odd or wrongly typed."""
    near = [n for v in universe for n in _neighbours(v)]
    options = [
        st.sampled_from(universe),
        st.sampled_from(universe),
        st.none(),
        st.sampled_from([True, 0, 1, "1", 2**70, -(2**70), 10**400, math.nan, math.inf, -math.inf, "", [], {}]),
    ]
    if near:
        options.append(st.sampled_from(near))
    if field_type == "number":
        options += [
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(-(2**64), 2**64),
            st.sampled_from([2**53 + 1, -(2**53) - 1, 2**63, 2**63 - 1]),
        ]
    elif field_type == "string":
        options += [TEXT, st.text(max_size=5)]
    return draw(st.one_of(options))


@st.composite
def profiles(draw: st.DrawFn, spec: Spec) -> Profile:
    attributes: dict[str, Any] = {}
    for name, field_type in spec.types.items():
        if draw(st.integers(0, 9)) == 0:
            continue
        attributes[name] = draw(raw_value(field_type, spec.universes[name]))
    return Profile("CUST-X", attributes)


def matching_ruleset(types: dict[str, str], facts: dict[str, Any], count: int, seed: int) -> Spec:
    """Many rules built to match `facts` (most of them) so every match is collected at once."""
    import random

    rng = random.Random(seed)
    universes = {
        n: [facts[n]] if n in facts else [0.0 if t == "number" else ("a" if t == "string" else True)]
        for n, t in types.items()
    }
    rules = []
    names = sorted(types)
    for index in range(count):
        conditions = []
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            value = facts.get(name)
            t = types[name]
            if value is None:
                conditions.append({"field": name, "op": "missing"})
                continue
            choice = rng.random()
            if t == "number":
                op = rng.choice(["eq", "lte", "gte", "in", "ne", "lt", "gt"])
                up, down = math.nextafter(value, math.inf), math.nextafter(value, -math.inf)
                if op in ("ne", "lt") and math.isfinite(up):
                    conditions.append({"field": name, "op": op, "value": up})
                elif op == "gt" and math.isfinite(down):
                    conditions.append({"field": name, "op": op, "value": down})
                elif op == "in":
                    others = [float(index)] if float(index) != value else []
                    conditions.append({"field": name, "op": "in", "value": [value, *others]})
                else:
                    conditions.append({"field": name, "op": "lte" if op in ("ne", "lt") else "gte", "value": value})
            elif t == "string":
                if choice < 0.6:
                    conditions.append({"field": name, "op": "eq", "value": value})
                elif choice < 0.8:
                    conditions.append({"field": name, "op": "ne", "value": f"other-{index}"})
                else:
                    conditions.append({"field": name, "op": "exists"})
            else:
                conditions.append({"field": name, "op": "eq", "value": value if rng.random() < 0.9 else not value})
        rules.append(rule_document(index, conditions, []))
    return Spec(base_document(types, rules), types, universes)
