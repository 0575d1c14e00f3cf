"""One frozen settings object, from flags and `NBA_*` environment variables, validated at start-up."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The top-level rulesets/ folder, shipped as the package nba_service.bundled_rulesets (pyproject's package-dir):
# the checkout's folder in an editable install, the installed copy in a wheel install.
BUNDLED_RULESETS = Path(str(files("nba_service.bundled_rulesets")))
MAX_WORKERS = 64


def _one_per_core() -> int:
    return min(os.cpu_count() or 1, MAX_WORKERS)


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error quoting its input would print a DSN, password included.
    model_config = SettingsConfigDict(env_prefix="NBA_", frozen=True, extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="also serve the HTTP/JSON API for CRM plugins on this port, same host, TLS and access policy "
        "(0 picks a free port; unset: no HTTP)",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics at /metrics on this port, same host, plain HTTP; with --workers N one "
        "scrape covers every worker (9464 is the usual port; 0 picks a free one; unset: no endpoint)",
    )
    rpc_duration_metric: Literal["current", "legacy", "both"] = Field(
        "current",
        description="the RPC duration histogram: current semantic conventions (rpc.server.call.duration, seconds), "
        "legacy (rpc.server.duration, milliseconds, as many dashboards expect) or both",
    )
    rulesets: Path = BUNDLED_RULESETS
    ruleset: str | None = Field(None, description="the active ruleset's name when the path holds several")
    shadow: Path | None = Field(
        None,
        description="a candidate ruleset (file, or folder chosen by --ruleset) run beside the active one on live "
        "traffic: recorded, never answered",
    )
    store: Literal["sqlite", "postgres"] = "sqlite"
    db_path: Path = Field(Path("var/nba.db"), description="the embedded SQLite database (created on first start)")
    # repr=False: a DSN may carry its password, and a settings object can end up in a log or a traceback.
    dsn: str | None = Field(None, description="PostgreSQL DSN for --store postgres (env NBA_DSN)", repr=False)
    dsn_password_file: Path | None = Field(
        None,
        description="a file holding only the PostgreSQL password (a mounted secret), read at each new connection; "
        "keeps the password out of NBA_DSN",
    )
    pool_min: int = Field(1, ge=0, le=100)
    pool_max: int = Field(10, ge=1, le=200)
    db_timeout: float = Field(1.0, gt=0, le=60, description="seconds a database call may take before UNAVAILABLE")
    drain_seconds: float = Field(30.0, ge=0, le=3600, description="how long shutdown waits for the decision log")
    sample: Path | None = Field(
        None, description="JSON lines of customers that seed a new embedded database; bundled sample when unset"
    )
    spill_dir: Path = Field(Path("var"), description="where records the store could not take at shutdown are left")
    deploy_dir: Path | None = Field(
        Path("var/rulesets"),
        description="where deployed ruleset versions and the active one are kept (a restart keeps the last deploy)",
    )
    watch_seconds: float = Field(
        2.0, ge=0, le=3600, description="how often the rulesets path is checked for a changed version (0: never)"
    )
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    grace_seconds: float = Field(10.0, ge=0, le=300, description="how long in-flight calls may finish on shutdown")
    workers: int = Field(
        default_factory=_one_per_core,
        ge=1,
        le=MAX_WORKERS,
        description="processes serving the port together, one per core unless set; 1 serves in a single process",
    )
    pin_cpus: bool = Field(
        False,
        description="pin each worker process, threads and all, to one CPU of those allowed (worker N to the Nth); "
        "a few percent less CPU per call on a virtual machine, for servers with one worker per core and no other busy "
        "process on those cores",
    )
    access_policy: Path | None = Field(
        None,
        description="the access policy (YAML): which callers hold which roles; required unless the server runs in "
        "plain text on loopback, where every caller may do everything without one",
    )
    grpc: bool = Field(
        True,
        description="serve gRPC on --port; --no-grpc serves the HTTP/JSON API on --http-port alone, for sites whose "
        "callers all speak HTTP",
    )
    reflection: bool = Field(True, description="serve gRPC server reflection, which grpcurl and other tools read")
    tls_cert: Path | None = Field(
        None, description="the server's certificate chain (PEM): every listening port then speaks TLS"
    )
    tls_key: Path | None = Field(None, description="the private key (PEM) of --tls-cert")
    tls_client_ca: Path | None = Field(
        None,
        description="CA certificates (PEM) that client certificates must chain to: mutual TLS, a certificate "
        "required of every caller",
    )
    insecure: bool = Field(
        False, description="allow plain text off loopback (without --tls-cert); plain text is always logged loudly"
    )
    jwks_file: Path | None = Field(
        None, description="a JWKS file (JSON) whose public keys verify bearer tokens; read at start-up, never fetched"
    )
    jwt_issuer: str | None = Field(None, description="the `iss` every bearer token must carry (with --jwks-file)")
    jwt_audience: str | None = Field(None, description="the `aud` every bearer token must carry (with --jwks-file)")
    jwt_leeway_seconds: float = Field(
        30.0, ge=0, le=600, description="clock skew allowed when checking a token's exp, nbf and iat"
    )

    panel_frame_ancestors: str | None = Field(
        None,
        description="host origins that may frame the agent side panel (/panel on --http-port), separated by spaces, "
        "e.g. https://acme.lightning.force.com https://*.mypurecloud.com (http for loopback only); unset: only "
        "this server's own pages",
    )
    panel_session_seconds: int = Field(
        900, ge=60, le=86_400, description="how long a panel session lasts before the panel renews it"
    )
    panel_secret_file: Path | None = Field(
        None,
        description="a file holding the secret (32 bytes or more) that signs panel sessions, shared by every replica; "
        "unset: a random secret per server (shared by its workers), so sessions end when it restarts",
    )

    rate_limit: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        description="calls per second each caller identity may make, per process (0: no rate limit)",
    )
    rate_burst: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="calls a caller may make at once after a quiet spell (default: --rate-limit)",
    )
    max_concurrent_calls: int = Field(
        2000, ge=1, le=1_000_000, description="calls running at once in a process; more get RESOURCE_EXHAUSTED"
    )
    max_streams_per_connection: int = Field(
        1000, ge=1, le=1_000_000, description="HTTP/2 streams at once per connection; a client queues calls beyond it"
    )

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> Settings:
        if self.rate_burst is not None and not self.rate_limit:
            raise ValueError("--rate-burst / NBA_RATE_BURST needs --rate-limit / NBA_RATE_LIMIT above 0")
        return self

    @model_validator(mode="after")
    def _http_port_fits(self) -> Settings:
        if not self.grpc and self.http_port is None:
            raise ValueError("--no-grpc / NBA_GRPC=false needs --http-port: with neither port, nothing would be served")
        if self.http_port == 0 and self.workers > 1:
            raise ValueError(
                "--http-port 0 needs --workers 1: workers share a fixed HTTP port, and port 0 would give each its own"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_apart(self) -> Settings:
        if self.metrics_port and self.metrics_port in (self.port, self.http_port):
            raise ValueError("--metrics-port / NBA_METRICS_PORT must differ from --port and --http-port")
        return self

    @model_validator(mode="after")
    def _one_password(self) -> Settings:
        from nba_service.security.secrets import has_password  # noqa: PLC0415

        if self.dsn_password_file is not None and self.dsn and has_password(self.dsn):
            raise ValueError(
                "NBA_DSN carries a password and --dsn-password-file / NBA_DSN_PASSWORD_FILE gives another: keep "
                "the password in one place"
            )
        return self

    @model_validator(mode="after")
    def _tls_and_tokens(self) -> Settings:  # before the access policy's check: which files belong together first
        from nba_service.security.config import check_security  # noqa: PLC0415 - cryptography only when asked for

        check_security(self)
        return self

    @model_validator(mode="after")
    def _access_policy_fits(self) -> Settings:
        """Open (no policy) only for the local quick start; a policy only where callers can prove who they are."""
        flag = "--access-policy / NBA_ACCESS_POLICY"
        if self.access_policy is None:
            if self.tls_cert is not None or self.jwks_file is not None:
                raise ValueError(
                    f"{flag} is required with TLS or bearer tokens: without one every caller, however identified, "
                    "could make every call"
                )
            from nba_service.security.tls import is_loopback  # noqa: PLC0415 - grpc only when it matters

            if not is_loopback(self.host):
                raise ValueError(
                    f"{flag} is required off loopback (--host {self.host}): without one anyone who reaches the port "
                    "could make every call"
                )
        elif self.tls_client_ca is None and self.jwks_file is None:
            raise ValueError(
                f"{flag} needs callers who prove who they are: give --tls-client-ca / NBA_TLS_CLIENT_CA (client "
                "certificates) or --jwks-file / NBA_JWKS_FILE (bearer tokens)"
            )
        return self

    @field_validator("panel_frame_ancestors")
    @classmethod
    def _panel_origins(cls, value: str | None) -> str | None:
        from nba_service.security.panel_session import frame_ancestors  # noqa: PLC0415

        return None if value is None else " ".join(frame_ancestors(value))  # ValueError names the origin at fault

    @field_validator("panel_secret_file")
    @classmethod
    def _panel_secret(cls, value: Path | None) -> Path | None:
        if value is not None:
            from nba_service.security.panel_session import read_secret_file  # noqa: PLC0415

            read_secret_file(value)  # raises ValueError naming the file, never its content
        return value

    @model_validator(mode="after")
    def _panel_needs_http(self) -> Settings:
        given = [
            flag
            for flag, value in (
                ("--panel-frame-ancestors / NBA_PANEL_FRAME_ANCESTORS", self.panel_frame_ancestors),
                ("--panel-secret-file / NBA_PANEL_SECRET_FILE", self.panel_secret_file),
            )
            if value
        ]
        if given and self.http_port is None:
            raise ValueError(
                f"{' and '.join(given)} configure the agent panel, which needs --http-port / NBA_HTTP_PORT"
            )
        return self

    @property
    def panel_origins(self) -> tuple[str, ...]:
        """The host origins allowed to frame the panel (validated and normalised)."""
        return tuple((self.panel_frame_ancestors or "").split())

    @field_validator("access_policy")
    @classmethod
    def _policy_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file" if value.exists() else f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> Settings:
        if self.store == "postgres" and not self.dsn:
            raise ValueError("store 'postgres' needs a DSN: set NBA_DSN (postgresql://user@host:5432/db)")
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

    @field_validator("tls_cert", "tls_key", "tls_client_ca", "jwks_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from exc
            if not value.is_file():
                raise ValueError(f"{value} is not a file")
        return value

    @field_validator("dsn_password_file")
    @classmethod
    def _password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            from nba_service.security.secrets import read_password_file  # noqa: PLC0415

            read_password_file(value)  # raises ValueError naming the file, never its content
        return value

    @field_validator("dsn")
    @classmethod
    def _usable_dsn(cls, value: str | None) -> str | None:
        if value:
            from nba_service.security.secrets import check_dsn  # noqa: PLC0415

            check_dsn(value)  # raises ValueError without quoting the DSN
        return value

    @field_validator("rulesets")
    @classmethod
    def _rulesets_exist(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"rulesets path {value} does not exist")
        return value

    @field_validator("shadow")
    @classmethod
    def _shadow_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"shadow ruleset path {value} does not exist")
        return value
