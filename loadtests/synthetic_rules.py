"""Seeded synthetic rulesets of any size, shaped like the bundled retail-banking ruleset.

The engine figures of issue 12 compare evaluators at 20, 100 and 400 rules; the bundled ruleset has 65.
These rulesets keep its fields, events and actions and draw new rules with the same mix of operators
(mostly `eq` and range tests, some `in`, `ne`, `not_in`, `exists`, `missing`, one rule in seven with an
`any` block). Constants are values that real generated customers hold, so rules match about as often as
the bundled ones do (around one rule in ten), and a seed gives the same ruleset every time.
They go through the real loader, so they are exactly what the service would accept.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nba_service.domain.facts import Facts
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Ruleset

REPO = Path(__file__).resolve().parents[1]
BASE_RULESET = REPO / "rulesets" / "retail-banking.yaml"
# Script placeholders, not decision inputs: no rule of the bundled ruleset reads them.
_SKIPPED = frozenset({"first_name", "product_name"})
# Weights of the bundled ruleset's operators (counted over its 65 rules), per field type.
_OPS = {
    "number": (("eq", 6), ("gte", 27), ("lte", 24), ("gt", 6), ("lt", 6), ("in", 4), ("ne", 2), ("exists", 1)),
    "string": (("eq", 10), ("in", 5), ("ne", 3), ("not_in", 2), ("missing", 1), ("exists", 1)),
    "boolean": (("eq", 12), ("ne", 1), ("missing", 1)),
}


def _observed(sample: Sequence[Facts], name: str) -> list[Any]:
    return [facts[name] for facts in sample if name in facts]


def _constant(value: Any) -> Any:
    """A threshold as an author writes it: 2.62 hours, not 2.6166666666666667 (157 minutes)."""
    return round(value, 2) if isinstance(value, float) else value


def _condition(rng: random.Random, name: str, field_type: str, seen: list[Any]) -> dict[str, Any]:
    ops, weights = zip(*_OPS[field_type], strict=True)
    op = rng.choices(ops, weights)[0]
    if not seen or op in ("exists", "missing"):
        return {"field": name, "op": "missing" if not seen else op}
    if op in ("in", "not_in"):
        values = sorted({_constant(rng.choice(seen)) for _ in range(rng.randint(2, 3))}, key=repr)
        return {"field": name, "op": op, "value": values}
    if op in ("gt", "gte"):
        # The larger of two customers' values: a threshold about a third of customers pass, like "balance >= 10000".
        return {"field": name, "op": op, "value": _constant(max(rng.choice(seen), rng.choice(seen)))}
    if op in ("lt", "lte"):
        return {"field": name, "op": op, "value": _constant(min(rng.choice(seen), rng.choice(seen)))}
    return {"field": name, "op": op, "value": _constant(rng.choice(seen))}


def synthetic_document(
    rule_count: int, seed: int, sample: Sequence[Facts], base: Path = BASE_RULESET
) -> dict[str, Any]:
    """The base ruleset's document with `rule_count` generated rules instead of its own."""
    document = yaml.safe_load(base.read_text(encoding="utf-8"))
    base_ruleset = load_ruleset_text(base.read_bytes(), str(base))
    fields = {n: s.type for n, s in base_ruleset.fact_fields().items() if n not in _SKIPPED}
    seen = {name: _observed(sample, name) for name in fields}
    # Profile attributes are read far more often than event facts, as in the bundled rules.
    attributes = [n for n in fields if not n.startswith("events.")]
    events = [n for n in fields if n.startswith("events.")]
    actions = [a["id"] for a in document["actions"]]
    rng = random.Random(seed)

    def pick() -> tuple[str, str]:
        name = rng.choice(events if rng.random() < 0.2 else attributes)
        return name, fields[name]

    rules = []
    for index in range(rule_count):
        names: set[str] = set()
        all_: list[dict[str, Any]] = []
        for _ in range(rng.choices((1, 2, 3, 4), (1, 4, 6, 3))[0]):
            name, field_type = pick()
            if name not in names:
                names.add(name)
                all_.append(_condition(rng, name, field_type, seen[name]))
        when: dict[str, Any] = {"all": all_}
        if rng.random() < 1 / 7:
            when["any"] = [_condition(rng, name, field_type, seen[name]) for name, field_type in (pick(), pick())]
        rules.append(
            {
                "id": f"synthetic-{index}",
                "description": "Generated for the engine benchmarks.",
                "reason": "Generated rule",
                "priority": rng.randint(200, 1000),
                "action": rng.choice(actions),
                "when": when,
            }
        )
    document["ruleset"] = {**document["ruleset"], "name": f"synthetic-{rule_count}", "version": f"0.0.{seed}"}
    document["rules"] = rules
    return document


def synthetic_ruleset(rule_count: int, seed: int, sample: Sequence[Facts], base: Path = BASE_RULESET) -> Ruleset:
    document = synthetic_document(rule_count, seed, sample, base)
    return load_ruleset_text(json.dumps(document), f"<synthetic {rule_count} rules, seed {seed}>")
