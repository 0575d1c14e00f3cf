"""Explanations and decided actions as the wire carries them: shared by a dry-run `Decide` and `nba.v1.Review`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from nba_service._proto.nba.v1 import explain_pb2, nba_pb2
from nba_service.domain.model import Direction
from nba_service.domain.records import DecidedAction
from nba_service.domain.wording import value_text
from nba_service.review.explain import Explanation


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A proto Timestamp in UTC, for every message this service sends."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def value_json(value: Any) -> str:
    """A value read as JSON text, exactly (see explain.proto): floats in their shortest round-trip form,
    integers however large, null for a missing fact."""
    return json.dumps(value, ensure_ascii=False, default=str)


def action_message(action: DecidedAction) -> nba_pb2.Action:
    return nba_pb2.Action(
        action_id=action.action_id,
        script=action.script,
        priority=action.priority,
        category=action.category,
        reason=action.reason,
        rule_id=action.rule_id,
        valid_until=timestamp(action.valid_until),
        mandatory=action.mandatory,
    )


DIRECTIONS: dict[Direction, nba_pb2.Direction.ValueType] = {
    Direction.INBOUND: nba_pb2.INBOUND,
    Direction.OUTBOUND: nba_pb2.OUTBOUND,
}


def explanation_message(explanation: Explanation) -> explain_pb2.Explanation:
    """The domain explanation as the wire carries it; shared by ExplainDecision and a dry-run Decide."""
    return explain_pb2.Explanation(
        fired=[
            explain_pb2.ExplainedRule(
                rule_id=rule.rule_id,
                action_id=rule.action_id,
                priority=rule.priority,
                sentence=rule.sentence,
                conditions=[
                    explain_pb2.ExplainedCondition(
                        field=c.field,
                        op=c.op,
                        values_json=[value_json(v) for v in c.values],
                        value_read_json=value_json(c.value_read),
                        value_read_text=value_text(c.value_read),
                        held=c.held,
                        words=c.words,
                    )
                    for c in rule.conditions
                ],
            )
            for rule in explanation.fired
        ],
        dropped=[
            explain_pb2.ExplainedDrop(
                rule_id=d.rule_id, action_id=d.action_id, stage=d.stage, policy=d.policy, reason=d.reason, words=d.words
            )
            for d in explanation.dropped
        ],
        summary=explanation.summary,
        replayable=explanation.replayable,
        engine=explanation.engine,
        delivery="" if explanation.dry_run else explanation.delivery,
        dry_run=explanation.dry_run,
        trace_id=explanation.trace_id,
    )
