"""The composition root: the one place that turns settings into a running application."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from nba_service.domain.compiler import compile_ruleset
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.ports import ProfileStore, RecordExport, RecordSink
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.errors import RulesetInvalid, RulesetProblem, Unavailable
from nba_service.service import DecisionService
from nba_service.settings import Settings
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample

log = structlog.get_logger(__name__)


def activate(ruleset: Ruleset, engine: DurableEngine | None = None) -> ActiveRuleset:
    compiled = compile_ruleset(ruleset)
    loaded = (engine or DurableEngine()).load(compiled)
    return ActiveRuleset(
        ruleset, compiled, loaded, ReferenceEvaluator(ruleset), ruleset.fact_fields(), DurableEngine.name
    )


def choose_ruleset(rulesets: list[Ruleset], name: str | None, source: str) -> Ruleset:
    if name is not None:
        for ruleset in rulesets:
            if ruleset.meta.name == name:
                return ruleset
        known = ", ".join(r.meta.name for r in rulesets)
        raise RulesetInvalid([RulesetProblem(source, None, "", f"no ruleset named {name!r} (found: {known})")])
    if len(rulesets) > 1:
        known = ", ".join(r.meta.name for r in rulesets)
        raise RulesetInvalid(
            [RulesetProblem(source, None, "", f"several rulesets found ({known}); choose one with --ruleset")]
        )
    return rulesets[0]


@dataclass
class Application:
    settings: Settings
    service: DecisionService
    store: ProfileStore
    decision_log: GroupCommitWriter
    export: RecordExport

    async def ready(self) -> bool:
        """Serving means both reading profiles and making decision records durable are possible now."""
        return self.decision_log.healthy() and await self.store.ready()

    async def close(self) -> None:
        await self.decision_log.close()
        await self.store.close()
        self.service.active.engine.close()


def contact_history_window(ruleset: Ruleset) -> timedelta:
    """How much contact history a profile needs: the longest frequency-cap window (at least a day)."""
    windows = [cap.within for cap in ruleset.policies.frequency_caps]
    return max([timedelta(days=1), *windows])


async def open_sqlite(settings: Settings, ruleset: Ruleset) -> SqliteStore:
    store = SqliteStore(
        settings.db_path,
        event_types=tuple(ruleset.events),
        history=contact_history_window(ruleset),
        timeout=settings.db_timeout,
    )
    sample = settings.sample or SAMPLE_PATH
    try:
        await store.open(lambda: read_sample(sample, datetime.now(UTC)))
    except sqlite3.Error as exc:
        await store.close()
        raise Unavailable(f"cannot open the embedded database {settings.db_path}: {exc}") from exc
    return store


async def build_application(settings: Settings) -> Application:
    ruleset = choose_ruleset(load_ruleset_dir(settings.rulesets), settings.ruleset, str(settings.rulesets))
    store: ProfileStore
    sink: RecordSink
    export: RecordExport
    if settings.store == "postgres":
        from nba_service.stores.postgres import open_postgres  # noqa: PLC0415 - asyncpg only when asked for

        store, sink, export = await open_postgres(settings, ruleset)
        where = "postgres"
    else:
        sqlite_store = await open_sqlite(settings, ruleset)
        store = sink = export = sqlite_store
        where = str(settings.db_path)
    writer = GroupCommitWriter(
        sink, timeout=settings.db_timeout, spill_dir=settings.spill_dir, drain_timeout=settings.drain_seconds
    )
    active = activate(ruleset)
    await writer.start()
    log.info(
        "application_ready",
        ruleset=ruleset.meta.name,
        version=ruleset.meta.version,
        hash=ruleset.content_hash[:12],
        rules=len(ruleset.rules),
        engine_rulesets=len(active.compiled.partitions),
        store=settings.store,
        database=where,
    )
    return Application(settings, DecisionService(store, writer, active), store, writer, export)
