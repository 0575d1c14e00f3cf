"""`nba rulesets starved`, the pure part: who is left with nothing to be offered, and what blocked them.

A contact-centre manager's question is not "why was this customer refused" (explain answers that) but
"which cap or rule is starving my desk". So over a population each customer's evaluation on each channel is
reduced to: offered something, matched no rule at all, or matched rules whose every candidate some policy (or
a missing trigger, or a channel without a script) dropped; the blockers are counted per customer, with how
many customers that blocker alone starved. Counting is kept apart from deciding, as in `review.diff`: the
evaluations come from the one pipeline, run by `review.simulate`, and these tallies add up across processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import ActiveRuleset, Evaluation, evaluate
from nba_service.domain.records import DroppedCandidate, RulesetRef
from nba_service.review.population import Chunk, chunk_profiles
from nba_service.review.simulate import desk_direction

STARVED_FORMAT = "nba.rulesets-starved/1"
EXAMPLES = 5
NO_RULE = "no_rule"


def blocker_of(dropped: DroppedCandidate) -> str:
    """The contact policy that dropped a candidate (its id), or the plain reason when no policy did."""
    return dropped.policy or dropped.reason


@dataclass(slots=True)
class Blocker:
    """One policy (or reason) that dropped candidates of starved customers."""

    id: str
    reason: str
    customers: int = 0
    alone: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def merge(self, other: Blocker) -> None:
        self.customers += other.customers
        self.alone += other.alone
        self.rules.update(other.rules)
        self.examples = sorted({*self.examples, *other.examples})[:EXAMPLES]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "customers": self.customers,
            "alone": self.alone,
            "rules": [{"rule_id": rule, "customers": count} for rule, count in _ranked(self.rules)],
            "examples": list(self.examples),
        }


@dataclass(slots=True)
class ChannelStarvation:
    channel: Channel
    customers: int = 0
    offered: int = 0
    no_rule: int = 0
    no_rule_examples: list[str] = field(default_factory=list)
    blockers: dict[str, Blocker] = field(default_factory=dict)

    @property
    def starved(self) -> int:
        return self.customers - self.offered

    def add(self, customer_id: str, evaluation: Evaluation) -> None:
        self.customers += 1
        if evaluation.actions:
            self.offered += 1
            return
        if not evaluation.rules_fired:
            self.no_rule += 1
            if len(self.no_rule_examples) < EXAMPLES:
                self.no_rule_examples.append(customer_id)
            return
        by_blocker: dict[str, set[str]] = {}
        reasons: dict[str, str] = {}
        for dropped in evaluation.dropped:
            key = blocker_of(dropped)
            by_blocker.setdefault(key, set()).add(dropped.rule_id)
            reasons.setdefault(key, dropped.reason)
        for key, rules in by_blocker.items():
            blocker = self.blockers.get(key)
            if blocker is None:
                blocker = self.blockers[key] = Blocker(key, reasons[key])
            blocker.customers += 1
            blocker.alone += len(by_blocker) == 1
            blocker.rules.update(rules)
            if len(blocker.examples) < EXAMPLES:
                blocker.examples.append(customer_id)

    def merge(self, other: ChannelStarvation) -> None:
        self.customers += other.customers
        self.offered += other.offered
        self.no_rule += other.no_rule
        self.no_rule_examples = sorted({*self.no_rule_examples, *other.no_rule_examples})[:EXAMPLES]
        for key, blocker in other.blockers.items():
            if key in self.blockers:
                self.blockers[key].merge(blocker)
            else:
                self.blockers[key] = blocker

    def ranked(self) -> list[Blocker]:
        """Most customers first; ties by id, so reports are stable."""
        return sorted(self.blockers.values(), key=lambda b: (-b.customers, -b.alone, b.id))

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel.value,
            "customers": self.customers,
            "offered": self.offered,
            "starved": self.starved,
            "no_rule": {"customers": self.no_rule, "examples": list(self.no_rule_examples)},
            "blockers": [b.to_json() for b in self.ranked()],
        }


Tally = tuple[int, dict[Channel, ChannelStarvation]]


def merge_tallies(into: dict[Channel, ChannelStarvation], more: Mapping[Channel, ChannelStarvation]) -> None:
    for channel, starvation in more.items():
        into[channel].merge(starvation)


@dataclass(frozen=True, slots=True)
class Starving:
    """One ruleset loaded into the engine in one process, tallying chunks (`review.simulate.Loaded`)."""

    active: ActiveRuleset
    channels: tuple[Channel, ...]
    now: datetime
    limit: int
    desk: Direction = Direction.INBOUND

    @classmethod
    def load(
        cls,
        ruleset: Ruleset,
        channels: tuple[Channel, ...],
        now: datetime,
        limit: int,
        desk: Direction = Direction.INBOUND,
    ) -> Starving:
        from nba_service.app import activate  # noqa: PLC0415 - durable_rules only where decisions are made

        return cls(activate(ruleset), channels, now, limit, desk)

    def close(self) -> None:
        self.active.engine.close()

    def tally(self, chunk: Chunk) -> Tally:
        starvation = {channel: ChannelStarvation(channel) for channel in self.channels}
        customers = 0
        for profile in chunk_profiles(chunk, self.now):
            customers += 1
            for channel, counts in starvation.items():
                way = desk_direction(channel, self.desk)
                counts.add(
                    profile.customer_id,
                    evaluate(self.active, profile, channel, self.now, self.limit, direction=way),
                )
        return customers, starvation


@dataclass(frozen=True, slots=True)
class StarvedReport:
    ruleset: RulesetRef
    population: str
    customers: int
    at: datetime
    limit: int
    channels: tuple[ChannelStarvation, ...]
    seconds: float
    workers: int
    desk: Direction = Direction.INBOUND

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STARVED_FORMAT,
            "ruleset": {"name": self.ruleset.name, "version": self.ruleset.version, "hash": self.ruleset.hash},
            "population": self.population,
            "customers": self.customers,
            "at": self.at.isoformat(),
            "limit": self.limit,
            "desk_direction": self.desk.value,
            "channels": [c.to_json() for c in self.channels],
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
        }


def _ranked(counts: Counter[str]) -> Iterable[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
