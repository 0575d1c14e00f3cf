"""Holdouts and conversions in the ruleset: who is held out (random, stable for a period, balanced on what the
rules read), what a held-out decision records, and the loader's errors for each new key."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest

from nba_service.domain.holdout import draw, is_held_out, period_end, period_index
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Channel, Holdouts, Op, Ruleset
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.profile import Profile
from nba_service.domain.scenarios import load_scenarios_text, run_case
from nba_service.errors import RulesetInvalid
from nba_service.synthetic import SAMPLE_PATH, read_sample

NOW = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)

RULESET = """\
ruleset: {name: holdout-test, version: 1.0.0, owner: tests, description: holdouts, valid_for: 4h}
fields:
  - {name: stage, type: string}
  - {name: notice_due, type: boolean}
events:
  - type: product_opened
    attributes: [{name: product, type: string}]
purposes:
  - {id: service, description: Their own matters, categories: [service]}
  - {id: compliance, description: Duties, categories: [compliance]}
  - {id: marketing, description: Selling, categories: [upsell, cross_sell]}
actions:
  - id: rates
    category: upsell
    scripts: {agent_desktop: "Mention rates."}
    conversion: {event: product_opened, within: 30d, when: {all: [{field: product, op: eq, value: term_deposit}]}}
    value: 120
  - id: savings
    category: cross_sell
    scripts: {agent_desktop: "Mention savings."}
    conversion: {event: product_opened, within: 30d}
  - id: card-help
    category: service
    scripts: {agent_desktop: "Help with the card."}
  - id: notice
    category: compliance
    type: mandatory
    scripts: {agent_desktop: "Read the notice."}
rules:
  - {id: rates-rule, description: d, reason: r, priority: 500, action: rates, when: {all: [{field: stage, op: exists}]}}
  - {id: savings-rule, description: d, reason: r, priority: 400, action: savings,
     when: {all: [{field: stage, op: exists}]}}
  - {id: card, description: d, reason: r, priority: 300, action: card-help, when: {all: [{field: stage, op: exists}]}}
  - {id: notice-rule, description: d, reason: r, priority: 1, action: notice,
     when: {all: [{field: notice_due, op: eq, value: true}]}}
holdouts:
  period: 30d
  shares:
    - {purpose: marketing, share: 0.05}
    - {action: rates, share: 0.5}
policies:
  frequency_caps:
    - {id: marketing-daily, category: upsell, max: 1, within: 1d}
