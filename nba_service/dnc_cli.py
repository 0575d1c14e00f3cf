"""`nba dnc`: the do-not-contact register, for compliance staff: list, add and lift listings, export the history.

It works on the configured store directly (`--store`, `--db-path`, NBA_DSN), as `nba decisions export` does: a
listing takes effect at the next profile read of every running server, with no gRPC call and no restart. Every
change records who made it (`--by`, by default the login name); nothing is ever deleted, so `nba dnc export`
shows each listing with who added it and who lifted it, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from nba_service.cli_options import store_options
from nba_service.domain.do_not_contact import EVERY_CHANNEL, EXPORT_COLUMNS, channel_text, channel_words
from nba_service.domain.model import Channel
from nba_service.domain.profile import DoNotContactReason
from nba_service.errors import ErrorCode, NbaError

if TYPE_CHECKING:
    from nba_service.domain.do_not_contact import Listing
    from nba_service.domain.ports import DoNotContactRegistry
    from nba_service.settings import Settings

T = TypeVar("T")
CHANNELS = [*(c.value for c in Channel), EVERY_CHANNEL]
REASONS = [r.value for r in DoNotContactReason]
DNC_EXIT_CODES = """\b
Exit codes:
  0  done
  1  any other failure
  2  usage error, or refused: an unknown customer, a bad field, a listing already active (add) or none
     matching (remove); the message names the field
  3  the store cannot be reached (UNAVAILABLE)"""


def _by_default() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or ""


def _expiry(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """ISO 8601; a date alone means midnight UTC at its start, a time without a zone is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2027-06-30 or 2027-06-30T17:00Z)") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _by_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--by",
        "by",
        default=_by_default,
        show_default="$USER",
        help=f"Who is {what} it: recorded with the listing and in the export.",
    )


