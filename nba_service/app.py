"""The composition root: the one place that turns settings into a running application."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from nba_service.deploy.inprocess import InProcessRulesets
from nba_service.deploy.startup import start_version
from nba_service.deploy.state import Activation, DeployState, VersionInfo
from nba_service.domain.compiler import compile_ruleset
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.ports import ProfileStore, RecordExport, RecordReader, RecordSink, RulesetArchive
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.errors import FailedPrecondition, RulesetInvalid, RulesetProblem, Unavailable
from nba_service.service import DecisionService
from nba_service.settings import Settings
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample
from nba_service.telemetry.metrics import ServiceMetrics

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


def choose_shadow(settings: Settings, active: Ruleset) -> Ruleset | None:
    """The candidate for `--shadow`, chosen from its path as the active one is from `--rulesets`.

    A candidate identical to the active ruleset would agree on every decision and prove nothing, which an
    operator could take for evidence that a change is safe; it is refused before anything starts.
    """
    if settings.shadow is None:
        return None
    candidate = choose_ruleset(load_ruleset_dir(settings.shadow), settings.ruleset, str(settings.shadow))
    if candidate.content_hash == active.content_hash:
        raise FailedPrecondition(
            f"--shadow / NBA_SHADOW: {candidate.source} is the active ruleset itself ({active.meta.name} "
            f"{active.meta.version}, sha256 {active.content_hash[:12]}); a shadow run needs a candidate that "
            "differs from it"
        )
    return candidate


@dataclass
class Application:
    settings: Settings
    service: DecisionService
    store: ProfileStore
    decision_log: GroupCommitWriter
    export: RecordExport
    archive: RulesetArchive
    """Every version that ever served, by hash: what explains a past decision (the Review service reads it)."""
    records: RecordReader
    """Whole durable decision records by id."""
    version: VersionInfo | None = None
    rulesets: InProcessRulesets | None = None
    """Deploys inside this process; None for a supervisor's worker, whose supervisor deploys."""

    async def ready(self) -> bool:
        """Serving means both reading profiles and making decision records durable are possible now."""
        return self.decision_log.healthy() and await self.store.ready()

    async def close(self) -> None:
        await self.decision_log.close()
        await self.store.close()
        self.service.active.engine.close()
        shadow = self.service.set_shadow(None)
        if shadow is not None:
            shadow.engine.close()


def contact_history_window(ruleset: Ruleset) -> timedelta:
    """How much contact history a profile needs: the longest frequency-cap window (at least a day)."""
    windows = [cap.within for cap in ruleset.policies.frequency_caps]
    return max([timedelta(days=1), *windows])


def _real_time() -> datetime:
    return datetime.now(UTC)


async def open_sqlite(settings: Settings, ruleset: Ruleset, clock: Callable[[], datetime] = _real_time) -> SqliteStore:
    store = SqliteStore(
        settings.db_path,
        event_types=tuple(ruleset.events),
        history=contact_history_window(ruleset),
        timeout=settings.db_timeout,
        clock=clock,
    )
    sample = settings.sample or SAMPLE_PATH
    try:
        await store.open(lambda: read_sample(sample, clock()))
    except sqlite3.Error as exc:
        await store.close()
        raise Unavailable(f"cannot open the embedded database {settings.db_path}: {exc}") from exc
    return store


def configured_ruleset(settings: Settings) -> Ruleset:
    return choose_ruleset(load_ruleset_dir(settings.rulesets), settings.ruleset, str(settings.rulesets))


async def build_application(
    settings: Settings,
    metrics: ServiceMetrics | None = None,
    clock: Callable[[], datetime] = _real_time,
    *,
    activation: Activation | None = None,
) -> Application:
    """`metrics` (nba_service.telemetry.metrics): what the service, the decision log, the stores and the deploys
    record into; None records nothing. `clock` is the time the service and the stores take for now: the real
    time, except in `nba simulate`, which runs the same application through simulated days."""
    outcome = None if metrics is None else metrics.deploys.outcome
    state = None if settings.deploy_dir is None else DeployState(settings.deploy_dir, outcome)
    # The gate runs before anything opens: a version whose scenarios fail never serves, and fails fast.
    prepared, version = start_version(configured_ruleset(settings), state, activate)
    if activation is not None:
        version = replace(version, source=activation.origin, activated_by=activation.by)
    ruleset, active = prepared.ruleset, prepared.active
    try:
        return await _build(settings, state, ruleset, active, version, metrics, clock)
    except BaseException:
        active.engine.close()
        raise


async def _build(
    settings: Settings,
    state: DeployState | None,
    ruleset: Ruleset,
    active: ActiveRuleset,
    version: VersionInfo,
    metrics: ServiceMetrics | None,
    clock: Callable[[], datetime],
) -> Application:
    candidate = choose_shadow(settings, ruleset)
    store: ProfileStore
    sink: RecordSink
    export: RecordExport
    archive: RulesetArchive
    records: RecordReader
    if settings.store == "postgres":
        from nba_service.stores.postgres import open_postgres, ruleset_archive  # noqa: PLC0415 - asyncpg only when asked for

        store, pg_sink, export = await open_postgres(settings, ruleset, clock)
        sink = records = pg_sink
        if metrics is not None:
            pool = pg_sink.pool
            metrics.sample_pool(lambda: pool.get_size() - pool.get_idle_size(), pool.get_idle_size, pool.get_max_size())
        archive = ruleset_archive(pg_sink, settings)
        where = "postgres"
    else:
        sqlite_store = await open_sqlite(settings, ruleset, clock)
        store = sink = export = archive = records = sqlite_store
        where = str(settings.db_path)
    commits = None if metrics is None else functools.partial(metrics.store_call, "commit_records")
    writer = GroupCommitWriter(
        sink,
        timeout=settings.db_timeout,
        spill_dir=settings.spill_dir,
        drain_timeout=settings.drain_seconds,
        on_commit=commits,
    )
    if metrics is not None:
        metrics.sample_queue(lambda: writer.queued)
    service = DecisionService(store, writer, active, clock=clock, archive=archive, metrics=metrics)
    service.activate(active, version.activated_at, by=version.activated_by, origin=version.source)
    try:
        await service.archive(ruleset, version.activated_at, by=version.activated_by, origin=version.source)
    except Unavailable as exc:
        # The store is away (PostgreSQL starts NOT_SERVING and recovers by itself): the service keeps the
        # version on its first decision, and no decision is made before that succeeds.
        log.warning("ruleset_archive_pending", version=version.shown(), error=str(exc))
    except BaseException:
        await store.close()
        raise
    shadow = None if candidate is None else activate(candidate)
    service.set_shadow(shadow)
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
        shadow=None if candidate is None else f"{candidate.meta.name} {candidate.meta.version}",
        shadow_hash=None if candidate is None else candidate.content_hash[:12],
    )
    reads = store

    def follow(new: Ruleset) -> None:
        reads.set_reads(tuple(new.events), contact_history_window(new))

    # A decision reads its version before its profile read, which the database timeout bounds.
    control = None if state is None else InProcessRulesets(service, state, activate, settings.db_timeout + 1.0, follow)
    return Application(settings, service, store, writer, export, archive, records, version, control)
