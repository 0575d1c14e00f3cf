"""`nba simulate`: simulated days of traffic with a known truth, through the configured store.

It builds the application exactly as `nba serve` does (`app.build_application`, same settings and store
options), on a simulated clock, and writes into that store: run it against a fresh database, not a live one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nba_service.cli import _moment, _settings_problem  # read as `nba decisions export` and `nba serve` read them
from nba_service.cli_options import store_options
from nba_service.errors import ErrorCode, NbaError

if TYPE_CHECKING:
    from nba_service.settings import Settings
    from nba_service.simulator.truth import Truth
    from nba_service.simulator.world import Summary

SIMULATE_EXIT_CODES = """\b
Exit codes:
  0  done
  1  any other failure
  2  usage error, or refused: bad options, an invalid truth file or ruleset, a store that already holds
     simulated customers
  3  the store cannot be reached (UNAVAILABLE)"""


def register(main: click.Group) -> None:
    @main.command(epilog=SIMULATE_EXIT_CODES)
    @click.option("--customers", type=click.IntRange(1, 999_999), required=True, help="Simulated customers.")
    @click.option("--days", type=click.IntRange(1, 3650), required=True, help="Days on which decisions are made.")
    @click.option("--seed", type=int, default=1, show_default=True, help="Seed of every random draw.")
    @click.option(
        "--start",
        callback=_moment,
        help="Midnight of the first day (ISO 8601, UTC unless given) [default: early enough that the days and every "
        "conversion window after them end a day ago].",
    )
    @click.option(
        "--truth",
        "truth_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The world and its true uplift per action (YAML) [default: the bundled one].",
    )
    @click.option(
        "--truth-out",
        type=click.Path(path_type=Path, dir_okay=False, writable=True),
        default=None,
        help="Write per action the truth and the units shown and held out (JSON), to check a report against.",
    )
    @click.option("--format", "layout", type=click.Choice(["text", "json"]), default="text", show_default=True)
    @click.option(
        "--rulesets",
        type=click.Path(path_type=Path, exists=True),
        envvar="NBA_RULESETS",
        default=None,
        help="Ruleset file or folder [default: the bundled rulesets; env NBA_RULESETS].",
    )
    @click.option(
        "--ruleset", envvar="NBA_RULESET", default=None, help="The ruleset's name when the path holds several."
    )
    @store_options()
    def simulate(
        customers: int,
        days: int,
        seed: int,
        start: datetime | None,
        truth_path: Path | None,
        truth_out: Path | None,
        layout: str,
        rulesets: Path | None,
        ruleset: str | None,
        store: str,
        db_path: Path,
    ) -> None:
        """Drive the real decision pipeline through simulated days, from a known truth.

        Creates customers SIM-000001.. in the configured store, then every day background events arrive,
        customers call in (agent desktop, inbound), dialer campaigns decide their lists, and agents and
        dialers record outcomes. A customer considered for an action with a conversion for the first time
        (shown it, or held out) converts with the truth file's probability; the conversion event is written
        when simulated time reaches it. Run it against a fresh database (--db-path, or NBA_DSN)."""
        from pydantic import ValidationError  # noqa: PLC0415

        from nba_service.settings import Settings  # noqa: PLC0415

        values: dict[str, Any] = {"store": store, "db_path": db_path, "deploy_dir": None, "workers": 1}
        if rulesets is not None:
            values["rulesets"] = rulesets
        if ruleset is not None:
            values["ruleset"] = ruleset
        try:
            settings = Settings(**values)
        except ValidationError as exc:
            problems = "; ".join(_settings_problem(e) for e in exc.errors())
            raise click.UsageError(f"invalid settings: {problems}") from exc
        progress = sys.stderr.isatty()
        try:
            summary, truth = asyncio.run(_run(settings, customers, days, seed, start, truth_path, progress))
        except NbaError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(3 if exc.code is ErrorCode.UNAVAILABLE else 2 if exc.code is not ErrorCode.INTERNAL else 1)
        if truth_out is not None:
            truth_out.write_text(json.dumps(truth_report(truth, summary), indent=2) + "\n", encoding="utf-8")
        click.echo(json.dumps(summary.to_json(), indent=2) if layout == "json" else render(summary))


async def _run(
    settings: Settings,
    customers: int,
    days: int,
    seed: int,
    start: datetime | None,
    truth_path: Path | None,
    progress: bool,
) -> tuple[Summary, Truth]:
    from nba_service.app import build_application, configured_ruleset  # noqa: PLC0415
    from nba_service.log_setup import configure_logging  # noqa: PLC0415
    from nba_service.simulator.truth import DEFAULT_TRUTH, load_truth_file  # noqa: PLC0415
    from nba_service.simulator.world import (  # noqa: PLC0415
        DAY,
        Plan,
        SimulatedClock,
        World,
        default_start,
        latest_conversion_window,
    )

    configure_logging("console", "warning")
    # The truth is checked against the configured ruleset before any store is opened: a bad file changes nothing.
    truth = load_truth_file(truth_path or DEFAULT_TRUTH, configured_ruleset(settings))
    now = datetime.now(UTC)
    plan = Plan(customers, days, seed, start or default_start(now, days, truth))
    if plan.start + days * DAY + latest_conversion_window(truth) > now:
        click.echo("note: the simulated days or their conversion windows reach past now", err=True)
    clock = SimulatedClock(plan.start)
    app = await build_application(settings, clock=clock)
    try:
        world = World(app, truth, plan, clock)
        if not progress:
            return await world.run(), truth
        with click.progressbar(length=days + 1, label="simulating days", file=sys.stderr) as bar:
            return await world.run(bar.update), truth
    finally:
        await app.close()


def render(summary: Summary) -> str:
    conversions = summary.conversions()
    outcomes = ", ".join(f"{count:,} {kind}" for kind, count in sorted(summary.outcomes.items())) or "none"
    shown_units = sum(t.shown for t in summary.actions.values())
    held_units = sum(t.held_out for t in summary.actions.values())
    return "\n".join(
        (
            f"simulated {summary.customers:,} customers over {summary.days} days from {summary.start:%Y-%m-%d} "
            f"(seed {summary.seed}); simulated time ran on to {summary.end:%Y-%m-%d} for the conversion windows",
            f"decisions: {summary.decisions:,} ({summary.inbound_decisions:,} inbound on the agent desktop, "
            f"{summary.dialer_decisions:,} by dialer campaigns, {summary.calls_placed:,} calls placed)",
            f"offers shown: {summary.offers_shown:,}; held out: {summary.held_out:,}",
            f"units (customer and action, first exposure): {shown_units:,} shown, {held_units:,} held out",
            f"conversions: {conversions['shown']:,} of units shown, {conversions['held_out']:,} of units held out "
            f"({summary.conversion_events:,} conversion events written)",
            f"background events: {summary.background_events:,}",
            f"outcomes recorded: {outcomes}",
        )
    )


def truth_report(truth: Truth, summary: Summary) -> dict[str, Any]:
    """Per action the configured truth beside what the run exposed, for a test of a report's uplift."""
    return {
        "format": "nba.simulation-truth/1",
        "source": truth.source,
        "seed": summary.seed,
        "start": summary.start.isoformat(),
        "end": summary.end.isoformat(),
        "unit": "customer and action, at the first delivered decision that showed the action or held it out",
        "actions": {
            action_id: {
                "base": action.base,
                "uplift": action.uplift,
                "units_shown": summary.actions[action_id].shown,
                "units_held_out": summary.actions[action_id].held_out,
                "converted_shown": summary.actions[action_id].converted_shown,
                "converted_held_out": summary.actions[action_id].converted_held_out,
                "conversion": {
                    "event": action.conversion.event,
                    "within_days": action.conversion.within.total_seconds() / 86400,
                    "attributes": dict(action.attributes),
                },
                "shared_conversion_with": list(truth.shared_conversion(action_id)),
            }
            for action_id, action in truth.actions.items()
        },
    }
