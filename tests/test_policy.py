"""Contact policy and arbitration: every dropped candidate keeps the reason a reviewer would need."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nba_service.domain.facts import live_events, project
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.policy import Candidate, in_quiet_hours, next_quiet_start, valid_until
from nba_service.domain.profile import Contact, Event, OutcomeKind, Profile

RULESET = """\
ruleset: {name: policy-test, version: 1.0.0, owner: tests, description: policy tests, valid_for: 4h}
fields:
  - {name: first_name, type: string}
  - {name: stage, type: string}
  - {name: consent_calls, type: boolean}
  - {name: consent_offers, type: boolean}
  - {name: dnc, type: boolean}
  - {name: tz, type: string}
  - {name: vulnerable, type: boolean}
events:
  - type: large_deposit
    attributes: [{name: amount, type: number}]
actions:
  - id: rates
    category: upsell
    scripts: {agent_desktop: "Update the client on our new term deposit rates.", outbound_dialer: "Call about rates."}
    trigger: {event: large_deposit, lifetime: 3d}
  - id: hello
    category: service
    scripts: {agent_desktop: "Say hello to {first_name}."}
  - id: survey
    category: rescue
    scripts: {agent_desktop: "Offer a short survey.", outbound_dialer: "Offer a short survey."}
rules:
  - {id: deposit, description: d, reason: Recent large deposit, priority: 80, action: rates,
     when: {all: [{field: events.large_deposit.amount, op: gte, value: 10000}]}}
  - {id: hello-everyone, description: d, reason: Be nice, priority: 10, action: hello,
     when: {all: [{field: stage, op: exists}]}}
  - {id: survey-rescue, description: d, reason: Interest dropping, priority: 50, action: survey,
     when: {all: [{field: stage, op: eq, value: rescue}]}}
  - {id: survey-again, description: d, reason: Interest dropping, priority: 40, action: survey,
     when: {all: [{field: stage, op: in, value: [rescue, lost]}]}}
policies:
  consent: {agent_desktop: consent_offers, outbound_dialer: consent_calls}
  do_not_call: {field: dnc}
  frequency_caps:
    - {id: rates-monthly, action: rates, max: 1, within: 30d}
    - {id: dialer-weekly, channel: outbound_dialer, max: 2, within: 7d}
  suppressions:
    - {id: lost, description: Lost customers get nothing, when: {all: [{field: stage, op: eq, value: lost}]}}
    - {id: vulnerable, description: No sales to vulnerable customers,
       when: {all: [{field: vulnerable, op: eq, value: true}]}, except_categories: [service]}
  quiet_hours: {start: "20:00", end: "09:00", timezone_field: tz, default_timezone: Europe/London}
