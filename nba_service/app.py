"""The composition root: the one place that turns settings into a running application."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from nba_service.domain.compiler import compile_ruleset
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Ruleset
from nba_service.domain.ports import ProfileStore
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.errors import NbaError, RulesetInvalid, RulesetProblem
from nba_service.service import ActiveRuleset, DecisionService
from nba_service.settings import Settings
from nba_service.stores.jsonl_log import JsonlDecisionLog
from nba_service.stores.memory import MemoryProfileStore
from nba_service.stores.postgres.decision_log import PostgresDecisionLog
from nba_service.stores.postgres.migrate import pending
from nba_service.stores.postgres.profiles import CONNECTION_ERRORS, PostgresProfileStore, create_pool
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
    decision_log: JsonlDecisionLog | PostgresDecisionLog

    async def close(self) -> None:
        await self.decision_log.close()
        await self.store.close()
        self.service.active.engine.close()


def contact_history_window(ruleset: Ruleset) -> timedelta:
    """How much contact history a profile needs: the longest frequency-cap window (at least a day)."""
    windows = [cap.within for cap in ruleset.policies.frequency_caps]
    return max([timedelta(days=1), *windows])


class SchemaNotReadyError(NbaError):
    pass


async def _postgres(settings: Settings, ruleset: Ruleset) -> tuple[PostgresProfileStore, PostgresDecisionLog]:
    assert settings.dsn is not None
    pool = await create_pool(settings.dsn, min_size=0, max_size=settings.pool_max, connect_timeout=2.0)
    try:
        async with pool.acquire(timeout=3.0) as conn:
            missing = await pending(conn)
    except CONNECTION_ERRORS as exc:
        log.warning(
            "database_unreachable_at_start",
            error=f"{type(exc).__name__}: {exc}",
            hint="serving NOT_SERVING until it answers",
        )
    else:
        if missing:
            await pool.close()
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
            raise SchemaNotReadyError(f"the database schema is not up to date (missing {names}); run `nba db migrate`")
    store = PostgresProfileStore(pool, history=contact_history_window(ruleset), timeout=settings.db_timeout)
    decision_log = PostgresDecisionLog(
        pool,
        spill_dir=settings.decision_log.parent,
        drain_timeout=settings.drain_seconds,
        timeout=settings.db_timeout,
    )
    return store, decision_log


async def build_application(settings: Settings) -> Application:
    ruleset = choose_ruleset(load_ruleset_dir(settings.rulesets), settings.ruleset, str(settings.rulesets))
    store: ProfileStore
    decision_log: JsonlDecisionLog | PostgresDecisionLog
    if settings.store == "postgres":
        store, decision_log = await _postgres(settings, ruleset)
        customers: int | str = "in postgres"
    else:
        memory = MemoryProfileStore(read_sample(settings.sample or SAMPLE_PATH, datetime.now(UTC)))
        customers = len(memory)
        store, decision_log = memory, JsonlDecisionLog(settings.decision_log)
    active = activate(ruleset)
    await decision_log.start()
    log.info(
        "application_ready",
        ruleset=ruleset.meta.name,
        version=ruleset.meta.version,
        hash=ruleset.content_hash[:12],
        rules=len(ruleset.rules),
        engine_rulesets=len(active.compiled.partitions),
        customers=customers,
        store=settings.store,
        decision_log="postgres" if settings.store == "postgres" else str(settings.decision_log),
    )
    return Application(settings, DecisionService(store, decision_log, active), store, decision_log)
