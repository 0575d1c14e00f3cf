"""The composition root: the one place that turns settings into a running application."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from nba_service.domain.compiler import compile_ruleset
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Ruleset
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.errors import RulesetInvalid, RulesetProblem
from nba_service.service import ActiveRuleset, DecisionService
from nba_service.settings import Settings
from nba_service.stores.jsonl_log import JsonlDecisionLog
from nba_service.stores.memory import MemoryProfileStore
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
    store: MemoryProfileStore
    decision_log: JsonlDecisionLog

    async def close(self) -> None:
        await self.decision_log.close()
        await self.store.close()
        self.service.active.engine.close()


async def build_application(settings: Settings) -> Application:
    ruleset = choose_ruleset(load_ruleset_dir(settings.rulesets), settings.ruleset, str(settings.rulesets))
    active = activate(ruleset)
    sample = settings.sample or SAMPLE_PATH
    store = MemoryProfileStore(read_sample(sample, datetime.now(UTC)))
    decision_log = JsonlDecisionLog(settings.decision_log)
    await decision_log.start()
    log.info(
        "application_ready",
        ruleset=ruleset.meta.name,
        version=ruleset.meta.version,
        hash=ruleset.content_hash[:12],
        rules=len(ruleset.rules),
        engine_rulesets=len(active.compiled.partitions),
        customers=len(store),
        store=settings.store,
        decision_log=str(settings.decision_log),
    )
    return Application(settings, DecisionService(store, decision_log, active), store, decision_log)