def register(main: click.Group) -> None:
    @main.group(epilog=DNC_EXIT_CODES)
    def dnc() -> None:
        """The do-not-contact register: customers we must not contact (call, or offer to on a call we make) on a
        channel."""

    @dnc.command("add", epilog=DNC_EXIT_CODES)
    @click.argument("customer_id")
    @click.option("--channel", type=click.Choice(CHANNELS), required=True, help="Where not to contact them.")
    @click.option("--reason", type=click.Choice(REASONS), required=True, help="Why.")
    @click.option("--source", required=True, help="Where the request came from (a call, a letter, a register).")
    @click.option("--expires", callback=_expiry, help="When the listing lapses (ISO 8601, UTC unless given) [never].")
    @click.option("--note", default="", help="A sentence for whoever reads the history.")
    @_by_option("adding")
    @store_options()
    def add(
        customer_id: str,
        channel: str,
        reason: str,
        source: str,
        expires: datetime | None,
        note: str,
        by: str,
        store: str,
        db_path: Path,
    ) -> None:
        """List a customer as do-not-contact. Outbound contact on the channel stops at the next decision (a
        customer who calls in is still helped); the dialer export leaves them out, saying why.

        Adding a listing that is already active (same customer, channel and reason) is refused and changes
        nothing: remove it first to change its source or expiry."""
        from nba_service.domain.do_not_contact import new_listing  # noqa: PLC0415

        async def run(registry: DoNotContactRegistry) -> Listing:
            entry = new_listing(
                channel=channel,
                reason=reason,
                source=source,
                added_by=by,
                now=datetime.now(UTC),
                expires_at=expires,
                note=note,
            )
            return await registry.add_listing(customer_id, entry)

        listing = _run(store, db_path, run)
        until = listing.entry.expires_at
        click.echo(
            f"listed {listing.customer_id} on {channel_words(listing.entry.channel)} for {listing.entry.reason.value} "
            f"(listing {listing.listing_id}, by {listing.entry.added_by}, "
            f"{'until ' + _when(until) if until else 'no expiry'})"
        )
        if listing.entry.channel is Channel.AGENT_DESKTOP:
            click.echo(
                "note: on agent_desktop this stops calls an agent makes to the customer; a customer who calls in is "
                "still helped (use --channel outbound_dialer or all to stop the dialer)",
                err=True,
            )

    @dnc.command("remove", epilog=DNC_EXIT_CODES)
    @click.argument("customer_id")
    @click.option(
        "--channel",
        type=click.Choice(CHANNELS),
        default=None,
        help=f"Only the listings on this channel ({EVERY_CHANNEL}: the listing on every channel) [any].",
    )
    @click.option("--reason", type=click.Choice(REASONS), default=None, help="Only listings for this reason [any].")
    @click.option("--note", default="", help="Why it is lifted.")
    @_by_option("lifting")
    @store_options()
    def remove(
        customer_id: str,
        channel: str | None,
        reason: str | None,
        note: str,
        by: str,
        store: str,
        db_path: Path,
    ) -> None:
        """Lift a customer's active listings (all of them unless --channel or --reason narrows it). The listing
        stays in the history, marked removed, with who lifted it, when and why."""
        from nba_service.domain.do_not_contact import Selection, parse_channel  # noqa: PLC0415

        selection = Selection(
            parse_channel(channel) if channel is not None else None,
            channel is not None,
            DoNotContactReason(reason) if reason is not None else None,
        )

        async def run(registry: DoNotContactRegistry) -> list[Listing]:
            return await registry.remove_listings(customer_id, selection, by, note)

        lifted = _run(store, db_path, run)
        click.echo(f"lifted {len(lifted)} listing{'s' if len(lifted) != 1 else ''} of {customer_id}:")
        for listing in lifted:
            entry = listing.entry
            click.echo(
                f"  {listing.listing_id}: {channel_words(entry.channel)}, {entry.reason.value} "
                f"(added {_when(entry.added_at)} by {entry.added_by})"
            )

    @dnc.command("list", epilog=DNC_EXIT_CODES)
    @click.argument("customer_id", required=False)
    @click.option("--all", "everything", is_flag=True, help="Removed and expired listings too.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line (the export's fields).")
    @store_options()
    def list_command(customer_id: str | None, everything: bool, as_json: bool, store: str, db_path: Path) -> None:
        """The active listings of one customer, or of everyone, oldest first."""

        async def run(registry: DoNotContactRegistry) -> list[Listing]:
            return await registry.listings(customer_id, include_inactive=everything)

        found = _run(store, db_path, run)
        now = datetime.now(UTC)
        if as_json:
            for listing in found:
                click.echo(json.dumps(listing.to_json(now), ensure_ascii=False))
            return
        if not found:
            whose = customer_id or "any customer"
            click.echo(f"no {'' if everything else 'active '}listing for {whose}")
            return
        click.echo(_table([_row(listing, now, everything) for listing in found]))

    @dnc.command("export", epilog=DNC_EXIT_CODES)
    @click.option("-o", "--out", type=click.File("w", encoding="utf-8", lazy=True), default="-", help="[stdout]")
    @click.option("--format", "layout", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
    @store_options()
    def export(out: IO[str], layout: str, store: str, db_path: Path) -> None:
        """Every listing ever made, removed and expired ones included, oldest first, with who added and who
        lifted each and when (columns: listing_id, customer_id, channel, reason, source, note, added_by, added_at,
        expires_at, removed_by, removed_at, removal_note, state as of the export)."""
        now = datetime.now(UTC)

        async def run(registry: DoNotContactRegistry) -> int:
            count = 0
            writer = csv.DictWriter(out, EXPORT_COLUMNS, lineterminator="\n") if layout == "csv" else None
            if writer is not None:
                writer.writeheader()
            async for listing in registry.export_listings():
                row = listing.to_json(now)
                if writer is not None:
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
                else:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            return count

        count = _run(store, db_path, run)
        click.echo(f"{count} listings exported", err=True)


def _run(store: str, db_path: Path, work: Callable[[DoNotContactRegistry], Awaitable[T]]) -> T:
    """Runs `work` on the configured store; a refusal or an unreachable store ends the command with its code."""
    from pydantic import ValidationError  # noqa: PLC0415

    from nba_service.cli import _settings_problem  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings.model_validate({"store": store, "db_path": db_path})
    except ValidationError as exc:
        raise click.UsageError("; ".join(_settings_problem(e) for e in exc.errors())) from exc

    async def run() -> T:
        async with open_registry(settings) as registry:
            return await work(registry)

    try:
        return asyncio.run(run())
    except NbaError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(3 if exc.code is ErrorCode.UNAVAILABLE else 2)


@contextlib.asynccontextmanager
async def open_registry(settings: Settings) -> AsyncIterator[DoNotContactRegistry]:
    """The register of the configured store, closed on the way out."""
    from nba_service.errors import NotFound  # noqa: PLC0415
    from nba_service.security.secrets import password_source  # noqa: PLC0415

    if settings.store == "postgres":
        from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool  # noqa: PLC0415

        pool = await create_pool(
            settings.dsn or "",
            password=password_source(settings.dsn_password_file),
            max_size=1,
            connect_timeout=max(2.0, settings.db_timeout),
        )
        postgres = PostgresProfileStore(
            pool, history=timedelta(0), event_types=(), timeout=max(5.0, settings.db_timeout)
        )
        try:
            yield postgres
        finally:
            await postgres.close()
        return
    from nba_service.stores.sqlite import SqliteStore  # noqa: PLC0415

    if not settings.db_path.exists():
        raise NotFound(f"no embedded database at {settings.db_path} (run `nba serve` here first, or give --db-path)")
    sqlite = SqliteStore(settings.db_path, event_types=(), history=timedelta(0), timeout=max(5.0, settings.db_timeout))
    await sqlite.open()
    try:
        yield sqlite
    finally:
        await sqlite.close()


def _when(moment: datetime | date | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return moment.isoformat()


def _row(listing: Listing, now: datetime, everything: bool) -> dict[str, str]:
    entry = listing.entry
    row = {
        "ID": str(listing.listing_id),
        "CUSTOMER": listing.customer_id,
        "CHANNEL": channel_text(entry.channel),
        "REASON": entry.reason.value,
        "STATE": listing.state(now).value,
        "ADDED": f"{_when(entry.added_at)} {entry.added_by}",
        "EXPIRES": _when(entry.expires_at) if entry.expires_at else "never",
        "SOURCE": entry.source,
    }
    if everything:
        row["REMOVED"] = f"{_when(listing.removed_at)} {listing.removed_by}" if listing.removed_at else "-"
    return row


def _table(rows: list[dict[str, str]]) -> str:
    names = list(rows[0])
    widths = {name: max(len(name), *(len(row[name]) for row in rows)) for name in names}
    lines = ["  ".join(name.ljust(widths[name]) for name in names).rstrip()]
    lines += ["  ".join(row[name].ljust(widths[name]) for name in names).rstrip() for row in rows]
    return "\n".join(lines)
