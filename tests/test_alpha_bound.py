"""The stack bound that packs rules into few engine rulesets: checked against the engine and against a model.

`alpha_bound` argues from durable_rules' source that an assertion never pushes more than the bound.
These tests try to break that in three ways:
- the engine itself at the edge: hand-built engine rulesets whose stack must reach exactly 64 entries
  (accepted) or 65 (error 303), whatever order the engine visits nodes in, so the model of what is
  pushed (matching children, `$nex` children of absent keys, minus the node just popped) is the
  engine's;
- a simulation of the engine's depth-first walk over the compiler's own trie, with children pushed in
  random orders, never exceeds the bound;
- generated rulesets packed to the limit (many range tests on few fields, shared constants, tiny and
  huge floats, -0.0, big integers, Unicode, null and missing values) evaluated by the engine exactly as
  the reference evaluator does, with no engine error ever.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import durable_rules_engine as engine  # the edge tests drive the C module itself, bypassing our compiler
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nba_service.domain.alpha_bound import STACK_LIMIT, AlphaNetwork, AlphaNode, group_width
from nba_service.domain.compiler import (
    CompiledRuleset,
    compile_ruleset,
    encode_string,
)
from nba_service.domain.facts import FactValue, project
from nba_service.domain.model import Op
from nba_service.domain.profile import Profile
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from tests.rulegen import SPECIAL_FLOATS, SPECIAL_STRINGS, TEXT, Spec, base_document, rule_document

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_names = iter(range(10**9))


def _assert_raw(rules: Mapping[str, str], fact: str) -> int:
    """Creates a raw engine ruleset, asserts one fact, and returns the engine's error code (0 when it took it)."""
    name = f"edge_{next(_names)}"
    body = ",".join(f'"{rule}":{{"all":[{{"m":{{"$and":[{{"nba":1}},{tests}]}}}}]}}' for rule, tests in rules.items())
    handle = engine.create_ruleset(name, "{" + body + "}")
    try:
        engine.assert_fact(handle, fact)
    except engine.error as exc:
        return int(str(exc).rsplit(":", 1)[1])
    finally:
        engine.delete_ruleset(handle)
    return 0


class TestTheEngineAtTheEdge:
    """The stack holds the children pushed along the current path, less the nodes already popped."""

    @pytest.mark.parametrize(("width", "expected"), [(64, 0), (65, 303)])
    def test_one_node_with_many_matching_children(self, width: int, expected: int) -> None:
        """The guard's children that hold are all on the stack at once: 64 fit, 65 do not."""
        rules = {f"r{i}": f'{{"$gt":{{"x":{i}.0}}}},{{"y":"never"}}' for i in range(width)}
        assert _assert_raw(rules, '{"id":"1","sid":"s","nba":1,"x":1000.0,"y":"z"}') == expected

    @pytest.mark.parametrize(("fan", "expected"), [(32, 0), (33, 303)])
    def test_widths_add_along_a_path_less_the_popped_nodes(self, fan: int, expected: int) -> None:
        """33 matching children each with `fan` matching children: 32 siblings wait while one expands.

        The bound says 33 - 1 + fan: 64 for fan 32 (accepted) and 65 for fan 33 (303), whichever child
        the engine expands first, since every child has the same fan-out.
        """
        rules = {
            f"r{i}_{j}": f'{{"$gt":{{"x":{i}.0}}}},{{"$gt":{{"y":{j}.0}}}},{{"z":"never"}}'
            for i in range(33)
            for j in range(fan)
        }
        assert _assert_raw(rules, '{"id":"1","sid":"s","nba":1,"x":1000.0,"y":1000.0,"z":"a"}') == expected

    @pytest.mark.parametrize(("keys", "expected"), [(64, 0), (65, 303)])
    def test_absent_keys_push_their_missing_tests(self, keys: int, expected: int) -> None:
        """A `$nex` child is pushed when its key is absent: one per key, and they add up like the rest."""
        rules = {f"r{i}": f'{{"$nex":{{"k{i}":1}}}},{{"y":"never"}}' for i in range(keys)}
        assert _assert_raw(rules, '{"id":"1","sid":"s","nba":1,"y":"z"}') == expected

    def test_tests_that_cannot_hold_together_count_once(self) -> None:
        """250 equalities and 80 opposed ranges on one key: one equality and at most 40 ranges hold at once.

        330 children that a count of nodes would reject; their width is 41, and the engine takes every value.
        """
        rules = {f"e{i}": f'{{"x":{i}.0}},{{"y":"never"}}' for i in range(250)}
        rules |= {f"g{i}": f'{{"$gt":{{"x":{100 + i}.0}}}},{{"y":"never"}}' for i in range(40)}
        rules |= {f"l{i}": f'{{"$lt":{{"x":{100 - i}.0}}}},{{"y":"never"}}' for i in range(40)}
        for x in ("5.0", "60.0", "100.0", "120.5", "200.0", "-1.0"):
            assert _assert_raw(rules, f'{{"id":"1","sid":"s","nba":1,"x":{x},"y":"z"}}') == 0
        tests = [(Op.EQ, float(i)) for i in range(250)]
        tests += [(Op.GT, 100.0 + i) for i in range(40)] + [(Op.LT, 100.0 - i) for i in range(40)]
        assert group_width("number", tests, False) == 41


