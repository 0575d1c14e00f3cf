"""The `nba` command line: serve, ask for a decision, feed events and outcomes, check rulesets."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from pydantic import ValidationError

from nba_service.errors import NbaError, RulesetInvalid

DEFAULT_TARGET = "127.0.0.1:50051"
_CHANNEL_NAMES = ("agent_desktop", "outbound_dialer")
_OUTCOME_NAMES = ("accepted", "declined", "no_answer", "converted", "callback_requested", "not_offered")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Contact-centre next-best-action service."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1, env NBA_HOST].")
@click.option("--port", type=int, default=None, help="Port [default: 50051, env NBA_PORT; 0 picks a free one].")
@click.option(
    "--rulesets",
    "rulesets",
    type=click.Path(path_type=Path),
    default=None,
    help="Ruleset file or directory [default: the bundled rulesets/, env NBA_RULESETS].",
)
@click.option("--ruleset", "ruleset", default=None, help="Active ruleset name when the path holds several.")
@click.option(
    "--store",
    type=click.Choice(["memory", "postgres"]),
    default=None,
    help="Profile store [default: memory, env NBA_STORE].",
)
@click.option("--dsn", default=None, help="PostgreSQL DSN for --store postgres [env NBA_DSN].")
@click.option("--db-timeout", type=float, default=None, help="Seconds a database call may take [default: 1].")
@click.option("--pool-max", type=int, default=None, help="Most database connections [default: 10].")
@click.option("--drain-seconds", type=float, default=None, help="How long shutdown waits for the decision log [30].")
@click.option(
    "--sample",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Customers (JSON lines) for the memory store [default: the bundled 1,000].",
)
@click.option(
    "--decision-log",
    type=click.Path(path_type=Path),
    default=None,
    help="Decision log file [default: var/decisions.jsonl, env NBA_DECISION_LOG].",
)
@click.option(
    "--log-format", type=click.Choice(["console", "json"]), default=None, help="Log format [default: console]."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--grace-seconds", type=float, default=None, help="Time in-flight calls get on shutdown [default: 10].")
def serve(**options: Any) -> None:
    """Run the gRPC service (embedded store and bundled rulesets unless told otherwise)."""
    from nba_service.log_setup import configure_logging  # noqa: PLC0415 - keep `nba decide` start-up fast
    from nba_service.runner import serve as run  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            ": ".join(
                part for part in (".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, ")) if part
            )
            for e in exc.errors()
        )
        raise click.UsageError(f"invalid settings: {problems}") from exc
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(run(settings))
    except RulesetInvalid as exc:
        click.echo(f"cannot start: the rulesets are invalid:\n{exc}", err=True)
        sys.exit(2)
    except (OSError, NbaError) as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(2)


def _call(target: str, method: str, request: Any, timeout: float = 5.0) -> Any:
    """One unary call; a failure is printed for a person and ends the command with a telling exit code."""
    from nba_service._proto.nba.v1 import nba_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(target) as conn:
        try:
            return getattr(nba_pb2_grpc.NextBestActionStub(conn), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            _client_error(exc, target)
            raise AssertionError("unreachable") from exc  # _client_error exits


def _client_error(exc: grpc.RpcError, target: str) -> NoReturn:
    from nba_service.transport.grpc_errors import field_violations  # noqa: PLC0415

    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
        click.echo(f"error: cannot reach the service at {target} (is `nba serve` running?)", err=True)
        sys.exit(3)
    details = exc.details() or ""
    click.echo(f"error: {code.name}: {details}", err=True)
    for field, problem in field_violations(exc).items():
        if details != f"{field}: {problem}":
            click.echo(f"  {field}: {problem}", err=True)
    sys.exit(2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1)


@main.command()
@click.argument("customer_id")
@click.option("--channel", type=click.Choice(_CHANNEL_NAMES), default="agent_desktop", show_default=True)
@click.option("--max-actions", type=int, default=0, help="At most this many actions (0: the server's default, 3).")
@click.option("--reason", default="", help="Why the customer called / why the call is placed.")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="NBA_TARGET")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Deadline in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
def decide(
    customer_id: str, channel: str, max_actions: int, reason: str, target: str, timeout: float, as_json: bool
) -> None:
    """Ask the service what to do with a customer now, and print the scripts."""
    from google.protobuf import json_format  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    request = nba_pb2.DecideRequest(
        customer_id=customer_id,
        channel=nba_pb2.Channel.Value(channel.upper()),
        max_actions=max_actions,
        context=nba_pb2.InteractionContext(reason=reason),
    )
    response = _call(target, "Decide", request, timeout)
    if as_json:
        click.echo(json_format.MessageToJson(response, indent=2))
        return
    ruleset = response.ruleset
    click.echo(f"Decision {response.decision_id} for {customer_id} on {channel}")
    click.echo(f"Ruleset {ruleset.name} {ruleset.version} ({ruleset.hash[:12]})")
    if not response.actions:
        click.echo("No action for this customer now.")
    for action in response.actions:
        until = action.valid_until.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{action.priority}. {action.script}")
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
@click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="NBA_TARGET")
def event(customer_id: str, event_type: str, attributes: tuple[str, ...], target: str) -> None:
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
    response = _call(target, "IngestEvent", request)
    click.echo(f"event {response.event_id} recorded for {customer_id}")


@main.command()
@click.argument("decision_id")
@click.argument("action_id")
@click.argument("outcome", type=click.Choice(_OUTCOME_NAMES))
@click.option("--note", default="")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="NBA_TARGET")
def outcome(decision_id: str, action_id: str, outcome: str, note: str, target: str) -> None:
    """Record what happened with an action a decision returned."""
    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    request = nba_pb2.RecordOutcomeRequest(
        decision_id=decision_id, action_id=action_id, outcome=nba_pb2.Outcome.Value(outcome.upper()), note=note
    )
    response = _call(target, "RecordOutcome", request)
    click.echo(f"outcome {outcome} recorded for {response.customer_id}")


@main.group()
def rulesets() -> None:
    """Work with ruleset files."""


@rulesets.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plan", is_flag=True, help="Also print the durable_rules plan the compiler makes.")
def check(paths: tuple[Path, ...], plan: bool) -> None:
    """Validate ruleset files; exit 0 only when every file is valid."""
    from nba_service.domain.compiler import compile_ruleset, describe  # noqa: PLC0415
    from nba_service.domain.loader import load_ruleset_file  # noqa: PLC0415

    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    failed = 0
    for file in files:
        try:
            ruleset = load_ruleset_file(file)
        except RulesetInvalid as exc:
            failed += 1
            click.echo(f"INVALID {file}: {len(exc.ruleset_problems)} problem(s)")
            for problem in exc.ruleset_problems:
                click.echo(f"  {problem}")
            continue
        compiled = compile_ruleset(ruleset)
        meta = ruleset.meta
        click.echo(
            f"ok {file}: {meta.name} {meta.version}, {len(ruleset.rules)} rules, {len(ruleset.actions)} actions, "
            f"{len(compiled.partitions)} engine rulesets, sha256 {ruleset.content_hash[:12]}"
        )
        if plan:
            click.echo(describe(compiled))
    if not files:
        click.echo("no ruleset files given")
        sys.exit(1)
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) invalid")
        sys.exit(1)


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


_DSN = click.option("--dsn", envvar="NBA_DSN", required=True, help="PostgreSQL DSN [env NBA_DSN].")


async def _connect(dsn: str) -> Any:
    import asyncpg  # noqa: PLC0415

    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise click.ClickException(f"cannot connect to {_redacted(dsn)}: {exc}") from exc


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@db.command("migrate")
@_DSN
def db_migrate(dsn: str) -> None:
    """Apply the schema migrations that are missing (safe to run again)."""
    from nba_service.stores.postgres.migrate import MigrationError, migrate  # noqa: PLC0415

    async def run() -> list[str]:
        conn = await _connect(dsn)
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
@_DSN
@click.option("--customers", type=click.IntRange(1, 999_999), required=True, help="How many synthetic customers.")
@click.option("--seed", "seed_value", type=int, default=None, help="Random seed [default: the bundled sample's].")
@click.option("--force", is_flag=True, help="Load even though the database already holds data (replaces these ids).")
def db_seed(dsn: str, customers: int, seed_value: int | None, force: bool) -> None:
    """Load a deterministic synthetic population (the embedded store's generator) fast, with COPY."""
    from datetime import datetime  # noqa: PLC0415

    from nba_service import synthetic  # noqa: PLC0415
    from nba_service.stores.postgres.seed import seed  # noqa: PLC0415

    async def run() -> Any:
        conn = await _connect(dsn)
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
        f"{report.consents} consents, {report.do_not_call} do-not-call in {report.seconds:.1f} s"
    )


@db.command("replay")
@_DSN
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
def db_replay(dsn: str, files: tuple[Path, ...]) -> None:
    """Load decision files spilled at shutdown (decisions-unsent-*.jsonl) into the decisions table."""
    from nba_service.stores.postgres.decision_log import replay  # noqa: PLC0415

    async def run() -> list[tuple[Path, int, int]]:
        conn = await _connect(dsn)
        try:
            return [(path, *(await replay(conn, path))) for path in files]
        finally:
            await conn.close()

    for path, read, inserted in asyncio.run(run()):
        click.echo(f"{path}: {read} decisions read, {inserted} inserted ({read - inserted} were already stored)")
