"""Purposes, directions, constraint pauses, mandatory notices, do-not-contact listings and pending dialer calls:
each policy kind of ruleset format 1.3 through the one decision pipeline, on the reference evaluator and on
durable_rules alike, plus the loader's errors for each new key."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from nba_service.app import activate
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import ActiveRuleset, Evaluation, evaluate, reference_active
from nba_service.domain.profile import Contact, DoNotContact, DoNotContactReason, OutcomeKind, Profile
from nba_service.domain.records import DecisionInputs
from nba_service.errors import RulesetInvalid

NOW = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)

RULESET = """\
ruleset: {name: contact-policy-test, version: 1.0.0, owner: tests, description: contact policy, valid_for: 4h}
fields:
  - {name: stage, type: string}
  - {name: consent_calls, type: boolean}
  - {name: consent_offers, type: boolean}
  - {name: dnc, type: boolean}
  - {name: notice_due, type: boolean}
purposes:
  - {id: service, description: Their own matters, categories: [service]}
  - {id: compliance, description: Duties, categories: [compliance]}
  - {id: marketing, description: Selling, categories: [upsell, loyalty]}
actions:
  - id: card-help
    category: service
    scripts: {agent_desktop: "Help with the card.", outbound_dialer: "Call about the card."}
  - id: rates
    category: upsell
    scripts: {agent_desktop: "Mention rates.", outbound_dialer: "Call about rates."}
  - id: thanks
    category: loyalty
    scripts: {agent_desktop: "Thank the client.", outbound_dialer: "Call to thank the client."}
  - id: notice
    category: compliance
    type: mandatory
    scripts: {agent_desktop: "Read the notice.", outbound_dialer: "Call to read the notice."}
rules:
  - {id: card, description: d, reason: r, priority: 900, action: card-help,
     when: {all: [{field: stage, op: exists}]}}
  - {id: rates-rule, description: d, reason: r, priority: 500, action: rates,
     when: {all: [{field: stage, op: exists}]}}
  - {id: thanks-rule, description: d, reason: r, priority: 400, action: thanks,
     when: {all: [{field: stage, op: exists}]}}
  - {id: notice-rule, description: d, reason: r, priority: 1, action: notice,
     when: {all: [{field: notice_due, op: eq, value: true}]}}
policies:
  consent:
    - {field: consent_offers, channel: agent_desktop, purposes: [marketing]}
    - {field: consent_calls, channel: agent_desktop, purposes: [marketing], directions: [outbound]}
    - {field: consent_calls, channel: outbound_dialer, purposes: [marketing, compliance]}
  do_not_call: {field: dnc}
  frequency_caps:
    - {id: outbound-marketing-weekly, purpose: marketing, direction: outbound, max: 1, within: 7d}
    - {id: all-daily, max: 2, within: 1d}
    - {id: notice-once, action: notice, max: 1, within: 30d}
  constraints:
    - {id: two-declines, purpose: marketing, per_action: true, outcomes: [declined], after: 2, within: 90d}
    - {id: three-declines-all, purpose: marketing, outcomes: [declined], after: 3, within: 30d}
    - {id: no-answers, channel: outbound_dialer, outcomes: [no_answer], after: 2, within: 7d}
    - {id: not-now, per_action: true, outcomes: [not_now], after: 1, within: 14d}
  suppressions:
    - {id: lost-outbound, description: No outbound contact with lost customers,
       when: {all: [{field: stage, op: eq, value: lost}]}, directions: [outbound]}
    - {id: lost-marketing, description: No marketing to lost customers,
       when: {all: [{field: stage, op: eq, value: lost}]}, except_purposes: [service, compliance]}
