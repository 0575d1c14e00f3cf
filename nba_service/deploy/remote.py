"""Deploys asked of a worker are done by its supervisor: the worker forwards the admin call over a local
socket and answers with what the supervisor says, so every worker gives the same answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nba_service.deploy.control import Status, Switch, WorkerInfo
from nba_service.deploy.gate import Candidate
from nba_service.deploy.state import Refusal, VersionInfo
from nba_service.errors import (
    CandidateRefused,
    FailedPrecondition,
    FieldProblem,
    InvalidArgument,
    NbaError,
    NothingToRollBack,
    Unavailable,
)

LINE_LIMIT = 8 << 20
_ERRORS: dict[str, type[NbaError]] = {
    cls.__name__: cls for cls in (CandidateRefused, InvalidArgument, NothingToRollBack, FailedPrecondition, Unavailable)
}


def socket_path(name: str) -> str:
    """The abstract-namespace address for a name (a leading NUL, which cannot travel in an environment
    variable, so the name is what is passed around)."""
    return "\0" + name


def status_to_json(status: Status) -> dict[str, Any]:
    return {
        "active": status.active.to_json() if status.active else None,
        "previous": status.previous.to_json() if status.previous else None,
        "workers": [
            {"index": w.index, "pid": w.pid, "version": w.version.to_json() if w.version else None}
            for w in status.workers
        ],
        "last_refusal": status.last_refusal.to_json() if status.last_refusal else None,
    }


def status_from_json(data: dict[str, Any]) -> Status:
    def version(value: Any) -> VersionInfo | None:
        return None if value is None else VersionInfo.from_json(value)

    return Status(
        version(data["active"]),
        version(data["previous"]),
        tuple(WorkerInfo(int(w["index"]), int(w["pid"]), version(w["version"])) for w in data["workers"]),
        None if data["last_refusal"] is None else Refusal.from_json(data["last_refusal"]),
    )


def error_to_json(error: NbaError) -> dict[str, Any]:
    name = type(error).__name__ if type(error).__name__ in _ERRORS else "FailedPrecondition"
    return {"class": name, "message": error.message, "problems": [[p.field, p.problem] for p in error.problems]}


def error_from_json(data: dict[str, Any]) -> NbaError:
    cls = _ERRORS.get(str(data.get("class")), FailedPrecondition)
    problems = tuple(FieldProblem(str(f), str(p)) for f, p in data.get("problems", ()))
    return cls(str(data.get("message", "")), problems)


class SupervisedRulesets:
    """The RulesetControl a worker serves: every call goes to the supervisor's deploy socket."""

    def __init__(self, address: str) -> None:
        self._address = address

    async def activate(self, candidate: Candidate, origin: str, by: str = "") -> Switch:
        reply = await self._ask(
            {
                "op": "activate",
                "origin": origin,
                "by": by,
                "candidate": {"file_name": candidate.file_name, "content": candidate.content, "tests": candidate.tests},
            }
        )
        return Switch(status_from_json(reply["status"]), bool(reply["unchanged"]))

    async def rollback(self, by: str = "") -> Switch:
        reply = await self._ask({"op": "rollback", "by": by})
        return Switch(status_from_json(reply["status"]), bool(reply["unchanged"]))

    async def status(self) -> Status:
        return status_from_json((await self._ask({"op": "status"}))["status"])

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path(self._address), limit=LINE_LIMIT)
        except OSError as exc:
            raise Unavailable(f"the supervisor's deploy socket cannot be reached: {exc}") from exc
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise Unavailable("the supervisor closed the deploy socket without an answer (is it stopping?)")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise error_from_json(reply["error"])
        return reply
