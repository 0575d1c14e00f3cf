"""The `nba` command line: serve, ask for a decision, feed events and outcomes, check rulesets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from nba_service.cli_options import connection_options, store_options
from nba_service.errors import ErrorCode, NbaError

if TYPE_CHECKING:  # grpc and pydantic are imported where used: `nba decide` starts fast, `serve` quiets grpc first
    import grpc
    from pydantic.fields import FieldInfo
    from pydantic_core import ErrorDetails

    from nba_service.security.tls import Endpoint
_CHANNEL_NAMES = ("agent_desktop", "outbound_dialer")
_OUTCOME_NAMES = ("accepted", "declined", "no_answer", "converted", "callback_requested", "not_offered", "not_now")

EXIT_FAILURE = 1
EXIT_REFUSED = 2  # also click's exit code for a usage error
EXIT_UNREACHABLE = 3
EXIT_DEADLINE = 4
_EXIT_BY_STATUS = {
    "INVALID_ARGUMENT": EXIT_REFUSED,
    "UNAUTHENTICATED": EXIT_REFUSED,
    "PERMISSION_DENIED": EXIT_REFUSED,
    "NOT_FOUND": EXIT_REFUSED,
    "FAILED_PRECONDITION": EXIT_REFUSED,
    "UNAVAILABLE": EXIT_UNREACHABLE,
    "RESOURCE_EXHAUSTED": EXIT_UNREACHABLE,
    "DEADLINE_EXCEEDED": EXIT_DEADLINE,
}
EXIT_CODES_HELP = """\b
Exit codes of the client commands (decide, event, outcome):
  0  done
  1  any other failure
  2  usage error, or the request was refused: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION
     (and UNAUTHENTICATED, PERMISSION_DENIED: who is calling, or what they may do)
  3  the service cannot be reached, or answers UNAVAILABLE
     (a failed TLS handshake too; RESOURCE_EXHAUSTED, a limit: try again later)
  4  no answer within --timeout: DEADLINE_EXCEEDED"""

# Settings read from the environment only. A DSN carries a password, and a command line is visible to every
# user of the machine in the process list.
_ENV_ONLY = frozenset({"dsn"})
# What click can check before the settings model sees the value.
_CLICK_TYPES: dict[str, click.ParamType[Any, Any]] = {"sample": click.Path(path_type=Path, exists=True, dir_okay=False)}


def exit_code(status: str) -> int:
    """The exit code of a client command that failed with this gRPC status name (see EXIT_CODES_HELP)."""
    return _EXIT_BY_STATUS.get(status, EXIT_FAILURE)


class _Main(click.Group):
    """Builds `serve` only when asked for: its options come from the settings model, and importing pydantic
    for every `nba decide` would slow the commands people type most."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "serve"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "serve":
            return _serve_command()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="nba-service", prog_name="nba")
def main() -> None:
    """Contact-centre next-best-action service."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return f"NBA_{name.upper()}"


def _click_type(name: str, annotation: Any) -> click.ParamType[Any, Any]:
    if name in _CLICK_TYPES:
        return _CLICK_TYPES[name]
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:
            return _click_type(name, concrete[0])
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in args])
    simple: dict[Any, click.ParamType[Any, Any]] = {
        str: click.STRING,
        int: click.INT,
        float: click.FLOAT,
        bool: click.BOOL,
        Path: click.Path(path_type=Path),
    }
    if annotation in simple:
        return simple[annotation]
    raise TypeError(f"settings field {name!r}: no command-line type for {annotation!r}")


def _settings_option(name: str, field: FieldInfo) -> click.Option:
    """One `serve` option for one settings field. Its default stays None so that an option not given
    leaves the field to its NBA_* variable or the model's default."""
    default = field.get_default(call_default_factory=True)
    hints = [f"default: {default}"] if default is not None else []
    hints.append(f"env {_env(name)}")
    description = field.description or ""
    text = f"{description[:1].upper()}{description[1:]} [{'; '.join(hints)}]".strip()
    if field.annotation is bool:  # a switch: `--insecure`, `--no-reflection`
        return click.Option([f"{_flag(name)}/--no-{_flag(name)[2:]}", name], default=None, help=text)
    return click.Option([_flag(name), name], type=_click_type(name, field.annotation), default=None, help=text)


def _refuse_dsn_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.BadParameter(
            "a DSN on the command line is visible to everyone in the process list; set NBA_DSN instead",
            ctx=ctx,
            param=param,
        )


