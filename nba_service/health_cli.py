"""`nba health`: the standard grpc.health.v1 check from the command line, for probes that cannot speak TLS.

Kubernetes' own gRPC probe and Docker's HEALTHCHECK connect in plain text without a client certificate. With
TLS on the port (and mutual TLS above all) the probe must be a command that connects as any client does: this
one, with the same `--cacert`/`--cert`/`--key` options (or their NBA_* variables) as `nba decide`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from nba_service.security.tls import Endpoint

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# The names transport/grpc_server.py sets (SERVICE_NAME, LIVENESS_NAME), spelled out so that `nba --help` need not
# import grpc; tests/e2e/test_health_cli.py holds them equal.
READINESS_SERVICE = "nba.v1.NextBestAction"  # SERVING only while the store answers
LIVENESS_SERVICE = "liveness"  # SERVING while the process answers at all
EXIT_NOT_SERVING = 1
EXIT_UNKNOWN_SERVICE = 2
HEALTH_EXIT_CODES = """\b
Exit codes:
  0  SERVING
  1  any other status (NOT_SERVING: e.g. the database is away), or any other failure
  2  usage error, or the server has no such service name (NOT_FOUND)
  3  the service cannot be reached, or the TLS handshake failed
  4  no answer within --timeout"""


def register(main: click.Group, target: Decorator) -> None:
    @main.command("health", epilog=HEALTH_EXIT_CODES)
    @click.option(
        "--service",
        default=READINESS_SERVICE,
        show_default=True,
        envvar="NBA_HEALTH_SERVICE",
        help=f"The health name to ask for: {READINESS_SERVICE} (ready to decide: the store answers), "
        f"{LIVENESS_SERVICE} (the process answers), or '' (the whole server) [env NBA_HEALTH_SERVICE].",
    )
    @target
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=3.0,
        show_default=True,
        help="Deadline in seconds.",
    )
    def health(service: str, target: Endpoint, timeout: float) -> None:
        """Ask the service's gRPC health check (grpc.health.v1) whether it serves; for probes and scripts."""
        import grpc  # noqa: PLC0415
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

        from nba_service.cli import _client_error  # noqa: PLC0415

        with target.channel() as conn:
            try:
                response = health_pb2_grpc.HealthStub(conn).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    click.echo(f"error: NOT_FOUND: {target} has no health service named {service!r}", err=True)
                    sys.exit(EXIT_UNKNOWN_SERVICE)
                _client_error(exc, target, timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        click.echo(f"{service or '(server)'}: {status}")
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            sys.exit(EXIT_NOT_SERVING)
