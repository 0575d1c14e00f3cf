"""Why a past decision came out as it did, and why not another action: the reviewer's answer, in words.

For the transport helper (gRPC Review service, `nba explain`):
- The caller fetches the version that decided from the archive by the record's hash
  (`Application.archive.source(record.ruleset.hash)`), loads it with `load_ruleset_text(archived.source)` and
  passes it here; records come from `Application.records.get_record(decision_id)`.
- `replay` needs an `ActiveRuleset` of that version: `reference_active(ruleset)` (no engine to load) is
  enough, since the reference evaluator is what the engine is tested against.
- Dry run: `DecisionService.decide(..., dry_run=True)` returns a `Decision` whose `explanation` is set (it is
  None for every real decision). Its `decision_id` starts with `DRY_RUN_PREFIX` ("dry-"); nothing is recorded
  for it, so `RecordOutcome` on it raises InvalidArgument and the transport must not mark its delivery.

All of this is pure: no store, no clock. The truth of each condition comes from the reference evaluator's own
`condition_holds` over the facts recomputed with `facts.project`, the functions the pipeline itself uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nba_service.domain.facts import FactValue, normalise, project
from nba_service.domain.model import Channel, Condition, Direction, Op, Rule, Ruleset
from nba_service.domain.pipeline import ActiveRuleset, evaluate
from nba_service.domain.records import DecidedAction, DecisionRecord, DroppedCandidate, FiredRule, RulesetRef
from nba_service.domain.reference import condition_holds
from nba_service.domain.wording import action_title, channel_text, condition_text, drop_text, rule_text
from nba_service.errors import FailedPrecondition, NotFound

DRY_RUN_PREFIX = "dry-"


@dataclass(frozen=True, slots=True)
class ExplainedCondition:
    field: str
    op: str
    values: tuple[Any, ...]
    value_read: Any
    held: bool
    words: str


@dataclass(frozen=True, slots=True)
class ExplainedRule:
    rule_id: str
    action_id: str
    priority: int
    sentence: str
    conditions: tuple[ExplainedCondition, ...]


@dataclass(frozen=True, slots=True)
class ExplainedDrop:
    rule_id: str
    action_id: str
    stage: str
    policy: str
    reason: str
    words: str


@dataclass(frozen=True, slots=True)
class Explanation:
    decision_id: str
    decided_at: datetime
    customer_id: str
    channel: Channel
    ruleset: RulesetRef
    engine: str
    delivery: str
    actions: tuple[DecidedAction, ...]
    """The ranking as answered."""
    fired: tuple[ExplainedRule, ...]
    dropped: tuple[ExplainedDrop, ...]
    replayable: bool
    summary: str
    """One or two plain sentences; for no action, why in words."""
    dry_run: bool = False
    trace_id: str = ""
    """The trace the decision was made in; "" when it was not traced."""
    direction: Direction = Direction.INBOUND
    """Who started the contact; the channel's usual direction for records written before directions were kept."""


@dataclass(frozen=True, slots=True)
class WhyNot:
    decision_id: str
    action_id: str
    offered: bool
    stage: str
    """"offered" | "no_rule" | "conditions" | "policy" | "arbitration" | "no_script"."""
    rule_id: str
    policy: str
    words: str
    """The first thing that kept the action out, in words."""


@dataclass(frozen=True, slots=True)
class Replay:
    same: bool
    differences: tuple[str, ...]


def explain(record: DecisionRecord, ruleset: Ruleset, *, dry_run: bool = False) -> Explanation:
    """Each fired rule with the values it read and its conditions in words, each dropped candidate with its
    stage, policy and reason in words, the ranking as answered. Raises FailedPrecondition when `ruleset` is
    not the version that decided."""
    _check_version(record, ruleset)
    rules = {rule.id: rule for rule in ruleset.rules}
    fired = tuple(_explained_rule(f, rules[f.rule_id], ruleset) for f in record.rules_fired if f.rule_id in rules)
    dropped = tuple(
        ExplainedDrop(d.rule_id, d.action_id, d.stage, d.policy, d.reason, drop_text(d, ruleset))
        for d in record.dropped
    )
    return Explanation(
        decision_id=record.decision_id,
        decided_at=record.decided_at,
        customer_id=record.customer_id,
        channel=record.channel,
        ruleset=record.ruleset,
        engine=record.engine,
        delivery=record.delivery.value,
        actions=record.actions,
        fired=fired,
        dropped=dropped,
        replayable=record.inputs is not None,
        summary=_summary(record, ruleset, dry_run=dry_run),
        dry_run=dry_run,
        trace_id=record.trace_id,
        direction=record.contact_direction,
    )