"""


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET)


@pytest.fixture(scope="module", params=["reference", "durable_rules"])
def active(request: pytest.FixtureRequest, ruleset: Ruleset) -> Iterator[ActiveRuleset]:
    """Policy runs after the rules, so both evaluators must give the same answers here."""
    if request.param == "reference":
        yield reference_active(ruleset)
        return
    loaded = activate(ruleset)
    yield loaded
    loaded.engine.close()


def customer(*contacts: Contact, listings: tuple[DoNotContact, ...] = (), **attributes: object) -> Profile:
    values: dict[str, object] = {"stage": "maintenance", "consent_calls": True, "consent_offers": True, "dnc": False}
    values.update(attributes)
    return Profile("CUST-1", values, (), contacts, do_not_contact=listings)  # type: ignore[arg-type]


def contact(
    action: str,
    ago: timedelta,
    outcome: OutcomeKind = OutcomeKind.ACCEPTED,
    channel: Channel = Channel.AGENT_DESKTOP,
    direction: Direction | None = None,
    pending_until: datetime | None = None,
) -> Contact:
    return Contact(action, channel, NOW - ago, outcome, f"d-{action}-{ago}", "", None, direction, pending_until)


def decide(
    active: ActiveRuleset, profile: Profile, channel: Channel, direction: Direction | None = None, limit: int = 5
) -> Evaluation:
    return evaluate(active, profile, channel, NOW, limit, direction=direction)


def drops(result: Evaluation) -> dict[str, tuple[str, str]]:
    return {d.action_id: (d.reason, d.policy) for d in result.dropped}


class TestPurposes:
    def test_actions_take_the_purpose_of_their_category(self, ruleset: Ruleset) -> None:
        assert {a.id: a.purpose for a in ruleset.actions.values()} == {
            "card-help": "service",
            "rates": "marketing",
            "thanks": "marketing",
            "notice": "compliance",
        }

    def test_service_on_the_dialer_needs_no_marketing_consent(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(consent_calls=False), Channel.OUTBOUND_DIALER)
        assert result.action_ids == ("card-help",)
        assert drops(result) == {
            "rates": ("no_consent", "consent:compliance+marketing:outbound_dialer"),
            "thanks": ("no_consent", "consent:compliance+marketing:outbound_dialer"),
        }

    def test_consent_can_name_several_purposes(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(consent_calls=False, notice_due=True), Channel.OUTBOUND_DIALER)
        assert drops(result)["notice"] == ("no_consent", "consent:compliance+marketing:outbound_dialer")

    def test_unknown_consent_is_no_consent(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(consent_offers=None), Channel.AGENT_DESKTOP)
        assert result.action_ids == ("card-help",)


class TestDirection:
    def test_outbound_agent_call_needs_the_outbound_consent_too(self, active: ActiveRuleset) -> None:
        profile = customer(consent_calls=False)
        inbound = decide(active, profile, Channel.AGENT_DESKTOP, Direction.INBOUND)
        outbound = decide(active, profile, Channel.AGENT_DESKTOP, Direction.OUTBOUND)
        assert inbound.action_ids == ("card-help", "rates")
        assert outbound.action_ids == ("card-help",)
        assert drops(outbound)["rates"] == ("no_consent", "consent:marketing:agent_desktop:outbound")

    def test_the_desktop_answers_inbound_unless_told(self, active: ActiveRuleset) -> None:
        profile = customer(consent_calls=False)
        assert decide(active, profile, Channel.AGENT_DESKTOP).action_ids == ("card-help", "rates")

    def test_a_lost_customer_who_calls_in_gets_service_and_no_marketing(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(stage="lost"), Channel.AGENT_DESKTOP, Direction.INBOUND)
        assert result.action_ids == ("card-help",)
        assert drops(result) == {
            "rates": ("suppression", "lost-marketing"),
            "thanks": ("suppression", "lost-marketing"),
        }

    def test_a_direction_scoped_suppression_stops_every_outbound_contact(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(stage="lost"), Channel.OUTBOUND_DIALER)
        assert result.action_ids == ()
        assert drops(result)["card-help"] == ("suppression", "lost-outbound")

    def test_a_direction_scoped_cap_counts_only_contacts_in_that_direction(self, active: ActiveRuleset) -> None:
        inbound_talk = contact("thanks", timedelta(days=3), direction=Direction.INBOUND)
        outbound_call = contact("thanks", timedelta(days=3), direction=Direction.OUTBOUND)
        unknown_desktop = contact("thanks", timedelta(days=3))  # history before directions: desktop = inbound
        for history, capped in ((inbound_talk, False), (unknown_desktop, False), (outbound_call, True)):
            result = decide(active, customer(history), Channel.AGENT_DESKTOP, Direction.OUTBOUND)
            assert ("rates" not in result.action_ids) is capped, history
            # An inbound decision is never held back by the outbound cap.
            assert "rates" in decide(active, customer(history), Channel.AGENT_DESKTOP, Direction.INBOUND).action_ids

    def test_dialer_history_counts_as_outbound(self, active: ActiveRuleset) -> None:
        call = contact("thanks", timedelta(days=3), channel=Channel.OUTBOUND_DIALER)
        result = decide(active, customer(call), Channel.AGENT_DESKTOP, Direction.OUTBOUND)
        assert drops(result)["rates"] == ("frequency_cap", "outbound-marketing-weekly")


class TestConstraints:
    def test_two_declines_pause_that_offer_only(self, active: ActiveRuleset) -> None:
        declines = [contact("rates", timedelta(days=d), OutcomeKind.DECLINED) for d in (10, 80)]
        result = decide(active, customer(*declines), Channel.AGENT_DESKTOP)
        assert drops(result)["rates"] == ("constraint", "two-declines")
        assert "thanks" in result.action_ids

    def test_declines_outside_the_window_do_not_count(self, active: ActiveRuleset) -> None:
        declines = [contact("rates", timedelta(days=d), OutcomeKind.DECLINED) for d in (10, 91)]
        assert "rates" in decide(active, customer(*declines), Channel.AGENT_DESKTOP).action_ids

    def test_declines_across_the_scope_pause_the_whole_scope(self, active: ActiveRuleset) -> None:
        declines = [
            contact("rates", timedelta(days=5), OutcomeKind.DECLINED),
            contact("thanks", timedelta(days=6), OutcomeKind.DECLINED),
            contact("thanks", timedelta(days=20), OutcomeKind.DECLINED),
        ]
        result = decide(active, customer(*declines), Channel.AGENT_DESKTOP)
        assert result.action_ids == ("card-help",)
        assert drops(result)["rates"] == ("constraint", "three-declines-all")

    def test_not_now_defers_without_counting_as_a_decline(self, active: ActiveRuleset) -> None:
        recent = decide(
            active, customer(contact("rates", timedelta(days=13), OutcomeKind.NOT_NOW)), Channel.AGENT_DESKTOP
        )
        assert drops(recent)["rates"] == ("constraint", "not-now")
        history = [contact("rates", timedelta(days=d), OutcomeKind.NOT_NOW) for d in (20, 30, 40)]
        history.append(contact("rates", timedelta(days=50), OutcomeKind.DECLINED))
        assert "rates" in decide(active, customer(*history), Channel.AGENT_DESKTOP).action_ids

    def test_unanswered_calls_pause_the_dialer_for_service_too(self, active: ActiveRuleset) -> None:
        calls = [contact("thanks", timedelta(days=d), OutcomeKind.NO_ANSWER, Channel.OUTBOUND_DIALER) for d in (1, 2)]
        dialer = decide(active, customer(*calls), Channel.OUTBOUND_DIALER)
        assert dialer.action_ids == ()
        assert drops(dialer)["card-help"] == ("constraint", "no-answers")
        # The pause is the dialer's: an agent answering the customer's call still helps.
        assert "card-help" in decide(active, customer(*calls), Channel.AGENT_DESKTOP).action_ids

    def test_several_outcomes_of_one_offer_are_one(self, active: ActiveRuleset) -> None:
        first = contact("rates", timedelta(days=10), OutcomeKind.DECLINED)
        again = dataclasses.replace(first, time=NOW - timedelta(days=9))
        assert "rates" in decide(active, customer(first, again), Channel.AGENT_DESKTOP).action_ids


class TestMandatory:
    def test_a_mandatory_notice_ranks_first_and_is_recorded_as_mandatory(self, active: ActiveRuleset) -> None:
        result = decide(active, customer(notice_due=True), Channel.AGENT_DESKTOP)
        assert result.action_ids == ("notice", "card-help")  # then all-daily (2 a day) is reached
        assert [a.mandatory for a in result.actions] == [True, False]

    def test_it_skips_shared_caps_and_pauses_and_suppressions(self, active: ActiveRuleset) -> None:
        busy = [contact("card-help", timedelta(hours=h)) for h in (1, 2)]  # all-daily reached
        result = decide(active, customer(*busy, notice_due=True, stage="lost"), Channel.OUTBOUND_DIALER)
        assert drops(result)["card-help"] == ("suppression", "lost-outbound")
        assert result.action_ids == ("notice",)

    def test_a_cap_that_names_it_limits_its_repeats(self, active: ActiveRuleset) -> None:
        told = contact("notice", timedelta(days=3))
        result = decide(active, customer(told, notice_due=True), Channel.AGENT_DESKTOP)
        assert drops(result)["notice"] == ("frequency_cap", "notice-once")

    def test_it_counts_toward_the_caps_of_what_follows(self, active: ActiveRuleset) -> None:
        one = contact("rates", timedelta(hours=3))
        result = decide(active, customer(one, notice_due=True), Channel.AGENT_DESKTOP)
        assert result.action_ids == ("notice",)
        assert drops(result)["card-help"][0] == "frequency_cap"

    def test_it_never_skips_do_not_call_consent_or_a_listing(self, active: ActiveRuleset) -> None:
        on_register = decide(active, customer(notice_due=True, dnc=True), Channel.OUTBOUND_DIALER)
        assert drops(on_register)["notice"] == ("do_not_call", "do_not_call")
        no_consent = decide(active, customer(notice_due=True, consent_calls=False), Channel.OUTBOUND_DIALER)
        assert drops(no_consent)["notice"][0] == "no_consent"
        listed = (DoNotContact(None, DoNotContactReason.REGULATOR_LIST, "tps", NOW - timedelta(days=1)),)
        result = decide(active, customer(notice_due=True, listings=listed), Channel.OUTBOUND_DIALER)
        assert drops(result)["notice"] == ("do_not_contact", "do_not_contact")


class TestDoNotContact:
    def listing(self, channel: Channel | None, expires: timedelta | None = None) -> DoNotContact:
        return DoNotContact(
            channel,
            DoNotContactReason.BEREAVEMENT,
            "branch",
            NOW - timedelta(days=2),
            None if expires is None else NOW + expires,
            "compliance@bank",
        )

    def test_a_listing_stops_outbound_contact_on_its_channel_and_says_why(self, active: ActiveRuleset) -> None:
        profile = customer(listings=(self.listing(Channel.OUTBOUND_DIALER),))
        dialer = decide(active, profile, Channel.OUTBOUND_DIALER)
        assert dialer.action_ids == ()
        assert {d.reason for d in dialer.dropped} == {"do_not_contact"}
        assert dialer.dropped[0].detail == "listed (bereavement)"  # the free-text source stays in the register
        assert decide(active, profile, Channel.AGENT_DESKTOP, Direction.OUTBOUND).action_ids != ()

    def test_a_listing_for_every_channel_stops_an_agent_calling_out_but_not_one_answering(
        self, active: ActiveRuleset
    ) -> None:
        profile = customer(listings=(self.listing(None),))
        assert decide(active, profile, Channel.AGENT_DESKTOP, Direction.OUTBOUND).action_ids == ()
        assert decide(active, profile, Channel.AGENT_DESKTOP, Direction.INBOUND).action_ids[0] == "card-help"

    def test_an_expired_listing_no_longer_applies(self, active: ActiveRuleset) -> None:
        live = customer(listings=(self.listing(None, timedelta(minutes=1)),))
        expired = customer(listings=(self.listing(None, timedelta(0)),))
        assert decide(active, live, Channel.OUTBOUND_DIALER).action_ids == ()
        assert decide(active, expired, Channel.OUTBOUND_DIALER).action_ids != ()

    def test_listings_are_kept_in_the_decision_inputs(self) -> None:
        profile = customer(listings=(self.listing(Channel.OUTBOUND_DIALER, timedelta(days=3)),))
        inputs = DecisionInputs(profile, 3)
        assert DecisionInputs.from_json(inputs.to_json()) == inputs


class TestPendingCalls:
    def test_an_exported_call_counts_until_its_window_closes(self, active: ActiveRuleset) -> None:
        pending = [
            contact(
                "card-help",
                timedelta(hours=h),
                OutcomeKind.NOT_OFFERED,
                Channel.OUTBOUND_DIALER,
                None,
                NOW + timedelta(hours=1),
            )
            for h in (1, 2)
        ]
        assert decide(active, customer(*pending), Channel.OUTBOUND_DIALER).action_ids == ()
        closed = [dataclasses.replace(c, pending_until=NOW) for c in pending]
        assert decide(active, customer(*closed), Channel.OUTBOUND_DIALER).action_ids != ()

    def test_a_pending_call_has_no_outcome_for_a_constraint_to_count(self) -> None:
        paused_on_not_offered = reference_active(
            load_ruleset_text(RULESET.replace("outcomes: [no_answer], after: 2", "outcomes: [not_offered], after: 1"))
        )
        pending = contact(
            "thanks", timedelta(days=2), OutcomeKind.NOT_OFFERED, Channel.OUTBOUND_DIALER, None, NOW - timedelta(days=1)
        )
        reported = dataclasses.replace(pending, pending_until=None)
        assert decide(paused_on_not_offered, customer(pending), Channel.OUTBOUND_DIALER).action_ids != ()
        assert decide(paused_on_not_offered, customer(reported), Channel.OUTBOUND_DIALER).action_ids == ()

    def test_pending_calls_are_kept_in_the_decision_inputs(self) -> None:
        pending = contact(
            "rates", timedelta(hours=1), OutcomeKind.NOT_OFFERED, Channel.OUTBOUND_DIALER, Direction.OUTBOUND, NOW
        )
        inputs = DecisionInputs(customer(pending), 3)
        assert DecisionInputs.from_json(inputs.to_json()) == inputs


def problems(text: str) -> list[str]:
    with pytest.raises(RulesetInvalid) as caught:
        load_ruleset_text(text)
    return [f"{p.where}: {p.problem}" for p in caught.value.ruleset_problems]


class TestLoaderErrors:
    def test_a_category_in_two_purposes_and_one_in_none(self) -> None:
        text = RULESET.replace("categories: [compliance]}", "categories: [compliance, service]}").replace(
            "categories: [upsell, loyalty]}", "categories: [upsell]}"
        )
        assert problems(text) == [
            "purposes.1.categories.1: category 'service' already belongs to purpose 'service'",
            "action 'thanks' category: category 'loyalty' belongs to no purpose; add it to one under purposes",
        ]

    def test_unknown_purposes_are_named_with_the_declared_ones(self) -> None:
        text = RULESET.replace("purposes: [marketing]}", "purposes: [marketting]}", 1).replace(
            "except_purposes: [service, compliance]", "except_purposes: [servce]"
        )
        assert problems(text) == [
            "policies.consent.0.purposes.0: purpose 'marketting' is not declared under purposes "
            "(service, compliance, marketing)",
            "policies.suppressions.1.except_purposes.0: purpose 'servce' is not declared under purposes "
            "(service, compliance, marketing)",
        ]

    def test_constraint_mistakes(self) -> None:
        text = RULESET.replace(
            "    - {id: not-now, per_action: true, outcomes: [not_now], after: 1, within: 14d}\n",
            "    - {id: not-now, action: rates, per_action: true, outcomes: [not_now], after: 1, within: 14d}\n"
            "    - {id: all-daily, outcomes: [maybe], after: 0, within: 1d}\n"
            "    - {id: both, action: rates, purpose: marketing, outcomes: [declined], after: 1, within: 0m}\n",
        )
        found = problems(text)
        assert (
            "policies.constraints.4.outcomes.0: 'maybe' is not one of ['accepted', 'declined', 'no_answer', "
            "'converted', 'callback_requested', 'not_offered', 'not_now']" in found
        )
        assert "policies.constraints.4.after: 0 is less than the minimum of 1" in found

    def test_semantic_constraint_mistakes(self) -> None:
        text = RULESET.replace(
            "    - {id: not-now, per_action: true, outcomes: [not_now], after: 1, within: 14d}\n",
            "    - {id: not-now, action: rates, per_action: true, outcomes: [not_now], after: 1, within: 14d}\n"
            "    - {id: all-daily, outcomes: [declined], after: 1, within: 1d}\n"
            "    - {id: both, action: rates, purpose: marketing, outcomes: [declined], after: 1, within: 0m}\n",
        )
        assert problems(text) == [
            "policies.constraints.3.per_action: per_action counts each action apart; one action needs no more",
            "policies.constraints.4.id: id 'all-daily' is already a frequency cap's id",
            "policies.constraints.5: give one of action, category or purpose, not more",
            "policies.constraints.5.within: the window must be longer than zero",
        ]

    def test_a_dialer_is_never_inbound_in_the_model(self) -> None:
        from nba_service.domain.model import direction_fits

        assert not direction_fits(Channel.OUTBOUND_DIALER, Direction.INBOUND)
        assert direction_fits(Channel.AGENT_DESKTOP, Direction.OUTBOUND)

    def test_the_old_consent_map_still_means_every_purpose(self) -> None:
        old = load_ruleset_text(
            RULESET.replace(
                """  consent:
    - {field: consent_offers, channel: agent_desktop, purposes: [marketing]}
    - {field: consent_calls, channel: agent_desktop, purposes: [marketing], directions: [outbound]}
    - {field: consent_calls, channel: outbound_dialer, purposes: [marketing, compliance]}
""",
                "  consent: {agent_desktop: consent_offers, outbound_dialer: consent_calls}\n",
            )
        )
        result = evaluate(reference_active(old), customer(consent_calls=False), Channel.OUTBOUND_DIALER, NOW, 5)
        assert result.action_ids == ()
        assert {d.policy for d in result.dropped} == {"consent:outbound_dialer"}
