"""Compiles the ruleset model into durable_rules definitions that cannot hit the engine's limits.

Pure: ruleset in, plan out. The plan is safe by construction, not by testing
(../shared/notes/durable-rules.md):

- Error 303 (more than 64 pending alpha nodes in one assertion) is impossible because each engine
  ruleset ("partition") is filled only while a bound on the engine's stack, computed on the very trie
  of tests the engine will build, stays within 64 (`alpha_bound`, which gives the argument from the
  engine's source). The bound holds whatever the key order or the values, and counts tests that cannot
  hold together (`x == 1` and `x == 2`, `x < 5` and `x > 9`) once, so partitions are far larger than
  "60 tests in total" allowed, and every partition costs one assertion per decision.
- The same trie bounds every node's children (no hang past 512), the rules sharing one condition
  chain (no error 108), and the properties of one fact (only the partition's own fields are sent,
  below the engine's 255 per object).
- Every rule starts with a guard test on a key that only our facts carry, so the session's own state
  record can never match a rule (no runaway re-firing), not even a `missing` test.
- `in` and `any` are expanded into plain conjunctions (one engine rule per branch) so each engine rule
  is a simple `$and` chain; a rule whose expansion exceeds `MAX_RULE_COST` is rejected by the loader
  (alone in a partition its stack bound is at most one more than its cost, so it always fits).
- Values are encoded so the engine compares them exactly: numbers as doubles written with a decimal
  point and 17 significant digits (the engine's number parser reads `1e+20` as the integer 1), strings
  as an injective ASCII code (hex of UTF-8, or a SHA-256 for long strings) so no escape, NUL or Unicode
  reaches its `strcmp`, booleans as the integers 1 and 0 (its boolean `<=` is wrong; we only need `==`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nba_service.domain.alpha_bound import AlphaNetwork
from nba_service.domain.facts import FactValue
from nba_service.domain.model import Condition, FieldSpec, Op, Rule, Ruleset

NODE_BUDGET = 60
FIRST_FIT_WINDOW = 4
MAX_RULE_COST = NODE_BUDGET
GUARD_KEY = "nba"
SHORT_STRING_BYTES = 48
RESERVED_KEYS = ("id", "sid", GUARD_KEY)

_COMPARISON = {Op.NE: "$neq", Op.LT: "$lt", Op.LTE: "$lte", Op.GT: "$gt", Op.GTE: "$gte"}


def encode_number(value: float) -> str:
    """A double as text the engine reads back exactly.

    The engine's parser only treats a number as a double when a decimal point comes before any
    exponent (`1e+20` would be read as the integer 1), then converts it with `atof`. `repr` is the
    shortest text that round-trips, so it is used whenever it has that point; otherwise 17 significant
    digits in exponent form are exact too.
    """
    text = repr(float(value))
    if "." in text:
        return text
    return "%.17e" % value  # noqa: UP031


@functools.lru_cache(maxsize=8192)
def encode_string(text: str) -> str:
    """An injective ASCII code for a string, so no escape, NUL or Unicode reaches the engine's strcmp."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= SHORT_STRING_BYTES:
        return f'"s{data.hex()}"'
    return f'"h{hashlib.sha256(data).hexdigest()}"'


def encode_value(field_type: str, value: FactValue) -> str:
    """The JSON text the engine sees for a fact value or a constant of the given field type."""
    if field_type == "number":
        return encode_number(float(value))
    if field_type == "boolean":
        return "1" if value else "0"
    return encode_string(str(value))


def _encode_boolean(value: bool) -> str:
    return "1" if value else "0"


def djb_hash(name: str) -> int:
    """The engine's property-name hash (djb2 over the raw bytes, 32-bit): keys must not collide."""
    value = 5381
    for byte in name.encode("utf-8"):
        value = ((value << 5) + value + (byte if byte < 128 else byte - 256)) & 0xFFFFFFFF
    return value


@dataclass(frozen=True, slots=True)
class Test:
    key: str
    op: Op
    constant: str | None = None