"""


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET)


def customer(customer_id: str, **attributes: object) -> Profile:
    return Profile(customer_id, {"stage": "maintenance", **attributes})  # type: ignore[dict-item]


class TestShares:
    def test_each_action_takes_its_own_share_else_its_category_else_its_purpose(self, ruleset: Ruleset) -> None:
        assert {a.id: a.holdout for a in ruleset.actions.values()} == {
            "rates": 0.5,
            "savings": 0.05,
            "card-help": 0.0,
            "notice": 0.0,
        }
        assert ruleset.holdouts == Holdouts(timedelta(days=30), "holdout-test")

    def test_conversions_and_values_are_read(self, ruleset: Ruleset) -> None:
        rates, savings = ruleset.actions["rates"], ruleset.actions["savings"]
        assert rates.conversion is not None
        assert (rates.conversion.event, rates.conversion.within, rates.value) == (
            "product_opened",
            timedelta(days=30),
            120.0,
        )
        assert [(c.field, c.op, c.values) for c in rates.conversion.when.all] == [("product", Op.EQ, ("term_deposit",))]
        assert savings.conversion is not None
        assert savings.conversion.when.conditions() == ()
        assert savings.value is None


class TestAssignment:
    def test_the_share_held_out_is_the_declared_share(self, ruleset: Ruleset) -> None:
        holdouts = ruleset.holdouts
        for action_id, share in (("rates", 0.5), ("savings", 0.05)):
            action = ruleset.actions[action_id]
            out = sum(is_held_out(holdouts, f"CUST-{n:06d}", action, NOW) for n in range(20_000))
            # Binomial: 5 standard deviations either side.
            margin = 5 * (share * (1 - share) / 20_000) ** 0.5
            assert abs(out / 20_000 - share) < margin, (action_id, out)

    def test_stable_within_a_period_and_drawn_again_in_the_next(self, ruleset: Ruleset) -> None:
        holdouts = ruleset.holdouts
        ids = [f"CUST-{n:06d}" for n in range(2_000)]
        start = period_end(holdouts, NOW) - holdouts.period
        first = [draw(holdouts, c, "rates", start) for c in ids]
        assert first == [draw(holdouts, c, "rates", start + holdouts.period - timedelta(seconds=1)) for c in ids]
        following = [draw(holdouts, c, "rates", start + holdouts.period) for c in ids]
        assert period_index(holdouts, start + holdouts.period) == period_index(holdouts, start) + 1
        assert sum(a != b for a, b in zip(first, following, strict=True)) > 1_990

    def test_actions_and_seeds_draw_apart(self, ruleset: Ruleset) -> None:
        holdouts = ruleset.holdouts
        ids = [f"CUST-{n:06d}" for n in range(2_000)]
        rates = [draw(holdouts, c, "rates", NOW) < 0.5 for c in ids]
        savings = [draw(holdouts, c, "savings", NOW) < 0.5 for c in ids]
        other = [draw(Holdouts(holdouts.period, "another"), c, "rates", NOW) < 0.5 for c in ids]
        # Independent draws agree about half the time; the same draw would agree always.
        assert 0.45 < sum(a == b for a, b in zip(rates, savings, strict=True)) / 2_000 < 0.55
        assert 0.45 < sum(a == b for a, b in zip(rates, other, strict=True)) / 2_000 < 0.55

    def test_held_out_and_shown_customers_look_alike(self, ruleset: Ruleset) -> None:
        """Over the bundled sample, the two groups of a 50% holdout have the same profile, field by field, within
        a quarter of a standard deviation (about four standard errors for groups of 500)."""
        profiles = list(read_sample(SAMPLE_PATH, NOW))
        action = ruleset.actions["rates"]
        out = [p for p in profiles if is_held_out(ruleset.holdouts, p.customer_id, action, NOW)]
        shown = [p for p in profiles if not is_held_out(ruleset.holdouts, p.customer_id, action, NOW)]
        assert 400 < len(out) < 600
        numeric = sorted(
            {k for p in profiles for k, v in p.attributes.items() if isinstance(v, int | float)} - {"timezone"}
        )
        assert len(numeric) >= 10
        for name in numeric:
            values = [float(v) for p in profiles if isinstance(v := p.attributes.get(name), int | float)]
            spread = statistics.pstdev(values) or 1.0

            def mean(group: list[Profile], field: str = name) -> float:
                found = [float(v) for p in group if isinstance(v := p.attributes.get(field), int | float)]
                return statistics.fmean(found) if found else 0.0

            assert abs(mean(out) - mean(shown)) / spread < 0.25, name


class TestPipeline:
    def held_out_customer(self, ruleset: Ruleset, action_id: str, held: bool) -> str:
        action = ruleset.actions[action_id]
        return next(
            c
            for c in (f"CUST-{n:06d}" for n in range(1_000))
            if is_held_out(ruleset.holdouts, c, action, NOW) is held
            and not is_held_out(ruleset.holdouts, c, ruleset.actions["savings"], NOW)
        )

    def test_a_held_out_action_is_recorded_and_the_next_best_takes_its_place(self, ruleset: Ruleset) -> None:
        active = reference_active(ruleset)
        out = self.held_out_customer(ruleset, "rates", True)
        result = evaluate(active, customer(out), Channel.AGENT_DESKTOP, NOW, 2)
        assert result.action_ids == ("savings", "card-help")
        (dropped,) = [d for d in result.dropped if d.reason == "held_out"]
        assert (dropped.action_id, dropped.rule_id, dropped.stage) == ("rates", "rates-rule", "arbitration")
        assert "50% holdout" in dropped.detail
        shown = self.held_out_customer(ruleset, "rates", False)
        assert evaluate(active, customer(shown), Channel.AGENT_DESKTOP, NOW, 2).action_ids == ("rates", "savings")

    def test_the_same_decision_gives_the_same_holdout_every_time(self, ruleset: Ruleset) -> None:
        active = reference_active(ruleset)
        answers = {
            evaluate(active, customer(f"CUST-{n:06d}"), Channel.AGENT_DESKTOP, NOW, 3).action_ids for n in range(50)
        }
        again = {
            evaluate(active, customer(f"CUST-{n:06d}"), Channel.AGENT_DESKTOP, NOW, 3).action_ids for n in range(50)
        }
        assert answers == again
        assert len(answers) > 1

    def test_service_compliance_and_mandatory_actions_are_never_held_out(self, ruleset: Ruleset) -> None:
        active = reference_active(ruleset)
        for n in range(500):
            result = evaluate(active, customer(f"CUST-{n:06d}", notice_due=True), Channel.AGENT_DESKTOP, NOW, 5)
            assert {"card-help", "notice"} <= set(result.action_ids)
            assert {d.action_id for d in result.dropped if d.reason == "held_out"} <= {"rates", "savings"}

    def test_a_caller_can_name_the_holdouts_instead_of_drawing_them(self, ruleset: Ruleset) -> None:
        active = reference_active(ruleset)
        result = evaluate(active, customer("ANY"), Channel.AGENT_DESKTOP, NOW, 3, held_out=("rates", "savings"))
        assert result.action_ids == ("card-help",)
        assert {d.action_id for d in result.dropped if d.reason == "held_out"} == {"rates", "savings"}


class TestScenarios:
    def test_a_case_names_its_holdouts_and_is_checked(self, ruleset: Ruleset) -> None:
        text = """\