def _holds(node_ident: tuple[str, Op, object], fact: Mapping[str, object]) -> bool:
    key, op, constant = node_ident
    if op is Op.MISSING:
        return key not in fact
    if key not in fact:
        return False
    value = fact[key]
    if op is Op.EXISTS:
        return True
    if op is Op.EQ:
        return value == constant
    if op is Op.NE:
        return value != constant
    assert isinstance(value, float)
    assert isinstance(constant, float)
    return {Op.LT: value < constant, Op.LTE: value <= constant, Op.GT: value > constant, Op.GTE: value >= constant}[op]


def simulated_peak(network: AlphaNetwork, fact: Mapping[str, object], rng: random.Random) -> int:
    """The engine's walk (handleAlpha) over our trie, children pushed in a random order: the peak stack."""
    stack: list[AlphaNode] = [network.guard]  # the root `m` was popped and pushed the guard
    peak = 1
    while stack:
        node = stack.pop()
        holding = [child for ident, child in node.children.items() if _holds(ident, fact)]
        rng.shuffle(holding)
        stack.extend(holding)
        peak = max(peak, len(stack))
    return peak


def engine_fact(compiled: CompiledRuleset, facts: Mapping[str, FactValue]) -> dict[str, object]:
    """The fact as the engine compares it: keyed like the partitions, values as the alpha tests hold them."""
    fact: dict[str, object] = {}
    for name, key in compiled.field_keys.items():
        if name not in facts:
            continue
        value = facts[name]
        field_type = compiled.field_types[name]
        if field_type == "number":
            fact[key] = float(value)
        elif field_type == "boolean":
            fact[key] = "1" if value else "0"
        else:
            fact[key] = encode_string(str(value))
    return fact


NUMBERS = [*SPECIAL_FLOATS, -0.0, 2.0**63, -(2.0**63), 1e-310, 3.0, 3.5, 4.0]


@st.composite
def dense_case(draw: st.DrawFn) -> tuple[Spec, list[Profile]]:
    """Hundreds of rules on few fields, mostly ranges over a small set of constants: partitions fill to the bound."""
    types = {"n0": "number", "n1": "number", "n2": "number", "s0": "string", "b0": "boolean"}
    numbers = draw(st.lists(st.sampled_from(NUMBERS), min_size=2, max_size=8, unique_by=repr))
    strings = draw(st.lists(st.sampled_from(SPECIAL_STRINGS) | TEXT, min_size=1, max_size=4, unique=True))
    number_ops = ["gt", "gte", "lt", "lte", "gt", "gte", "lt", "lte", "eq", "ne", "in", "not_in", "exists", "missing"]

    def condition(rng: random.Random) -> dict[str, Any]:
        name = rng.choice(["n0", "n0", "n1", "n1", "n2", "s0", "b0"])
        if name == "b0":
            op = rng.choice(["eq", "ne", "missing", "exists"])
            return (
                {"field": name, "op": op}
                if op in ("missing", "exists")
                else {"field": name, "op": op, "value": rng.random() < 0.5}
            )
        if name == "s0":
            op = rng.choice(["eq", "ne", "in", "not_in", "missing"])
            if op == "missing":
                return {"field": name, "op": op}
            if op in ("in", "not_in"):
                return {"field": name, "op": op, "value": rng.sample(strings, min(2, len(strings)))}
            return {"field": name, "op": op, "value": rng.choice(strings)}
        op = rng.choice(number_ops)
        if op in ("missing", "exists"):
            return {"field": name, "op": op}
        if op in ("in", "not_in"):
            return {"field": name, "op": op, "value": rng.sample(numbers, 2)}
        return {"field": name, "op": op, "value": rng.choice(numbers)}

    rng = random.Random(draw(st.integers(0, 2**32)))
    count = draw(st.integers(60, 400))
    rules = [rule_document(i, [condition(rng) for _ in range(rng.randint(1, 3))], []) for i in range(count)]
    spec = Spec(base_document(types, rules), types, {})
    near = [x for v in numbers for x in (v, math.nextafter(v, math.inf), math.nextafter(v, -math.inf))]
    odd: list[object] = [None, True, "1", 2**70, 10**400, math.nan, math.inf, 2**53 + 1]
    values = {
        "n0": st.sampled_from(near) | st.sampled_from(odd),
        "n1": st.sampled_from(near),
        "n2": st.sampled_from(near) | st.floats(allow_nan=False),
        "s0": st.sampled_from(strings) | TEXT | st.none(),
        "b0": st.booleans() | st.none(),
    }
    batch = draw(st.lists(st.fixed_dictionaries({}, optional=values), min_size=1, max_size=20))
    return spec, [Profile("CUST-D", attributes) for attributes in batch]


