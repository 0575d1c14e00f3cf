"""A random but reproducible history to measure: decision records (shown and held-out actions, undelivered
answers, other rulesets, two versions, journey stages), conversion and trigger events, and outcomes.

Every store loads it through its own public write paths, and its measurements must equal what the reference
definitions (`domain.measurement.measure` and `cycle_times`) make of the same history in memory.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from nba_service.domain.measurement import (
    Measurements,
    MeasureQuery,
    ObservedConversion,
    RecordedOutcome,
    TriggerEvent,
    conversion_defs,
    cycle_times,
    exposures_of,
    matching_actions,
    measure,
    trigger_lifetimes,
)
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.profile import Event, Outcome, OutcomeKind
from nba_service.domain.records import (
    DecidedAction,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    DroppedCandidate,
    RulesetRef,
)

SINCE = datetime(2031, 1, 1, tzinfo=UTC)
UNTIL = datetime(2031, 4, 1, tzinfo=UTC)
ACTIONS = (
    "term-deposit-rates",
    "savings-from-deposit",
    "credit-card-offer",
    "premier-upgrade",
    "referral-ask",
    "referral-after-survey",
    "complaint-acknowledge",
)
RULES = {action: (f"{action}-rule", f"{action}-other-rule") for action in ACTIONS}
STAGES = ("welcome", "maintenance", "rescue", None)
PRODUCTS = ("term_deposit", "savings", "credit_card", "premier", "mortgage")
TRIGGERS = ("large_deposit", "survey_completed", "complaint_opened", "salary_change")


class Sink(Protocol):
    async def write(self, records: list[DecisionRecord], updates: list[object]) -> None: ...


class Profiles(Protocol):
    async def add_event(self, customer_id: str, event: Event, recorded_by: str = "") -> str: ...

    async def add_outcome(self, outcome: Outcome) -> bool: ...


@dataclass
class History:
    ruleset: Ruleset
    records: list[DecisionRecord]
    events: list[tuple[str, Event]]
    outcomes: list[Outcome]

    def query(self, since: datetime = SINCE, until: datetime = UNTIL) -> MeasureQuery:
        return MeasureQuery(since, until, self.ruleset.meta.name, conversion_defs(self.ruleset))

    def expected(self, query: MeasureQuery) -> Measurements:
        delivered = [e for r in self.records if r.delivery is Delivery.SENT for e in exposures_of(r)]
        window = [
            e for e in delivered if query.since <= e.decided_at < query.until and e.ruleset_name == query.ruleset_name
        ]
        conversions = [
            ObservedConversion(customer, action, event.time)
            for customer, event in self.events
            for action in matching_actions(query.conversions, self.ruleset.events, event.type, event.attributes)
        ]
        outcomes = [
            RecordedOutcome(o.decision_id, o.customer_id, o.action_id, o.outcome.value, o.time)
            for o in self.outcomes
            if o.time >= query.since
        ]
        triggers = [TriggerEvent(customer, event.type, event.time) for customer, event in self.events]
        lifetimes = trigger_lifetimes(self.ruleset)
        return Measurements(
            measure(query, window, conversions, outcomes),
            tuple(cycle_times(query, lifetimes, triggers, window)),
            len(window),
        )

    async def load(self, sink: Sink, profiles: Profiles, *, late_deliveries: bool = False) -> None:
        """Records in batches of 50, in random order of time. `late_deliveries`: each undelivered record is first
        stored as sent and corrected in a later batch, as the server does when a call ends before its answer."""
        corrections: list[object] = []
        for start in range(0, len(self.records), 50):
            batch = self.records[start : start + 50]
            if late_deliveries:
                corrections += [
                    DeliveryUpdate(r.decision_id, r.delivery) for r in batch if r.delivery is not Delivery.SENT
                ]
                batch = [dataclasses.replace(r, delivery=Delivery.SENT) for r in batch]
            await sink.write(batch, corrections[:-3] if late_deliveries else [])
            corrections = corrections[-3:]
        if corrections:
            await sink.write([], corrections)
        for customer, event in self.events:
            await profiles.add_event(customer, event)
        for outcome in self.outcomes:
            await profiles.add_outcome(outcome)


def make_history(ruleset: Ruleset, customers: list[str], seed: int, decisions: int = 400) -> History:
    rng = random.Random(seed)
    span = (UNTIL - SINCE) + timedelta(days=30)
    ref = RulesetRef(ruleset.meta.name, ruleset.meta.version, "a" * 64)
    older = RulesetRef(ruleset.meta.name, "0.9.0", "b" * 64)
    other = RulesetRef("another-programme", "1.0.0", "c" * 64)

    def moment(start: datetime = SINCE - timedelta(days=15), width: timedelta = span) -> datetime:
        return start + timedelta(seconds=rng.randrange(int(width.total_seconds())), microseconds=rng.randrange(10**6))

    records: list[DecisionRecord] = []
    outcomes: list[Outcome] = []
    for _ in range(decisions):
        customer = rng.choice(customers)
        at = moment()
        chosen = rng.sample(ACTIONS, rng.randint(0, 3))
        shown = [a for a in chosen if rng.random() < 0.7]
        held = [a for a in chosen if a not in shown]
        if rng.random() < 0.1 and shown:
            held.append(shown[0])  # shown by one rule, held out by another: counts in both groups
        channel = rng.choice(list(Channel))
        record = DecisionRecord(
            decision_id=str(uuid.UUID(int=rng.getrandbits(128))),
            decided_at=at,
            customer_id=customer,
            channel=channel,
            ruleset=rng.choices([ref, older, other], [8, 2, 1])[0],
            engine="durable_rules",
            rules_fired=(),
            dropped=(
                *(
                    DroppedCandidate(rng.choice(RULES[a]), a, "held_out", f"in the holdout of {a}", "arbitration")
                    for a in held
                ),
                DroppedCandidate("cap-rule", "premier-upgrade", "frequency_cap", "capped", "policy", "cap"),
            ),
            actions=tuple(
                DecidedAction(
                    a, f"Script for {a}", 100 - i, "offer", "why", rng.choice(RULES[a]), at + timedelta(hours=4)
                )
                for i, a in enumerate(shown)
            ),
            latency_ms=1.0,
            delivery=rng.choices([Delivery.SENT, Delivery.DEADLINE_EXCEEDED, Delivery.CANCELLED], [12, 1, 1])[0],
            direction=Direction.INBOUND if channel is Channel.AGENT_DESKTOP else Direction.OUTBOUND,
            journey_stage=rng.choice(STAGES),
        )
        records.append(record)
        if rng.random() < 0.05:  # another decision for the customer at the very same moment
            twin = dataclasses.replace(
                record, decision_id=str(uuid.UUID(int=rng.getrandbits(128))), delivery=rng.choice(list(Delivery))
            )
            records.insert(rng.randrange(len(records)), twin)
        for action in shown:
            for _ in range(rng.choice([0, 0, 1, 1, 2])):
                kind = rng.choice(
                    [OutcomeKind.ACCEPTED, OutcomeKind.DECLINED, OutcomeKind.CONVERTED, OutcomeKind.NOT_NOW]
                )
                outcomes.append(
                    Outcome(
                        record.decision_id,
                        customer,
                        action,
                        channel,
                        kind,
                        at + timedelta(days=rng.choice([0, 1, 29, 31, 70]), seconds=rng.randrange(3600)),
                    )
                )
    events: list[tuple[str, Event]] = []
    for _ in range(decisions):
        customer = rng.choice(customers)
        at = moment()
        if rng.random() < 0.5:
            event = Event("product_opened", at, {"product": rng.choice(PRODUCTS)})
        elif rng.random() < 0.3:
            event = Event("referral_made", at, {"referred_product": "savings"})
        else:
            event = Event(rng.choice(TRIGGERS), at, {"amount": float(rng.randrange(1000, 90000))})
        events.append((customer, event))
    # Conversions right at the edges of a unit's window: at the first exposure (does not count), at its end (counts);
    # an agent's `converted` at the very moment of the offer counts.
    for record in records[:40]:
        for action in record.actions[:1]:
            outcomes.append(
                Outcome(
                    record.decision_id,
                    record.customer_id,
                    action.action_id,
                    record.channel,
                    OutcomeKind.CONVERTED,
                    record.decided_at + rng.choice([timedelta(0), timedelta(days=30)]),
                )
            )
        for action in record.actions:
            definition = ruleset.actions[action.action_id].conversion
            if definition is not None and definition.event == "product_opened":
                product = {"term-deposit-rates": "term_deposit", "credit-card-offer": "credit_card"}.get(
                    action.action_id, "savings"
                )
                edge = record.decided_at + rng.choice([timedelta(0), definition.within])
                events.append((record.customer_id, Event("product_opened", edge, {"product": product})))
    return History(ruleset, records, events, outcomes)