def _serve_command() -> click.Command:
    from nba_service.settings import Settings  # noqa: PLC0415

    params: list[click.Parameter] = [
        _settings_option(name, field) for name, field in Settings.model_fields.items() if name not in _ENV_ONLY
    ]
    params.append(click.Option(["--dsn"], hidden=True, expose_value=False, callback=_refuse_dsn_flag))
    env_only = ", ".join(_env(name) for name in sorted(_ENV_ONLY))
    return click.Command(
        "serve",
        callback=_serve,
        params=params,
        help="Run the gRPC service (embedded SQLite store and bundled rulesets unless told otherwise).",
        short_help="Run the gRPC service.",
        epilog=(
            f"Read from the environment only: {env_only} (a DSN on the command line, password included, would be "
            "visible to everyone in the process list). gRPC's own C-core logging is off unless GRPC_VERBOSITY is set."
        ),
    )


def _settings_problem(error: ErrorDetails) -> str:
    """A settings error as the user can act on it: naming the flag and the variable, not the field."""
    from nba_service.settings import Settings  # noqa: PLC0415

    message = error["msg"].removeprefix("Value error, ")
    loc = error["loc"]
    if not loc or loc[0] not in Settings.model_fields:
        return message
    name = str(loc[0])
    where = _env(name) if name in _ENV_ONLY else f"{_flag(name)} / {_env(name)}"
    return f"{where}: {message}"


def _serve(**options: Any) -> None:
    # gRPC reads GRPC_VERBOSITY once, when it is imported: set it before anything imports grpc, or its C-core
    # lines ("E0000 ... add_port.cc ...") come before our own message when the port is taken.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from pydantic import ValidationError  # noqa: PLC0415

    from nba_service.errors import WorkersFailing  # noqa: PLC0415
    from nba_service.log_setup import configure_logging  # noqa: PLC0415
    from nba_service.runner import leave_stuck_threads, start_failure  # noqa: PLC0415
    from nba_service.runner import serve as run  # noqa: PLC0415
    from nba_service.security.secrets import redact  # noqa: PLC0415
    from nba_service.security.tls import listener_security  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415
    from nba_service.supervisor import supervise  # noqa: PLC0415
    from nba_service.transport.grpc_server import check_can_listen  # noqa: PLC0415

    try:
        settings = Settings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings: {'; '.join(_settings_problem(e) for e in exc.errors())}") from exc
    try:
        # Before loading anything: a taken port fails in a moment.
        check_can_listen(settings.host, settings.port if settings.grpc else settings.http_port or 0)
        listener_security(settings)  # and plain text off loopback without --insecure
    except (OSError, NbaError) as exc:
        click.echo(redact(f"cannot start: {exc}"), err=True)
        sys.exit(2)
    configure_logging(settings.log_format, settings.log_level)
    try:
        if settings.workers > 1:
            supervise(settings)
        else:
            if settings.pin_cpus:
                from nba_service.cpu_pinning import pin_to_one_cpu  # noqa: PLC0415

                pin_to_one_cpu(0)
            asyncio.run(run(settings))
    except WorkersFailing as exc:
        click.echo(redact(f"stopped: {exc}"), err=True)
        sys.exit(2)
    except Exception as exc:
        problem = start_failure(exc)
        if problem is None:
            raise
        click.echo(redact(f"cannot start: {problem}"), err=True)
        sys.exit(2)
    leave_stuck_threads()


def _call(target: Endpoint, method: str, request: Any, timeout: float) -> Any:
    """One unary call; a failure is printed for a person and ends the command with a telling exit code."""
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2_grpc  # noqa: PLC0415

    with target.channel() as conn:
        try:
            return getattr(nba_pb2_grpc.NextBestActionStub(conn), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            _client_error(exc, target, timeout)


def _client_error(exc: grpc.RpcError, target: Endpoint, timeout: float) -> NoReturn:
    from nba_service.security.tls import connection_failure  # noqa: PLC0415
    from nba_service.transport.grpc_errors import field_violations  # noqa: PLC0415

    status = exc.code().name
    details = exc.details() or ""
    failure = connection_failure(details, target.address, target.tls.secure) if status == "UNAVAILABLE" else None
    if failure is not None:
        click.echo(f"error: {failure}", err=True)
    elif status == "UNAVAILABLE" and "connect" in details.lower():
        click.echo(f"error: cannot reach the service at {target} (is `nba serve` running?)", err=True)
    elif status == "DEADLINE_EXCEEDED":
        click.echo(f"error: DEADLINE_EXCEEDED: no answer from {target} within {timeout:g} s (see --timeout)", err=True)
    else:
        click.echo(f"error: {status}: {details}", err=True)
        for field, problem in field_violations(exc).items():
            if details != f"{field}: {problem}":
                click.echo(f"  {field}: {problem}", err=True)
    sys.exit(exit_code(status))


_TARGET = connection_options
_TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Deadline in seconds.",
)


