"""`nba report`: reads the configured store's measurements for a window and prints the report as text, JSON or
one self-contained HTML file. This module reads options, opens the store and picks the exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nba_service.cli_options import store_options
from nba_service.errors import ErrorCode, NbaError
from nba_service.review.diff_cli import EXIT_INVALID, EXIT_UNAVAILABLE

if TYPE_CHECKING:  # imported where used: every `nba` command registers this one, and pydantic is slow to import
    from nba_service.domain.measurement import Measurements, MeasureQuery
    from nba_service.domain.model import Ruleset
    from nba_service.settings import Settings

DEFAULT_PERIOD = timedelta(days=90)


async def read_measurements(settings: Settings, ruleset: Ruleset, query: MeasureQuery) -> Measurements:
    from nba_service.domain.measurement import trigger_lifetimes  # noqa: PLC0415
    from nba_service.export import opened_store  # noqa: PLC0415
    from nba_service.stores.sqlite import SqliteStore  # noqa: PLC0415

    lifetimes = trigger_lifetimes(ruleset)
    async with opened_store(settings, "to report from") as opened:
        if isinstance(opened, SqliteStore):
            return await opened.measurements(query, ruleset.events, lifetimes)
        from nba_service.stores.postgres.measurement import read_measurements as from_postgres  # noqa: PLC0415

        async with opened.acquire() as conn:
            return await from_postgres(conn, query, ruleset.events, lifetimes)


def register(
    main: click.Group, moment: Callable[[click.Context, click.Parameter, str | None], datetime | None]
) -> None:
    @main.command("report")
    @click.option(
        "--since", callback=moment, help="Decisions at or after this time (ISO 8601) [90 days before --until]."
    )
    @click.option("--until", callback=moment, help="Decisions before this time; conversions up to it [now].")
    @click.option(
        "--ruleset",
        "ruleset_name",
        default=None,
        envvar="NBA_RULESET",
        help="The ruleset whose decisions to report, by name, when --rulesets holds several [env NBA_RULESET].",
    )
    @click.option(
        "--rulesets",
        type=click.Path(path_type=Path, exists=True),
        default=None,
        envvar="NBA_RULESETS",
        help="Where the ruleset is: its conversions, values and words [env NBA_RULESETS; the bundled rulesets].",
    )
    @click.option(
        "--referral-category",
        "referral_categories",
        multiple=True,
        default=("referral",),
        show_default=True,
        help="The action categories that are referral asks (repeat for several).",
    )
    @click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
    @click.option(
        "-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write here [stdout]."
    )
    @store_options()
    def report(
        since: datetime | None,
        until: datetime | None,
        ruleset_name: str | None,
        rulesets: Path | None,
        referral_categories: tuple[str, ...],
        fmt: str,
        out: Path | None,
        store: str,
        db_path: Path,
    ) -> None:
        """What each action adds: offers delivered, accepted, declined and converted, and the uplift over
        customers held out of it, with a 95% interval and what it is worth.

        \b
        Per action, and per rule, channel, ruleset version and journey stage; referral asks by journey stage
        and by the moment (trigger) that led to them; how long each trigger took to become an offer, and how
        many expired unoffered. A customer counts once per action, from their first exposure in the window; a
        conversion counts within the action's conversion window after it, and only customers whose window has
        closed by --until are in the rates. Conversions are as the ruleset file declares them now.

        \b
        Exit 0 when the report was written; 2 when an option or the ruleset is wrong; 3 when the store cannot
        be read now."""
        from pydantic import ValidationError  # noqa: PLC0415

        from nba_service.app import configured_ruleset  # noqa: PLC0415
        from nba_service.domain.measurement import MeasureQuery, conversion_defs  # noqa: PLC0415
        from nba_service.review.report import build_report  # noqa: PLC0415
        from nba_service.review.report_text import render_text  # noqa: PLC0415
        from nba_service.settings import Settings  # noqa: PLC0415

        end = until or datetime.now(UTC)
        start = since or end - DEFAULT_PERIOD
        if end <= start:
            raise click.BadParameter("must be after --since", param_hint="--until")
        values: dict[str, Any] = {"store": store, "db_path": db_path, "ruleset": ruleset_name}
        if rulesets is not None:
            values["rulesets"] = rulesets
        try:
            settings = Settings.model_validate(values)
        except ValidationError as exc:
            raise click.UsageError("; ".join(str(e["msg"]) for e in exc.errors())) from exc
        try:
            ruleset = configured_ruleset(settings)
            query = MeasureQuery(start, end, ruleset.meta.name, conversion_defs(ruleset))
            measurements = asyncio.run(read_measurements(settings, ruleset, query))
        except NbaError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE if exc.code is ErrorCode.UNAVAILABLE else EXIT_INVALID)
        built = build_report(ruleset, query, measurements, datetime.now(UTC), referral_categories)
        if fmt == "json":
            text = json.dumps(built.to_json(), indent=2, ensure_ascii=False)
        elif fmt == "html":
            from nba_service.review.report_html import render_html  # noqa: PLC0415

            text = render_html(built)
        else:
            text = render_text(built)
        if out is None:
            click.echo(text)
        else:
            out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
            click.echo(f"wrote {out}", err=True)
