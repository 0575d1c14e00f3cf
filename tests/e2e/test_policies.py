"""Contact policies seen from outside: consent, do-not-call, quiet hours and suppressions, with the decision
log saying why each matching rule produced nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from nba_service.domain.facts import project
from nba_service.domain.model import Channel
from nba_service.domain.policy import in_quiet_hours
from nba_service.domain.profile import Profile
from tests.e2e._support import Oracle, ServerHandle, ids, response_ids, utcnow

pytestmark = pytest.mark.e2e


def _fired_actions(oracle: Oracle, server: ServerHandle, customer_id: str) -> set[str] | None:
    """Actions whose rules match before any policy (per the reference evaluator), or None if that may change
    between the server's start and a call in the next 90 s."""
    now = utcnow()
    results = []
    for anchor, moment in (
        (server.ready_at, now),
        (server.spawned_at - timedelta(seconds=1), now + timedelta(seconds=90)),
    ):
        facts = project(oracle.ruleset, oracle.profiles(anchor)[customer_id], moment).facts
        results.append({oracle.ruleset.rules[i].action for i in oracle.reference.evaluate(facts)})
    return results[0] if results[0] == results[1] else None


def _quiet_now(oracle: Oracle, profile: Profile) -> bool:
    quiet = oracle.ruleset.policies.quiet_hours
    assert quiet is not None
    now = utcnow()
    return all(in_quiet_hours(quiet, profile, now + timedelta(seconds=s)) for s in (-5, 0, 90))