def why_not(record: DecisionRecord, ruleset: Ruleset, action_id: str) -> WhyNot:
    """The first thing that kept `action_id` out of this decision, in words.

    In this order: offered after all; no rule offers it; no script for the decision's channel; a rule for
    it matched but its candidate was dropped (the highest-priority such rule: whatever its conditions, that
    drop is what stood in the way last); otherwise the first condition that did not hold in the
    highest-priority rule for it, with the value read. Raises NotFound for an action the version does not
    have, FailedPrecondition when `ruleset` is not the version that decided.
    """
    _check_version(record, ruleset)
    action = ruleset.actions.get(action_id)
    if action is None:
        known = ", ".join(sorted(ruleset.actions))
        raise NotFound(
            f"action {action_id!r} is not in ruleset {ruleset.meta.name} {ruleset.meta.version} (its actions: {known})"
        )
    title = action_title(action)

    def answer(stage: str, words: str, rule_id: str = "", policy: str = "") -> WhyNot:
        return WhyNot(record.decision_id, action_id, stage == "offered", stage, rule_id, policy, words)

    for rank, decided in enumerate(record.actions, start=1):
        if decided.action_id == action_id:
            return answer(
                "offered", f"{title} was offered, at rank {rank}, by rule {decided.rule_id}.", decided.rule_id
            )
    rules = sorted(
        (r for r in ruleset.rules if r.action == action_id),
        key=lambda r: (-r.priority, ruleset.rules.index(r)),
    )
    if not rules:
        return answer("no_rule", f"{title} is offered by no rule of {_version(ruleset)}.")
    if record.channel not in action.scripts:
        return answer(
            "no_script", f"{title} has no script for {channel_text(record.channel)}, so it is never offered there."
        )
    fired = {f.rule_id for f in record.rules_fired}
    for rule in rules:
        if rule.id not in fired:
            continue
        drop = next((d for d in record.dropped if d.rule_id == rule.id and d.action_id == action_id), None)
        if drop is not None:
            return answer(drop.stage, drop_text(drop, ruleset), rule.id, drop.policy)
    rule = rules[0]
    if record.inputs is None:
        return answer(
            "conditions",
            f"No rule for {title} matched. Rule {rule.id} ({rule_text(rule, ruleset)}) did not fire, but this record "
            "was written before decisions kept their inputs, so the values its conditions read are not known.",
            rule.id,
        )
    facts = _facts(record, ruleset)
    return answer("conditions", _first_failure(rule, facts, ruleset), rule.id)


def replay(record: DecisionRecord, active: ActiveRuleset) -> Replay:
    """Runs the stored inputs through the one pipeline again, at the moment the decision was made, and lists
    every way the result differs from the record: the actions (ids, order, scripts, validity), the rules that
    fired with the values they read, and the candidates dropped. Raises FailedPrecondition for a record
    without inputs or a version other than the one that decided."""
    if record.inputs is None:
        raise FailedPrecondition(
            f"decision {record.decision_id} was recorded before decisions kept their inputs, so it cannot be "
            "replayed; it can still be explained from the rules that fired and the candidates dropped"
        )
    _check_version(record, active.ruleset)
    inputs = record.inputs
    result = evaluate(
        active, inputs.profile, record.channel, record.decided_at, inputs.limit, direction=record.contact_direction
    )
    differences: list[str] = []
    recorded_ids = [a.action_id for a in record.actions]
    replayed_ids = list(result.action_ids)
    if recorded_ids != replayed_ids:
        differences.append(f"actions: recorded {_ids(recorded_ids)}, replayed {_ids(replayed_ids)}")
    else:
        for was, now in zip(record.actions, result.actions, strict=True):
            for name in ("script", "valid_until", "rule_id", "priority", "category", "reason", "mandatory"):
                before, after = getattr(was, name), getattr(now, name)
                if before != after:
                    differences.append(f"action {was.action_id} {name}: recorded {before!r}, replayed {after!r}")
    differences.extend(_compare("rule fired", _fired_keys(record.rules_fired), _fired_keys(result.rules_fired)))
    differences.extend(_compare("dropped", _drop_keys(record.dropped), _drop_keys(result.dropped)))
    return Replay(not differences, tuple(differences))