class TestPackedPartitions:
    @pytest.mark.slow
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(dense_case(), st.integers(0, 2**32))
    def test_engine_agrees_and_the_walk_stays_under_the_bound(
        self, case: tuple[Spec, list[Profile]], seed: int
    ) -> None:
        """Partitions packed to the bound: the engine answers as the reference does, and no walk passes the bound."""
        spec, batch = case
        ruleset = spec.load()
        compiled = compile_ruleset(ruleset)
        assert all(p.stack_bound <= STACK_LIMIT for p in compiled.partitions)
        loaded = DurableEngine().load(compiled)
        reference = ReferenceEvaluator(ruleset)
        rng = random.Random(seed)
        try:
            for profile in batch:
                facts = project(ruleset, profile, NOW).facts
                assert loaded.evaluate(facts) == reference.evaluate(facts), f"facts={facts!r}"
                fact = engine_fact(compiled, facts)
                for partition in compiled.partitions:
                    assert partition.network is not None
                    for _ in range(3):
                        assert simulated_peak(partition.network, fact, rng) <= partition.stack_bound
        finally:
            loaded.close()

    def test_dense_rulesets_do_reach_the_limit(self) -> None:
        """The packing is not timid: 400 overlapping range rules fill partitions close to the limit.

        "At most 60 tests per partition" made 20 partitions of these (three tests a rule, guard included).
        """
        types = {"x": "number", "y": "number"}
        rng = random.Random(7)
        rules = [
            rule_document(
                i,
                [
                    {"field": "x", "op": rng.choice(["gt", "lte"]), "value": float(rng.randint(0, 50))},
                    {"field": "y", "op": rng.choice(["gte", "lt"]), "value": float(rng.randint(0, 50))},
                ],
                [],
            )
            for i in range(400)
        ]
        compiled = compile_ruleset(Spec(base_document(types, rules), types, {}).load())
        assert max(p.stack_bound for p in compiled.partitions) >= STACK_LIMIT - 8
        assert len(compiled.partitions) < 20
        assert all(p.stack_bound <= STACK_LIMIT for p in compiled.partitions)


class TestGroupWidth:
    """The most tests on one property one value can satisfy, checked against brute force over many values."""

    @settings(max_examples=300, deadline=None)
    @given(
        tests=st.lists(
            st.tuples(
                st.sampled_from([Op.EQ, Op.NE, Op.LT, Op.LTE, Op.GT, Op.GTE, Op.EXISTS]),
                st.sampled_from([*NUMBERS, 1.0, 2.0, 5e-324]),
            ),
            max_size=30,
        ),
        absent=st.booleans(),
    )
    def test_numbers(self, tests: list[tuple[Op, float]], absent: bool) -> None:
        unique = list({(op, None if op is Op.EXISTS else v + 0.0): None for op, v in tests})
        width = group_width("number", unique, absent)
        probes = {
            x
            for _, v in unique
            if v is not None
            for x in (v, math.nextafter(v, -math.inf), math.nextafter(v, math.inf))
        }
        probes |= {0.0, -sys.float_info.max, sys.float_info.max}
        most = max(
            (sum(1 for op, c in unique if _holds(("k", op, c), {"k": x})) for x in probes),
            default=0,
        )
        assert width >= max(most, 1 if absent else 0)
        constants = sorted({c for _, c in unique if c is not None})
        if all(math.nextafter(a, math.inf) < b for a, b in itertools.pairwise(constants)):
            assert width == max(most, 1 if absent else 0)  # exact when a double lies in every gap

    def test_strings_and_booleans(self) -> None:
        codes = [encode_string(s) for s in ("a", "b", "c")]
        tests: list[tuple[Op, object]] = [(Op.EQ, c) for c in codes] + [(Op.NE, c) for c in codes] + [(Op.EXISTS, None)]
        assert group_width("string", tests, False) == 1 + 1 + 2  # equal to one: its eq, two ne, exists
        assert group_width("boolean", [(Op.EQ, "1"), (Op.EQ, "0"), (Op.NE, "1")], True) == 2  # "0": eq 0 and ne 1
