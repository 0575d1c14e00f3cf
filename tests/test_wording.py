"""The ruleset in plain English: every operator, policy kind and drop reason in words that are true to the service."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.domain import wording
from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import (
    ORDERING_OPS,
    PRESENCE_OPS,
    Channel,
    Condition,
    Direction,
    Op,
    Ruleset,
    Scalar,
    When,
)
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.policy import policy_ids
from nba_service.domain.profile import Contact, DoNotContact, DoNotContactReason, Event, OutcomeKind, Profile
from nba_service.domain.records import DroppedCandidate
from nba_service.domain.reference import condition_holds
from nba_service.domain.scenarios import DROP_REASONS

BUNDLED = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"
INBOUND, OUTBOUND = Direction.INBOUND, Direction.OUTBOUND

RULESET = """\
ruleset: {name: wording-test, version: 2.0.1, owner: tests, description: wording tests, valid_for: 4h}
fields:
  - {name: first_name, type: string}
  - {name: stage, type: string, values: [welcome, welcome_back, lost, rescue]}
  - {name: age, type: number}
  - {name: churn_score, type: number}
  - {name: digital_logins_30d, type: number}
  - {name: has_term_deposit, type: boolean, description: "Holds a term deposit."}
  - {name: has_isa, type: boolean}
  - {name: vulnerable, type: boolean, description: "Flagged as a vulnerable customer."}
  - {name: complaint_open, type: boolean, description: "A complaint is currently open."}
  - {name: consent_calls, type: boolean, description: "Consents to outbound marketing calls."}
  - {name: consent_offers, type: boolean}
  - {name: dnc, type: boolean, description: "On the do-not-call register."}
  - {name: recent_upgrade, type: boolean}
  - {name: tz, type: string}
events:
  - type: large_deposit
    description: A large deposit.
    attributes: [{name: amount, type: number}, {name: channel_code, type: string}]
actions:
  - id: term-deposit-rates
    category: upsell
    scripts: {agent_desktop: "Update the client on our term deposit rates.", outbound_dialer: "Call about rates."}
    trigger: {event: large_deposit, lifetime: 3d}
  - id: hello
    category: service
    scripts: {agent_desktop: "Say hello to {first_name}."}
  - id: savings-offer
    category: cross_sell
    scripts: {agent_desktop: "Mention savings.", outbound_dialer: "Call about savings."}
  - id: loan-offer
    category: cross_sell
    scripts: {agent_desktop: "Mention loans.", outbound_dialer: "Call about loans."}
rules:
  - id: deposit
    description: d
    reason: Recent large deposit
    priority: 780
    action: term-deposit-rates
    when:
      all:
        - {field: events.large_deposit.age_hours, op: lte, value: 72}
        - {field: events.large_deposit.amount, op: gte, value: 10000}
        - {field: has_term_deposit, op: eq, value: false}
  - {id: hello-everyone, description: d, reason: Be nice, priority: 10, action: hello,
     when: {all: [{field: stage, op: exists}]}}
  - {id: hello-again, description: d, reason: Be nice, priority: 5, action: hello,
     when: {all: [{field: stage, op: exists}]}}
  - {id: savings, description: d, reason: r, priority: 50, action: savings-offer,
     when: {all: [{field: age, op: gte, value: 18}]}}
  - {id: loans, description: d, reason: r, priority: 40, action: loan-offer,
     when: {all: [{field: age, op: gte, value: 18}]}}
  - {id: deposit-any-time, description: d, reason: r, priority: 1, action: term-deposit-rates,
     when: {all: [{field: stage, op: eq, value: rescue}]}}
  - id: mixed
    description: d
    reason: r
    priority: 300
    action: savings-offer
    when:
      all:
        - {field: stage, op: eq, value: welcome_back}
      any:
        - {field: events.large_deposit.age_hours, op: missing}
        - {field: events.large_deposit.age_hours, op: gt, value: 336}
policies:
  consent: {agent_desktop: consent_offers, outbound_dialer: consent_calls}
  do_not_call: {field: dnc}
  frequency_caps:
    - {id: rates-monthly, action: term-deposit-rates, max: 1, within: 30d, description: "Rates once a month"}
    - {id: cross-sell-once, category: cross_sell, max: 1, within: 90m}
    - {id: dialer-weekly, channel: outbound_dialer, max: 2, within: 7d}
    - {id: everything, max: 6, within: 36h}
  suppressions:
    - {id: lost, description: Lost customers get nothing, when: {all: [{field: stage, op: eq, value: lost}]}}
    - {id: vulnerable-no-sales, description: No sales to vulnerable customers,
       when: {all: [{field: vulnerable, op: eq, value: true}]}, except_categories: [service, cross_sell]}
    - {id: dialer-first-days, description: "No calls to minors.", channels: [outbound_dialer],
       when: {all: [{field: age, op: lt, value: 18}]}}
  quiet_hours: {start: "20:00", end: "09:00", timezone_field: tz, default_timezone: Europe/London}