# --- helpers -------------------------------------------------------------------------------------------------


def _version(ruleset: Ruleset) -> str:
    return f"{ruleset.meta.name} {ruleset.meta.version} ({ruleset.content_hash[:12]})"


def _check_version(record: DecisionRecord, ruleset: Ruleset) -> None:
    if ruleset.content_hash != record.ruleset.hash:
        raise FailedPrecondition(
            f"decision {record.decision_id} was made by {record.ruleset.name} {record.ruleset.version} "
            f"({record.ruleset.hash[:12]}), not by {_version(ruleset)}: explain it with the version that decided"
        )


def _facts(record: DecisionRecord, ruleset: Ruleset) -> Mapping[str, FactValue]:
    """The facts the engine saw, recomputed from the stored profile by the pipeline's own projection."""
    assert record.inputs is not None  # callers check
    return project(ruleset, record.inputs.profile, record.decided_at).facts


def _read_facts(fired: FiredRule, ruleset: Ruleset) -> dict[str, FactValue]:
    """The values a fired rule read, as facts again: a store may hand a number back as an int (jsonb keeps
    1e16 as 10000000000000000), and the reference evaluator compares types."""
    specs = ruleset.fact_fields()
    facts: dict[str, FactValue] = {}
    for name, value in fired.values.items():
        spec = specs.get(name)
        fact = normalise(spec, value) if spec is not None else value
        if fact is not None:
            facts[name] = fact
    return facts


def _explained_rule(fired: FiredRule, rule: Rule, ruleset: Ruleset) -> ExplainedRule:
    facts = _read_facts(fired, ruleset)
    return ExplainedRule(
        fired.rule_id,
        fired.action_id,
        fired.priority,
        rule_text(rule, ruleset),
        tuple(_explained_condition(c, facts, ruleset) for c in rule.when.conditions()),
    )


def _explained_condition(condition: Condition, facts: Mapping[str, FactValue], ruleset: Ruleset) -> ExplainedCondition:
    held = condition_holds(condition, facts)
    value = facts.get(condition.field)
    verdict = "held" if held else "did not hold"
    words = f"{condition_text(condition, ruleset)}: {verdict} ({_read_text(condition.field, value, ruleset)})"
    return ExplainedCondition(condition.field, condition.op.value, condition.values, value, held, words)


def _read_text(field: str, value: FactValue | None, ruleset: Ruleset) -> str:
    """What was read, in the same words as a condition: "the customer's age is 42", "there is no unexpired
    large deposit event"."""
    if value is None:
        return condition_text(Condition(field, Op.MISSING), ruleset)
    if isinstance(value, float) and field.endswith(".age_hours"):
        value = round(value, 1)
    return condition_text(Condition(field, Op.EQ, (value,)), ruleset)


def _first_failure(rule: Rule, facts: Mapping[str, FactValue], ruleset: Ruleset) -> str:
    lead = f"Rule {rule.id} did not fire"
    for condition in rule.when.all:
        if not condition_holds(condition, facts):
            read = _read_text(condition.field, facts.get(condition.field), ruleset)
            return f"{lead}: it needs {condition_text(condition, ruleset)}, but {read}."
    if rule.when.any and not any(condition_holds(c, facts) for c in rule.when.any):
        needed = "; or ".join(condition_text(c, ruleset) for c in rule.when.any)
        reads = "; ".join(dict.fromkeys(_read_text(c.field, facts.get(c.field), ruleset) for c in rule.when.any))
        return f"{lead}: it needs at least one of: {needed}; but {reads}."
    return (
        f"{lead}, yet every one of its conditions holds on the stored inputs: the engine and the reference "
        "evaluator disagree here; replay the decision to see what differs."
    )