"""
NOON_LONDON = datetime(2026, 6, 15, 11, 0, tzinfo=UTC)  # 12:00 BST


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET, "policy-test.yaml")


def profile(**changes: object) -> Profile:
    attributes: dict[str, object] = {
        "first_name": "Ana",
        "stage": "rescue",
        "consent_calls": True,
        "consent_offers": True,
        "dnc": False,
        "tz": "Europe/London",
        "vulnerable": False,
    }
    events = changes.pop("events", (Event("large_deposit", NOON_LONDON - timedelta(hours=5), {"amount": 48250.0}),))
    contacts = changes.pop("contacts", ())
    attributes.update(changes)
    return Profile("CUST-1", attributes, tuple(events), tuple(contacts))  # type: ignore[arg-type]


def decide(ruleset: Ruleset, customer: Profile, channel: Channel, now: datetime = NOON_LONDON, limit: int = 5):  # type: ignore[no-untyped-def]
    result = evaluate(reference_active(ruleset), customer, channel, now, limit)
    return list(result.action_ids), {(d.rule_id, d.reason) for d in result.dropped}


class TestPolicies:
    def test_everything_allowed(self, ruleset: Ruleset) -> None:
        """Ranked by priority, one entry per action, the duplicate kept with its reason."""
        chosen, dropped = decide(ruleset, profile(), Channel.AGENT_DESKTOP)
        assert chosen == ["rates", "survey", "hello"]
        assert dropped == {("survey-again", "duplicate_action")}

    def test_max_actions(self, ruleset: Ruleset) -> None:
        chosen, dropped = decide(ruleset, profile(), Channel.AGENT_DESKTOP, limit=1)
        assert chosen == ["rates"]
        assert ("hello-everyone", "ranked_out") in dropped

    @pytest.mark.parametrize("value", [False, None, "yes"])
    def test_consent_is_required_per_channel(self, ruleset: Ruleset, value: object) -> None:
        """Consent must be exactly true; missing or odd values block the channel."""
        chosen, dropped = decide(ruleset, profile(consent_calls=value), Channel.OUTBOUND_DIALER)
        assert chosen == []
        assert {reason for _, reason in dropped} == {"no_consent"}
        assert decide(ruleset, profile(consent_calls=value), Channel.AGENT_DESKTOP)[0]

    @pytest.mark.parametrize("value", [True, None])
    def test_do_not_call_blocks_only_the_dialer(self, ruleset: Ruleset, value: object) -> None:
        """Unknown do-not-call status is treated as do-not-call."""
        chosen, dropped = decide(ruleset, profile(dnc=value), Channel.OUTBOUND_DIALER)
        assert chosen == []
        assert {reason for _, reason in dropped} == {"do_not_call"}
        assert decide(ruleset, profile(dnc=value), Channel.AGENT_DESKTOP)[0]

    def test_quiet_hours_in_the_customers_zone(self, ruleset: Ruleset) -> None:
        """21:00 in London is quiet; at the same instant it is 16:00 in New York and the dialer may call."""
        evening = datetime(2026, 6, 15, 20, 0, tzinfo=UTC)
        chosen, dropped = decide(ruleset, profile(), Channel.OUTBOUND_DIALER, now=evening)
        assert chosen == []
        assert {reason for _, reason in dropped} == {"quiet_hours"}
        assert decide(ruleset, profile(tz="America/New_York"), Channel.OUTBOUND_DIALER, now=evening)[0]
        assert decide(ruleset, profile(tz="Not/AZone"), Channel.OUTBOUND_DIALER, now=evening)[0] == []

    def test_quiet_hours_boundaries(self, ruleset: Ruleset) -> None:
        quiet = ruleset.policies.quiet_hours
        assert quiet is not None
        customer = profile()
        assert not in_quiet_hours(quiet, customer, datetime(2026, 1, 15, 19, 59, tzinfo=UTC))
        assert in_quiet_hours(quiet, customer, datetime(2026, 1, 15, 20, 0, tzinfo=UTC))
        assert in_quiet_hours(quiet, customer, datetime(2026, 1, 16, 8, 59, tzinfo=UTC))
        assert not in_quiet_hours(quiet, customer, datetime(2026, 1, 16, 9, 0, tzinfo=UTC))
        assert next_quiet_start(quiet, customer, NOON_LONDON) == datetime(2026, 6, 15, 19, 0, tzinfo=UTC)

    def test_suppression_with_exception_category(self, ruleset: Ruleset) -> None:
        """Vulnerable customers still get service actions; lost customers get nothing."""
        chosen, dropped = decide(ruleset, profile(vulnerable=True), Channel.AGENT_DESKTOP)
        assert chosen == ["hello"]
        assert ("deposit", "suppression") in dropped
        chosen, dropped = decide(ruleset, profile(stage="lost"), Channel.AGENT_DESKTOP)
        assert chosen == []
        assert ("hello-everyone", "suppression") in dropped

    def test_channel_fit(self, ruleset: Ruleset) -> None:
        chosen, dropped = decide(ruleset, profile(), Channel.OUTBOUND_DIALER)
        assert "hello" not in chosen
        assert ("hello-everyone", "channel_fit") in dropped

    def test_trigger_expiry(self, ruleset: Ruleset) -> None:
        """A deposit older than the action's 3-day lifetime never drives the action, even if a rule matches."""
        old = Event("large_deposit", NOON_LONDON - timedelta(days=3, minutes=1), {"amount": 50000.0})
        chosen, dropped = decide(ruleset, profile(events=[old]), Channel.AGENT_DESKTOP)
        assert "rates" not in chosen
        assert ("deposit", "expired_trigger") in dropped
        expired = Event("large_deposit", NOON_LONDON - timedelta(hours=1), {"amount": 50000.0}, NOON_LONDON)
        assert live_events(profile(events=[expired]), NOON_LONDON) == {}

    def test_frequency_caps_count_contacts_not_no_answers(self, ruleset: Ruleset) -> None:
        """A contact in the window caps the action; a no-answer does not; an old contact has aged out."""
        accepted = Contact("rates", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=2), OutcomeKind.ACCEPTED, "d1")
        no_answer = Contact("rates", Channel.OUTBOUND_DIALER, NOON_LONDON - timedelta(days=1), OutcomeKind.NO_ANSWER)
        old = Contact("rates", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=31), OutcomeKind.ACCEPTED)
        chosen, dropped = decide(ruleset, profile(contacts=[accepted]), Channel.AGENT_DESKTOP)
        assert "rates" not in chosen
        assert ("deposit", "frequency_cap") in dropped
        assert "rates" in decide(ruleset, profile(contacts=[no_answer, old]), Channel.AGENT_DESKTOP)[0]

    def test_channel_cap_and_one_contact_per_offer(self, ruleset: Ruleset) -> None:
        """Two dialer contacts in a week cap the dialer; accepted-then-converted on one offer counts once."""
        day = timedelta(days=1)
        calls = [
            Contact("survey", Channel.OUTBOUND_DIALER, NOON_LONDON - day, OutcomeKind.ACCEPTED, "d1"),
            Contact("survey", Channel.OUTBOUND_DIALER, NOON_LONDON - day, OutcomeKind.CONVERTED, "d1"),
        ]
        assert decide(ruleset, profile(contacts=calls, events=[]), Channel.OUTBOUND_DIALER)[0] == ["survey"]
        calls.append(Contact("survey", Channel.OUTBOUND_DIALER, NOON_LONDON - 2 * day, OutcomeKind.DECLINED, "d2"))
        chosen, dropped = decide(ruleset, profile(contacts=calls, events=[]), Channel.OUTBOUND_DIALER)
        assert chosen == []
        assert ("survey-rescue", "frequency_cap") in dropped

    def test_valid_until(self, ruleset: Ruleset) -> None:
        """Bounded by the trigger's lifetime, the ruleset's validity and, for a call we make, quiet hours."""
        customer = profile()
        projection = project(ruleset, customer, NOON_LONDON)
        rates = Candidate(0, ruleset.rules[0], ruleset.actions["rates"])
        hello = Candidate(1, ruleset.rules[1], ruleset.actions["hello"])
        assert valid_until(
            ruleset, hello, customer, projection, Direction.INBOUND, NOON_LONDON
        ) == NOON_LONDON + timedelta(hours=4)
        assert valid_until(
            ruleset, rates, customer, projection, Direction.INBOUND, NOON_LONDON
        ) == NOON_LONDON + timedelta(hours=4)
        late = datetime(2026, 6, 15, 17, 0, tzinfo=UTC)
        late_projection = project(ruleset, customer, late)
        assert valid_until(ruleset, rates, customer, late_projection, Direction.OUTBOUND, late) == datetime(
            2026, 6, 15, 19, 0, tzinfo=UTC
        )
        near_end = profile(
            events=[Event("large_deposit", NOON_LONDON - timedelta(days=3) + timedelta(hours=1), {"amount": 1e5})]
        )
        end_projection = project(ruleset, near_end, NOON_LONDON)
        assert valid_until(
            ruleset, rates, near_end, end_projection, Direction.INBOUND, NOON_LONDON
        ) == NOON_LONDON + timedelta(hours=1)