SCENARIOS: dict[str, tuple[Channel, Callable[[Oracle, Profile], bool], str]] = {
    "do_not_call": (
        Channel.OUTBOUND_DIALER,
        lambda o, p: p.attributes.get("do_not_call") is True and p.attributes.get("consent_marketing_calls") is True,
        "do_not_call",
    ),
    "no_dialer_consent": (
        Channel.OUTBOUND_DIALER,
        lambda o, p: p.attributes.get("consent_marketing_calls") is not True,
        "no_consent",
    ),
    "no_agent_consent": (
        Channel.AGENT_DESKTOP,
        lambda o, p: p.attributes.get("consent_agent_offers") is not True,
        "no_consent",
    ),
    "quiet_hours": (
        Channel.OUTBOUND_DIALER,
        lambda o, p: (
            p.attributes.get("consent_marketing_calls") is True
            and p.attributes.get("do_not_call") is False
            and _quiet_now(o, p)
        ),
        "quiet_hours",
    ),
    "lost_customer": (
        Channel.AGENT_DESKTOP,
        lambda o, p: p.attributes.get("stage") == "lost" and p.attributes.get("consent_agent_offers") is True,
        "suppression",
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_blocked_customer_gets_nothing_and_the_log_says_why(
    server: ServerHandle, oracle: Oracle, scenario: str
) -> None:
    """A customer whose rules match but who is on the do-not-call register or inside the dialer quiet hours, or
    whose matching rules are all marketing while they have not consented to marketing on the channel or are
    lost, gets no action; the decision log lists every matching rule as dropped for that reason."""
    channel, applies, reason = SCENARIOS[scenario]
    for profile in oracle.customers(server.ready_at):
        if not applies(oracle, profile):
            continue
        fired = _fired_actions(oracle, server, profile.customer_id)
        expected = oracle.stable(server, profile.customer_id, channel)
        if not fired or expected is None:
            continue
        if reason in ("no_consent", "suppression") and _purposes(oracle, fired) != {"marketing"}:
            continue  # service and compliance need no marketing consent and reach lost customers
        assert expected == [], f"{profile.customer_id}: the oracle itself offers {ids(expected)}"
        response = server.decide(profile.customer_id, channel, max_actions=20)
        assert response_ids(response) == []
        record = server.wait_for_decisions([response.decision_id])[response.decision_id]
        assert record["rules_fired"], "the rules that matched are not recorded"
        assert {f["action_id"] for f in record["rules_fired"]} == fired
        assert {d["reason"] for d in record["dropped"]} == {reason}, record["dropped"]
        if scenario == "lost_customer":
            assert all(d["detail"].startswith("lost-customers") for d in record["dropped"])
        return
    if scenario == "quiet_hours":
        pytest.skip("no dialer-eligible customer with matching rules is inside quiet hours right now")
    pytest.fail(f"no sample customer fits the {scenario} scenario")


def _purposes(oracle: Oracle, actions: set[str]) -> set[str]:
    return {oracle.ruleset.actions[a].purpose for a in actions}


@pytest.mark.parametrize("scenario", ["no_dialer_consent", "lost_customer"])
def test_service_and_compliance_still_reach_customers_without_marketing_consent_or_lost(
    server: ServerHandle, oracle: Oracle, scenario: str
) -> None:
    """Consent is per purpose and the lost-customers suppression stops marketing only: a customer without
    marketing consent, or a lost customer who calls in, still gets the service and compliance actions their
    rules chose, and only the marketing ones are dropped, for that reason."""
    channel, applies, reason = SCENARIOS[scenario]
    for profile in oracle.customers(server.ready_at):
        if not applies(oracle, profile):
            continue
        fired = _fired_actions(oracle, server, profile.customer_id)
        expected = oracle.stable(server, profile.customer_id, channel)
        if not fired or expected is None or not expected or "marketing" not in _purposes(oracle, fired):
            continue
        response = server.decide(profile.customer_id, channel, max_actions=20)
        assert response_ids(response) == ids(expected)
        assert _purposes(oracle, set(response_ids(response))) <= {"service", "compliance"}
        record = server.wait_for_decisions([response.decision_id])[response.decision_id]
        marketing = {d["reason"] for d in record["dropped"] if _purposes(oracle, {d["action_id"]}) == {"marketing"}}
        assert reason in marketing, record["dropped"]
        return
    pytest.fail(f"no sample customer with both service and marketing candidates fits the {scenario} scenario")


def test_vulnerable_customers_get_service_and_compliance_only(server: ServerHandle, oracle: Oracle) -> None:
    """Vulnerable customers are offered only service and compliance actions (starting with the support
    check); their sales rules that match are recorded as suppressed by vulnerable-no-sales."""
    checked = 0
    suppressed_sales = 0
    for profile in oracle.customers(server.ready_at):
        if (
            profile.attributes.get("vulnerable") is not True
            or profile.attributes.get("consent_agent_offers") is not True
        ):
            continue
        if profile.attributes.get("stage") == "lost":
            continue
        response = server.decide(profile.customer_id, Channel.AGENT_DESKTOP, max_actions=20)
        categories = {a.category for a in response.actions}
        assert categories <= {"service", "compliance"}, (profile.customer_id, categories)
        record = server.wait_for_decisions([response.decision_id])[response.decision_id]
        for dropped in record["dropped"]:
            action = oracle.ruleset.actions[dropped["action_id"]]
            if action.category not in {"service", "compliance"} and dropped["reason"] == "suppression":
                suppressed_sales += 1
                assert dropped["detail"].split(":")[0] in {
                    "vulnerable-no-sales",
                    "open-complaint-no-sales",
                    "fresh-complaint-no-sales",
                    "financial-difficulty-no-sales",
                }
        if response.actions and "vulnerable-support-check" in {f["action_id"] for f in record["rules_fired"]}:
            support = [a.action_id for a in response.actions]
            assert "vulnerable-support-check" in support or any(
                d["action_id"] == "vulnerable-support-check" and d["reason"] == "frequency_cap"
                for d in record["dropped"]
            )
        checked += 1
    assert checked >= 5
    assert suppressed_sales >= 1


def test_outbound_dialer_never_gets_agent_only_actions(server: ServerHandle, oracle: Oracle, ruleset_doc: Any) -> None:
    """Actions with no dialer script (vulnerable support check, fraud hand-over, app login help, hardship
    check, loyalty thanks) are never returned on OUTBOUND_DIALER; dialer-only analytics actions never on
    AGENT_DESKTOP."""
    agent_only = {a["id"] for a in ruleset_doc["actions"] if "outbound_dialer" not in a["scripts"]}
    dialer_only = {a["id"] for a in ruleset_doc["actions"] if "agent_desktop" not in a["scripts"]}
    assert agent_only
    assert dialer_only
    seen: dict[Channel, set[str]] = {c: set() for c in Channel}
    for number in range(1, 1001, 3):
        for channel in Channel:
            seen[channel] |= set(response_ids(server.decide(f"CUST-{number:06d}", channel, max_actions=20)))
    assert not seen[Channel.OUTBOUND_DIALER] & agent_only
    assert not seen[Channel.AGENT_DESKTOP] & dialer_only
    assert seen[Channel.AGENT_DESKTOP] & agent_only, "no agent-only action was offered at all: check the sample"
