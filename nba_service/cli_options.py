"""Command-line options that several commands share: one definition, so their names, defaults and
environment variables cannot drift apart between `decisions export`, `rulesets shadow-report` and
`rulesets diff`."""

from __future__ import annotations

import functools
import os
import typing
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


DEFAULT_TARGET = "127.0.0.1:50051"
_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


def connection_options(command: F) -> F:
    """`--target` with the TLS and token options every client command shares; the command gets them as one
    `target: Endpoint` (nba_service.security.tls), whose `channel()` is the one way a client connects.

    Plain text unless a TLS file is given. The token is read from a file (`--token-file`) or NBA_TOKEN, never
    taken on the command line, where every user of the machine could read it in the process list."""

    @functools.wraps(command)
    def run(
        *args: Any,
        target: str,
        cacert: Path | None,
        cert: Path | None,
        key: Path | None,
        token_file: Path | None,
        tls_server_name: str | None,
        **kwargs: Any,
    ) -> Any:
        # gRPC's C core would print its own lines about a failed handshake before our one-line error.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        from nba_service.security.tls import ClientSetupError, ClientTls, Endpoint  # noqa: PLC0415

        try:
            tls = ClientTls.from_options(
                cacert=cacert,
                cert=cert,
                key=key,
                token_file=token_file,
                token=None if token_file is not None else os.environ.get("NBA_TOKEN"),
                server_name=tls_server_name,
            )
            endpoint = Endpoint(target, tls)
        except ClientSetupError as exc:
            raise click.UsageError(str(exc)) from exc
        return command(*args, target=endpoint, **kwargs)

    for option in reversed(
        (
            click.option("--target", default=DEFAULT_TARGET, show_default=True, envvar="NBA_TARGET"),
            click.option(
                "--cacert",
                type=_FILE,
                envvar="NBA_CACERT",
                help="CA certificate(s) the server's must chain to; turns TLS on [env NBA_CACERT].",
            ),
            click.option(
                "--cert", type=_FILE, envvar="NBA_CERT", help="Client certificate, for mutual TLS [env NBA_CERT]."
            ),
            click.option(
                "--key", type=_FILE, envvar="NBA_KEY", help="The client certificate's private key [env NBA_KEY]."
            ),
            click.option(
                "--token-file",
                type=_FILE,
                envvar="NBA_TOKEN_FILE",
                help="A file holding a bearer token (JWT) [env NBA_TOKEN_FILE; or the token itself in NBA_TOKEN].",
            ),
            click.option(
                "--tls-server-name",
                envvar="NBA_TLS_SERVER_NAME",
                help="The name the server's certificate must carry, when --target names it otherwise "
                "[env NBA_TLS_SERVER_NAME].",
            ),
        )
    ):
        run = option(run)
    return typing.cast(F, run)
