"""`nba.v1.Review`: ruleset versions and explanations of recorded decisions, read-only, over gRPC.

Thin on purpose: the words and the reasoning come from `review.explain` and `domain.wording`, the versions
from the ruleset archive, the records from the store. What lives here is the request checking and the
mapping to messages, and a small cache of parsed versions: explaining a decision needs the version that
made it, and parsing a ruleset file costs far more than explaining a decision once it is parsed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict

import grpc

from nba_service._proto.nba.v1 import nba_pb2, review_pb2
from nba_service.deploy.control import RulesetControl
from nba_service.domain.archive import ArchivedSource, ArchivedVersion, hash_prefix
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Ruleset
from nba_service.domain.ports import RecordReader, RulesetArchive
from nba_service.domain.records import DecisionRecord
from nba_service.errors import FailedPrecondition, FieldProblem, InvalidArgument, NotFound, Problems, RulesetInvalid
from nba_service.review.explain import DRY_RUN_PREFIX, explain, why_not
from nba_service.service import MAX_ID_LENGTH, DecisionService
from nba_service.transport.explanation import action_message, explanation_message
from nba_service.transport.grpc_auth import current_caller
from nba_service.transport.grpc_server import _edge, _timestamp, add_servicer

REVIEW_SERVICE_NAME = review_pb2.DESCRIPTOR.services_by_name["Review"].full_name
PARSED_VERSIONS = 8
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_CHANNELS = {"agent_desktop": nba_pb2.AGENT_DESKTOP, "outbound_dialer": nba_pb2.OUTBOUND_DIALER}


class ReviewServicer:
    """`control` says which version is previous (None when this server keeps no deploy state); which one is
    active is this process's own: that is the version its decisions name."""

    def __init__(
        self,
        archive: RulesetArchive,
        records: RecordReader,
        service: DecisionService,
        control: RulesetControl | None,
    ) -> None:
        self._archive = archive
        self._records = records
        self._service = service
        self._control = control
        self._parsed: OrderedDict[str, Ruleset] = OrderedDict()

    @_edge
    async def ListRulesets(  # noqa: N802 - gRPC method names
        self, request: review_pb2.ListRulesetsRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.ListRulesetsResponse:
        versions = await self._archive.versions(request.name or None)
        active, previous = await self._active_and_previous()
        return review_pb2.ListRulesetsResponse(rulesets=[_archived(v, active, previous) for v in versions])

    @_edge
    async def GetRuleset(  # noqa: N802
        self, request: review_pb2.GetRulesetRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.GetRulesetResponse:
        source = await self._find_source(request)
        versions = [v for v in await self._archive.versions(source.name) if v.hash == source.hash]
        active, previous = await self._active_and_previous()
        ruleset = await self._ruleset(source)
        from nba_service.review.render import render  # noqa: PLC0415 - jinja2 only for the calls that render

        if versions:
            info = _archived(versions[0], active, previous)
        else:  # kept, but its activation is not (yet) noted
            info = review_pb2.ArchivedRuleset(name=source.name, version=source.version, hash=source.hash)
        # Off the event loop: a whole document takes long enough to hold up the decisions this process serves.
        markdown = await asyncio.to_thread(render, ruleset, "markdown", source_file=f"{source.name}.yaml")
        return review_pb2.GetRulesetResponse(ruleset=info, source=source.source, markdown=markdown)

    @_edge
    async def ExplainDecision(  # noqa: N802
        self, request: review_pb2.ExplainDecisionRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.ExplainDecisionResponse:
        problems = Problems()
        _check_id("decision_id", request.decision_id, problems)
        problems.raise_if_any()
        record = await self._record(request.decision_id)
        ruleset = await self._ruleset_of(record)
        explanation = explain(record, ruleset)
        return review_pb2.ExplainDecisionResponse(
            decision_id=record.decision_id,
            customer_id=record.customer_id,
            channel=_CHANNELS[record.channel.value],
            decided_at=_timestamp(record.decided_at),
            ruleset=nba_pb2.RulesetRef(
                name=record.ruleset.name, version=record.ruleset.version, hash=record.ruleset.hash
            ),
            actions=[action_message(a) for a in record.actions],
            explanation=explanation_message(explanation),
            record_json=json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")),
        )

    @_edge
    async def WhyNot(  # noqa: N802
        self, request: review_pb2.WhyNotRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.WhyNotResponse:
        problems = Problems()
        _check_id("decision_id", request.decision_id, problems)
        _check_id("action_id", request.action_id, problems)
        problems.raise_if_any()
        record = await self._record(request.decision_id)
        answer = why_not(record, await self._ruleset_of(record), request.action_id)
        return review_pb2.WhyNotResponse(
            decision_id=answer.decision_id,
            action_id=answer.action_id,
            offered=answer.offered,
            stage=answer.stage,
            rule_id=answer.rule_id,
            policy=answer.policy,
            words=answer.words,
        )

    async def _active_and_previous(self) -> tuple[str, str]:
        previous = ""
        if self._control is not None:
            status = await self._control.status()
            previous = status.previous.hash if status.previous is not None else ""
        return self._service.active.ruleset.content_hash, previous

    async def _record(self, decision_id: str) -> DecisionRecord:
        """A decision about a customer outside the caller's scope is answered as an unknown decision."""
        record = await self._records.get_record(decision_id)
        if record is not None and await self._service.in_scope(current_caller(), record.customer_id):
            return record
        if record is not None:
            raise NotFound(f"decision {decision_id!r} not found")
        if decision_id.startswith(DRY_RUN_PREFIX):
            raise NotFound(f"decision {decision_id!r} was a dry run: nothing was recorded for it")
        raise NotFound(f"decision {decision_id!r} not found")

    async def _find_source(self, request: review_pb2.GetRulesetRequest) -> ArchivedSource:
        if request.hash:
            if request.name or request.version:
                raise InvalidArgument.of("hash", "give either the hash or a name and version, not both")
            try:
                key = hash_prefix(request.hash)
            except InvalidArgument as exc:
                raise InvalidArgument.many([FieldProblem("hash", p.problem) for p in exc.problems]) from exc
            try:
                found = await self._archive.source(key)
            except InvalidArgument as exc:  # an ambiguous prefix
                raise InvalidArgument.many([FieldProblem("hash", p.problem) for p in exc.problems]) from exc
            if found is None:
                raise NotFound(f"no archived ruleset version has a hash starting with {key!r}")
            return found
        if not request.name:
            problems = Problems()
            problems.add("name", "is required unless a hash is given")
            if request.version:
                problems.add("version", "needs the ruleset's name")
            problems.add("hash", "is required unless a name is given")
            problems.raise_if_any()
        versions = await self._archive.versions(request.name)
        if not versions:
            raise NotFound(f"no version of ruleset {request.name!r} is in the archive")
        matching = [v for v in versions if not request.version or v.version == request.version]
        if not matching:
            known = ", ".join(dict.fromkeys(v.version for v in versions))
            raise NotFound(f"ruleset {request.name!r} has no archived version {request.version!r} (archived: {known})")
        hashes = list(dict.fromkeys(v.hash for v in matching))
        if request.version and len(hashes) > 1:
            shown = ", ".join(h[:12] for h in hashes)
            raise InvalidArgument.of(
                "version",
                f"{request.name} {request.version} names {len(hashes)} different texts ({shown}); ask by hash",
            )
        found = await self._archive.source(hashes[0])  # newest activation first: the latest when no version
        if found is None:
            raise FailedPrecondition(f"the archive lists {request.name} {matching[0].version} but lacks its text")
        return found

    async def _ruleset_of(self, record: DecisionRecord) -> Ruleset:
        source = await self._archive.source(record.ruleset.hash)
        if source is None:
            raise FailedPrecondition(
                f"decision {record.decision_id} was made by {record.ruleset.name} {record.ruleset.version} "
                f"({record.ruleset.hash[:12]}), which is not in the ruleset archive: it cannot be explained"
            )
        return await self._ruleset(source)

    async def _ruleset(self, source: ArchivedSource) -> Ruleset:
        cached = self._parsed.get(source.hash)
        if cached is not None:
            self._parsed.move_to_end(source.hash)
            return cached
        try:
            ruleset = await asyncio.to_thread(load_ruleset_text, source.source, f"{source.name}.yaml")
        except RulesetInvalid as exc:  # it served once, so this is a loader that changed since
            raise FailedPrecondition(
                f"archived ruleset {source.name} {source.version} ({source.hash[:12]}) no longer loads: {exc}"
            ) from exc
        if ruleset.content_hash != source.hash:
            raise FailedPrecondition(f"archived ruleset text for {source.hash[:12]} does not hash to its own hash")
        self._parsed[source.hash] = ruleset
        while len(self._parsed) > PARSED_VERSIONS:
            self._parsed.popitem(last=False)
        return ruleset


def add_review(servicer: ReviewServicer, server: grpc.aio.Server) -> None:
    add_servicer(servicer, server, review_pb2, "Review")


def _check_id(field: str, value: str, problems: Problems) -> None:
    if not value:
        problems.add(field, "is required")
    elif len(value) > MAX_ID_LENGTH:
        problems.add(field, f"is longer than {MAX_ID_LENGTH} characters")
    elif not _ID.fullmatch(value):
        problems.add(field, "must be letters, digits, '_', '.', ':' or '-', starting with a letter or digit")


def _archived(version: ArchivedVersion, active: str, previous: str) -> review_pb2.ArchivedRuleset:
    return review_pb2.ArchivedRuleset(
        name=version.name,
        version=version.version,
        hash=version.hash,
        first_activated_at=_timestamp(version.first_activated_at),
        last_activated_at=_timestamp(version.last_activated_at),
        active=version.hash == active,
        previous=bool(previous) and version.hash == previous,
    )