SAME_DECISION_RULESET = """\
ruleset: {name: same-decision-caps, version: 1.0.0, owner: tests, description: caps in one decision, valid_for: 4h}
fields:
  - {name: stage, type: string}
actions:
  - {id: refer-a, category: referral, scripts: {agent_desktop: "Ask for a referral.", outbound_dialer: "Ask."}}
  - {id: refer-b, category: referral, scripts: {agent_desktop: "Ask for a referral again.", outbound_dialer: "Ask."}}
  - {id: tip-a, category: cross_sell, scripts: {agent_desktop: "Share a tip.", outbound_dialer: "Share a tip."}}
  - {id: tip-b, category: cross_sell, scripts: {agent_desktop: "Share another tip.", outbound_dialer: "Share a tip."}}
  - {id: thanks, category: loyalty, scripts: {agent_desktop: "Say thank you.", outbound_dialer: "Say thank you."}}
rules:
  - {id: r-refer-a, description: d, reason: r, priority: 90, action: refer-a, when: {all: [{field: stage, op: exists}]}}
  - {id: r-refer-b, description: d, reason: r, priority: 80, action: refer-b, when: {all: [{field: stage, op: exists}]}}
  - {id: r-tip-a, description: d, reason: r, priority: 70, action: tip-a, when: {all: [{field: stage, op: exists}]}}
  - {id: r-tip-b, description: d, reason: r, priority: 60, action: tip-b, when: {all: [{field: stage, op: exists}]}}
  - {id: r-thanks, description: d, reason: r, priority: 50, action: thanks, when: {all: [{field: stage, op: exists}]}}
policies:
  frequency_caps:
    - {id: referral-once, category: referral, max: 1, within: 60d}
    - {id: cross-sell-twice, category: cross_sell, max: 2, within: 30d}
    - {id: thanks-once, action: thanks, max: 1, within: 30d}
    - {id: dialer-daily, channel: outbound_dialer, max: 1, within: 1d}
"""


