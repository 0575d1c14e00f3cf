"""A realistic report for the HTML tests and the README's screenshot: a small simulated quarter of decisions.

Customers are shown or held out of actions of the bundled ruleset (with holdouts added, as a programme that
measures would declare them), convert at known rates with a known effect of being shown, and agents record
outcomes on the offers. The counts go through `domain.measurement.measure` and `cycle_times`, the reference every
store is held to, so the report is built exactly as `nba report` builds it from a store.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.measurement import (
    Exposure,
    Measurements,
    MeasureQuery,
    ObservedConversion,
    RecordedOutcome,
    TriggerEvent,
    conversion_defs,
    cycle_times,
    measure,
    trigger_lifetimes,
)
from nba_service.domain.model import Ruleset
from nba_service.review.report import Report, build_report

RULESET_PATH = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"
SINCE = datetime(2026, 9, 1, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)

# action: (holdout, customers, conversion rate when held out, added by being shown)
SIMULATED = {
    "term-deposit-rates": (0.10, 2600, 0.040, 0.050),
    "savings-from-deposit": (0.10, 1800, 0.060, 0.010),
    "credit-card-offer": (0.10, 2400, 0.030, 0.030),
    "card-offer-analytics": (0.10, 1500, 0.035, -0.005),
    "premier-upgrade": (0.10, 1200, 0.010, 0.020),
    "referral-ask": (0.10, 1600, 0.020, 0.025),
    "referral-after-survey": (0.10, 900, 0.030, 0.020),
    "mortgage-consultation": (0.05, 400, 0.010, 0.010),
    "salary-rise-savings-plan": (0.0, 700, 0.050, 0.020),
    "savings-account-offer": (0.0, 1100, 0.040, 0.010),
    "card-abroad-unblock": (0.0, 500, 0.0, 0.0),
    "complaint-acknowledge": (0.0, 300, 0.0, 0.0),
}
SCALE = 2
STAGES = ("welcome", "maintenance", "maintenance", "rescue", None)


def ruleset_with_holdouts() -> Ruleset:
    ruleset = load_ruleset_file(RULESET_PATH)
    actions = dict(ruleset.actions)
    for action_id, (holdout, *_) in SIMULATED.items():
        actions[action_id] = dataclasses.replace(actions[action_id], holdout=holdout)
    return dataclasses.replace(ruleset, actions=actions)


def simulated_report(seed: int = 14) -> Report:
    ruleset = ruleset_with_holdouts()
    query = MeasureQuery(SINCE, UNTIL, ruleset.meta.name, conversion_defs(ruleset))
    rng = random.Random(seed)
    rules: dict[str, list[str]] = {}
    for rule in ruleset.rules:
        rules.setdefault(rule.action, []).append(rule.id)
    exposures: list[Exposure] = []
    conversions: list[ObservedConversion] = []
    outcomes: list[RecordedOutcome] = []
    triggers: list[TriggerEvent] = []
    span = (UNTIL - SINCE).total_seconds()
    for action_id, (holdout, customers, base, lift) in SIMULATED.items():
        action = ruleset.actions[action_id]
        within = query.within(action_id)
        for n in range(customers * SCALE):
            customer = f"c{rng.randrange(40_000):05d}-{action_id[:3]}{n}"
            held = rng.random() < holdout
            first = SINCE + timedelta(seconds=rng.uniform(0, span))
            if action.trigger is not None:
                delay = timedelta(hours=rng.lognormvariate(0.5, 1.1))
                triggers.append(TriggerEvent(customer, action.trigger.event, first - delay))
            times = [first] + ([first + timedelta(days=rng.uniform(1, 20))] if rng.random() < 0.2 else [])
            stage = rng.choice(STAGES)
            channel = "outbound_dialer" if rng.random() < 0.3 else "agent_desktop"
            rule = rng.choice(rules[action_id])
            converted = first + within * rng.random() if rng.random() < base + (0 if held else lift) else None
            if converted is not None:
                conversions.append(ObservedConversion(customer, action_id, converted))
            for index, at in enumerate(times):
                version = "1.2.0" if at < SINCE + timedelta(days=35) else "1.3.0"
                decision = f"d-{customer}-{index}"
                exposures.append(
                    Exposure(
                        decision, action_id, held, customer, at, rule, channel, None, ruleset.meta.name, version, stage
                    )
                )
                if not held:
                    offer = RecordedOutcome(decision, customer, action_id, "", at)
                    outcomes += _outcomes(rng, offer, converted, 0.01 if base else 0.0)
    for _ in range(600):  # triggers that never became an offer
        event = rng.choice(["large_deposit", "card_declined_abroad", "complaint_opened", "survey_completed"])
        triggers.append(
            TriggerEvent(f"q{rng.randrange(10**6)}", event, SINCE + timedelta(seconds=rng.uniform(0, span)))
        )
    cells = measure(query, exposures, conversions, outcomes)
    cycles = cycle_times(query, trigger_lifetimes(ruleset), triggers, exposures)
    measurements = Measurements(cells, tuple(cycles), len(exposures))
    return build_report(ruleset, query, measurements, UNTIL + timedelta(hours=7))


def _outcomes(
    rng: random.Random, offer: RecordedOutcome, converted: datetime | None, agent_only: float
) -> list[RecordedOutcome]:
    """What an agent records on a delivered offer: often nothing; `converted` mostly when the customer did."""
    draw = rng.random()
    if converted is not None and converted >= offer.time:
        draw *= 0.3
    outcome = "accepted" if draw < 0.28 else "declined" if draw < 0.6 else "not_now" if draw < 0.7 else None
    if outcome is None:
        return []
    found = [dataclasses.replace(offer, outcome=outcome)]
    if outcome == "accepted" and ((converted is not None and rng.random() < 0.5) or rng.random() < agent_only):
        found.append(dataclasses.replace(offer, outcome="converted", time=converted or offer.time))
    return found
