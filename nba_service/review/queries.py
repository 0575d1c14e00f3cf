"""What a reviewer may ask of a running server, whatever protocol asks it: versions, texts, explanations.

gRPC (`transport.grpc_review`) and HTTP (`transport.http_review`) both map these answers onto their own
messages, so the request checks, the scoping of records to the caller and the errors are the same on both.
It keeps a small cache of parsed versions: explaining a decision needs the version that made it, and parsing
a ruleset file costs far more than explaining a decision once it is parsed.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass

from nba_service.deploy.control import RulesetControl
from nba_service.domain.archive import ArchivedSource, ArchivedVersion, hash_prefix
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Ruleset
from nba_service.domain.ports import RecordReader, RulesetArchive
from nba_service.domain.records import DecisionRecord
from nba_service.errors import FailedPrecondition, FieldProblem, InvalidArgument, NotFound, Problems, RulesetInvalid
from nba_service.review.explain import DRY_RUN_PREFIX, Explanation, WhyNot, explain, why_not
from nba_service.security.policy import Caller
from nba_service.service import MAX_ID_LENGTH, DecisionService

PARSED_VERSIONS = 8
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@dataclass(frozen=True, slots=True)
class Listed:
    """An archived version as the answering server sees it: serving now, or what a rollback returns to."""

    version: ArchivedVersion
    active: bool
    previous: bool


@dataclass(frozen=True, slots=True)
class RulesetText:
    listed: Listed | None
    """None when the text is kept but its activation is not (yet) noted."""
    source: ArchivedSource
    markdown: str


@dataclass(frozen=True, slots=True)
class Explained:
    record: DecisionRecord
    explanation: Explanation


class ReviewQueries:
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

    async def list_rulesets(self, name: str = "") -> list[Listed]:
        versions = await self._archive.versions(name or None)
        active, previous = await self._active_and_previous()
        return [_listed(v, active, previous) for v in versions]

    async def get_ruleset(self, name: str = "", version: str = "", hash_: str = "") -> RulesetText:
        source = await self._find_source(name, version, hash_)
        versions = [v for v in await self._archive.versions(source.name) if v.hash == source.hash]
        active, previous = await self._active_and_previous()
        ruleset = await self._ruleset(source)
        from nba_service.review.render import render  # noqa: PLC0415 - jinja2 only for the calls that render

        # Off the event loop: a whole document takes long enough to hold up the decisions this process serves.
        markdown = await asyncio.to_thread(render, ruleset, "markdown", source_file=f"{source.name}.yaml")
        listed = _listed(versions[0], active, previous) if versions else None
        return RulesetText(listed, source, markdown)

    async def explain_decision(self, decision_id: str, caller: Caller | None) -> Explained:
        problems = Problems()
        check_id("decision_id", decision_id, problems)
        problems.raise_if_any()
        record = await self._record(decision_id, caller)
        return Explained(record, explain(record, await self._ruleset_of(record)))

    async def why_not(self, decision_id: str, action_id: str, caller: Caller | None) -> WhyNot:
        problems = Problems()
        check_id("decision_id", decision_id, problems)
        check_id("action_id", action_id, problems)
        problems.raise_if_any()
        record = await self._record(decision_id, caller)
        return why_not(record, await self._ruleset_of(record), action_id)

    async def _active_and_previous(self) -> tuple[str, str]:
        previous = ""
        if self._control is not None:
            status = await self._control.status()
            previous = status.previous.hash if status.previous is not None else ""
        return self._service.active.ruleset.content_hash, previous

    async def _record(self, decision_id: str, caller: Caller | None) -> DecisionRecord:
        """A decision about a customer outside the caller's scope is answered as an unknown decision."""
        record = await self._records.get_record(decision_id)
        if record is not None and await self._service.in_scope(caller, record.customer_id):
            return record
        if record is not None:
            raise NotFound(f"decision {decision_id!r} not found")
        if decision_id.startswith(DRY_RUN_PREFIX):
            raise NotFound(f"decision {decision_id!r} was a dry run: nothing was recorded for it")
        raise NotFound(f"decision {decision_id!r} not found")

    async def _find_source(self, name: str, version: str, hash_: str) -> ArchivedSource:
        if hash_:
            if name or version:
                raise InvalidArgument.of("hash", "give either the hash or a name and version, not both")
            try:
                key = hash_prefix(hash_)
            except InvalidArgument as exc:
                raise InvalidArgument.many([FieldProblem("hash", p.problem) for p in exc.problems]) from exc
            try:
                found = await self._archive.source(key)
            except InvalidArgument as exc:  # an ambiguous prefix
                raise InvalidArgument.many([FieldProblem("hash", p.problem) for p in exc.problems]) from exc
            if found is None:
                raise NotFound(f"no archived ruleset version has a hash starting with {key!r}")
            return found
        if not name:
            problems = Problems()
            problems.add("name", "is required unless a hash is given")
            if version:
                problems.add("version", "needs the ruleset's name")
            problems.add("hash", "is required unless a name is given")
            problems.raise_if_any()
        versions = await self._archive.versions(name)
        if not versions:
            raise NotFound(f"no version of ruleset {name!r} is in the archive")
        matching = [v for v in versions if not version or v.version == version]
        if not matching:
            known = ", ".join(dict.fromkeys(v.version for v in versions))
            raise NotFound(f"ruleset {name!r} has no archived version {version!r} (archived: {known})")
        hashes = list(dict.fromkeys(v.hash for v in matching))
        if version and len(hashes) > 1:
            shown = ", ".join(h[:12] for h in hashes)
            raise InvalidArgument.of(
                "version", f"{name} {version} names {len(hashes)} different texts ({shown}); ask by hash"
            )
        found = await self._archive.source(hashes[0])  # newest activation first: the latest when no version
        if found is None:
            raise FailedPrecondition(f"the archive lists {name} {matching[0].version} but lacks its text")
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


def check_id(field: str, value: str, problems: Problems) -> None:
    if not value:
        problems.add(field, "is required")
    elif len(value) > MAX_ID_LENGTH:
        problems.add(field, f"is longer than {MAX_ID_LENGTH} characters")
    elif not _ID.fullmatch(value):
        problems.add(field, "must be letters, digits, '_', '.', ':' or '-', starting with a letter or digit")


def _listed(version: ArchivedVersion, active: str, previous: str) -> Listed:
    return Listed(version, version.hash == active, bool(previous) and version.hash == previous)
