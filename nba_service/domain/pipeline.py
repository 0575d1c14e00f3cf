"""The one decision pipeline: facts, rules, contact policy, arbitration and scripts, after the profile read.

A pure function of (active ruleset, profile, channel, time, limit) so that the service, scenario tests,
shadow runs, diffs and batches all get the same answer from the same code; nothing here reads a clock,
a store or the network. Whoever watches the stages (the service's traces) passes `stages`: the domain
knows only that a named stage starts and ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime

from nba_service.domain.arbitration import rank
from nba_service.domain.compiler import CompiledRuleset, compile_ruleset
from nba_service.domain.facts import FactValue, project
from nba_service.domain.holdout import is_held_out
from nba_service.domain.model import Channel, Direction, FieldSpec, Ruleset, default_direction
from nba_service.domain.policy import Candidate, PolicyScopes, apply_policies, valid_until
from nba_service.domain.ports import Evaluator
from nba_service.domain.profile import Profile
from nba_service.domain.records import DecidedAction, DroppedCandidate, FiredRule, RulesetRef
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.domain.scripts import render
from nba_service.errors import EngineFailure

FALLBACK_ENGINE = "reference-fallback"
REFERENCE_ENGINE = "reference"

Stages = Callable[[str], AbstractContextManager[object]]
"""`stages(name)` wraps each stage of `evaluate`: "rules", "policy", "arbitration", "rendering"."""
_UNWATCHED: AbstractContextManager[None] = contextlib.nullcontext()


def _unwatched(_name: str) -> AbstractContextManager[object]:
    return _UNWATCHED


@dataclass(frozen=True, slots=True)
class ActiveRuleset:
    """One compiled version; a decision holds on to it from start to end, so a switch is atomic."""

    ruleset: Ruleset
    compiled: CompiledRuleset
    engine: Evaluator
    reference: ReferenceEvaluator
    fact_fields: Mapping[str, FieldSpec]
    engine_name: str
    scopes: PolicyScopes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", PolicyScopes(self.ruleset.policies))

    @property
    def ref(self) -> RulesetRef:
        return RulesetRef(self.ruleset.meta.name, self.ruleset.meta.version, self.ruleset.content_hash)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything one decision produced: what to say, and for the record why, and why not the rest."""

    actions: tuple[DecidedAction, ...]
    rules_fired: tuple[FiredRule, ...]
    dropped: tuple[DroppedCandidate, ...]
    engine: str
    profile_problems: tuple[str, ...]
    engine_error: str | None = None

    @property
    def action_ids(self) -> tuple[str, ...]:
        return tuple(a.action_id for a in self.actions)


def reference_active(ruleset: Ruleset) -> ActiveRuleset:
    """The same pipeline on the plain reference evaluator instead of durable_rules: what the engine is tested
    against, and a way to decide without loading the engine at all."""
    reference = ReferenceEvaluator(ruleset)
    return ActiveRuleset(
        ruleset, compile_ruleset(ruleset), reference, reference, ruleset.fact_fields(), REFERENCE_ENGINE
    )


def evaluate(
    active: ActiveRuleset,
    profile: Profile,
    channel: Channel,
    now: datetime,
    limit: int,
    stages: Stages = _unwatched,
    direction: Direction | None = None,
    held_out: Collection[str] | None = None,
) -> Evaluation:
    """`limit` is the most actions to return; `direction` defaults to the channel's usual one (a dialer calls
    out, a desktop answers). An engine failure falls back to the reference evaluator (same answer, slower) and
    is reported in `engine_error` for the caller to log: a decision never fails on it. `held_out` names the
    actions this customer is held out of, for a scenario that must not depend on the draw; None draws them
    (`holdout.is_held_out`), as the service does."""
    ruleset = active.ruleset
    if direction is None:
        direction = default_direction(channel)
    with stages("rules"):
        projection = project(ruleset, profile, now, active.fact_fields)
        engine_name = active.engine_name
        engine_error: str | None = None
        try:
            matched = active.engine.evaluate(projection.facts)
        except EngineFailure as exc:
            engine_error = str(exc)
            matched = active.reference.evaluate(projection.facts)
            engine_name = FALLBACK_ENGINE
    candidates = [Candidate(i, ruleset.rules[i], ruleset.actions[ruleset.rules[i].action]) for i in matched]
    with stages("policy"):
        kept, dropped = apply_policies(ruleset, profile, projection, channel, now, candidates, direction, active.scopes)
    with stages("arbitration"):
        if held_out is None:
            holdouts = ruleset.holdouts

            def out(candidate: Candidate) -> bool:
                return is_held_out(holdouts, profile.customer_id, candidate.action, now)
        else:
            forced = frozenset(held_out)

            def out(candidate: Candidate) -> bool:
                return candidate.action.holdout > 0 and candidate.action.id in forced

        chosen, ranked_out = rank(
            kept,
            limit,
            ruleset=ruleset,
            profile=profile,
            channel=channel,
            now=now,
            direction=direction,
            held_out=out,
            scopes=active.scopes,
        )
    with stages("rendering"):
        actions = tuple(
            DecidedAction(
                action_id=c.action.id,
                script=render(c.action, channel, profile.attributes),
                priority=position,
                category=c.action.category,
                reason=c.rule.reason,
                rule_id=c.rule.id,
                valid_until=valid_until(ruleset, c, profile, projection, direction, now),
                mandatory=c.action.mandatory,
            )
            for position, c in enumerate(chosen, start=1)
        )
    fired = tuple(
        FiredRule(c.rule.id, c.action.id, c.rule.priority, _values_read(c, projection.facts)) for c in candidates
    )
    return Evaluation(actions, fired, (*dropped, *ranked_out), engine_name, tuple(projection.problems), engine_error)


def _values_read(candidate: Candidate, facts: Mapping[str, FactValue]) -> dict[str, FactValue | None]:
    return {c.field: facts.get(c.field) for c in candidate.rule.when.conditions()}
