"""`nba rulesets starved FILE`: over a population, who is left with no action on each channel, and the rule,
policy or cap that blocked them (`review.starved`), as text, JSON or a self-contained HTML page with a chart.
This module only reads options, picks the population and the exit code."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

import click

from nba_service.errors import ErrorCode, NbaError
from nba_service.review.diff_cli import (
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    load_checked,
    open_population,
    population_options,
)


def register(group: click.Group) -> None:
    @group.command("starved")
    @click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
    @population_options("count", "each loads the ruleset once", "with a chart per channel")
    def starved(
        file: Path,
        population: str,
        channel: str | None,
        desk: str,
        at: datetime,
        limit: int,
        store: str,
        db_path: Path,
        workers: int,
        as_json: bool,
        html_out: Path | None,
        quiet: bool,
    ) -> None:
        """Who is starved: the customers a ruleset FILE leaves with no action on each channel, and what
        blocked them.

        \b
        Runs the service's decision pipeline, on the real engine, for every customer of the population at one
        moment, and per channel counts the customers offered something, those no rule matched, and, for the
        rest, each contact policy (cap, suppression, consent, do-not-call, quiet hours) or other reason that
        dropped their candidates: how many customers it held back, how many it alone starved, the rules it
        blocked most and a few customer ids.

        \b
        Exit 0 when the count ran; 2 when the ruleset file is invalid (every problem printed with file:line),
        the population file is bad or an option is wrong; 3 when the store cannot be read now."""
        from nba_service.domain.model import Channel, Direction  # noqa: PLC0415
        from nba_service.review.diff import ref  # noqa: PLC0415
        from nba_service.review.population import CHUNK  # noqa: PLC0415
        from nba_service.review.simulate import run_chunks  # noqa: PLC0415
        from nba_service.review.starved import ChannelStarvation, StarvedReport, Starving, Tally  # noqa: PLC0415
        from nba_service.review.starved_report import render_html, render_text  # noqa: PLC0415

        if population not in ("sample", "store") and not Path(population).is_file():
            raise click.BadParameter(f"{population} is not a file (nor 'sample' or 'store')", param_hint="--population")
        (ruleset,) = load_checked([file], as_json)
        channels = tuple([Channel(channel)] if channel else list(Channel))
        counts = {c: ChannelStarvation(c) for c in channels}
        customers = 0
        started = datetime.now()
        try:
            source = open_population(population, store, db_path, at, [ruleset])
            with source:
                total = source.count()
                processes = min(workers, max(1, -(-total // CHUNK)))
                hidden = quiet or not sys.stderr.isatty()
                with click.progressbar(
                    length=total, label=f"{total:,} customers", file=sys.stderr, hidden=hidden
                ) as bar:

                    def take(tally: Tally) -> None:
                        nonlocal customers
                        customers += tally[0]
                        for key, more in tally[1].items():
                            counts[key].merge(more)
                        bar.update(tally[0])

                    run_chunks(
                        partial(Starving.load, ruleset, channels, at, limit, Direction(desk)),
                        source,
                        workers=processes,
                        take=take,
                    )
        except NbaError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE if exc.code is ErrorCode.UNAVAILABLE else EXIT_INVALID)
        seconds = (datetime.now() - started).total_seconds()
        report = StarvedReport(
            ref(ruleset),
            source.label,
            customers,
            at,
            limit,
            tuple(counts.values()),
            seconds,
            processes,
            Direction(desk),
        )
        if html_out is not None:
            html_out.write_text(render_html(report, ruleset), encoding="utf-8")
            click.echo(f"wrote {html_out}", err=True)
        click.echo(
            json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else render_text(report, ruleset)
        )
