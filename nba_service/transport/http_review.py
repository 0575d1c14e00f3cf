"""`nba.v1.Review` over HTTP/JSON: the reviewer's read-only calls for tools that cannot speak gRPC.

The answers come from `review.queries`, as gRPC's do, so a reviewer gets the same checks, scoping and errors
on both. Read-only calls are GETs with query and path parameters; field names follow review.proto.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from google.protobuf import json_format
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from nba_service.domain.model import Direction
from nba_service.errors import Problems
from nba_service.review.queries import Listed, ReviewQueries
from nba_service.security.authz import REVIEW, Ask
from nba_service.security.policy import Caller
from nba_service.transport.explanation import explanation_message
from nba_service.transport.http_identity import CallerDep
from nba_service.transport.wire import text_problem

Admit = Callable[[Request, "Caller | None", Ask], Callable[[], None]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchivedRuleset(_Model):
    name: str
    version: str
    hash: str = Field(description="SHA-256 of the ruleset file, as decision records carry it")
    first_activated_at: AwareDatetime | None = Field(default=None, description="absent when not noted")
    last_activated_at: AwareDatetime | None = None
    active: bool = Field(default=False, description="the version that serves now, as the answering server sees it")
    previous: bool = Field(default=False, description="the version a rollback would return to")
    last_activated_by: str = Field(
        default="", description="who asked for its latest activation; empty for start-up and folder changes"
    )
    last_activation_origin: str = Field(
        default="", description="how its latest activation came about: start-up, activate, rollback, folder, sighup"
    )


class ListRulesetsResponse(_Model):
    rulesets: list[ArchivedRuleset]


class GetRulesetResponse(_Model):
    ruleset: ArchivedRuleset
    source: str = Field(description="the ruleset file exactly as activated: its SHA-256 is ruleset.hash")
    markdown: str = Field(description="the same ruleset as a document a reviewer reads")


class DecidedAction(_Model):
    action_id: str
    script: str
    priority: int
    category: str
    reason: str
    rule_id: str
    valid_until: AwareDatetime
    mandatory: bool = Field(description="a regulatory notice: ranked above every offer, to be given")


class RulesetRef(_Model):
    name: str
    version: str
    hash: str


class ExplainDecisionResponse(_Model):
    decision_id: str
    customer_id: str
    channel: Literal["AGENT_DESKTOP", "OUTBOUND_DIALER"]
    direction: Literal["INBOUND", "OUTBOUND"] = Field(
        description="who started the contact (the channel's usual direction for records from before directions)"
    )
    decided_at: AwareDatetime
    ruleset: RulesetRef
    actions: list[DecidedAction] = Field(description="as the caller was given them, in rank order")
    explanation: dict[str, Any] = Field(description="as explain.proto's Explanation, in its JSON form")
    record: dict[str, Any] = Field(
        description="the whole decision record in its export format (nba.record/1), with the inputs; it holds "
        "raw trigger values, which belong in the record and never in a script"
    )


class WhyNotResponse(_Model):
    decision_id: str
    action_id: str
    offered: bool
    stage: str = Field(description="offered, no_rule, conditions, no_script, policy or arbitration")
    rule_id: str
    policy: str
    words: str = Field(description="the first condition or policy that kept the action out, in words")


def review_router(queries: ReviewQueries, admit: Admit, errors: dict[int | str, Any]) -> APIRouter:
    """`admit` authorises under the gRPC method names and enters the limits, as every HTTP call does."""
    router = APIRouter(prefix="/v1/review", tags=["review"])

    @router.get("/rulesets", responses=errors)
    async def list_rulesets(
        request: Request, caller: CallerDep, name: Annotated[str, Query(max_length=200)] = ""
    ) -> ListRulesetsResponse:
        """Every ruleset version that has ever been active, newest activation first (gRPC ListRulesets)."""
        leave = admit(request, caller, Ask(REVIEW + "ListRulesets"))
        try:
            _storable({"name": name})
            listed = await queries.list_rulesets(name)
        finally:
            leave()
        return ListRulesetsResponse(rulesets=[_archived(item) for item in listed])

    @router.get("/ruleset", responses=errors)
    async def get_ruleset(
        request: Request,
        caller: CallerDep,
        name: Annotated[str, Query(max_length=200)] = "",
        version: Annotated[str, Query(max_length=200)] = "",
        hash: Annotated[str, Query(max_length=200, description="or a prefix of 12+ hex digits")] = "",
    ) -> GetRulesetResponse:
        """One version's text and its rendered Markdown, by name (and version) or by hash (gRPC GetRuleset)."""
        leave = admit(request, caller, Ask(REVIEW + "GetRuleset"))
        try:
            _storable({"name": name, "version": version, "hash": hash})
            text = await queries.get_ruleset(name, version, hash)
        finally:
            leave()
        source = text.source
        info = (
            _archived(text.listed)
            if text.listed is not None
            else ArchivedRuleset(name=source.name, version=source.version, hash=source.hash)
        )
        return GetRulesetResponse(ruleset=info, source=source.source, markdown=text.markdown)

    @router.get("/decisions/{decision_id}/explanation", responses=errors)
    async def explain_decision(decision_id: str, request: Request, caller: CallerDep) -> ExplainDecisionResponse:
        """Why a recorded decision came out as it did (gRPC ExplainDecision)."""
        leave = admit(request, caller, Ask(REVIEW + "ExplainDecision"))
        try:
            explained = await queries.explain_decision(decision_id, caller)
        finally:
            leave()
        record = explained.record
        ref = record.ruleset
        message = explanation_message(explained.explanation)
        return ExplainDecisionResponse(
            decision_id=record.decision_id,
            customer_id=record.customer_id,
            channel="AGENT_DESKTOP" if record.channel.value == "agent_desktop" else "OUTBOUND_DIALER",
            direction="INBOUND" if record.contact_direction is Direction.INBOUND else "OUTBOUND",
            decided_at=record.decided_at.astimezone(UTC),
            ruleset=RulesetRef(name=ref.name, version=ref.version, hash=ref.hash),
            actions=[
                DecidedAction(
                    action_id=a.action_id,
                    script=a.script,
                    priority=a.priority,
                    category=a.category,
                    reason=a.reason,
                    rule_id=a.rule_id,
                    valid_until=a.valid_until.astimezone(UTC),
                    mandatory=a.mandatory,
                )
                for a in record.actions
            ],
            explanation=json_format.MessageToDict(message, preserving_proto_field_name=True),
            record=record.to_json(),
        )

    @router.get("/decisions/{decision_id}/why-not/{action_id}", responses=errors)
    async def why_not(decision_id: str, action_id: str, request: Request, caller: CallerDep) -> WhyNotResponse:
        """The first condition or policy that kept one action out of a recorded decision (gRPC WhyNot)."""
        leave = admit(request, caller, Ask(REVIEW + "WhyNot"))
        try:
            answer = await queries.why_not(decision_id, action_id, caller)
        finally:
            leave()
        return WhyNotResponse(
            decision_id=answer.decision_id,
            action_id=answer.action_id,
            offered=answer.offered,
            stage=answer.stage,
            rule_id=answer.rule_id,
            policy=answer.policy,
            words=answer.words,
        )

    return router


def _storable(params: dict[str, str]) -> None:
    problems = Problems()
    for field, value in params.items():
        if (problem := text_problem(value)) is not None:
            problems.add(field, problem)
    problems.raise_if_any()


def _archived(item: Listed) -> ArchivedRuleset:
    version = item.version
    return ArchivedRuleset(
        name=version.name,
        version=version.version,
        hash=version.hash,
        first_activated_at=version.first_activated_at.astimezone(UTC),
        last_activated_at=version.last_activated_at.astimezone(UTC),
        active=item.active,
        previous=item.previous,
        last_activated_by=version.last_activated_by,
        last_activation_origin=version.last_activation_origin,
    )