@dataclass(frozen=True, slots=True)
class Branch:
    rule_index: int
    tests: tuple[Test, ...]

    @property
    def cost(self) -> int:
        return 1 + len(self.tests)


@dataclass(frozen=True, slots=True)
class Partition:
    """One engine ruleset: its definition text, the fact keys it reads and its rule-name map."""

    definition: str
    keys: tuple[str, ...]
    rule_of: Mapping[str, int]
    cost: int
    rule_texts: tuple[str, ...] = ()
    stack_bound: int = 0
    network: AlphaNetwork | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CompiledRuleset:
    ruleset: Ruleset
    field_keys: Mapping[str, str]
    field_types: Mapping[str, str]
    partitions: tuple[Partition, ...]
    _plan: tuple[tuple[str, str, str, Callable[[Any], str]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoders = {"number": encode_number, "string": encode_string, "boolean": _encode_boolean}
        plan = tuple(
            (name, key, f'"{key}":', encoders[self.field_types[name]]) for name, key in self.field_keys.items()
        )
        object.__setattr__(self, "_plan", plan)

    def encode_facts(self, facts: Mapping[str, FactValue]) -> dict[str, str]:
        """Each present fact as its `"key":value` JSON member, ready to join into a message."""
        members: dict[str, str] = {}
        for name, key, prefix, encode in self._plan:
            if name in facts:
                members[key] = prefix + encode(facts[name])
        return members


def _alternatives(condition: Condition, key: str, field_type: str) -> list[list[Test]]:
    """The ways one condition can hold, each a conjunction of engine tests."""
    encoded = [encode_value(field_type, v) for v in condition.values]
    if condition.op is Op.IN:
        return [[Test(key, Op.EQ, c)] for c in encoded]
    if condition.op is Op.NOT_IN:
        return [[Test(key, Op.NE, c) for c in encoded]]
    if condition.op in (Op.EXISTS, Op.MISSING):
        return [[Test(key, condition.op)]]
    return [[Test(key, condition.op, encoded[0])]]


def _branches(index: int, rule: Rule, keys: Mapping[str, str], specs: Mapping[str, FieldSpec]) -> Iterator[Branch]:
    """The rule in disjunctive normal form: one engine rule per way it can hold."""
    parts = [_alternatives(c, keys[c.field], specs[c.field].type) for c in rule.when.all]
    if rule.when.any:
        parts.append([alt for c in rule.when.any for alt in _alternatives(c, keys[c.field], specs[c.field].type)])
    for combo in itertools.product(*parts):
        yield Branch(index, tuple(test for alternative in combo for test in alternative))


def _shape(condition: Condition) -> list[int]:
    """Test counts of each alternative of a condition, without encoding anything."""
    if condition.op is Op.IN:
        return [1] * len(condition.values)
    if condition.op is Op.NOT_IN:
        return [len(condition.values)]
    return [1]


def rule_cost(rule: Rule) -> int:
    """Alpha tests the expanded rule needs, guard included, counted without sharing: an upper bound.

    Computed arithmetically so a rule with a huge expansion is measured without being expanded.
    """
    branches = 1
    fixed = 1
    for condition in rule.when.all:
        shape = _shape(condition)
        branches *= len(shape)
        fixed += shape[0]
    if not rule.when.any:
        return branches * fixed
    alternatives = [n for c in rule.when.any for n in _shape(c)]
    return branches * sum(fixed + n for n in alternatives)


def _test_json(test: Test) -> str:
    if test.op is Op.EQ:
        return f'{{"{test.key}":{test.constant}}}'
    if test.op is Op.EXISTS:
        return f'{{"$ex":{{"{test.key}":1}}}}'
    if test.op is Op.MISSING:
        return f'{{"$nex":{{"{test.key}":1}}}}'
    return f'{{"{_COMPARISON[test.op]}":{{"{test.key}":{test.constant}}}}}'


def _rule_json(name: str, branch: Branch) -> str:
    tests = ",".join([f'{{"{GUARD_KEY}":1}}', *(_test_json(t) for t in branch.tests)])
    return f'"{name}":{{"all":[{{"m":{{"$and":[{tests}]}}}}]}}'


def _key_rank(expanded: list[list[Branch]]) -> dict[str, tuple[int, int]]:
    """Keys with the fewest distinct tests first, so engine rules share long prefixes and nodes fan out less."""
    distinct: dict[str, set[tuple[Op, str | None]]] = {}
    for branches in expanded:
        for branch in branches:
            for test in branch.tests:
                distinct.setdefault(test.key, set()).add((test.op, test.constant))
    return {key: (len(tests), int(key[1:])) for key, tests in distinct.items()}


def compile_ruleset(ruleset: Ruleset) -> CompiledRuleset:
    specs = ruleset.fact_fields()
    used = sorted({c.field for rule in ruleset.rules for c in rule.when.conditions()})
    keys = {name: f"f{i}" for i, name in enumerate(used)}
    hashes = [djb_hash(k) for k in (*RESERVED_KEYS, *keys.values())]
    if len(set(hashes)) != len(hashes):
        raise AssertionError("engine key hash collision")  # cannot happen for f<number> keys; guarded anyway
    key_types = {key: specs[name].type for name, key in keys.items()}
    expanded: list[list[Branch]] = []
    for index, rule in enumerate(ruleset.rules):
        cost = rule_cost(rule)
        if cost > MAX_RULE_COST:
            raise ValueError(f"rule {rule.id!r} needs {cost} engine conditions (limit {MAX_RULE_COST})")
        expanded.append(list(_branches(index, rule, keys, specs)))
    rank = _key_rank(expanded)
    # First fit over the newest few partitions: a rule too wide for one does not close it for the narrower
    # rules after it, and compiling stays linear in the rules (each try walks one partition's trie).
    bins: list[tuple[AlphaNetwork, list[tuple[str, Branch]], list[int]]] = []
    for index, unordered in enumerate(expanded):
        # A conjunction holds in any order; this one shares more prefixes, so fewer nodes and assertions.
        branches = [Branch(b.rule_index, tuple(sorted(b.tests, key=lambda t: rank[t.key]))) for b in unordered]
        tests = [branch.tests for branch in branches]
        target = next((b for b in bins[-FIRST_FIT_WINDOW:] if b[0].add(tests)), None)
        if target is None:
            target = (AlphaNetwork(key_types), [], [])
            if not target[0].add(tests):
                raise AssertionError(f"rule {ruleset.rules[index].id!r} does not fit an empty partition")
            bins.append(target)
        target[1].extend((f"r{index}_{number}", branch) for number, branch in enumerate(branches))
        target[2].append(rule_cost(ruleset.rules[index]))
    partitions = []
    for network, named, costs in bins:
        texts = tuple(_rule_json(name, branch) for name, branch in named)
        part_keys = tuple(sorted(network.keys, key=lambda k: int(k[1:])))
        rule_of = {name: branch.rule_index for name, branch in named}
        definition = "{" + ",".join(texts) + "}"
        partitions.append(Partition(definition, part_keys, rule_of, sum(costs), texts, network.bound(), network))
    return CompiledRuleset(ruleset, keys, {name: specs[name].type for name in used}, tuple(partitions))


def describe(compiled: CompiledRuleset) -> str:
    """A stable text form of the plan, for golden tests and `nba rulesets check --plan`."""
    lines = [f"ruleset {compiled.ruleset.meta.name} {compiled.ruleset.meta.version}"]
    lines += [f"key {key} = {name} ({compiled.field_types[name]})" for name, key in compiled.field_keys.items()]
    for number, partition in enumerate(compiled.partitions):
        lines.append(
            f"partition {number} cost {partition.cost} stack {partition.stack_bound} keys {' '.join(partition.keys)}"
        )
        lines += [f"  {text}" for text in partition.rule_texts]
    return "\n".join(lines) + "\n"
