"""`nba rulesets diff OLD NEW`: what a change to a ruleset says, and what it would do to real customers.

Reads both files, reports their differences, runs both through the decision pipeline over a population
(`review.simulate`) and prints the report (`review.diff_report`, `review.diff_html`). This module only reads
options, picks the population and the exit code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from nba_service.cli_options import store_options
from nba_service.errors import ErrorCode, NbaError, RulesetInvalid, RulesetProblem

if TYPE_CHECKING:  # the domain and the engine are imported when the command runs, so `nba decide` stays fast
    from nba_service.domain.model import Channel, Direction, Ruleset
    from nba_service.review.diff_report import DiffReport
    from nba_service.review.population import Population

EXIT_OK = 0
EXIT_INVALID = 2  # an invalid ruleset file, a bad population file, a usage error
EXIT_UNAVAILABLE = 3  # the store cannot be read now
_CHANNELS = ("agent_desktop", "outbound_dialer")
_MAX_ACTIONS = 20  # the service's own limit (service.MAX_ACTIONS_LIMIT)
F = TypeVar("F", bound=Callable[..., Any])


def parse_moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime:
    """ISO 8601 with a zone: the answers depend on the customer's local time (dialer quiet hours), so a time
    without one would be a guess."""
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01T09:30:00+00:00)") from exc
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add one, e.g. {value}Z or {value}+01:00")
    return moment


def population_options(verb: str, per_process: str, chart: str, aside: str = "") -> Callable[[F], F]:
    """The options every run over a population takes (`diff`, `starved`): whose customers, which channel, when,
    how many actions, the store, the processes, and the report's forms."""
    options = [
        click.option(
            "--population",
            default="sample",
            show_default=True,
            metavar="sample|store|FILE",
            help=f"Whose decisions to {verb}: the bundled sample, every customer of the configured store (--store, "
            f"--db-path, NBA_DSN, as `nba serve` reads them), or a file from `nba sample generate`"
            + (f" {aside}." if aside else "."),
        ),
        click.option("--channel", type=click.Choice(_CHANNELS), help="Only this channel [default: both]."),
        click.option(
            "--direction",
            "desk",
            type=click.Choice(["inbound", "outbound"]),
            default="inbound",
            show_default=True,
            help="How the agent desktop decides: answering a customer's call (inbound) or an agent calling out "
            "(outbound). The dialer always calls out.",
        ),
        click.option(
            "--at", callback=parse_moment, help="Decide as at this moment (ISO 8601 with a zone) [default: now]."
        ),
        click.option(
            "--limit",
            type=click.IntRange(1, _MAX_ACTIONS),
            default=3,
            show_default=True,
            help="Actions per answer, as a caller's max_actions (the service's default is 3).",
        ),
        store_options("With --population store: "),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            default=lambda: min(os.cpu_count() or 1, 64),
            show_default="one per core",
            help=f"Processes evaluating customers ({per_process}).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document."),
        click.option(
            "--html",
            "html_out",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"Also write the report as one self-contained HTML file, {chart}.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def register(group: click.Group) -> None:
    @group.command("diff")
    @click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
    @click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
    @population_options(
        "compare",
        "each loads both versions once",
        "with a chart of gains and losses",
        "(./sample for a file named sample)",
    )
    def diff(
        old: Path,
        new: Path,
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
        """Compare two versions of a ruleset: what changed in the file, and how decisions would move.

        \b
        Lists rules, actions and policies added, removed and changed (and which part of each), then runs
        both versions through the service's decision pipeline, on the real engine, for every customer of
        the population at the same moment, and counts per channel and action how many customers gain it,
        lose it or get it at another rank, and who goes from some action to none or back, with the first
        few customer ids of each.

        \b
        Exit 0 when the comparison ran (whatever it found); 2 when a ruleset file is invalid (every problem
        is printed with file:line), the population file is bad (its line is named) or an option is wrong;
        3 when the store cannot be read now."""
        from nba_service.domain.model import Channel, Direction  # noqa: PLC0415

        if population not in ("sample", "store") and not Path(population).is_file():
            raise click.BadParameter(f"{population} is not a file (nor 'sample' or 'store')", param_hint="--population")
        versions = _load(old, new, as_json)
        channels = [Channel(channel)] if channel else list(Channel)
        try:
            report = _compare(
                *versions,
                open_population(population, store, db_path, at, versions),
                channels=channels,
                at=at,
                limit=limit,
                workers=workers,
                quiet=quiet,
                desk=Direction(desk),
            )
        except NbaError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE if exc.code is ErrorCode.UNAVAILABLE else EXIT_INVALID)
        from nba_service.review.diff_report import render_text  # noqa: PLC0415

        if html_out is not None:
            from nba_service.review.diff_html import render_html  # noqa: PLC0415

            html_out.write_text(render_html(report), encoding="utf-8")
            click.echo(f"wrote {html_out}", err=True)
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else render_text(report))


