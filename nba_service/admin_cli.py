"""`nba rulesets activate | rollback | status`: the admin RPC from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from nba_service.security.tls import Endpoint

ADMIN_TIMEOUT_S = 120.0


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def register(group: click.Group, target: Decorator) -> None:
    timeout = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=ADMIN_TIMEOUT_S,
        show_default=True,
        help="Deadline in seconds (a deploy starts new workers and runs the scenario tests).",
    )
    as_json = click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")

    @group.command("activate")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @target
    @timeout
    @as_json
    def activate(path: Path, target: Endpoint, timeout: float, as_json: bool) -> None:
        """Deploy a ruleset file (and the .tests.yaml beside it) to the running service, without a restart.

        The service loads it, checks it and runs its scenario tests first; a version that fails never
        replaces the running one, and the reason is printed (exit 1)."""
        from nba_service._proto.nba.v1 import admin_pb2  # noqa: PLC0415
        from nba_service.domain.loader import TESTS_SUFFIX  # noqa: PLC0415 - ruamel, for this command only

        tests = path.with_name(path.name.removesuffix(".yaml") + TESTS_SUFFIX)
        source = admin_pb2.RulesetSource(
            file_name=path.name,
            content=path.read_text(encoding="utf-8"),
            tests_content=tests.read_text(encoding="utf-8") if tests.exists() else "",
        )
        response = _admin(target, "Activate", admin_pb2.ActivateRequest(ruleset=source), timeout)
        _print_switch(response, as_json)

    @group.command("rollback")
    @target
    @timeout
    @as_json
    def rollback(target: Endpoint, timeout: float, as_json: bool) -> None:
        """Make the previous version active again (it passes its scenario tests again first)."""
        from nba_service._proto.nba.v1 import admin_pb2  # noqa: PLC0415

        _print_switch(_admin(target, "Rollback", admin_pb2.RollbackRequest(), timeout), as_json)

    @group.command("status")
    @target
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
    @as_json
    def status(target: Endpoint, timeout: float, as_json: bool) -> None:
        """Show the active version on every worker, the previous one, and the last refusal."""
        from nba_service._proto.nba.v1 import admin_pb2  # noqa: PLC0415

        response = _admin(target, "Status", admin_pb2.StatusRequest(), timeout)
        if as_json:
            click.echo(_json(response))
            return
        click.echo(f"active:    {_version(response.active)}")
        click.echo(f"previous:  {_version(response.previous) if response.HasField('previous') else 'none'}")
        for worker in response.workers:
            click.echo(f"worker {worker.index}:  pid {worker.pid}, {_short(worker.ruleset)}")
        if response.HasField("last_refusal"):
            refusal = response.last_refusal
            when = refusal.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
            asked = f" ({refusal.origin}{_by(refusal.requested_by)})" if refusal.origin else ""
            click.echo(f"last refusal: {_short(refusal.candidate)} at {when}Z{asked}: {refusal.reason}")
            for problem in refusal.problems:
                click.echo(f"  {problem}")
        else:
            click.echo("last refusal: none")


def _admin(target: Endpoint, method: str, request: Any, timeout: float) -> Any:
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import admin_pb2_grpc  # noqa: PLC0415
    from nba_service.cli import _client_error  # noqa: PLC0415

    with target.channel() as conn:
        try:
            return getattr(admin_pb2_grpc.RulesetAdminStub(conn), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            _client_error(exc, target, timeout)


def _print_switch(response: Any, as_json: bool) -> None:
    if as_json:
        click.echo(_json(response))
        return
    if response.unchanged:
        click.echo(f"unchanged: {_version(response.active)} is already active")
        return
    click.echo(f"active:    {_version(response.active)}")
    click.echo(f"previous:  {_version(response.previous) if response.HasField('previous') else 'none'}")
    pids = ", ".join(str(w.pid) for w in response.workers)
    click.echo(f"serving on {len(response.workers)} worker(s): pid {pids}")
    sys.stdout.flush()


def _short(version: Any) -> str:
    return f"{version.name} {version.version} ({version.hash[:12]})"


def _version(version: Any) -> str:
    when = version.activated_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    source = f"{version.source}{_by(version.activated_by)}"
    return f"{_short(version)}, since {when}Z ({source}), {version.scenarios_passed} scenarios passed"


def _by(principal: str) -> str:
    return f" by {principal}" if principal else ""


def _json(message: Any) -> str:
    from google.protobuf import json_format  # noqa: PLC0415

    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(data, indent=2)
