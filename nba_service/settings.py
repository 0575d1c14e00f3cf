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
    model_config = SettingsConfigDict(env_prefix="NBA_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    rulesets: Path = BUNDLED_RULESETS
    ruleset: str | None = Field(None, description="the active ruleset's name when the path holds several")
    shadow: Path | None = Field(
        None,
        description="a candidate ruleset (file, or folder chosen by --ruleset) run beside the active one on live "
        "traffic: recorded, never answered",
    )
    store: Literal["sqlite", "postgres"] = "sqlite"
    db_path: Path = Field(Path("var/nba.db"), description="the embedded SQLite database (created on first start)")
    dsn: str | None = Field(None, description="PostgreSQL DSN for --store postgres (env NBA_DSN)")
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

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> Settings:
        if self.store == "postgres" and not self.dsn:
            raise ValueError("store 'postgres' needs a DSN: set NBA_DSN (postgresql://user@host:5432/db)")
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

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