def _summary(record: DecisionRecord, ruleset: Ruleset, *, dry_run: bool) -> str:
    parts: list[str] = []
    if dry_run:
        parts.append("Dry run: nothing was recorded and nothing counts toward a cap.")
    count = len(record.actions)
    if count:
        titles = ", ".join(_title(a.action_id, ruleset) for a in record.actions)
        held = _held_back(record.dropped)
        parts.append(f"{_plural(count, 'action')} offered ({titles}){'; ' + held if held else ''}.")
    elif not record.rules_fired:
        parts.append("No action: no rule's conditions held for this customer.")
    else:
        first = record.dropped[0] if record.dropped else None
        why = f" {drop_text(first, ruleset)}" if first is not None else ""
        every = "it was" if len(record.rules_fired) == 1 else "each was"
        parts.append(f"No action: {_plural(len(record.rules_fired), 'rule')} matched but {every} held back.{why}")
    if record.channel is Channel.AGENT_DESKTOP and record.contact_direction is Direction.OUTBOUND:
        # Said only when it differs from the channel's usual direction: the policies that applied depend on it.
        parts.append("The agent was calling the customer (outbound), not answering their call.")
    if record.delivery.value != "sent":
        parts.append(f"The answer did not reach the caller ({record.delivery.value.replace('_', ' ')}).")
    return " ".join(parts)


def _held_back(dropped: tuple[DroppedCandidate, ...]) -> str:
    """ "1 held back by policy weekly-cap, 2 ranked below the top 3"."""
    groups: Counter[str] = Counter()
    for drop in dropped:
        if drop.reason == "ranked_out":
            groups["ranked below the answer's limit"] += 1
        elif drop.reason == "duplicate_action":
            groups["already offered through another rule"] += 1
        elif drop.reason == "channel_fit":
            groups["not scripted for this channel"] += 1
        elif drop.reason == "held_out":
            groups["held out at random, to measure what the action adds"] += 1
        elif drop.policy:
            groups[f"held back by policy {drop.policy}"] += 1
        else:
            groups[f"held back ({drop.reason.replace('_', ' ')})"] += 1
    return ", ".join(f"{n} {what}" for what, n in groups.items())


def _title(action_id: str, ruleset: Ruleset) -> str:
    action = ruleset.actions.get(action_id)
    return action_title(action) if action is not None else action_id


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _ids(ids: list[str]) -> str:
    return "[" + ", ".join(ids) + "]" if ids else "none"


def _fired_keys(fired: tuple[FiredRule, ...]) -> list[str]:
    return [f"{f.rule_id} -> {f.action_id} read {_values(f.values)}" for f in fired]


def _values(values: Mapping[str, Any]) -> str:
    """Values compared as numbers where they are numbers: a store may hand a float back as an int."""
    shown = []
    for name in sorted(values):
        value = values[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        shown.append(f"{name}={value!r}")
    return "{" + ", ".join(shown) + "}"


def _drop_keys(dropped: tuple[DroppedCandidate, ...]) -> list[str]:
    return [
        f"{d.rule_id} -> {d.action_id} at {d.stage}: {d.reason} ({d.policy or 'no policy'}; {d.detail})"
        for d in dropped
    ]


def _compare(what: str, recorded: list[str], replayed: list[str]) -> list[str]:
    if recorded == replayed:
        return []
    missing = [r for r in recorded if r not in replayed]
    extra = [r for r in replayed if r not in recorded]
    if not missing and not extra:
        return [f"{what}: same entries in another order"]
    return [f"{what}: recorded only: {r}" for r in missing] + [f"{what}: replayed only: {r}" for r in extra]
