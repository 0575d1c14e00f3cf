"""`nba.v1.Review`: ruleset versions and explanations of recorded decisions, read-only, over gRPC.

Thin on purpose: the checks, the scoping and the reasoning live in `review.queries` (which HTTP shares), the
words in `review.explain` and `domain.wording`. What lives here is the mapping to messages.
"""

from __future__ import annotations

import json

import grpc

from nba_service._proto.nba.v1 import nba_pb2, review_pb2
from nba_service.review.queries import Listed, ReviewQueries
from nba_service.transport.explanation import DIRECTIONS, action_message, explanation_message, timestamp
from nba_service.transport.grpc_auth import current_caller
from nba_service.transport.grpc_server import _edge, add_servicer

REVIEW_SERVICE_NAME = review_pb2.DESCRIPTOR.services_by_name["Review"].full_name
_CHANNELS = {"agent_desktop": nba_pb2.AGENT_DESKTOP, "outbound_dialer": nba_pb2.OUTBOUND_DIALER}


class ReviewServicer:
    def __init__(self, queries: ReviewQueries) -> None:
        self._queries = queries

    @_edge
    async def ListRulesets(  # noqa: N802 - gRPC method names
        self, request: review_pb2.ListRulesetsRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.ListRulesetsResponse:
        listed = await self._queries.list_rulesets(request.name)
        return review_pb2.ListRulesetsResponse(rulesets=[_archived(item) for item in listed])

    @_edge
    async def GetRuleset(  # noqa: N802
        self, request: review_pb2.GetRulesetRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.GetRulesetResponse:
        text = await self._queries.get_ruleset(request.name, request.version, request.hash)
        source = text.source
        if text.listed is not None:
            info = _archived(text.listed)
        else:  # kept, but its activation is not (yet) noted
            info = review_pb2.ArchivedRuleset(name=source.name, version=source.version, hash=source.hash)
        return review_pb2.GetRulesetResponse(ruleset=info, source=source.source, markdown=text.markdown)

    @_edge
    async def ExplainDecision(  # noqa: N802
        self, request: review_pb2.ExplainDecisionRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.ExplainDecisionResponse:
        explained = await self._queries.explain_decision(request.decision_id, current_caller())
        record = explained.record
        return review_pb2.ExplainDecisionResponse(
            decision_id=record.decision_id,
            customer_id=record.customer_id,
            channel=_CHANNELS[record.channel.value],
            decided_at=timestamp(record.decided_at),
            ruleset=nba_pb2.RulesetRef(
                name=record.ruleset.name, version=record.ruleset.version, hash=record.ruleset.hash
            ),
            actions=[action_message(a) for a in record.actions],
            explanation=explanation_message(explained.explanation),
            record_json=json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")),
            direction=DIRECTIONS[record.contact_direction],
        )

    @_edge
    async def WhyNot(  # noqa: N802
        self, request: review_pb2.WhyNotRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.WhyNotResponse:
        answer = await self._queries.why_not(request.decision_id, request.action_id, current_caller())
        return review_pb2.WhyNotResponse(
            decision_id=answer.decision_id,
            action_id=answer.action_id,
            offered=answer.offered,
            stage=answer.stage,
            rule_id=answer.rule_id,
            policy=answer.policy,
            words=answer.words,
        )


def add_review(servicer: ReviewServicer, server: grpc.aio.Server) -> None:
    add_servicer(servicer, server, review_pb2, "Review")


def _archived(item: Listed) -> review_pb2.ArchivedRuleset:
    version = item.version
    return review_pb2.ArchivedRuleset(
        name=version.name,
        version=version.version,
        hash=version.hash,
        first_activated_at=timestamp(version.first_activated_at),
        last_activated_at=timestamp(version.last_activated_at),
        active=item.active,
        previous=item.previous,
        last_activated_by=version.last_activated_by,
        last_activation_origin=version.last_activation_origin,
    )
