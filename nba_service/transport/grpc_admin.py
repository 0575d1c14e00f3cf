"""`nba.v1.RulesetAdmin`: deploy, roll back and inspect ruleset versions over gRPC."""

from __future__ import annotations

import grpc

from nba_service._proto.nba.v1 import admin_pb2
from nba_service.deploy.control import RulesetControl, Status, Switch
from nba_service.deploy.gate import Candidate
from nba_service.deploy.state import VersionInfo
from nba_service.errors import Problems
from nba_service.transport.explanation import timestamp
from nba_service.transport.grpc_auth import current_caller
from nba_service.transport.grpc_server import _edge, add_servicer

ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["RulesetAdmin"].full_name
MAX_RULESET_TEXT = 2_000_000


class RulesetAdminServicer:
    def __init__(self, control: RulesetControl) -> None:
        self._control = control

    @_edge
    async def Activate(  # noqa: N802 - gRPC method names
        self, request: admin_pb2.ActivateRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ActivateResponse:
        source = request.ruleset
        problems = Problems()
        if not source.content.strip():
            problems.add("ruleset.content", "is required: the ruleset YAML")
        for field, text in (("ruleset.content", source.content), ("ruleset.tests_content", source.tests_content)):
            if len(text) > MAX_RULESET_TEXT:
                problems.add(field, f"is longer than {MAX_RULESET_TEXT} characters")
        problems.raise_if_any()
        candidate = Candidate(source.file_name or "ruleset.yaml", source.content, source.tests_content or None)
        return _switch(await self._control.activate(candidate, "activate", by=_by()))

    @_edge
    async def Rollback(  # noqa: N802
        self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ActivateResponse:
        return _switch(await self._control.rollback(by=_by()))

    @_edge
    async def Status(  # noqa: N802
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusResponse:
        status = await self._control.status()
        response = admin_pb2.StatusResponse(workers=_workers(status))
        _set_version(response.active, status.active)
        _set_version(response.previous, status.previous)
        refusal = status.last_refusal
        if refusal is not None:
            response.last_refusal.candidate.name = refusal.name
            response.last_refusal.candidate.version = refusal.version
            response.last_refusal.candidate.hash = refusal.hash
            response.last_refusal.reason = refusal.reason
            response.last_refusal.problems.extend(refusal.problems)
            response.last_refusal.at.CopyFrom(timestamp(refusal.at))
            response.last_refusal.origin = refusal.origin
            response.last_refusal.requested_by = refusal.by
        return response


def _by() -> str:
    """Who asked for a deploy: the caller's principal, kept with the version it activated."""
    caller = current_caller()
    return "" if caller is None else caller.principal


def add_admin(control: RulesetControl, server: grpc.aio.Server) -> None:
    add_servicer(RulesetAdminServicer(control), server, admin_pb2, "RulesetAdmin")


def _switch(switch: Switch) -> admin_pb2.ActivateResponse:
    response = admin_pb2.ActivateResponse(workers=_workers(switch.status), unchanged=switch.unchanged)
    _set_version(response.active, switch.status.active)
    _set_version(response.previous, switch.status.previous)
    return response


def _workers(status: Status) -> list[admin_pb2.WorkerStatus]:
    workers = []
    for worker in status.workers:
        message = admin_pb2.WorkerStatus(index=worker.index, pid=worker.pid)
        _set_version(message.ruleset, worker.version)
        workers.append(message)
    return workers


def _set_version(message: admin_pb2.RulesetVersion, version: VersionInfo | None) -> None:
    if version is None:
        return
    message.name = version.name
    message.version = version.version
    message.hash = version.hash
    message.activated_at.CopyFrom(timestamp(version.activated_at))
    message.source = version.source
    message.scenarios_passed = version.scenarios_passed
    message.activated_by = version.activated_by
