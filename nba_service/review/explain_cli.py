"""`nba explain` and `nba rulesets list | show`: the Review service from the command line, for a person.

`--replay` is deliberately client-side: it fetches the record (with its inputs) and the archived text of
the version that decided, and runs them through the one pipeline on the real engine in this process. A
reviewer then need not trust the server's word that a past answer still follows from its inputs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from nba_service.security.tls import Endpoint

EXIT_REPLAY_DIFFERS = 5
EXPLAIN_EXIT_CODES = """\b
Exit codes:
  0  done (with --replay: the replay gave the recorded answer)
  1  any other failure (with --replay: the archived version could not be loaded here)
  2  usage error, or the request was refused: INVALID_ARGUMENT, NOT_FOUND (an unknown decision, or a
     dry run, which records nothing), FAILED_PRECONDITION (e.g. a record too old to replay)
  3  the service cannot be reached, or answers UNAVAILABLE
  4  no answer within --timeout: DEADLINE_EXCEEDED
  5  --replay only: the replay DIFFERS from the record (the differences are listed)"""

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def register(main: click.Group, rulesets: click.Group, target: Decorator, timeout: Decorator) -> None:
    as_json = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON (proto field names).")

    @main.command("explain", epilog=EXPLAIN_EXIT_CODES)
    @click.argument("decision_id")
    @click.option("--why-not", "why_not", metavar="ACTION_ID", help="Only why this action was not offered.")
    @click.option(
        "--replay",
        is_flag=True,
        help="Run the recorded inputs through the version that decided, here on the real engine, and fail "
        f"(exit {EXIT_REPLAY_DIFFERS}) if the answer differs.",
    )
    @target
    @timeout
    @as_json
    def explain(
        decision_id: str, why_not: str | None, replay: bool, target: Endpoint, timeout: float, as_json: bool
    ) -> None:
        """Why a recorded decision came out as it did: the rules that fired with the values they read, every
        candidate not offered and why, in words."""
        from nba_service._proto.nba.v1 import nba_pb2, review_pb2  # noqa: PLC0415

        if why_not is not None and replay:
            raise click.UsageError("--why-not and --replay answer different questions; ask one at a time")
        if why_not is not None:
            request = review_pb2.WhyNotRequest(decision_id=decision_id, action_id=why_not)
            answer = _review(target, "WhyNot", request, timeout)
            click.echo(_json(answer) if as_json else answer.words)
            return
        response = _review(
            target, "ExplainDecision", review_pb2.ExplainDecisionRequest(decision_id=decision_id), timeout
        )
        if replay:
            sys.exit(_replay(response, target, timeout, as_json))
        if as_json:
            click.echo(_json(response))
            return
        channel = nba_pb2.Channel.Name(response.channel).lower()
        if response.direction:
            channel += f" ({nba_pb2.Direction.Name(response.direction).lower()})"
        print_decision(response, response.customer_id, channel)
        print_explanation(response.explanation)

    @rulesets.command("list")
    @target
    @timeout
    @click.option("--name", default="", help="Only this ruleset's versions.")
    @as_json
    def list_rulesets(target: Endpoint, timeout: float, name: str, as_json: bool) -> None:
        """Every ruleset version that has served on the running service, newest activation first."""
        from nba_service._proto.nba.v1 import review_pb2  # noqa: PLC0415

        response = _review(target, "ListRulesets", review_pb2.ListRulesetsRequest(name=name), timeout)
        if as_json:
            click.echo(_json(response))
            return
        if not response.rulesets:
            click.echo("no ruleset version has been archived yet")
        for item in response.rulesets:
            mark = " (active)" if item.active else " (previous)" if item.previous else ""
            how = " ".join(
                part
                for part in (item.last_activation_origin, item.last_activated_by and f"by {item.last_activated_by}")
                if part
            )
            click.echo(
                f"{item.name} {item.version}  {item.hash[:12]}  first active {_when(item.first_activated_at)}, "
                f"last {_when(item.last_activated_at)}{f' ({how})' if how else ''}{mark}"
            )

    @rulesets.command("show")
    @click.argument("name_or_hash")
    @click.option("--version", "version", default="", help="The version of NAME [default: its latest].")
    @click.option("--source", is_flag=True, help="Print the ruleset file as it was activated, not the document.")
    @target
    @timeout
    @as_json
    def show(name_or_hash: str, version: str, source: bool, target: Endpoint, timeout: float, as_json: bool) -> None:
        """An archived version as a document (Markdown), by name (and --version) or by its hash or a prefix
        of at least 12 hex digits."""
        from nba_service._proto.nba.v1 import review_pb2  # noqa: PLC0415

        if version or not _looks_like_hash(name_or_hash):
            request = review_pb2.GetRulesetRequest(name=name_or_hash, version=version)
        else:
            request = review_pb2.GetRulesetRequest(hash=name_or_hash)
        response = _review(target, "GetRuleset", request, timeout)
        if as_json:
            click.echo(_json(response))
        else:
            click.echo(response.source if source else response.markdown, nl=False)


def print_decision(response: Any, customer_id: str, channel: str) -> None:
    """The decision as answered; `response` is an ExplainDecisionResponse or a dry run's DecideResponse."""
    ruleset = response.ruleset
    explanation = response.explanation
    kind = "Dry run" if explanation.dry_run else "Decision"
    click.echo(f"{kind} {response.decision_id}")
    click.echo(f"  customer {customer_id}, {channel}, at {_when(response.decided_at)}")
    click.echo(f"  ruleset {ruleset.name} {ruleset.version} (sha256 {ruleset.hash})")
    delivery = "nothing recorded (dry run)" if explanation.dry_run else explanation.delivery
    click.echo(f"  engine {explanation.engine}, delivery: {delivery}")
    if explanation.trace_id:
        click.echo(f"  trace {explanation.trace_id}")
    click.echo("Answered:" if response.actions else "Answered: no action")
    for action in response.actions:
        click.echo(f"  {action.priority}. {action.action_id} (rule {action.rule_id}): {action.script}")


