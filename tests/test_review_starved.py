"""`nba rulesets starved`, the report's words for the blockers the contact policy model adds: a constraint, a
consent entry scoped to a purpose (and split by direction), and the service's own do-not-contact listings. The
blockers come from real evaluations by the one pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nba_service.domain.holdout import is_held_out
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.profile import Contact, DoNotContact, DoNotContactReason, OutcomeKind, Profile
from nba_service.review.diff import ref
from nba_service.review.starved import ChannelStarvation, StarvedReport
from nba_service.review.starved_report import describe, render_text

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RULESET = """\
ruleset: {name: starved-model, version: 1.0.0, owner: Conduct, description: Blockers of the policy model}
fields:
  - {name: consent_marketing, type: boolean}
  - {name: consent_marketing_calls, type: boolean}
purposes:
  - {id: marketing, description: Selling, categories: [cross_sell]}
  - {id: retention, description: Keeping customers, categories: [retention]}
actions:
  - {id: savings-offer, category: cross_sell, scripts: {agent_desktop: Savings., outbound_dialer: Savings.}}
rules:
  - {id: savings, description: d, reason: Save, priority: 50, action: savings-offer,
     when: {all: [{field: consent_marketing, op: exists}]}}
policies:
  consent:
    - {field: consent_marketing, channel: agent_desktop, purposes: [marketing, retention], directions: [inbound]}
    - {field: consent_marketing_calls, channel: agent_desktop, purposes: [marketing, retention], directions: [outbound]}
  constraints:
    - {id: two-declines, purpose: marketing, outcomes: [declined, not_now], after: 2, within: 90d}
    - {id: unanswered, channel: outbound_dialer, outcomes: [no_answer], after: 3, within: 7d,
       description: Stop calling a number nobody answers}
"""


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET)


def starvation(ruleset: Ruleset, channel: Channel, direction: Direction, *profiles: Profile) -> ChannelStarvation:
    tally = ChannelStarvation(channel)
    for profile in profiles:
        tally.add(
            profile.customer_id, evaluate(reference_active(ruleset), profile, channel, NOW, 3, direction=direction)
        )
    return tally


def contacts(outcome: OutcomeKind, *days: int) -> tuple[Contact, ...]:
    return tuple(
        Contact("savings-offer", Channel.OUTBOUND_DIALER, NOW - timedelta(days=d), outcome, f"d{d}") for d in days
    )


def test_each_new_blocker_reads_well(ruleset: Ruleset) -> None:
    listed = DoNotContact(Channel.OUTBOUND_DIALER, DoNotContactReason.CUSTOMER_REQUEST, "crm", NOW - timedelta(days=1))
    dialer = starvation(
        ruleset,
        Channel.OUTBOUND_DIALER,
        Direction.OUTBOUND,
        Profile("C1", {"consent_marketing": True}, (), contacts(OutcomeKind.NO_ANSWER, 1, 2, 3)),
        Profile("C2", {"consent_marketing": True}, (), contacts(OutcomeKind.DECLINED, 10, 20)),
        Profile("C3", {"consent_marketing": True}, do_not_contact=(listed,)),
    )
    desk = starvation(
        ruleset,
        Channel.AGENT_DESKTOP,
        Direction.OUTBOUND,
        Profile("C4", {"consent_marketing": True, "consent_marketing_calls": False}),
    )
    words = {b.id: describe(b, ruleset) for tally in (dialer, desk) for b in tally.ranked()}
    assert words == {
        "unanswered": "paused after 3 no answer within 7 days: Stop calling a number nobody answers",
        "two-declines": "paused after 2 declined or not now within 90 days",
        "do_not_contact": (
            "listed as do-not-contact on this channel (customer request, regulator list, bereavement or "
            "vulnerability); kept by the service, not the ruleset"
        ),
        "consent:marketing+retention:agent_desktop:outbound": (
            "consent_marketing_calls is not true (no marketing or retention consent for agent_desktop)"
        ),
    }


def test_long_ids_keep_the_columns_aligned(ruleset: Ruleset) -> None:
    desk = starvation(ruleset, Channel.AGENT_DESKTOP, Direction.INBOUND, Profile("C5", {"consent_marketing": False}))
    report = StarvedReport(ref(ruleset), "one customer", 1, NOW, 3, (desk,), 0.1, 1)
    [line] = [line for line in render_text(report, ruleset).splitlines() if "consent:" in line]
    # The id is longer than the usual column: the numbers move right together rather than run into it.
    assert line.startswith(
        "    consent:marketing+retention:agent_desktop:inbound       1  alone       1  consent_marketing is not true"
    )


def test_a_customer_held_out_of_their_only_offer_is_starved_by_the_holdout() -> None:
    held = load_ruleset_text(RULESET + "holdouts:\n  shares: [{action: savings-offer, share: 0.5}]\n")
    action = held.actions["savings-offer"]
    customer = next(
        f"C{n}" for n in range(100) if is_held_out(held.holdouts, f"C{n}", action, NOW)
    )  # the draw decides who, so the test asks it rather than naming a customer
    desk = starvation(held, Channel.AGENT_DESKTOP, Direction.INBOUND, Profile(customer, {"consent_marketing": True}))
    assert desk.starved == 1
    [blocker] = desk.ranked()
    assert (blocker.id, describe(blocker, held)) == (
        "held_out",
        "in the action's holdout (drawn at random, to measure what the action adds)",
    )