ruleset: holdout-test
defaults: {at: "2026-03-10 14:00", timezone: Europe/London, profile: {stage: maintenance}}
cases:
  - name: held out of rates
    held_out: [rates]
    expect:
      actions: [savings, card-help]
      dropped: [{action: rates, reason: held_out}]
  - name: nobody is held out unless the case says so
    expect: {actions: [rates, savings, card-help]}
"""
        results = [run_case(reference_active(ruleset), s) for s in load_scenarios_text(text, ruleset, "h.tests.yaml")]
        assert [r.passed for r in results] == [True, True]
        bad = text.replace("held_out: [rates]", "held_out: [card-help, ratez]")
        with pytest.raises(RulesetInvalid) as caught:
            load_scenarios_text(bad, ruleset, "h.tests.yaml")
        assert [p.problem for p in caught.value.ruleset_problems] == [
            "action 'card-help' has no holdout share in ruleset holdout-test",
            "action 'ratez' is not declared in ruleset holdout-test (did you mean 'rates'?)",
        ]


def problems(text: str) -> list[str]:
    with pytest.raises(RulesetInvalid) as caught:
        load_ruleset_text(text)
    return [f"{p.where}: {p.problem}" for p in caught.value.ruleset_problems]


class TestLoaderErrors:
    def test_holdouts_never_name_service_compliance_or_mandatory_actions(self) -> None:
        text = RULESET.replace(
            "    - {action: rates, share: 0.5}\n",
            "    - {action: rates, share: 0.5}\n"
            "    - {action: notice, share: 0.1}\n"
            "    - {category: service, share: 0.1}\n"
            "    - {purpose: compliance, share: 0.1}\n"
            "    - {action: rates, share: 0.2}\n"
            "    - {category: loyalty, share: 0.1}\n"
            "    - {action: rates, category: upsell, share: 0.1}\n",
        )
        assert problems(text) == [
            "holdouts.shares.2.action: action 'notice' is mandatory: never held out",
            "holdouts.shares.3.category: service actions are never held out",
            "holdouts.shares.4.purpose: compliance actions are never held out",
            "holdouts.shares.5.action: action 'rates' already has a share",
            "holdouts.shares.6.category: no action has category 'loyalty'",
            "holdouts.shares.7: give exactly one of action, category or purpose",
        ]

    def test_share_limits_come_from_the_schema(self) -> None:
        text = RULESET.replace("{action: rates, share: 0.5}", "{action: rates, share: 0.75}")
        assert problems(text) == ["holdouts.shares.1.share: 0.75 is greater than the maximum of 0.5"]

    def test_conversion_mistakes(self) -> None:
        text = RULESET.replace(
            "conversion: {event: product_opened, within: 30d}",
            "conversion: {event: product_closed, within: 30d}",
        ).replace("{field: product, op: eq, value: term_deposit}", "{field: prodcut, op: eq, value: term_deposit}")
        found = problems(text)
        assert any("prodcut" in p for p in found), found
        assert (
            "action 'savings' conversion.event: conversion event 'product_closed' is not declared under events" in found
        )
