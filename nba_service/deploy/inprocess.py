"""Deploys inside one serving process (`--workers 1`).

The switch is one assignment on the event loop, so every decision runs on one version from start to end.
durable_rules keeps about 1.5 MiB of each version it has evaluated even after `delete_ruleset`
(../shared/notes/durable-rules.md), so a single process grows with every deploy
(about 1.66 MiB each, measured by loadtests/bench_reload.py);
serving with workers replaces whole processes instead and stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from nba_service.deploy.control import Status, Switch, WorkerInfo
from nba_service.deploy.gate import Candidate, parse, prepare_in_service
from nba_service.deploy.state import DeployRecord, DeployState, VersionInfo, now
from nba_service.domain.model import Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.errors import (
    CandidateRefused,
    FieldProblem,
    InvalidArgument,
    NbaError,
    NothingToRollBack,
    RulesetInvalid,
    Unavailable,
)
from nba_service.service import DecisionService

log = structlog.get_logger(__name__)


class InProcessRulesets:
    def __init__(
        self,
        service: DecisionService,
        state: DeployState,
        load: Callable[[Ruleset], ActiveRuleset],
        retire_after: float,
        on_switch: Callable[[Ruleset], None],
    ) -> None:
        self._service = service
        self._state = state
        self._load = load
        self._retire_after = retire_after
        self._on_switch = on_switch
        self._lock = asyncio.Lock()

    async def follow_configured(self, configured: Callable[[], Ruleset], origin: str) -> None:
        """Deploys the configured files when they hold another version than they did when last considered;
        a refusal is logged and recorded once, not retried until the files change again."""
        async with self._lock:
            try:
                ruleset = await asyncio.to_thread(configured)
            except RulesetInvalid as exc:
                record = self._state.read()
                problems = tuple(FieldProblem("ruleset.content", str(p)) for p in exc.ruleset_problems)
                self._state.refuse(record, None, "the configured rulesets are invalid", problems, origin)
                return
            record = self._state.read()
            if ruleset.content_hash == record.configured_hash:
                return
            self._state.write(replace(record, configured_hash=ruleset.content_hash))
            with contextlib.suppress(NbaError):  # a refusal is recorded and logged by _activate
                await self._activate(Candidate.from_file(Path(ruleset.source)), origin)

    async def activate(self, candidate: Candidate, origin: str, by: str = "") -> Switch:
        async with self._lock:
            return await self._activate(candidate, origin, by)

    async def rollback(self, by: str = "") -> Switch:
        async with self._lock:
            previous = self._state.read().previous
            if previous is None:
                raise NothingToRollBack("there is no previous version to roll back to")
            candidate = Candidate.from_file(Path(previous.path))
            return await self._activate(candidate, "rollback", by)

    async def status(self) -> Status:
        return self._status(self._state.read())

    def _status(self, record: DeployRecord) -> Status:
        worker = WorkerInfo(0, os.getpid(), record.active)
        return Status(record.active, record.previous, (worker,), record.last_refusal)

    async def _activate(self, candidate: Candidate, origin: str, by: str = "") -> Switch:
        record = self._state.read()
        try:
            ruleset = await asyncio.to_thread(parse, candidate)
        except RulesetInvalid as exc:
            problems = tuple(FieldProblem("ruleset.content", str(p)) for p in exc.ruleset_problems)
            self._state.refuse(record, None, f"{candidate.file_name} is not a valid ruleset", problems, origin, by)
            raise InvalidArgument.many(problems) from exc
        current = self._service.active.ruleset
        if ruleset.meta.name != current.meta.name:
            problem = f"ruleset {ruleset.meta.name!r} is not the one this service serves ({current.meta.name!r})"
            self._state.refuse(record, ruleset, problem, (), origin, by)
            raise InvalidArgument.of("ruleset.content", problem)
        if ruleset.content_hash == current.content_hash:
            return Switch(self._status(record), unchanged=True)
        try:
            prepared = await prepare_in_service(candidate, ruleset, self._load)
        except CandidateRefused as exc:
            self._state.refuse(record, ruleset, exc.message, exc.problems, origin, by)
            raise
        activated_at = now()
        try:
            await self._service.archive(ruleset, activated_at, by=by, origin=origin)
        except NbaError as exc:
            # Its decisions could never be explained: a hash nobody can fetch names no text a reviewer can read.
            prepared.active.engine.close()
            reason = f"the version cannot be kept in the ruleset archive, so it does not serve: {exc.message}"
            self._state.refuse(record, ruleset, reason, (), origin, by)
            refusal = Unavailable if isinstance(exc, Unavailable) else CandidateRefused
            raise refusal(f"{reason}; the running version stays") from exc
        kept = self._state.keep(ruleset.meta.name, ruleset.content_hash, candidate.content, candidate.tests)
        info = VersionInfo(
            ruleset.meta.name,
            ruleset.meta.version,
            ruleset.content_hash,
            activated_at,
            origin,
            prepared.scenarios_passed,
            str(kept),
            by,
        )
        record = self._state.switched(record, info)
        self._state.write(record)
        self._on_switch(ruleset)
        old = self._service.activate(prepared.active, activated_at, by=by, origin=origin)
        # A decision that read its version before the switch may still evaluate on it while its profile read
        # finishes; that read is bounded by the database timeout.
        asyncio.get_running_loop().call_later(self._retire_after, old.engine.close)
        self._state.activated(origin, info, record.previous)
        return Switch(self._status(record), unchanged=False)