"""
NOON_LONDON = datetime(2026, 6, 15, 11, 0, tzinfo=UTC)
SAMPLES: dict[str, tuple[Scalar, ...]] = {"number": (5.0, 7.0), "string": ("lost", "rescue"), "boolean": (True,)}
# (field, op) pairs the loader accepts: no ordering of text, only eq / ne / exists / missing on yes/no fields.
ALLOWED_COMBINATIONS = [
    (field, op)
    for field, kind in [
        ("age", "number"),
        ("events.large_deposit.age_hours", "number"),
        ("events.large_deposit.amount", "number"),
        ("stage", "string"),
        ("has_term_deposit", "boolean"),
        ("recent_upgrade", "boolean"),
    ]
    for op in Op
    if not (kind == "string" and op in ORDERING_OPS)
    and not (kind == "boolean" and op not in (Op.EQ, Op.NE, *PRESENCE_OPS))
]


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET, "wording-test.yaml")


@pytest.fixture(scope="module")
def bundled() -> Ruleset:
    return load_ruleset_file(BUNDLED)


def said(ruleset: Ruleset, field: str, op: Op, *values: object) -> str:
    return wording.condition_text(Condition(field, op, tuple(values)), ruleset)  # type: ignore[arg-type]


class TestValues:
    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (10000, "10,000"),
            (10000.0, "10,000"),
            (-15.0, "-15"),
            (0.7, "0.7"),
            (1234567.25, "1,234,567.25"),
            (True, "yes"),
            (False, "no"),
            (None, "missing"),
            ("GB", "\u201cGB\u201d"),
            ("welcome_back", "\u201cwelcome_back\u201d"),
        ],
    )
    def test_value_text(self, value: object, text: str) -> None:
        """Raw values keep their spelling (a record's value is evidence); numbers get thousands separators."""
        assert wording.value_text(value) == text

    @pytest.mark.parametrize(
        ("delta", "text"),
        [
            (timedelta(days=3), "3 days"),
            (timedelta(days=1), "1 day"),
            (timedelta(hours=1), "1 hour"),
            (timedelta(hours=36), "36 hours"),
            (timedelta(minutes=90), "90 minutes"),
            (timedelta(minutes=1), "1 minute"),
            (timedelta(seconds=30), "30 seconds"),
            (timedelta(0), "0 minutes"),
        ],
    )
    def test_duration_text(self, delta: timedelta, text: str) -> None:
        assert wording.duration_text(delta) == text


class TestConditions:
    """One clause per operator, on a profile number, a profile string, an event attribute and an event's age."""

    @pytest.mark.parametrize(
        ("op", "values", "text"),
        [
            (Op.EQ, (18.0,), "the customer's age is 18"),
            (Op.NE, (18.0,), "the customer's age is known and is not 18"),
            (Op.LT, (18.0,), "the customer's age is under 18"),
            (Op.LTE, (18.0,), "the customer's age is at most 18"),
            (Op.GT, (65.0,), "the customer's age is over 65"),
            (Op.GTE, (65.0,), "the customer's age is at least 65"),
            (Op.IN, (18.0, 21.0), "the customer's age is one of 18 or 21"),
            (Op.NOT_IN, (18.0, 21.0), "the customer's age is known and is none of 18 or 21"),
            (Op.EXISTS, (), "the customer's age is known"),
            (Op.MISSING, (), "the customer's age is not known"),
        ],
    )
    def test_every_operator_on_a_number(self, ruleset: Ruleset, op: Op, values: tuple[float, ...], text: str) -> None:
        assert said(ruleset, "age", op, *values) == text

    @pytest.mark.parametrize(
        ("op", "values", "text"),
        [
            (Op.EQ, ("welcome_back",), "the customer's stage is \u201cwelcome back\u201d"),
            (Op.NE, ("lost",), "the customer's stage is known and is not \u201clost\u201d"),
            (Op.IN, ("lost", "rescue"), "the customer's stage is one of \u201clost\u201d or \u201crescue\u201d"),
            (Op.IN, ("lost",), "the customer's stage is \u201clost\u201d"),
            (
                Op.NOT_IN,
                ("lost", "rescue", "welcome"),
                "the customer's stage is known and is none of "
                "\u201clost\u201d, \u201crescue\u201d or \u201cwelcome\u201d",
            ),
            (Op.NOT_IN, ("lost",), "the customer's stage is known and is not \u201clost\u201d"),
        ],
    )
    def test_strings_read_as_words(self, ruleset: Ruleset, op: Op, values: tuple[str, ...], text: str) -> None:
        assert said(ruleset, "stage", op, *values) == text

    def test_field_names_read_as_words(self, ruleset: Ruleset) -> None:
        assert said(ruleset, "digital_logins_30d", Op.GTE, 20.0) == (
            "the customer's digital logins in the last 30 days is at least 20"
        )
        assert said(ruleset, "churn_score", Op.GTE, 0.8) == "the customer's churn score is at least 0.8"

    @pytest.mark.parametrize(
        ("op", "values", "text"),
        [
            (Op.LTE, (72.0,), "a large deposit event arrived in the last 3 days"),
            (Op.LTE, (24.0,), "a large deposit event arrived in the last day"),
            (Op.LTE, (36.0,), "a large deposit event arrived in the last 36 hours"),
            (Op.LT, (1.5,), "a large deposit event arrived less than 90 minutes ago"),
            (Op.GT, (336.0,), "the newest unexpired large deposit event arrived more than 14 days ago"),
            (Op.GTE, (1.0,), "the newest unexpired large deposit event arrived at least 1 hour ago"),
            (Op.EXISTS, (), "there is an unexpired large deposit event"),
            (Op.MISSING, (), "there is no unexpired large deposit event"),
            (Op.EQ, (5.0,), "the hours since the newest large deposit event is 5"),
            (Op.NE, (5.0,), "the hours since the newest large deposit event is known and is not 5"),
            (Op.IN, (1.0, 2.0), "the hours since the newest large deposit event is one of 1 or 2"),
            (Op.NOT_IN, (1.0, 2.0), "the hours since the newest large deposit event is known and is none of 1 or 2"),
        ],
    )
    def test_event_age(self, ruleset: Ruleset, op: Op, values: tuple[float, ...], text: str) -> None:
        """`events.<type>.age_hours` is the time since the newest unexpired event of that type."""
        assert said(ruleset, "events.large_deposit.age_hours", op, *values) == text

    def test_event_attributes(self, ruleset: Ruleset) -> None:
        assert said(ruleset, "events.large_deposit.amount", Op.GTE, 10000.0) == (
            "the amount of the newest large deposit event is at least 10,000"
        )
        assert said(ruleset, "events.large_deposit.channel_code", Op.MISSING) == (
            "the channel code of the newest large deposit event is not known"
        )

    @pytest.mark.parametrize(
        ("field", "op", "value", "text"),
        [
            ("has_term_deposit", Op.EQ, True, "the customer holds a term deposit"),
            ("has_term_deposit", Op.EQ, False, "the customer holds no term deposit"),
            ("has_term_deposit", Op.NE, True, "the customer holds no term deposit"),
            ("has_term_deposit", Op.NE, False, "the customer holds a term deposit"),
            ("has_isa", Op.EQ, True, "the customer holds an isa"),
            ("has_isa", Op.EQ, False, "the customer holds no isa"),
            ("vulnerable", Op.EQ, True, "the customer is flagged as a vulnerable customer"),
            ("vulnerable", Op.NE, True, "the customer is not flagged as a vulnerable customer"),
            ("complaint_open", Op.EQ, True, "a complaint is currently open"),
            ("complaint_open", Op.EQ, False, "no complaint is currently open"),
            ("consent_calls", Op.EQ, True, "the customer consents to outbound marketing calls"),
            ("consent_calls", Op.EQ, False, "the customer does not consent to outbound marketing calls"),
            ("dnc", Op.EQ, False, "the customer is not on the do-not-call register"),
            ("recent_upgrade", Op.EQ, True, "recent upgrade is yes"),
            ("recent_upgrade", Op.NE, True, "recent upgrade is no"),
            ("recent_upgrade", Op.EQ, False, "recent upgrade is no"),
        ],
    )
    def test_yes_no_fields(self, ruleset: Ruleset, field: str, op: Op, value: bool, text: str) -> None:
        """A yes/no fact is always a real boolean, so `ne true` says exactly what `eq false` says."""
        assert said(ruleset, field, op, value) == text

    @pytest.mark.parametrize(
        ("field", "op", "text"),
        [
            ("has_term_deposit", Op.EXISTS, "it is known if the customer holds a term deposit"),
            ("has_term_deposit", Op.MISSING, "it is not known if the customer holds a term deposit"),
            ("complaint_open", Op.MISSING, "it is not known whether a complaint is currently open"),
            ("recent_upgrade", Op.EXISTS, "recent upgrade is known"),
            ("recent_upgrade", Op.MISSING, "recent upgrade is not known"),
        ],
    )
    def test_yes_no_presence(self, ruleset: Ruleset, field: str, op: Op, text: str) -> None:
        assert said(ruleset, field, op) == text

    @pytest.mark.parametrize(("field", "op"), ALLOWED_COMBINATIONS)
    def test_words_about_a_missing_fact_match_the_evaluator(self, ruleset: Ruleset, field: str, op: Op) -> None:
        """A missing fact fails every comparison: only a clause that itself says "not known" / "no unexpired"
        may hold for a customer without the fact, and `ne` / `not_in` say the fact must be known."""
        spec = ruleset.fact_fields()[field]
        sample = SAMPLES[spec.type]
        values = () if op in (Op.EXISTS, Op.MISSING) else sample if op in (Op.IN, Op.NOT_IN) else sample[:1]
        condition = Condition(field, op, values)
        text = wording.condition_text(condition, ruleset)
        says_absent = bool(re.search(r"\bnot known\b|\bno unexpired\b", text))
        assert says_absent == condition_holds(condition, {})
        if op in (Op.NE, Op.NOT_IN) and spec.type != "boolean":
            assert "is known and" in text


class TestRulesAndActions:
    def test_rule_sentence(self, ruleset: Ruleset) -> None:
        assert wording.rule_text(ruleset.rules[0], ruleset) == (
            "When a large deposit event arrived in the last 3 days, the amount of the newest large deposit "
            "event is at least 10,000 and the customer holds no term deposit, offer Term deposit rates, "
            "priority 780."
        )

    def test_any_group(self, ruleset: Ruleset) -> None:
        mixed = next(r for r in ruleset.rules if r.id == "mixed")
        assert wording.when_text(mixed.when, ruleset) == (
            "the customer's stage is \u201cwelcome back\u201d and at least one of: there is no unexpired large "
            "deposit event; or the newest unexpired large deposit event arrived more than 14 days ago"
        )

    def test_when_shapes(self, ruleset: Ruleset) -> None:
        age = Condition("age", Op.GTE, (18.0,))
        young = Condition("age", Op.LT, (30.0,))
        assert wording.when_text(When(), ruleset) == "always"
        assert wording.when_text(When(any=(age,)), ruleset) == "the customer's age is at least 18"
        assert wording.when_text(When(all=(age, young)), ruleset) == (
            "the customer's age is at least 18 and the customer's age is under 30"
        )

    def test_action_title(self, ruleset: Ruleset) -> None:
        assert wording.action_title(ruleset.actions["term-deposit-rates"]) == "Term deposit rates"
        assert wording.action_title(ruleset.actions["hello"]) == "Hello"


class TestPolicies:
    def test_every_policy_kind(self, ruleset: Ruleset) -> None:
        texts = dict(wording.policy_texts(ruleset))
        assert list(texts) == policy_ids(ruleset)
        assert texts["consent:agent_desktop"] == (
            "Nothing is offered on the agent desktop unless consent offers is yes; when this is not known, "
            "nothing is offered."
        )
        assert texts["consent:outbound_dialer"] == (
            "Nothing is offered on the outbound dialer unless the customer consents to outbound marketing calls; "
            "when this is not known, nothing is offered."
        )
        assert texts["do_not_call"] == (
            "No call we make (the outbound dialer, or an agent calling out) offers anything unless the customer is "
            "not on the do-not-call register; when this is not known, nothing is offered."
        )
        assert texts["quiet_hours"] == (
            "No call we make (the outbound dialer, or an agent calling out) offers anything from 20:00 to 09:00 in "
            "the customer's own time zone (taken from "
            "the customer's tz, or \u201cEurope/London\u201d when that is missing or not a known time zone)."
        )
        counting = "counting the contacts that reached the customer and the actions ranked higher in the same answer."
        assert texts["rates-monthly"] == (
            f"No more than 1 offer of Term deposit rates within 30 days, {counting} Purpose: Rates once a month."
        )
        assert texts["cross-sell-once"] == f"No more than 1 cross sell action within 90 minutes, {counting}"
        assert texts["dialer-weekly"] == (
            f"No more than 2 actions of any kind on the outbound dialer within 7 days, {counting}"
        )
        assert texts["everything"] == f"No more than 6 actions of any kind within 36 hours, {counting}"
        assert texts["lost"] == (
            "When the customer's stage is \u201clost\u201d, nothing is offered. Purpose: Lost customers get nothing."
        )
        assert texts["vulnerable-no-sales"] == (
            "When the customer is flagged as a vulnerable customer, only cross sell and service actions may be "
            "offered. Purpose: No sales to vulnerable customers."
        )
        assert texts["dialer-first-days"] == (
            "When the customer's age is under 18, nothing is offered on the outbound dialer. Purpose: No calls to "
            "minors."
        )

    def test_unknown_policy(self, ruleset: Ruleset) -> None:
        assert wording.policy_text(ruleset, "no-such-cap") == (
            "There is no contact policy \u201cno-such-cap\u201d in ruleset wording-test version 2.0.1."
        )


PURPOSES = """\
ruleset: {name: purposes-test, version: 1.0.0, owner: tests, description: the contact policy model in words}
fields:
  - {name: vulnerable, type: boolean, description: "Flagged as a vulnerable customer."}
  - {name: consent_marketing, type: boolean, description: "Consents to marketing."}
  - {name: consent_marketing_out, type: boolean, description: "Consents to marketing calls from us."}
  - {name: consent_any, type: boolean}
purposes:
  - {id: marketing, description: Selling, categories: [cross_sell]}
  - {id: regulatory, description: Notices the law requires, categories: [compliance]}
actions:
  - {id: savings-offer, category: cross_sell, scripts: {agent_desktop: Savings., outbound_dialer: Savings.}}
  - {id: arrears-notice, category: compliance, type: mandatory,
     scripts: {agent_desktop: Arrears., outbound_dialer: Arrears.}}
rules:
  - {id: savings, description: d, reason: r, priority: 50, action: savings-offer,
     when: {all: [{field: vulnerable, op: exists}]}}
  - {id: arrears, description: d, reason: r, priority: 10, action: arrears-notice,
     when: {all: [{field: vulnerable, op: exists}]}}
policies:
  consent:
    - {field: consent_any, channel: outbound_dialer}
    - {field: consent_marketing, channel: agent_desktop, purposes: [marketing], directions: [inbound]}
    - {field: consent_marketing_out, channel: agent_desktop, purposes: [marketing], directions: [outbound]}
  frequency_caps:
    - {id: marketing-calls, purpose: marketing, direction: outbound, channel: agent_desktop, max: 2, within: 7d}
    - {id: all-calls, channel: outbound_dialer, max: 3, within: 7d}
  suppressions:
    - {id: vulnerable-in, description: Vulnerable customers calling in hear only what they must,
       when: {all: [{field: vulnerable, op: eq, value: true}]}, directions: [inbound]}
    - {id: vulnerable-out, description: No selling calls to vulnerable customers,
       when: {all: [{field: vulnerable, op: eq, value: true}]}, directions: [outbound], except_purposes: [regulatory]}
  constraints:
    - {id: no-answer-pause, channel: outbound_dialer, direction: outbound, outcomes: [no_answer], after: 3,
       within: 7d}
    - {id: marketing-declines, purpose: marketing, outcomes: [declined, not_now], after: 2, within: 30d,
       description: Two noes are an answer}
"""


@pytest.fixture(scope="module")
def model() -> Ruleset:
    return load_ruleset_text(PURPOSES)


class TestContactPolicyModel:
    """Purposes, directions, constraints and mandatory actions: each sentence, then checked against the pipeline."""

    def test_consent_per_purpose_and_direction(self, model: Ruleset) -> None:
        texts = dict(wording.policy_texts(model))
        assert texts["consent:outbound_dialer"] == (
            "Nothing is offered on the outbound dialer unless consent any is yes; when this is not known, nothing "
            "is offered."
        )
        # Entries for the same channel and purposes in other directions have ids of their own.
        assert texts["consent:marketing:agent_desktop:inbound"] == (
            "No action for the marketing purpose is offered on the agent desktop when the customer contacts us "
            "unless the customer consents to marketing; when this is not known, none is offered."
        )
        assert texts["consent:marketing:agent_desktop:outbound"] == (
            "No action for the marketing purpose is offered on the agent desktop when we contact the customer "
            "unless the customer consents to marketing calls from us; when this is not known, none is offered."
        )

    def test_consent_sentence_holds_in_the_pipeline(self, model: Ruleset) -> None:
        """Calling in needs consent_marketing only; our own call needs consent_marketing_out; the notice neither."""
        profile = Profile("C", {"vulnerable": False, "consent_marketing": True, "consent_any": True})
        inbound = evaluate(reference_active(model), profile, Channel.AGENT_DESKTOP, NOON_LONDON, 5, direction=INBOUND)
        outbound = evaluate(reference_active(model), profile, Channel.AGENT_DESKTOP, NOON_LONDON, 5, direction=OUTBOUND)
        assert [a.action_id for a in inbound.actions] == ["arrears-notice", "savings-offer"]
        assert [a.action_id for a in outbound.actions] == ["arrears-notice"]
        drop = next(d for d in outbound.dropped if d.reason == "no_consent")
        assert wording.drop_text(drop, model).startswith(
            "Savings offer (from rule savings) was not offered: the customer has not given the consent this "
            "channel needs for the marketing purpose. The policy: No action for the marketing purpose"
        )

    def test_cap_with_purpose_and_direction(self, model: Ruleset) -> None:
        texts = dict(wording.policy_texts(model))
        counting = "counting the contacts that reached the customer and the actions ranked higher in the same answer."
        assert texts["marketing-calls"] == (
            "No more than 2 actions for the marketing purpose on the agent desktop, when we contact the customer, "
            f"within 7 days, {counting}"
        )
        assert texts["all-calls"] == (
            f"No more than 3 actions of any kind on the outbound dialer within 7 days, {counting} Mandatory notices "
            "are never held back by it, though each one given counts towards it: Arrears notice."
        )

    def test_suppression_with_directions_and_excepted_purposes(self, model: Ruleset) -> None:
        texts = dict(wording.policy_texts(model))
        assert texts["vulnerable-in"] == (
            "When the customer is flagged as a vulnerable customer, nothing is offered when the customer contacts "
            "us. Mandatory notices are still offered: Arrears notice. Purpose: Vulnerable customers calling in hear "
            "only what they must."
        )
        assert texts["vulnerable-out"] == (
            "When the customer is flagged as a vulnerable customer, only actions for the regulatory purpose may be "
            "offered when we contact the customer. Purpose: No selling calls to vulnerable customers."
        )

    def test_suppression_sentences_hold_in_the_pipeline(self, model: Ruleset) -> None:
        profile = Profile("C", {"vulnerable": True, "consent_marketing": True, "consent_marketing_out": True})
        for direction, suppression in ((INBOUND, "vulnerable-in"), (OUTBOUND, "vulnerable-out")):
            result = evaluate(
                reference_active(model), profile, Channel.AGENT_DESKTOP, NOON_LONDON, 5, direction=direction
            )
            assert [a.action_id for a in result.actions] == ["arrears-notice"]
            assert [(d.action_id, d.policy) for d in result.dropped] == [("savings-offer", suppression)]

    def test_constraints(self, model: Ruleset) -> None:
        texts = dict(wording.policy_texts(model))
        assert texts["no-answer-pause"] == (
            "Once 3 contacts we started on the outbound dialer ended with no answer within 7 days, every action is "
            "paused on the outbound dialer for that customer when we contact the customer until fewer than 3 "
            "remain in that window. Mandatory notices are never paused: Arrears notice."
        )
        assert texts["marketing-declines"] == (
            "Once 2 contacts about actions for the marketing purpose ended with a decline or \u201cnot now\u201d "
            "within 30 days, actions for the marketing purpose are paused for that customer until fewer than 2 "
            "remain in that window. Purpose: Two noes are an answer."
        )

    def test_constraint_sentence_holds_in_the_pipeline(self, model: Ruleset) -> None:
        calls = tuple(
            Contact("savings-offer", Channel.OUTBOUND_DIALER, NOON_LONDON - timedelta(days=d), OutcomeKind.NO_ANSWER)
            for d in (1, 2, 3)
        )
        profile = Profile("C", {"vulnerable": False, "consent_any": True}, (), calls)
        result = evaluate(reference_active(model), profile, Channel.OUTBOUND_DIALER, NOON_LONDON, 5)
        assert [a.action_id for a in result.actions] == ["arrears-notice"]
        drop = next(d for d in result.dropped if d.reason == "constraint")
        assert (drop.action_id, drop.policy) == ("savings-offer", "no-answer-pause")

    def test_several_purposes_are_listed_once(self) -> None:
        text = PURPOSES.replace(
            "{field: consent_any, channel: outbound_dialer}",
            "{field: consent_any, channel: outbound_dialer, purposes: [regulatory, marketing]}",
        ).replace("except_purposes: [regulatory]}", "except_purposes: [regulatory, marketing]}")
        texts = dict(wording.policy_texts(load_ruleset_text(text)))
        assert texts["consent:marketing+regulatory:outbound_dialer"].startswith(
            "No action for the marketing or regulatory purposes is offered on the outbound dialer unless"
        )
        assert texts["vulnerable-out"].startswith(
            "When the customer is flagged as a vulnerable customer, only actions for the marketing and regulatory "
            "purposes may be offered when we contact the customer."
        )

    def test_every_new_kind_reads_as_words(self, model: Ruleset) -> None:
        for policy_id, text in wording.policy_texts(model):
            assert not TestBundledRuleset.LEFTOVERS.search(text), (policy_id, text)
            assert "There is no contact policy" not in text


def customer(**changes: object) -> Profile:
    attributes: dict[str, object] = {
        "first_name": "Ana",
        "stage": "rescue",
        "age": 40.0,
        "has_term_deposit": False,
        "vulnerable": False,
        "consent_calls": True,
        "consent_offers": True,
        "dnc": False,
        "tz": "Europe/London",
    }
    events = changes.pop("events", (Event("large_deposit", NOON_LONDON - timedelta(hours=5), {"amount": 48250.0}),))
    contacts = changes.pop("contacts", ())
    attributes.update(changes)
    return Profile("CUST-1", attributes, tuple(events), tuple(contacts))  # type: ignore[arg-type]


def dropped_by(
    ruleset: Ruleset,
    profile: Profile,
    channel: Channel,
    reason: str,
    *,
    now: datetime = NOON_LONDON,
    limit: int = 5,
) -> DroppedCandidate:
    """A real dropped candidate, made by the one decision pipeline."""
    result = evaluate(reference_active(ruleset), profile, channel, now, limit)
    return next(d for d in result.dropped if d.reason == reason)


class TestDrops:
    """Each drop reason the pipeline gives, produced by the pipeline itself, then put in words."""

    def test_no_consent(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(consent_calls=None), Channel.OUTBOUND_DIALER, "no_consent")
        text = wording.drop_text(drop, ruleset)
        assert text.startswith(f"{wording.action_title(ruleset.actions[drop.action_id])} (from rule {drop.rule_id})")
        assert "has not given the consent this channel needs" in text
        assert "unless the customer consents to outbound marketing calls" in text

    def test_do_not_call(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(dnc=True), Channel.OUTBOUND_DIALER, "do_not_call")
        text = wording.drop_text(drop, ruleset)
        assert "on the do-not-call register, or that is not known" in text
        assert "unless the customer is not on the do-not-call register" in text

    def test_quiet_hours(self, ruleset: Ruleset) -> None:
        evening = datetime(2026, 6, 15, 20, 0, tzinfo=UTC)  # 21:00 in London
        drop = dropped_by(ruleset, customer(), Channel.OUTBOUND_DIALER, "quiet_hours", now=evening)
        text = wording.drop_text(drop, ruleset)
        assert "inside the quiet hours for calls, in the customer's time zone" in text
        assert "from 20:00 to 09:00" in text

    def test_suppression(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(vulnerable=True), Channel.AGENT_DESKTOP, "suppression")
        text = wording.drop_text(drop, ruleset)
        assert drop.action_id == "term-deposit-rates"
        assert text.startswith("Term deposit rates (from rule deposit) was not offered: a suppression stops it")
        assert "When the customer is flagged as a vulnerable customer, only cross sell and service" in text

    def test_channel_fit(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(), Channel.OUTBOUND_DIALER, "channel_fit")
        assert wording.drop_text(drop, ruleset) == (
            "Hello (from rule hello-everyone) was not offered: it has no script for the outbound dialer."
        )

    def test_missing_trigger(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(events=[]), Channel.AGENT_DESKTOP, "missing_trigger")
        assert wording.drop_text(drop, ruleset) == (
            "Term deposit rates (from rule deposit-any-time) was not offered: there is no unexpired large deposit "
            "event for it to act on."
        )

    def test_expired_trigger(self, ruleset: Ruleset) -> None:
        old = Event("large_deposit", NOON_LONDON - timedelta(days=3, minutes=1), {"amount": 50000.0})
        drop = dropped_by(ruleset, customer(events=[old]), Channel.AGENT_DESKTOP, "expired_trigger")
        assert wording.drop_text(drop, ruleset) == (
            "Term deposit rates (from rule deposit-any-time) was not offered: the newest large deposit event is "
            "older than "
            "the action's lifetime of 3 days."
        )

    def test_frequency_cap_from_history(self, ruleset: Ruleset) -> None:
        past = Contact(
            "term-deposit-rates", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=2), OutcomeKind.ACCEPTED, "d1"
        )
        drop = dropped_by(ruleset, customer(contacts=[past]), Channel.AGENT_DESKTOP, "frequency_cap")
        assert drop.stage == "policy"
        text = wording.drop_text(drop, ruleset)
        assert "contact history has already reached a frequency cap" in text
        assert "No more than 1 offer of Term deposit rates within 30 days" in text

    def test_frequency_cap_within_one_answer(self, ruleset: Ruleset) -> None:
        """Savings (priority 50) is chosen; loans (40) share the cross-sell cap of one and fall at arbitration."""
        drop = dropped_by(ruleset, customer(), Channel.AGENT_DESKTOP, "frequency_cap")
        assert (drop.stage, drop.action_id) == ("arbitration", "loan-offer")
        text = wording.drop_text(drop, ruleset)
        assert "with the actions ranked above it in this answer, it would exceed a frequency cap" in text
        assert "(0 contacts in the history, 1 chosen above it in this answer)" in text
        assert "No more than 1 cross sell action within 90 minutes" in text

    def test_duplicate_action(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(), Channel.AGENT_DESKTOP, "duplicate_action")
        assert wording.drop_text(drop, ruleset) == (
            "Hello (from rule hello-again) was not offered: the same action was already chosen through rule "
            "hello-everyone, at a higher rank."
        )

    def test_ranked_out(self, ruleset: Ruleset) -> None:
        drop = dropped_by(ruleset, customer(), Channel.AGENT_DESKTOP, "ranked_out", limit=1)
        text = wording.drop_text(drop, ruleset)
        assert text.endswith("was not offered: the answer holds at most 1 action and higher-ranked actions filled it.")

    def test_do_not_contact(self, ruleset: Ruleset) -> None:
        listing = DoNotContact(
            Channel.OUTBOUND_DIALER, DoNotContactReason.BEREAVEMENT, "branch", NOON_LONDON - timedelta(days=1)
        )
        profile = dataclasses.replace(customer(), do_not_contact=(listing,))
        drop = dropped_by(ruleset, profile, Channel.OUTBOUND_DIALER, "do_not_contact")
        text = wording.drop_text(drop, ruleset)
        assert "is listed as do-not-contact for this channel (bereavement)" in text
        assert "mandatory notices included; a listed customer who contacts us is still helped" in text

    def test_constraint(self) -> None:
        paused = load_ruleset_text(
            RULESET.replace(
                "policies:\n",
                "policies:\n  constraints:\n    - {id: two-declines, category: cross_sell, outcomes: [declined],"
                " after: 2, within: 90d, description: Two noes are an answer}\n",
                1,
            )
        )
        declined = [
            Contact(
                "savings-offer", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=d), OutcomeKind.DECLINED, f"d{d}"
            )
            for d in (3, 40)
        ]
        drop = dropped_by(paused, customer(contacts=declined), Channel.AGENT_DESKTOP, "constraint")
        assert (drop.action_id, drop.policy) == ("savings-offer", "two-declines")
        assert wording.drop_text(drop, paused) == (
            "Savings offer (from rule savings) was not offered: it is paused for this customer after how earlier "
            "contacts ended. The policy: Once 2 contacts about cross sell actions ended with a decline within 90 "
            "days, cross sell actions are paused for that customer until fewer than 2 remain in that window. "
            "Purpose: Two noes are an answer."
        )

    def test_held_out(self, ruleset: Ruleset) -> None:
        result = evaluate(
            reference_active(ruleset), customer(), Channel.AGENT_DESKTOP, NOON_LONDON, 5, held_out=["savings-offer"]
        )
        assert not [d for d in result.dropped if d.reason == "held_out"], "only a holdout share can hold out"
        odd = DroppedCandidate(
            "savings", "savings-offer", "held_out", "in the 10% holdout of savings-offer", "arbitration"
        )
        assert wording.drop_text(odd, ruleset) == (
            "Savings offer (from rule savings) was not offered: the customer is in the holdout of this action "
            "(chosen at random, for measuring what the action adds), so it was recorded and not shown."
        )

    def test_every_reason_is_covered(self, ruleset: Ruleset) -> None:
        """The reasons tested above are all the pipeline gives; an unknown one still reads as words."""
        tested = {name.removeprefix("test_") for name in dir(self) if name.startswith("test_")}
        assert {r for r in DROP_REASONS if r != "frequency_cap"} <= tested
        odd = DroppedCandidate("deposit", "term-deposit-rates", "new_reason", "some detail", "policy", "lost")
        assert wording.drop_text(odd, ruleset) == (
            "Term deposit rates (from rule deposit) was not offered: new reason (some detail). The policy: When "
            "the customer's stage is \u201clost\u201d, nothing is offered. Purpose: Lost customers get nothing."
        )


