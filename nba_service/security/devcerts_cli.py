"""`nba dev-certs DIR`: a throwaway CA and certificates, and the commands that use them."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


def register(main: click.Group) -> None:
    @main.command("dev-certs")
    @click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
    @click.option(
        "--hosts",
        default="localhost,127.0.0.1",
        show_default=True,
        help="Comma-separated names and addresses the server certificate is valid for.",
    )
    @click.option(
        "--client",
        "clients",
        multiple=True,
        metavar="NAME",
        help="A client certificate with CN=NAME (repeatable) [default: desktop, dialer, ingest, reviewer, admin].",
    )
    @click.option("--days", type=click.IntRange(1, 825), default=30, show_default=True, help="Validity in days.")
    def dev_certs(directory: Path, hosts: str, clients: tuple[str, ...], days: int) -> None:
        """Write a throwaway CA, a server certificate and client certificates for trying TLS locally.

        Keys are written readable by you only (0600). Running it again reuses the CA in DIR, so earlier client
        certificates stay valid. For local use only: whoever can read DIR can make certificates the server trusts.
        """
        from nba_service.security.devcerts import DEFAULT_CLIENTS, write_dev_certs  # noqa: PLC0415

        names = [h.strip() for h in hosts.split(",") if h.strip()]
        try:
            written = write_dev_certs(directory, names, clients or DEFAULT_CLIENTS, days)
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

        def q(path: Path) -> str:
            return shlex.quote(str(path))

        ca = "reused the CA" if written.ca_reused else "a new CA"
        click.echo(f"{ca} in {directory}, certificates valid until {written.valid_until:%Y-%m-%d} (local use only):")
        click.echo(f"  {q(written.ca_cert)}  the CA: --cacert for clients, --tls-client-ca for the server")
        click.echo(f"  {q(written.server_cert)}, {q(written.server_key)}  the server, for {', '.join(names)}")
        for name, cert, key in written.clients:
            click.echo(f"  {q(cert)}, {q(key)}  client CN={name}")
        if written.policy is not None:
            click.echo(f"  {q(written.policy)}  an access policy: each client above gets the role it is named after")
        serve = (
            f"nba serve --tls-cert {q(written.server_cert)} --tls-key {q(written.server_key)} "
            f"--tls-client-ca {q(written.ca_cert)}"
        )
        if written.policy is not None:
            serve += f" --access-policy {q(written.policy)}"
        click.echo("Serve with mutual TLS:")
        click.echo(f"  {serve}")
        first, cert, key = written.clients[0] if written.clients else ("", Path(), Path())
        if first:
            tls = f"--cacert {q(written.ca_cert)} --cert {q(cert)} --key {q(key)}"
            click.echo(f"Call as {first}:")
            click.echo(f"  nba decide CUST-000058 {tls}")
            grpcurl = f"-cacert {q(written.ca_cert)} -cert {q(cert)} -key {q(key)}"
            click.echo(f"  grpcurl {grpcurl} 127.0.0.1:50051 list")