@main.command()
@click.argument("customer_id")
@click.option("--channel", type=click.Choice(_CHANNEL_NAMES), default="agent_desktop", show_default=True)
@click.option(
    "--max-actions",
    # The proto's uint32: the server decides the useful range (1-20) and says so; this only keeps
    # values the request cannot even carry from ending in a traceback.
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    help="At most this many actions (0: the server's default, 3).",
)
@click.option("--reason", default="", help="Why the customer called / why the call is placed.")
@click.option(
    "--direction",
    type=click.Choice(["inbound", "outbound"]),
    default=None,
    help="Who started the contact: inbound (the customer called) or outbound (we call them) "
    "[default: the channel's usual one: outbound for outbound_dialer, inbound for agent_desktop].",
)
@_TARGET
@_TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON (proto field names).")
@click.option("--dry-run", is_flag=True, help="Decide for real but record nothing, and print why (for reviewers).")
def decide(
    customer_id: str,
    channel: str,
    max_actions: int,
    reason: str,
    direction: str | None,
    target: Endpoint,
    timeout: float,
    as_json: bool,
    dry_run: bool,
) -> None:
    """Ask the service what to do with a customer now, and print the scripts."""
    from google.protobuf import json_format  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    request = nba_pb2.DecideRequest(
        customer_id=customer_id,
        channel=nba_pb2.Channel.Value(channel.upper()),
        max_actions=max_actions,
        context=nba_pb2.InteractionContext(reason=reason),
        dry_run=dry_run,
        direction=nba_pb2.Direction.Value(direction.upper()) if direction else nba_pb2.DIRECTION_UNSPECIFIED,
    )
    response = _call(target, "Decide", request, timeout)
    if as_json:
        # The names the proto, grpcurl and the decision records use, and every field even when empty.
        text = json_format.MessageToJson(
            response, indent=2, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        click.echo(text)
        return
    decided = nba_pb2.Direction.Name(response.direction).lower()
    if dry_run:
        from nba_service.review.explain_cli import print_decision, print_explanation  # noqa: PLC0415

        print_decision(response, customer_id, f"{channel} ({decided})")
        print_explanation(response.explanation)
        return
    ruleset = response.ruleset
    click.echo(f"Decision {response.decision_id} for {customer_id} on {channel} ({decided})")
    click.echo(f"Ruleset {ruleset.name} {ruleset.version} ({ruleset.hash[:12]})")
    if not response.actions:
        click.echo("No action for this customer now.")
    for action in response.actions:
        until = action.valid_until.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{action.priority}. {'[mandatory] ' if action.mandatory else ''}{action.script}")
        click.echo(f"   why: {action.reason}")
        click.echo(f"   [{action.category}] action {action.action_id}, rule {action.rule_id}, valid until {until}")


def _parse_value(text: str) -> tuple[str, Any]:
    """true/false, then integers, then numbers; anything else, or a value in double quotes, is text."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return "string_value", text[1:-1]
    if text in ("true", "false"):
        return "bool_value", text == "true"
    try:
        return "int_value", int(text)
    except ValueError:
        pass
    try:
        return "number_value", float(text)
    except ValueError:
        return "string_value", text


@main.command()
@click.argument("customer_id")
@click.argument("event_type")
@click.option(
    "--attr",
    "attributes",
    multiple=True,
    metavar="KEY=VALUE",
    help="An event attribute (repeatable). Numbers and true/false are typed; "
    "quote text that looks like a number: KEY='\"1234\"'.",
)
@_TARGET
@_TIMEOUT
def event(customer_id: str, event_type: str, attributes: tuple[str, ...], target: Endpoint, timeout: float) -> None:
    """Send a live trigger event for a customer (e.g. large_deposit --attr amount=48250)."""
    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    values: dict[str, nba_pb2.AttributeValue] = {}
    for item in attributes:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--attr")
        kind, value = _parse_value(raw)
        values[key] = nba_pb2.AttributeValue(**{kind: value})
    request = nba_pb2.IngestEventRequest(customer_id=customer_id, type=event_type, attributes=values)
    response = _call(target, "IngestEvent", request, timeout)
    click.echo(f"event {response.event_id} recorded for {customer_id}")


@main.command()
@click.argument("decision_id")
@click.argument("action_id")
@click.argument("outcome", type=click.Choice(_OUTCOME_NAMES))
@click.option("--note", default="")
@_TARGET
@_TIMEOUT
def outcome(decision_id: str, action_id: str, outcome: str, note: str, target: Endpoint, timeout: float) -> None:
    """Record what happened with an action a decision returned."""
    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    request = nba_pb2.RecordOutcomeRequest(
        decision_id=decision_id, action_id=action_id, outcome=nba_pb2.Outcome.Value(outcome.upper()), note=note
    )
    response = _call(target, "RecordOutcome", request, timeout)
    # The service names the customer only to the caller the decision was answered to.
    whom = f" for {response.customer_id}" if response.customer_id else f" for decision {decision_id}"
    click.echo(f"outcome {outcome} recorded{whom}")


@main.group()
def rulesets() -> None:
    """Work with ruleset files."""


@rulesets.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[PATH]...")
@click.option("--strict", is_flag=True, help="Also fail unless every rule and every policy is exercised.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
def rulesets_test(paths: tuple[Path, ...], strict: bool, as_json: bool) -> None:
    """Run the scenario tests kept beside each ruleset (NAME.tests.yaml next to NAME.yaml) on the real engine.

    PATH is a ruleset, a tests file or a directory of rulesets; none means the bundled rulesets. Exit 0 when
    every case passes, 1 when a case fails (with --strict also when a rule or policy is never exercised or a
    ruleset has no tests), 2 when a file is invalid (every problem is printed with file:line).
    """
    from nba_service.scenario_report import run_scenario_tests  # noqa: PLC0415
    from nba_service.settings import BUNDLED_RULESETS  # noqa: PLC0415

    sys.exit(run_scenario_tests(list(paths) or [BUNDLED_RULESETS], strict=strict, as_json=as_json, echo=click.echo))


@main.group()
def sample() -> None:
    """The synthetic customer population."""


@sample.command("generate")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--count", type=click.IntRange(1, 999_999), default=1000, show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed [default: the bundled sample's].")
def generate(out: Path, count: int, seed: int | None) -> None:
    """Write a deterministic synthetic population as JSON lines (.gz compresses)."""
    from nba_service import synthetic  # noqa: PLC0415

    synthetic.write_sample(out, count, synthetic.DEFAULT_SEED if seed is None else seed)
    click.echo(json.dumps({"written": str(out), "customers": count}))


@main.group()
def db() -> None:
    """The PostgreSQL store: schema migrations and synthetic data."""


def _no_password_in_argv(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A DSN given as `--dsn` may name the server, never carry the password: the process list shows it."""
    from nba_service.security.secrets import check_dsn, has_password  # noqa: PLC0415

    if value is None:
        return None
    from_argv = ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE
    if from_argv and has_password(value):
        raise click.BadParameter(
            "carries a password, which the process list shows to every user of the machine; give the password in "
            "NBA_DSN_PASSWORD_FILE / --dsn-password-file, PGPASSWORD or a passfile (PGPASSFILE), or the whole DSN "
            "in NBA_DSN",
            ctx=ctx,
            param=param,
        )
    try:
        check_dsn(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


def _dsn_options(command: Any) -> Any:
    command = click.option(
        "--dsn-password-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="NBA_DSN_PASSWORD_FILE",
        help="A file holding only the password [env NBA_DSN_PASSWORD_FILE].",
    )(command)
    return click.option(
        "--dsn",
        envvar="NBA_DSN",
        required=True,
        callback=_no_password_in_argv,
        help="PostgreSQL DSN, without its password [env NBA_DSN, which may hold one].",
    )(command)


async def _connect(dsn: str, password_file: Path | None) -> Any:
    import asyncpg  # noqa: PLC0415

    from nba_service.security.secrets import password_source, read_password_file, redact  # noqa: PLC0415

    if password_file is not None:
        try:
            read_password_file(password_file)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--dsn-password-file / NBA_DSN_PASSWORD_FILE") from exc
    try:
        return await asyncpg.connect(dsn, password=password_source(password_file), timeout=10)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise click.ClickException(redact(f"cannot connect to {dsn}: {exc}")) from exc


@db.command("migrate")
@_dsn_options
def db_migrate(dsn: str, dsn_password_file: Path | None) -> None:
    """Apply the schema migrations that are missing (safe to run again)."""
    from nba_service.errors import MigrationError  # noqa: PLC0415
    from nba_service.stores.postgres.migrate import migrate  # noqa: PLC0415

    async def run() -> list[str]:
        conn = await _connect(dsn, dsn_password_file)
        try:
            return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
        finally:
            await conn.close()

    try:
        applied = asyncio.run(run())
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("schema is up to date; nothing applied")


@db.command("seed")
@_dsn_options
@click.option("--customers", type=click.IntRange(1, 999_999), required=True, help="How many synthetic customers.")
@click.option("--seed", "seed_value", type=int, default=None, help="Random seed [default: the bundled sample's].")
@click.option("--force", is_flag=True, help="Load even though the database already holds data (replaces these ids).")
def db_seed(dsn: str, dsn_password_file: Path | None, customers: int, seed_value: int | None, force: bool) -> None:
    """Load a deterministic synthetic population (the embedded store's generator) fast, with COPY."""
    from datetime import datetime  # noqa: PLC0415

    from nba_service import synthetic  # noqa: PLC0415
    from nba_service.stores.postgres.seed import seed  # noqa: PLC0415

    async def run() -> Any:
        conn = await _connect(dsn, dsn_password_file)
        try:
            with click.progressbar(length=customers, label="seeding customers", file=sys.stderr) as bar:
                return await seed(
                    conn,
                    customers,
                    seed=synthetic.DEFAULT_SEED if seed_value is None else seed_value,
                    now=datetime.now(UTC),
                    force=force,
                    progress=bar.update,
                )
        finally:
            await conn.close()

    try:
        report = asyncio.run(run())
    except NbaError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"seeded {report.customers} customers, {report.events} events, {report.contacts} contacts, "
        f"{report.consents} consents, {report.do_not_call} do-not-call, {report.phones} phone numbers "
        f"in {report.seconds:.1f} s"
    )


@db.command("replay")
@_dsn_options
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
def db_replay(dsn: str, dsn_password_file: Path | None, files: tuple[Path, ...]) -> None:
    """Load decision records spilled at shutdown (records-unsent-*.jsonl) into the decisions table.

    Safe to run again: records already stored are skipped. A line that cannot be loaded (not JSON, cut
    short, an unknown format, or refused by PostgreSQL, which sets it aside in dead_letters) is reported
    as FILE:LINE and the rest is loaded; the exit code is then 1.
    """
    import asyncpg  # noqa: PLC0415

    from nba_service.security.secrets import redact  # noqa: PLC0415
    from nba_service.stores.postgres.decision_log import FileReplay, replay  # noqa: PLC0415
    from nba_service.stores.postgres.migrate import pending  # noqa: PLC0415

    async def run() -> list[FileReplay]:
        conn = await _connect(dsn, dsn_password_file)
        try:
            missing = await pending(conn)
            if missing:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
                raise click.ClickException(
                    f"the database schema is not up to date (missing {names}); run `nba db migrate`"
                )
            return await replay(conn, files)
        finally:
            await conn.close()

    try:
        reports = asyncio.run(run())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Everything stored so far stays stored; running the command again loads the rest.
        failure = redact(f"{type(exc).__name__}: {exc}")
        raise click.ClickException(f"replay stopped, the database failed: {failure}") from exc
    refused = 0
    for report in reports:
        click.echo(
            f"{report.path}: {report.decisions} decisions read, {report.inserted} inserted "
            f"({report.already_stored} were already stored); {report.updates} delivery updates, "
            f"{report.updated} applied ({report.moot} for decisions never stored, so nothing to correct); "
            f"{len(report.problems)} lines not loaded"
        )
        for problem in report.problems:
            click.echo(str(problem), err=True)
        refused += len(report.problems)
    set_aside = sum(r.refused_decisions for r in reports)
    click.echo(
        f"replayed {len(reports)} file{'s' if len(reports) != 1 else ''}: "
        f"{sum(r.inserted for r in reports)} decisions inserted, {sum(r.already_stored for r in reports)} already "
        f"stored, {sum(r.updated for r in reports)} delivery updates applied, {refused} lines not loaded "
        f"({set_aside} set aside in dead_letters)"
    )
    if refused:
        sys.exit(1)


@main.group()
def decisions() -> None:
    """The decision records: what agents and dialers were told, and what came of it."""


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """ISO 8601; a time without a zone is UTC, so `--since 2026-12-01` means midnight UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T09:30Z)") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@decisions.command("export")
@click.option("--since", callback=_moment, help="Only records at or after this time (ISO 8601; UTC unless given).")
@click.option("--until", callback=_moment, help="Only records before this time.")
@click.option("--customer", "customer_id", default=None, help="Only this customer's records.")
@store_options()
@click.option("-o", "--out", type=click.File("w", encoding="utf-8"), default="-", help="Write here [stdout].")
def decisions_export(
    since: datetime | None, until: datetime | None, customer_id: str | None, store: str, db_path: Path, out: Any
) -> None:
    """Print decision and outcome records as JSON lines (format nba.record/1), oldest first.

    Each line is one record: "kind" is "decision" or "outcome"; see docs/decision-records.md.
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from nba_service.export import export_records  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    if since is not None and until is not None and until <= since:
        raise click.BadParameter("must be after --since", param_hint="--until")
    try:
        settings = Settings.model_validate({"store": store, "db_path": db_path})
    except ValidationError as exc:
        raise click.UsageError("; ".join(_settings_problem(e) for e in exc.errors())) from exc

    def write(line: str) -> None:
        out.write(line + "\n")

    try:
        count = asyncio.run(export_records(settings, write, since=since, until=until, customer_id=customer_id))
    except NbaError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(3 if exc.code is ErrorCode.UNAVAILABLE else 2)
    click.echo(f"{count} records exported", err=True)


# Defined here rather than beside `rulesets check`: it reads decision records, with the export's options.
@rulesets.command("shadow-report")
@click.option("--since", callback=_moment, help="Only decisions at or after this time (ISO 8601; UTC unless given).")
@click.option("--until", callback=_moment, help="Only decisions before this time.")
@store_options()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def shadow_report(since: datetime | None, until: datetime | None, store: str, db_path: Path, as_json: bool) -> None:
    """How often and where a candidate run with `nba serve --shadow` disagreed with the active ruleset.

    Counts the shadowed decisions, how many agreed (same actions in the same order), and per action how
    often it was offered by the active ruleset only, by the candidate only, or by both at a different rank,
    with example decision ids. Exit codes as for `nba decisions export`.
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from nba_service import shadow_report as reports  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    if since is not None and until is not None and until <= since:
        raise click.BadParameter("must be after --since", param_hint="--until")
    try:
        settings = Settings.model_validate({"store": store, "db_path": db_path})
    except ValidationError as exc:
        raise click.UsageError("; ".join(_settings_problem(e) for e in exc.errors())) from exc
    try:
        report = asyncio.run(reports.shadow_report(settings, since=since, until=until))
    except NbaError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(3 if exc.code is ErrorCode.UNAVAILABLE else 2)
    click.echo(json.dumps(report.to_json(), ensure_ascii=False) if as_json else reports.render(report))


def _register_commands() -> None:
    """Commands that live beside the code they drive; each module adds its own to these groups."""
    from nba_service.admin_cli import register  # noqa: PLC0415

    register(rulesets, _TARGET)
    # Reviewer tools (issue 9) register here, one line each:
    from nba_service.review.check_cli import register as register_check  # noqa: PLC0415

    register_check(rulesets)
    from nba_service.review.render_cli import register as register_render  # noqa: PLC0415

    register_render(rulesets)
    from nba_service.review.explain_cli import register as register_explain  # noqa: PLC0415

    register_explain(main, rulesets, _TARGET, _TIMEOUT)
    from nba_service.review.diff_cli import register as register_diff  # noqa: PLC0415

    register_diff(rulesets)
    from nba_service.review.starved_cli import register as register_starved  # noqa: PLC0415

    register_starved(rulesets)
    from nba_service.security.devcerts_cli import register as register_dev_certs  # noqa: PLC0415

    register_dev_certs(main)
    from nba_service.dialer_cli import register as register_dialer  # noqa: PLC0415

    register_dialer(main, _TARGET)

    from nba_service.health_cli import register as register_health  # noqa: PLC0415

    register_health(main, _TARGET)
    from nba_service.dnc_cli import register as register_dnc  # noqa: PLC0415

    register_dnc(main)
    from nba_service.review.report_cli import register as register_report  # noqa: PLC0415

    register_report(main, _moment)
    from nba_service.simulator.cli import register as register_simulate  # noqa: PLC0415

    register_simulate(main)
    # REVIEW-COMMANDS


_register_commands()