def _load(old: Path, new: Path, as_json: bool) -> tuple[Ruleset, Ruleset]:
    first, second = load_checked([old, new], as_json)
    return first, second


def load_checked(paths: Sequence[Path], as_json: bool) -> list[Ruleset]:
    """Every file loaded and compiled, or every problem of all of them printed and exit 2: a reviewer fixes
    them in one go."""
    from nba_service.domain.compiler import compile_ruleset  # noqa: PLC0415
    from nba_service.domain.loader import load_ruleset_file  # noqa: PLC0415

    loaded: list[Ruleset] = []
    problems: list[RulesetProblem] = []
    for path in paths:
        try:
            ruleset = load_ruleset_file(path)
            compile_ruleset(ruleset)  # the engine's limits, before any worker loads it
        except RulesetInvalid as exc:
            problems.extend(exc.ruleset_problems)
            continue
        except ValueError as exc:
            problems.append(RulesetProblem(str(path), None, "", str(exc)))
            continue
        loaded.append(ruleset)
    if problems:
        if as_json:
            click.echo(json.dumps({"problems": [_problem_json(p) for p in problems]}, indent=2, ensure_ascii=False))
        else:
            for problem in problems:
                click.echo(str(problem))
            files = len({p.file for p in problems})
            click.echo(
                f"{len(problems)} problem(s) in {files} file(s); nothing was compared"
                if len(paths) > 1
                else f"{len(problems)} problem(s) in {files} file(s); nothing was evaluated"
            )
        sys.exit(EXIT_INVALID)
    return loaded


def _problem_json(problem: RulesetProblem) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "where": problem.where, "problem": problem.problem}


def open_population(source: str, store: str, db_path: Path, at: datetime, versions: Sequence[Ruleset]) -> Population:
    from nba_service.review.population import SAMPLE, STORE, FilePopulation, StorePopulation  # noqa: PLC0415

    if source == SAMPLE:
        return FilePopulation.sample()
    if source != STORE:
        return FilePopulation(Path(source))
    from pydantic import ValidationError  # noqa: PLC0415

    from nba_service.cli import _settings_problem  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings.model_validate({"store": store, "db_path": db_path})
    except ValidationError as exc:
        raise click.UsageError("; ".join(_settings_problem(e) for e in exc.errors())) from exc
    return StorePopulation(settings, at, versions)


def _compare(
    old: Ruleset,
    new: Ruleset,
    population: Population,
    *,
    channels: list[Channel],
    at: datetime,
    limit: int,
    workers: int,
    quiet: bool,
    desk: Direction,
) -> DiffReport:
    from nba_service.review.diff import structural_diff  # noqa: PLC0415
    from nba_service.review.diff_report import DiffReport  # noqa: PLC0415
    from nba_service.review.population import CHUNK  # noqa: PLC0415
    from nba_service.review.simulate import simulate  # noqa: PLC0415

    structure = structural_diff(old, new)
    with population:
        total = population.count()
        hidden = quiet or not sys.stderr.isatty()
        label = f"{total:,} customers, both versions"
        with click.progressbar(length=total, label=label, file=sys.stderr, hidden=hidden) as bar:
            run = simulate(
                old,
                new,
                population,
                channels=channels,
                now=at,
                limit=limit,
                workers=min(workers, max(1, -(-total // CHUNK))),  # no process without a chunk to evaluate
                progress=bar.update,
                desk=desk,
            )
    return DiffReport(
        old,
        new,
        structure,
        population.label,
        run.customers,
        at,
        limit,
        tuple(run.impacts[c] for c in channels),
        run.seconds,
        run.workers,
        desk,
    )