class TestBundledRuleset:
    """Every rule, policy and action of the bundled ruleset reads as English, with no code left in the words."""

    LEFTOVERS = re.compile(r"events\.|_|\bNone\b|\bTrue\b|\bFalse\b|\bage_hours\b|\{|\}")

    def test_every_rule(self, bundled: Ruleset) -> None:
        for rule in bundled.rules:
            text = wording.rule_text(rule, bundled)
            assert not self.LEFTOVERS.search(text), (rule.id, text)
            assert text.startswith("When ")
            assert text.endswith(f", priority {rule.priority}.")

    def test_every_policy(self, bundled: Ruleset) -> None:
        texts = wording.policy_texts(bundled)
        assert [policy_id for policy_id, _ in texts] == policy_ids(bundled)
        for policy_id, text in texts:
            assert not self.LEFTOVERS.search(text), (policy_id, text)
            assert "There is no contact policy" not in text

    def test_every_action_title(self, bundled: Ruleset) -> None:
        for action in bundled.actions.values():
            assert not self.LEFTOVERS.search(wording.action_title(action)), action.id

    def test_the_issue_example(self, bundled: Ruleset) -> None:
        rule = next(r for r in bundled.rules if r.id == "large-deposit-term-deposit")
        text = wording.rule_text(rule, bundled)
        assert text.startswith("When a large deposit event arrived in the last 3 days, the amount of the newest")
        assert "the customer holds no term deposit" in text
        assert text.endswith("offer Term deposit rates, priority 780.")