@pytest.fixture(scope="module")
def caps_ruleset() -> Ruleset:
    return load_ruleset_text(SAME_DECISION_RULESET, "same-decision-caps.yaml")


class TestCapsWithinOneDecision:
    """Every action in an answer becomes a contact once delivered, so caps count the ones chosen above it too."""

    @staticmethod
    def run(ruleset: Ruleset, contacts: tuple[Contact, ...] = (), channel: Channel = Channel.AGENT_DESKTOP):  # type: ignore[no-untyped-def]
        customer = Profile("CUST-2", {"stage": "maintenance"}, (), contacts)
        return evaluate(reference_active(ruleset), customer, channel, NOON_LONDON, 10)

    def test_second_action_of_a_max_one_category_is_dropped(self, caps_ruleset: Ruleset) -> None:
        result = self.run(caps_ruleset)
        assert "refer-a" in result.action_ids
        assert "refer-b" not in result.action_ids
        [drop] = [d for d in result.dropped if d.action_id == "refer-b"]
        assert (drop.rule_id, drop.reason, drop.stage, drop.policy) == (
            "r-refer-b",
            "frequency_cap",
            "arbitration",
            "referral-once",
        )
        assert "same decision" in drop.detail

    def test_max_two_with_one_contact_in_history_keeps_one_of_two(self, caps_ruleset: Ruleset) -> None:
        past = Contact("tip-a", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=3), OutcomeKind.ACCEPTED, "d0")
        result = self.run(caps_ruleset, (past,))
        assert [a for a in result.action_ids if a.startswith("tip-")] == ["tip-a"]
        [drop] = [d for d in result.dropped if d.action_id == "tip-b"]
        assert (drop.reason, drop.stage, drop.policy) == ("frequency_cap", "arbitration", "cross-sell-twice")
        assert "1 in the contact history" in drop.detail
        # Without the past contact both fit under the cap of two.
        assert [a for a in self.run(caps_ruleset).action_ids if a.startswith("tip-")] == ["tip-a", "tip-b"]

    def test_unrelated_caps_are_unaffected(self, caps_ruleset: Ruleset) -> None:
        """Only caps that apply to both the chosen actions and the candidate count them: on the agent desktop
        the dialer cap, the cross-sell cap and the per-action cap never see the referral chosen above."""
        result = self.run(caps_ruleset)
        assert result.action_ids == ("refer-a", "tip-a", "tip-b", "thanks")
        assert [(d.action_id, d.policy) for d in result.dropped] == [("refer-b", "referral-once")]

    def test_channel_cap_counts_the_decision_on_its_own_channel(self, caps_ruleset: Ruleset) -> None:
        """At most one outbound call a day: a dialer answer carries one action, the rest are dropped by the cap."""
        result = self.run(caps_ruleset, channel=Channel.OUTBOUND_DIALER)
        assert result.action_ids == ("refer-a",)
        assert {d.action_id: (d.reason, d.stage) for d in result.dropped} == {
            "refer-b": ("frequency_cap", "arbitration"),
            "tip-a": ("frequency_cap", "arbitration"),
            "tip-b": ("frequency_cap", "arbitration"),
            "thanks": ("frequency_cap", "arbitration"),
        }

    def test_a_capped_candidate_takes_no_place_and_a_full_answer_ranks_out(self, caps_ruleset: Ruleset) -> None:
        customer = Profile("CUST-2", {"stage": "maintenance"}, (), ())
        result = evaluate(reference_active(caps_ruleset), customer, Channel.AGENT_DESKTOP, NOON_LONDON, 2)
        assert result.action_ids == ("refer-a", "tip-a")
        assert [(d.action_id, d.reason) for d in result.dropped] == [
            ("refer-b", "frequency_cap"),
            ("tip-b", "ranked_out"),
            ("thanks", "ranked_out"),
        ]


