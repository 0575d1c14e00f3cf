"""`nba dialer export` and `nba dialer results`: call lists out of DecideBatch, dispositions back as outcomes.

Both speak to the running service over gRPC (the shared connection options), as a dialer integration would:
the export needs the dialer role, and every row it writes is a decision the server recorded before streaming
it. The export writes both files under temporary names and renames them only when the campaign streamed to the
end, so a dialer never loads half a list. The import checks the whole file (locally, then each row with the
server without storing it) before it stores anything, so a bad file stores nothing.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import sys
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from nba_service.dialer_files import (
    EXCLUDED_COLUMNS,
    FORMATS,
    CallRow,
    OutcomeRow,
    Refusal,
    call_line,
    delimiter,
    header,
    missing_columns,
    parse_dispositions,
)

if TYPE_CHECKING:
    import grpc

    from nba_service.security.tls import Endpoint

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
MAX_LISTED = 10_000  # as DecisionService's MAX_CAMPAIGN_IDS: refused here before anything is sent
MAX_RESULT_ROWS = 1_000_000
_PHONE_TYPES = {1: "mobile", 2: "home", 3: "work"}
DIALER_EXIT_CODES = """\b
Exit codes:
  0  done
  1  any other failure
  2  usage error, or refused: a bad campaign (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED), or rows of a
     disposition file (then nothing was stored; every refused row is listed)
  3  the service cannot be reached, or answers UNAVAILABLE
  4  DEADLINE_EXCEEDED (see --timeout)"""


def register(main: click.Group, target: Decorator) -> None:
    @main.group(epilog=DIALER_EXIT_CODES)
    def dialer() -> None:
        """Outbound dialer campaigns: call lists out, dispositions back in."""

    @dialer.command("export", epilog=DIALER_EXIT_CODES)
    @click.option("--campaign", "campaign_id", required=True, help="Campaign id (in every record and call key).")
    @click.option("--channel", type=click.Choice(["outbound_dialer"]), default="outbound_dialer", show_default=True)
    @click.option(
        "--customers",
        "customers_file",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help=f"A file of customer ids, one a line (at most {MAX_LISTED:,}).",
    )
    @click.option(
        "--segment", "segment", multiple=True, metavar="ATTRIBUTE=VALUE", help="A segment condition (repeatable)."
    )
    @click.option("--all-customers", is_flag=True, help="Every customer (instead of --customers or --segment).")
    @click.option("--at", "at", default=None, help="When the calls will be placed (ISO 8601) [now].")
    @click.option("--legal-window", default="", help="Legal calling hours in each customer's zone [08:00-21:00].")
    @click.option("--format", "layout", type=click.Choice(FORMATS), default="generic", show_default=True)
    @click.option("--list-id", type=click.IntRange(1, 10**12), default=999, show_default=True, help="VICIdial list_id.")
    @click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The call list.")
    @click.option(
        "--excluded", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Who is left out, why."
    )
    @target
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True)
    def export(
        campaign_id: str,
        channel: str,
        customers_file: Path | None,
        segment: tuple[str, ...],
        all_customers: bool,
        at: str | None,
        legal_window: str,
        layout: str,
        list_id: int,
        out: Path,
        excluded: Path,
        target: Endpoint,
        timeout: float,
    ) -> None:
        """Decide a campaign on the server (DecideBatch) and write the call list and the excluded customers."""
        from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

        chosen = [bool(customers_file), bool(segment), all_customers]
        if sum(chosen) != 1:
            raise click.UsageError("give exactly one of --customers FILE, --segment ATTRIBUTE=VALUE, --all-customers")
        request = nba_pb2.DecideBatchRequest(campaign_id=campaign_id, channel=nba_pb2.OUTBOUND_DIALER)
        request.legal_window = legal_window
        if customers_file is not None:
            request.customer_ids.ids.extend(_read_ids(customers_file))
        else:
            equals = dict(_condition(item) for item in segment)
            request.segment.CopyFrom(nba_pb2.Segment(equals=equals, all_customers=all_customers))
        if at is not None:
            request.time.FromDatetime(_aware(at, "--at"))
        counts = _export(target, request, timeout, layout, list_id, out, excluded)
        calls = counts.pop("call", 0)
        left = sum(counts.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "none"
        click.echo(f"{calls} calls written to {out} ({layout}); {left} customers excluded, written to {excluded}")
        click.echo(f"excluded by reason: {reasons}")

    @dialer.command("results", epilog=DIALER_EXIT_CODES)
    @click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
    @click.option("--format", "layout", type=click.Choice(FORMATS), default="generic", show_default=True)
    @click.option(
        "--time-zone", default="UTC", show_default=True, help="The zone of times written without an offset (VICIdial)."
    )
    @target
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
    def results(file: Path, layout: str, time_zone: str, target: Endpoint, timeout: float) -> None:
        """Import a dialer's disposition file as outcomes (RecordOutcome), idempotently.

        no answer, busy and answering machine record NO_ANSWER; a wrong number records NOT_OFFERED and marks the
        number so it is never exported again; a connected call records its outcome. Importing the same file
        again records nothing new. The whole file is checked first: one bad row and nothing is stored.
        """
        try:
            zone = zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise click.BadParameter(f"{time_zone!r} is not an IANA time zone", param_hint="--time-zone") from exc
        rows, refused = parse_dispositions(layout, _read_rows(file, layout), zone)
        total = len(rows) + len(refused)
        refused = sorted([*refused, *_check_with_server(target, rows, timeout)], key=lambda r: r.line)
        if refused:
            for refusal in refused:
                click.echo(f"{file}:{refusal}", err=True)
            click.echo(f"refused {len(refused)} of {total} rows; nothing was stored", err=True)
            sys.exit(2)
        stored, already = _store(target, rows, timeout)
        click.echo(
            f"{len(rows)} rows read: {stored} outcomes recorded, {already} already recorded by an earlier import"
        )


def _read_ids(path: Path) -> list[str]:
    ids: list[str] = []
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            ident = line.strip()
            if not ident or ident.startswith("#"):
                continue
            ids.append(ident)
            if len(ids) > MAX_LISTED:
                raise click.BadParameter(
                    f"more than {MAX_LISTED:,} ids (line {number}); one campaign request takes at most {MAX_LISTED:,}: "
                    "split the file, or select the customers with --segment",
                    param_hint="--customers",
                )
    if not ids:
        raise click.BadParameter(f"{path} holds no customer id", param_hint="--customers")
    return ids


def _condition(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{item!r} is not ATTRIBUTE=VALUE", param_hint="--segment")
    return name, value


def _aware(text: str, hint: str) -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint=hint) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _export(
    target: Endpoint, request: Any, timeout: float, layout: str, list_id: int, out: Path, excluded: Path
) -> collections.Counter[str]:
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc  # noqa: PLC0415

    counts: collections.Counter[str] = collections.Counter()
    partial_out, partial_excluded = out.with_name(out.name + ".partial"), excluded.with_name(excluded.name + ".partial")
    try:
        with (
            target.channel() as conn,
            partial_out.open("w", encoding="utf-8", newline="") as calls_file,
            partial_excluded.open("w", encoding="utf-8", newline="") as excluded_file,
        ):
            calls = csv.writer(calls_file, delimiter=delimiter(layout), lineterminator="\r\n")
            left = csv.writer(excluded_file, lineterminator="\r\n")
            calls.writerow(header(layout))
            left.writerow(EXCLUDED_COLUMNS)
            stream = nba_pb2_grpc.NextBestActionStub(conn).DecideBatch(request, timeout=timeout)
            try:
                for result in stream:
                    if result.WhichOneof("result") == "call":
                        calls.writerow(call_line(layout, _call_row(result), list_id=list_id))
                        counts["call"] += 1
                    else:
                        reason = nba_pb2.ExclusionReason.Name(result.excluded.reason).lower()
                        left.writerow((result.customer_id, reason, result.excluded.detail, result.decision_id))
                        counts[reason] += 1
            except grpc.RpcError as exc:
                _failed(exc, target, timeout, counts)
            except ValueError as exc:
                stream.cancel()
                raise click.ClickException(f"{exc}; choose another --format") from exc
        partial_out.replace(out)
        partial_excluded.replace(excluded)
    finally:
        for path in (partial_out, partial_excluded):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return counts


def _call_row(result: Any) -> CallRow:
    call = result.call
    return CallRow(
        phone=call.phone,
        phone_type=_PHONE_TYPES.get(call.phone_type, ""),
        customer_id=result.customer_id,
        time_zone=call.window.time_zone,
        earliest_local=call.window.earliest_local,
        latest_local=call.window.latest_local,
        priority=call.action.priority,
        action_id=call.action.action_id,
        script=call.action.script,
        decision_id=result.decision_id,
        expires_at=call.expires_at.ToJsonString(),
        idempotency_key=call.idempotency_key,
    )


def _failed(exc: grpc.RpcError, target: Endpoint, timeout: float, counts: Mapping[str, int]) -> NoReturn:
    from nba_service.cli import _client_error  # noqa: PLC0415

    done = sum(counts.values())
    if done:
        click.echo(
            f"the campaign stopped after {done} results; no file was written (the {done} decisions stay recorded, and "
            "a new export gives the same calls the same idempotency keys)",
            err=True,
        )
    _client_error(exc, target, timeout)


def _read_rows(path: Path, layout: str) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.DictReader(stream, delimiter=delimiter(layout))
        names = reader.fieldnames or []
        missing = missing_columns(layout, names)
        if missing:
            raise click.BadParameter(
                f"{path}: the header lacks {', '.join(missing)} (a {layout} disposition file; see adapters/README.md)",
                param_hint="FILE",
            )
        for count, row in enumerate(reader, start=1):
            if count > MAX_RESULT_ROWS:
                raise click.BadParameter(
                    f"{path}: more than {MAX_RESULT_ROWS:,} rows; split the file", param_hint="FILE"
                )
            yield reader.line_num, row


def _request(row: OutcomeRow, *, validate_only: bool) -> Any:
    from nba_service._proto.nba.v1 import nba_pb2  # noqa: PLC0415

    request = nba_pb2.RecordOutcomeRequest(
        decision_id=row.decision_id,
        action_id=row.action_id,
        outcome=nba_pb2.Outcome.Value(row.outcome.value.upper()),
        note=row.note,
        idempotency_key=row.idempotency_key,
        wrong_number=row.wrong_number,
        validate_only=validate_only,
    )
    request.time.FromDatetime(row.time)
    return request


def _check_with_server(target: Endpoint, rows: list[OutcomeRow], timeout: float) -> list[Refusal]:
    """What the server would refuse (an unknown decision, an action it did not return, a number not the
    customer's), row by row, storing nothing."""
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2_grpc  # noqa: PLC0415

    refused: list[Refusal] = []
    with target.channel() as conn:
        stub = nba_pb2_grpc.NextBestActionStub(conn)
        for row in rows:
            try:
                stub.RecordOutcome(_request(row, validate_only=True), timeout=timeout)
            except grpc.RpcError as exc:
                if exc.code().name not in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED"):
                    _failed(exc, target, timeout, {})
                refused.append(Refusal(row.line, f"{exc.code().name}: {exc.details()}"))
    return refused


def _store(target: Endpoint, rows: list[OutcomeRow], timeout: float) -> tuple[int, int]:
    import grpc  # noqa: PLC0415

    from nba_service._proto.nba.v1 import nba_pb2_grpc  # noqa: PLC0415

    stored = already = 0
    with target.channel() as conn:
        stub = nba_pb2_grpc.NextBestActionStub(conn)
        for row in rows:
            try:
                receipt = stub.RecordOutcome(_request(row, validate_only=False), timeout=timeout)
            except grpc.RpcError as exc:
                click.echo(
                    f"stopped at line {row.line} after {stored + already} rows; importing the file again completes it "
                    "without recording anything twice",
                    err=True,
                )
                _failed(exc, target, timeout, {})
            if receipt.stored:
                stored += 1
            else:
                already += 1
    return stored, already
