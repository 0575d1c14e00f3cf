"""Command-line options that several commands share: one definition, so their names, defaults and
environment variables cannot drift apart between `decisions export`, `rulesets shadow-report` and
`rulesets diff`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def store_options(when: str = "") -> Callable[[F], F]:
    """`--store` and `--db-path`, read from NBA_STORE and NBA_DB_PATH as `nba serve` reads them; `when` prefixes
    the help (e.g. "With --population store: ")."""

    def text(help_text: str) -> str:
        return f"{when}{help_text}" if when else help_text[0].upper() + help_text[1:]

    def decorate(command: F) -> F:
        command = click.option(
            "--db-path",
            type=click.Path(path_type=Path, dir_okay=False),
            default=Path("var/nba.db"),
            show_default=True,
            envvar="NBA_DB_PATH",
            help=text("the embedded database [env NBA_DB_PATH]."),
        )(command)
        return click.option(
            "--store",
            type=click.Choice(["sqlite", "postgres"]),
            default="sqlite",
            show_default=True,
            envvar="NBA_STORE",
            help=text("which store to read [env NBA_STORE]; PostgreSQL's DSN comes from NBA_DSN."),
        )(command)

    return decorate