class TestZeroCaps:
    """A cap of 0 is how a manager switches one thing off. Peers' users report a 0 cap that silently capped
    everything; here it blocks exactly what it names (an action, a category, a channel, or all) and nothing else,
    with no contact history needed."""

    @pytest.mark.parametrize(
        ("scope", "blocked"),
        [
            ("action: rates", {"rates"}),
            ("category: rescue", {"survey"}),
            ("channel: agent_desktop", {"rates", "survey", "hello"}),
            ("action: hello, channel: outbound_dialer", set()),
            ("description: everything", {"rates", "survey", "hello"}),
        ],
    )
    def test_zero_cap_blocks_only_what_it_names(self, scope: str, blocked: set[str]) -> None:
        text = RULESET.replace(
            "  frequency_caps:\n", f"  frequency_caps:\n    - {{id: off, max: 0, within: 1d, {scope}}}\n", 1
        )
        capped = load_ruleset_text(text, "zero-cap.yaml")
        baseline, _ = decide(load_ruleset_text(RULESET, "policy-test.yaml"), profile(), Channel.AGENT_DESKTOP)
        chosen, _ = decide(capped, profile(), Channel.AGENT_DESKTOP)
        assert set(baseline) == {"rates", "survey", "hello"}
        assert chosen == [a for a in baseline if a not in blocked]
        result = evaluate(reference_active(capped), profile(), Channel.AGENT_DESKTOP, NOON_LONDON, 5)
        by_cap = {d.action_id for d in result.dropped if d.reason == "frequency_cap"}
        assert by_cap == blocked
        assert all(d.policy == "off" for d in result.dropped if d.reason == "frequency_cap")


@pytest.mark.parametrize("path", ["rulesets/retail-banking.yaml", "tests/scenarios/mini-bank.yaml"])
def test_policy_scopes_agree_with_asking_each_cap(path: str) -> None:
    """The per-ruleset index of which constraints and caps bind an action gives exactly what asking every cap
    for every candidate gave, for every action, channel and direction, mandatory notices included."""
    from pathlib import Path

    from nba_service.domain.policy import PolicyScopes, _binds, _cap_applies

    ruleset = load_ruleset_text(Path(path).read_text("utf-8"), path)
    policies = ruleset.policies
    scopes = PolicyScopes(policies)
    checked = 0
    for _ in range(2):  # the second round answers from what the first worked out
        for action in ruleset.actions.values():
            for channel in Channel:
                for direction in Direction:
                    constraints, caps = scopes.binding(action, channel, direction)
                    assert constraints == tuple(
                        c for c in policies.constraints if _binds(c, action, channel, direction)
                    )
                    assert caps == tuple(c for c in policies.frequency_caps if _binds(c, action, channel, direction))
                    assert scopes.counted_by(action, channel, direction) == {
                        c.id for c in policies.frequency_caps if _cap_applies(c, action, channel, direction)
                    }
                    checked += len(caps) + len(constraints)
    assert checked > 0
