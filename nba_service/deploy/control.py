"""What deploying a ruleset version looks like to its callers (the admin RPC, SIGHUP, the folder watch),
whether the versions live in this process or in worker processes under a supervisor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nba_service.deploy.gate import Candidate
from nba_service.deploy.state import Refusal, VersionInfo


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    index: int
    pid: int
    version: VersionInfo | None


@dataclass(frozen=True, slots=True)
class Status:
    active: VersionInfo | None
    previous: VersionInfo | None
    workers: tuple[WorkerInfo, ...]
    last_refusal: Refusal | None


@dataclass(frozen=True, slots=True)
class Switch:
    status: Status
    unchanged: bool


class RulesetControl(Protocol):
    async def activate(self, candidate: Candidate, origin: str, by: str = "") -> Switch:
        """Makes `candidate` the active version once it passed the gate; raises InvalidArgument (the file)
        or CandidateRefused (its checks or scenarios), leaving the running version in place. `by` is who asked
        (a caller's principal; "" when no caller did: start-up, SIGHUP, the folder watch)."""
        ...

    async def rollback(self, by: str = "") -> Switch:
        """Makes the previous version active again; raises NothingToRollBack when there is none."""
        ...

    async def status(self) -> Status: ...
