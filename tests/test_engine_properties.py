"""durable_rules, driven by our compiler and adapter, agrees with the plain reference evaluator.

The reference evaluator is the meaning of a ruleset; the engine is what runs in production. These
tests generate rulesets and profiles across every type's range and spelling and sizes in the hundreds,
and require identical matches, with every limit from ../shared/notes/durable-rules.md in play.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from nba_service.domain.alpha_bound import STACK_LIMIT
from nba_service.domain.compiler import compile_ruleset, rule_cost
from nba_service.domain.facts import project
from nba_service.domain.profile import Profile
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.errors import RulesetInvalid
from tests.rulegen import (
    SPECIAL_FLOATS,
    SPECIAL_STRINGS,
    TEXT,
    Spec,
    base_document,
    matching_ruleset,
    profiles,
    rule_document,
    rulesets,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ENGINE = DurableEngine()


def _check(spec: Spec, batch: list[Profile]) -> int:
    try:
        ruleset = spec.load()
    except RulesetInvalid as exc:
        # Rules too big for the engine are rejected by design; any other rejection is a generator bug.
        if not all("engine conditions" in p.problem for p in exc.ruleset_problems):
            raise
        reject()
    compiled = compile_ruleset(ruleset)
    assert all(p.stack_bound <= STACK_LIMIT for p in compiled.partitions)
    loaded = ENGINE.load(compiled)
    reference = ReferenceEvaluator(ruleset)
    matches = 0
    try:
        for profile in batch:
            facts = project(ruleset, profile, NOW).facts
            expected = reference.evaluate(facts)
            assert loaded.evaluate(facts) == expected, f"facts={facts!r}"
            matches += len(expected)
    finally:
        loaded.close()
    return matches


@st.composite
def ruleset_with_profiles(draw: st.DrawFn, max_rules: int) -> tuple[Spec, list[Profile]]:
    spec = draw(rulesets(max_rules=max_rules))
    return spec, draw(st.lists(profiles(spec), min_size=1, max_size=25))


class TestEngineAgreesWithReference:
    @pytest.mark.slow
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ruleset_with_profiles(max_rules=40))
    def test_small_and_medium_rulesets(self, case: tuple[Spec, list[Profile]]) -> None:
        """Any generated ruleset and profile: the engine matches exactly the rules the reference matches."""
        _check(*case)

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ruleset_with_profiles(max_rules=400))
    def test_rulesets_of_hundreds_of_rules(self, case: tuple[Spec, list[Profile]]) -> None:
        """Hundreds of rules over a few fields, many sharing conditions: still identical."""
        _check(*case)

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(
        values=st.fixed_dictionaries(
            {
                f"n{i}": st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=False, allow_infinity=False))
                for i in range(6)
            }
            | {f"s{i}": st.one_of(st.sampled_from(SPECIAL_STRINGS), TEXT) for i in range(4)}
            | {"b0": st.booleans()}
        ),
        count=st.integers(200, 500),
        seed=st.integers(0, 2**32),
    )
    def test_hundreds_of_rules_that_mostly_match(self, values: dict[str, object], count: int, seed: int) -> None:
        """All matches are collected when hundreds of rules fire on one fact (facts, not events)."""
        types = {f"n{i}": "number" for i in range(6)} | {f"s{i}": "string" for i in range(4)} | {"b0": "boolean"}
        spec = matching_ruleset(types, values, count, seed)
        matched = _check(spec, [Profile("CUST-1", values)])
        assert matched > count * 0.6


class TestKnownEngineLimits:
    """Each case reproduces a defect from the notes; the compiler's plan must make it harmless."""

    def _numbers(self, rules: list[dict[str, object]], fields: dict[str, str]) -> Spec:
        return Spec(base_document(fields, rules), fields, {})

    def test_error_303_many_partial_matches(self) -> None:
        """65+ rules `x > i and y == 'never'` used to fail with 303 on {x: 1000, y: 'z'}."""
        rules = [
            rule_document(i, [{"field": "x", "op": "gt", "value": i}, {"field": "y", "op": "eq", "value": "never"}], [])
            for i in range(400)
        ]
        spec = self._numbers(rules, {"x": "number", "y": "string"})
        batch = [
            Profile("C", {"x": 1000, "y": "z"}),
            Profile("C", {"x": 1000, "y": "never"}),
            Profile("C", {"y": "z", "x": 10}),
        ]
        assert _check(spec, batch) == 400

    def test_node_with_more_than_512_children_does_not_hang(self) -> None:
        """513 rules `x == i` hung create_ruleset at 100% CPU; partitions keep every node small."""
        rules = [rule_document(i, [{"field": "x", "op": "eq", "value": i}], []) for i in range(600)]
        spec = self._numbers(rules, {"x": "number"})
        assert _check(spec, [Profile("C", {"x": 512}), Profile("C", {"x": 599}), Profile("C", {"x": 600})]) == 2

    def test_more_than_256_rules_with_one_condition_chain(self) -> None:
        """Error 108 came from more than 256 rules sharing an identical condition chain."""
        rules = [rule_document(i, [{"field": "x", "op": "gte", "value": 0}], []) for i in range(300)]
        spec = self._numbers(rules, {"x": "number"})
        assert _check(spec, [Profile("C", {"x": 1})]) == 300

    def test_many_fields_stay_under_the_property_limit(self) -> None:
        """Error 302 came from more than 252 fields in one fact: each partition sends only its own fields."""
        fields = {f"v{i}": "number" for i in range(300)}
        rules = [rule_document(i, [{"field": f"v{i}", "op": "eq", "value": i}], []) for i in range(300)]
        spec = self._numbers(rules, fields)
        profile = Profile("C", {f"v{i}": i for i in range(300)})
        assert _check(spec, [profile]) == 300

    def test_missing_tests_never_match_the_session_state(self) -> None:
        """A rule true for an empty fact must not re-fire on the engine's own state record forever."""
        rules = [rule_document(i, [{"field": "x", "op": "missing"}], []) for i in range(5)]
        spec = self._numbers(rules, {"x": "number", "y": "string"})
        assert _check(spec, [Profile("C", {}), Profile("C", {"y": "sid"}), Profile("C", {"x": 1})]) == 10

    def test_no_match_then_match_repeatedly(self) -> None:
        """No-match evaluations (which made delete_state crash) are routine; the session stays usable."""
        rules = [rule_document(0, [{"field": "x", "op": "eq", "value": 1}], [])]
        spec = self._numbers(rules, {"x": "number"})
        batch = [Profile("C", {"x": i % 2}) for i in range(4000)]
        assert _check(spec, batch) == 2000

    def test_rulesets_load_and_unload_many_times(self) -> None:
        """Reloading (new version, same name) works: the adapter names and deletes engine rulesets itself."""
        rules = [rule_document(i, [{"field": "x", "op": "lte", "value": i}], []) for i in range(50)]
        spec = self._numbers(rules, {"x": "number"})
        for _ in range(100):
            assert _check(spec, [Profile("C", {"x": 25})]) == 25

    def test_floats_compare_exactly_at_the_edges(self) -> None:
        """Numbers reach the engine with a decimal point and 17 digits: `1e+20` is not read as 1."""
        edges = [5e-324, 1e-300, 0.1, 1e20, 1e300, 2.0**53, -0.0]
        rules = []
        for i, value in enumerate(edges):
            rules.append(rule_document(3 * i, [{"field": "x", "op": "eq", "value": value}], []))
            rules.append(rule_document(3 * i + 1, [{"field": "x", "op": "lt", "value": value}], []))
            rules.append(rule_document(3 * i + 2, [{"field": "x", "op": "gt", "value": value}], []))
        spec = self._numbers(rules, {"x": "number"})
        batch = [
            Profile("C", {"x": v})
            for e in edges
            for v in (e, math.nextafter(e, math.inf), math.nextafter(e, -math.inf))
        ]
        batch += [Profile("C", {"x": v}) for v in (2**53 + 1, 2**70, 10**400, True, "1", None, math.nan, math.inf)]
        assert _check(spec, batch) > 0

    def test_rule_cost_matches_the_expansion(self) -> None:
        """The loader's cost (used to reject oversized rules) is exactly what the compiler builds."""
        conditions = [
            {"field": "x", "op": "in", "value": [1, 2, 3]},
            {"field": "y", "op": "not_in", "value": ["a", "b"]},
            {"field": "z", "op": "eq", "value": True},
        ]
        any_ = [{"field": "x", "op": "gt", "value": 0}, {"field": "y", "op": "in", "value": ["c", "d"]}]
        spec = self._numbers([rule_document(0, conditions, any_)], {"x": "number", "y": "string", "z": "boolean"})
        ruleset = spec.load()
        compiled = compile_ruleset(ruleset)
        assert compiled.partitions[0].cost == rule_cost(ruleset.rules[0]) == 3 * 3 * (1 + 1 + 2 + 1 + 1)
