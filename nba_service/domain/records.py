"""What a decision leaves behind: the answer for the caller and the record for auditors.

The record keeps what the answer must not show (the profile values each rule read, dropped candidates
and why) so a reviewer can explain any past decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from nba_service.domain.model import Channel


@dataclass(frozen=True, slots=True)
class DecidedAction:
    action_id: str
    script: str
    priority: int
    category: str
    reason: str
    rule_id: str
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class RulesetRef:
    name: str
    version: str
    hash: str


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    decided_at: datetime
    customer_id: str
    channel: Channel
    actions: tuple[DecidedAction, ...]
    ruleset: RulesetRef


@dataclass(frozen=True, slots=True)
class FiredRule:
    rule_id: str
    action_id: str
    priority: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DroppedCandidate:
    rule_id: str
    action_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision_id: str
    decided_at: datetime
    customer_id: str
    channel: Channel
    ruleset: RulesetRef
    engine: str
    rules_fired: tuple[FiredRule, ...]
    dropped: tuple[DroppedCandidate, ...]
    actions: tuple[DecidedAction, ...]
    latency_ms: float
    context_reason: str = ""
    context: dict[str, str] = field(default_factory=dict)
    profile_problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = "decision"
        data["decided_at"] = self.decided_at.isoformat()
        data["channel"] = self.channel.value
        for action in data["actions"]:
            action["valid_until"] = action["valid_until"].isoformat()
        return data

    def summary(self) -> DecisionSummary:
        return DecisionSummary(
            self.decision_id, self.customer_id, self.channel, tuple(a.action_id for a in self.actions), self.decided_at
        )


@dataclass(frozen=True, slots=True)
class DecisionSummary:
    """What an outcome needs to know about the decision it answers."""

    decision_id: str
    customer_id: str
    channel: Channel
    action_ids: tuple[str, ...]
    decided_at: datetime
