"""The supervisor's half of deploying: it picks the version, starts a new generation of workers on it, and
keeps the deploy state. A version is proven by the new workers themselves (each runs the gate before it
serves), so nothing of it is loaded into the supervisor's own engine and the process tree stays flat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from nba_service.app import configured_ruleset
from nba_service.deploy.control import Status, Switch, WorkerInfo
from nba_service.deploy.gate import Candidate, parse
from nba_service.deploy.remote import LINE_LIMIT, error_to_json, socket_path, status_to_json
from nba_service.deploy.state import Activation, DeployState, Refusal, VersionInfo, now
from nba_service.errors import (
    CandidateRefused,
    FieldProblem,
    InvalidArgument,
    NbaError,
    NothingToRollBack,
    RulesetInvalid,
)
from nba_service.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Generation:
    """What a roll reports: each serving worker with the version it reported, or why the new ones failed."""

    workers: tuple[WorkerInfo, ...]
    failure: str | None = None
    problems: tuple[str, ...] = ()


class Roller(Protocol):
    """The supervisor as deploys need it."""

    async def roll(
        self,
        settings: Settings,
        before_retire: Callable[[], Awaitable[None]] | None = None,
        activation: Activation | None = None,
    ) -> bool:
        """True once the new generation serves and no connection to an old worker is left."""
        ...

    def generation(self) -> Generation: ...

    def failed_generation(self) -> Generation: ...

    def recycle(self) -> None:
        """A new generation on the version already serving (SIGHUP with unchanged files)."""
        ...


class SupervisorDeploys:
    def __init__(self, configured: Settings, state: DeployState) -> None:
        self.configured = configured
        self._state = state
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._roller: Roller | None = None
        # A name in Linux's abstract socket namespace: no file to leave behind (see remote.socket_path).
        self.address = f"nba-deploy-{os.getpid()}-{secrets.token_hex(6)}"

    def first_version(self) -> tuple[Path, VersionInfo | None]:
        """The file the first generation serves, and the recorded version when it is the one last activated
        (a restart must not undo a deploy); otherwise the configured files, kept as a new version."""
        configured = configured_ruleset(self.configured)
        record = self._state.read()
        active = record.active
        if (
            active is not None
            and record.configured_hash == configured.content_hash
            and active.hash != configured.content_hash
            and Path(active.path).exists()
        ):
            return Path(active.path), active
        candidate = Candidate.from_file(Path(configured.source))
        return self._state.keep(configured.meta.name, configured.content_hash, candidate.content, candidate.tests), None

    def fallback(self, refused: Path, failure: str, problems: tuple[str, ...]) -> Path | None:
        """After the configured version failed to start: the last good version to serve instead, if any."""
        record = self._state.read()
        active = record.active
        if active is None or Path(active.path) == refused or not Path(active.path).exists():
            return None
        configured = configured_ruleset(self.configured)
        refusal = Refusal(
            configured.meta.name, configured.meta.version, configured.content_hash, failure, problems, now(), "start-up"
        )
        self._state.write(replace(self._state.refused(record, refusal), configured_hash=configured.content_hash))
        log.error("configured_ruleset_refused_serving_last_good", reason=failure, serving=active.shown())
        return Path(active.path)

    async def started(self, roller: Roller) -> None:
        """Records the version the first generation serves, and opens the deploy socket for the workers."""
        self._roller = roller
        reported = self._serving_version(roller)
        record = self._state.read()
        if reported is not None and (record.active is None or record.active.hash != reported.hash):
            record = self._state.switched(record, reported)
        configured = await asyncio.to_thread(configured_ruleset, self.configured)
        if reported is not None and reported.hash == configured.content_hash:
            record = replace(record, configured_hash=configured.content_hash)
        self._state.write(record)
        self._server = await asyncio.start_unix_server(self._handle, path=socket_path(self.address), limit=LINE_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def worker_settings(self, path: Path) -> Settings:
        return self.configured.model_copy(update={"rulesets": path, "ruleset": None})

    async def activate(
        self, candidate: Candidate, origin: str, reply: Callable[[Switch], Awaitable[None]], by: str = ""
    ) -> None:
        async with self._lock:
            await self._activate(candidate, origin, reply, by)

    async def rollback(self, reply: Callable[[Switch], Awaitable[None]], by: str = "") -> None:
        async with self._lock:
            previous = self._state.read().previous
            if previous is None:
                raise NothingToRollBack("there is no previous version to roll back to")
            await self._activate(Candidate.from_file(Path(previous.path)), "rollback", reply, by)

    async def follow_configured(self, origin: str) -> None:
        async with self._lock:
            try:
                ruleset = await asyncio.to_thread(configured_ruleset, self.configured)
            except RulesetInvalid as exc:
                problems = tuple(FieldProblem("ruleset.content", str(p)) for p in exc.ruleset_problems)
                self._state.refuse(self._state.read(), None, "the configured rulesets are invalid", problems, origin)
                return
            record = self._state.read()
            if ruleset.content_hash == record.configured_hash:
                if origin == "sighup" and self._roller is not None:
                    self._roller.recycle()  # nothing new to deploy: SIGHUP still replaces every worker
                return
            self._state.write(replace(record, configured_hash=ruleset.content_hash))

            async def nobody(_: Switch) -> None:
                return None

            with contextlib.suppress(NbaError):  # a refusal is recorded and logged by _activate
                await self._activate(Candidate.from_file(Path(ruleset.source)), origin, nobody)

    def status(self) -> Status:
        record = self._state.read()
        workers = self._roller.generation().workers if self._roller is not None else ()
        return Status(record.active, record.previous, workers, record.last_refusal)

    async def _activate(
        self, candidate: Candidate, origin: str, reply: Callable[[Switch], Awaitable[None]], by: str = ""
    ) -> None:
        assert self._roller is not None, "deploys start once the first generation serves"
        record = self._state.read()
        try:
            ruleset = await asyncio.to_thread(parse, candidate)
        except RulesetInvalid as exc:
            problems = tuple(FieldProblem("ruleset.content", str(p)) for p in exc.ruleset_problems)
            self._state.refuse(record, None, f"{candidate.file_name} is not a valid ruleset", problems, origin, by)
            raise InvalidArgument.many(problems) from exc
        active = record.active
        if active is not None and ruleset.meta.name != active.name:
            problem = f"ruleset {ruleset.meta.name!r} is not the one this service serves ({active.name!r})"
            self._state.refuse(record, ruleset, problem, (), origin, by)
            raise InvalidArgument.of("ruleset.content", problem)
        if active is not None and ruleset.content_hash == active.hash:
            await reply(Switch(self.status(), unchanged=True))
            return
        path = self._state.keep(ruleset.meta.name, ruleset.content_hash, candidate.content, candidate.tests)

        async def switched() -> None:
            version = self._serving_version(roller)
            assert version is not None
            version = replace(version, source=origin, activated_at=now(), activated_by=by)
            new_record = self._state.switched(self._state.read(), version)
            self._state.write(new_record)
            self._state.activated(origin, version, new_record.previous)

        roller = self._roller
        activation = Activation(origin, by)
        if not await roller.roll(self.worker_settings(path), before_retire=switched, activation=activation):
            failed = roller.failed_generation()
            reason = failed.failure or "the new workers did not start"
            self._state.refuse(record, ruleset, reason, tuple(FieldProblem("", p) for p in failed.problems), origin, by)
            raise CandidateRefused(reason, tuple(_problem(p) for p in failed.problems))
        # Only now: `roll` returns once no connection to an old worker is left, so a call made after this answer
        # can only be answered by the new version.
        await reply(Switch(self.status(), unchanged=False))

    def _serving_version(self, roller: Roller) -> VersionInfo | None:
        versions = [w.version for w in roller.generation().workers if w.version is not None]
        return versions[0] if versions else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False

        async def reply(switch: Switch) -> None:
            nonlocal answered
            answered = True
            await _send(writer, {"ok": True, "status": status_to_json(switch.status), "unchanged": switch.unchanged})

        try:
            request: dict[str, Any] = json.loads(await reader.readline())
            op = request.get("op")
            if op == "status":
                await _send(writer, {"ok": True, "status": status_to_json(self.status())})
            elif op == "activate":
                data = request["candidate"]
                candidate = Candidate(str(data["file_name"]), str(data["content"]), data.get("tests"))
                by = str(request.get("by") or "")
                await self.activate(candidate, str(request.get("origin", "activate")), reply, by)
            elif op == "rollback":
                await self.rollback(reply, str(request.get("by") or ""))
            else:
                await _send(writer, {"ok": False, "error": error_to_json(InvalidArgument(f"unknown op {op!r}"))})
        except NbaError as exc:
            if not answered:
                await _send(writer, {"ok": False, "error": error_to_json(exc)})
        except Exception:
            log.exception("deploy_request_failed")
            if not answered:
                await _send(writer, {"ok": False, "error": error_to_json(NbaError("the deploy failed; see the log"))})
        finally:
            writer.close()


def _problem(text: str) -> FieldProblem:
    field, sep, problem = text.partition(": ")
    return FieldProblem(field, problem) if sep and field.startswith("scenarios[") else FieldProblem("ruleset", text)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