def print_explanation(explanation: Any) -> None:
    click.echo("Rules that fired:" if explanation.fired else "Rules that fired: none")
    for rule in explanation.fired:
        click.echo(f"  {rule.rule_id}: {rule.sentence}")
        for condition in rule.conditions:
            click.echo(f"    {'+' if condition.held else '-'} {condition.words}")
    click.echo("Not offered:" if explanation.dropped else "Not offered: none")
    for drop in explanation.dropped:
        policy = f", policy {drop.policy}" if drop.policy else ""
        click.echo(f"  {drop.action_id} [{drop.stage}: {drop.reason}{policy}]")
        click.echo(f"    {drop.words}")
    if not explanation.replayable and not explanation.dry_run:
        click.echo("Replay: not possible, the record was written before decisions kept their inputs.")
    click.echo(f"Summary: {explanation.summary}")


def _replay(response: Any, target: Endpoint, timeout: float, as_json: bool) -> int:
    """Runs the record's inputs through its archived version on the real engine; the exit code to end with."""
    from nba_service._proto.nba.v1 import review_pb2  # noqa: PLC0415
    from nba_service.app import activate  # noqa: PLC0415
    from nba_service.domain.loader import load_ruleset_text  # noqa: PLC0415
    from nba_service.domain.records import DecisionRecord  # noqa: PLC0415
    from nba_service.errors import NbaError  # noqa: PLC0415
    from nba_service.review.explain import replay  # noqa: PLC0415

    record = DecisionRecord.from_json(json.loads(response.record_json))
    wanted = record.ruleset
    version = f"{wanted.name} {wanted.version} ({wanted.hash[:12]})"
    archived = _review(target, "GetRuleset", review_pb2.GetRulesetRequest(hash=wanted.hash), timeout)
    try:
        ruleset = load_ruleset_text(archived.source, f"{wanted.name}.yaml")
    except NbaError as exc:
        click.echo(f"error: the archived text of {version} does not load here: {exc}", err=True)
        return 1
    if ruleset.content_hash != wanted.hash:
        click.echo(f"error: the archive answered a text hashing to {ruleset.content_hash[:12]} for {version}", err=True)
        return 1
    active = activate(ruleset)
    try:
        result = replay(record, active)
    except NbaError as exc:
        click.echo(f"error: {exc.message}", err=True)
        return 2
    finally:
        active.engine.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "decision_id": record.decision_id,
                    "ruleset": {"name": wanted.name, "version": wanted.version, "hash": wanted.hash},
                    "engine": active.engine_name,
                    "same": result.same,
                    "differences": list(result.differences),
                },
                indent=2,
            )
        )
    elif result.same:
        click.echo(f"replayed: same answer ({version}, on {active.engine_name}, at {record.decided_at.isoformat()})")
    if result.same:
        return 0
    click.echo(
        f"REPLAY DIFFERS: decision {record.decision_id}, run again through {version} on {active.engine_name}, "
        f"does not give the recorded answer ({len(result.differences)} difference(s)):",
        err=True,
    )
    for difference in result.differences:
        click.echo(f"  {difference}", err=True)
    return EXIT_REPLAY_DIFFERS


def _review(target: Endpoint, method: str, request: Any, timeout: float) -> Any:
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import review_pb2_grpc  # noqa: PLC0415
    from nba_service.cli import _client_error  # noqa: PLC0415

    with target.channel() as conn:
        try:
            return getattr(review_pb2_grpc.ReviewStub(conn), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            _client_error(exc, target, timeout)


def _looks_like_hash(text: str) -> bool:
    """Hex digits, at least one a digit: no ruleset name looks like that, and a prefix too short for the
    archive is then refused as a hash (naming the rule) rather than looked up as a name."""
    key = text.lower().removeprefix("sha256:")
    return bool(key) and all(c in "0123456789abcdef" for c in key) and any(c.isdigit() for c in key)


def _when(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _json(message: Any) -> str:
    from google.protobuf import json_format  # noqa: PLC0415

    return str(
        json_format.MessageToJson(
            message, indent=2, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )
