"""`nba rulesets diff`, the pure part: what changed between two versions of a ruleset, and how decisions move.

A reviewer signs off a change twice: once as text (which rules, actions and policies were added, removed or
changed, and in which part), once as effect (which customers would now be offered something else). Both are
computed here from the typed model and from finished evaluations, never from YAML text or by deciding
anything: the decisions come from the one pipeline, run elsewhere (`review.simulate`), and this module only
counts how they differ. That keeps the counting testable on hand-made answers, and the counts mergeable:
each worker process tallies its own customers and the tallies are added up.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nba_service.domain.model import (
    Action,
    Channel,
    Constraint,
    Direction,
    EventSpec,
    FieldSpec,
    FrequencyCap,
    Ruleset,
    Suppression,
    direction_fits,
)
from nba_service.domain.policy import policy_ids
from nba_service.domain.records import RulesetRef
from nba_service.domain.wording import (
    action_title,
    conversion_text,
    duration_text,
    holdouts_text,
    policy_text,
    rule_text,
    share_text,
    value_text,
    when_text,
)

DIFF_FORMAT = "nba.rulesets-diff/1"
EXAMPLES = 5

Status = Literal["added", "removed", "changed"]


# --------------------------------------------------------------------------------------------------
# Structure


@dataclass(frozen=True, slots=True)
class PartChange:
    """One part of an item, as a reviewer reads it; None means the part is absent on that side."""

    part: str
    old: str | None
    new: str | None

    def to_json(self) -> dict[str, Any]:
        return {"part": self.part, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class ItemChange:
    """A rule, action, policy, field or event that one version has and the other lacks, or has otherwise."""

    kind: str
    id: str
    status: Status
    parts: tuple[PartChange, ...] = ()
    old_text: str | None = None
    new_text: str | None = None
    # What the parts mean for decisions, when a reviewer could miss it (an offer becoming a mandatory notice).
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "status": self.status,
            "parts": [p.to_json() for p in self.parts],
            "old_text": self.old_text,
            "new_text": self.new_text,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class StructuralDiff:
    old: RulesetRef
    new: RulesetRef
    metadata: tuple[PartChange, ...]
    rules: tuple[ItemChange, ...]
    actions: tuple[ItemChange, ...]
    policies: tuple[ItemChange, ...]
    fields: tuple[ItemChange, ...]
    events: tuple[ItemChange, ...]
    purposes: tuple[ItemChange, ...] = ()
    holdouts: tuple[ItemChange, ...] = ()

    @property
    def sections(self) -> tuple[tuple[str, tuple[ItemChange, ...]], ...]:
        return (
            ("rules", self.rules),
            ("actions", self.actions),
            ("purposes", self.purposes),
            ("holdouts", self.holdouts),
            ("policies", self.policies),
            ("fields", self.fields),
            ("events", self.events),
        )

    @property
    def identical(self) -> bool:
        return self.old.hash == self.new.hash

    def to_json(self) -> dict[str, Any]:
        return {
            "metadata": [p.to_json() for p in self.metadata],
            **{name: [item.to_json() for item in items] for name, items in self.sections},
        }


def ref(ruleset: Ruleset) -> RulesetRef:
    return RulesetRef(ruleset.meta.name, ruleset.meta.version, ruleset.content_hash)


def structural_diff(old: Ruleset, new: Ruleset) -> StructuralDiff:
    return StructuralDiff(
        ref(old),
        ref(new),
        _metadata(old, new),
        _compare("rule", _rules(old), _rules(new)),
        _action_notes(_compare("action", _actions(old), _actions(new)), old, new),
        _compare("policy", _policies(old), _policies(new)),
        _compare("field", _fields(old), _fields(new)),
        _compare("event", _events(old), _events(new)),
        _compare("purpose", _purposes(old), _purposes(new)),
        _holdout_notes(_compare("holdouts", _holdouts(old), _holdouts(new))),
    )


@dataclass(frozen=True, slots=True)
class _Worded:
    """A part compared by its model value and shown in words: the words of a condition also depend on the
    field's description, and a reworded description must not show every rule reading it as changed."""

    value: object
    text: str = field(compare=False)


_Part = str | _Worded


@dataclass(frozen=True, slots=True)
class _Item:
    """An item as a set of named parts: comparing two versions is comparing these."""

    parts: dict[str, _Part]
    text: str


def _shown(part: _Part | None) -> str | None:
    return part.text if isinstance(part, _Worded) else part


def _compare(kind: str, old: Mapping[str, _Item], new: Mapping[str, _Item]) -> tuple[ItemChange, ...]:
    """Removed items in the old file's order, then changed and added ones in the new file's order."""
    found = [ItemChange(kind, key, "removed", old_text=item.text) for key, item in old.items() if key not in new]
    for key, item in new.items():
        before = old.get(key)
        if before is None:
            found.append(ItemChange(kind, key, "added", new_text=item.text))
            continue
        parts = tuple(
            PartChange(name, _shown(before.parts.get(name)), _shown(item.parts.get(name)))
            for name in _union(before.parts, item.parts)
            if before.parts.get(name) != item.parts.get(name)
        )
        if parts:
            found.append(ItemChange(kind, key, "changed", parts, before.text, item.text))
    return tuple(found)


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    names = list(first)
    names.extend(name for name in second if name not in names)
    return names


def _metadata(old: Ruleset, new: Ruleset) -> tuple[PartChange, ...]:
    def facets(ruleset: Ruleset) -> dict[str, str]:
        meta = ruleset.meta
        return {
            "name": meta.name,
            "version": meta.version,
            "owner": meta.owner,
            "description": meta.description,
            "valid for": duration_text(meta.valid_for),
            "content hash": ruleset.content_hash,
        }

    before, after = facets(old), facets(new)
    changes = [PartChange(name, before[name], after[name]) for name in before if before[name] != after[name]]
    common = [r.id for r in old.rules if r.id in {n.id for n in new.rules}]
    reordered = [r.id for r in new.rules if r.id in set(common)]
    if common != reordered:
        # Equal priorities are ranked by file order, so a reordering alone can move decisions.
        changes.append(PartChange("rule order", ", ".join(common), ", ".join(reordered)))
    return tuple(changes)


# --------------------------------------------------------------------------------------------------
# Each kind of item as named parts in plain words


def _rules(ruleset: Ruleset) -> dict[str, _Item]:
    return {
        rule.id: _Item(
            {
                "conditions": _Worded(rule.when, when_text(rule.when, ruleset)),
                "action": rule.action,
                "priority": str(rule.priority),
                "reason": rule.reason,
                "description": rule.description,
            },
            rule_text(rule, ruleset),
        )
        for rule in ruleset.rules
    }


def _actions(ruleset: Ruleset) -> dict[str, _Item]:
    items: dict[str, _Item] = {}
    for action in ruleset.actions.values():
        parts: dict[str, _Part] = {"type": action.type.value, "category": action.category}
        if action.purpose:
            parts["purpose"] = action.purpose
        parts["description"] = action.description
        for channel in Channel:
            if channel in action.scripts:
                parts[f"script ({channel.value})"] = action.scripts[channel]
        if action.trigger is not None:
            parts["trigger event"] = action.trigger.event
            parts["trigger lifetime"] = duration_text(action.trigger.lifetime)
        if action.conversion is not None:
            parts["conversion"] = _Worded(action.conversion, conversion_text(action.conversion))
        if action.value is not None:
            parts["value"] = value_text(action.value)
        if action.holdout > 0:
            parts["holdout share"] = share_text(action.holdout)
        # Derived from the consent policies, so a reviewer sees which actions a consent change reaches.
        for (channel, direction), needed in consent_needed(ruleset, action).items():
            parts[f"consent needed ({channel.value}, {direction.value})"] = " and ".join(needed) or "no consent"
        title = action_title(action) + (" (mandatory notice)" if action.mandatory else "")
        items[action.id] = _Item(parts, title)
    return items


def consent_needed(ruleset: Ruleset, action: Action) -> dict[tuple[Channel, Direction], tuple[str, ...]]:
    """The consent fields the action needs on each channel it has a script for, in each direction that channel
    can take: what moving an action to another purpose, or rewriting a consent entry, changes."""
    return {
        (channel, direction): tuple(
            dict.fromkeys(c.field for c in ruleset.policies.consent if c.applies(channel, action.purpose, direction))
        )
        for channel in Channel
        if channel in action.scripts
        for direction in Direction
        if direction_fits(channel, direction)
    }


_BECOMES_MANDATORY = (
    "BIG CHANGE: now a mandatory notice: it ranks above every offer, and suppressions, constraint pauses and "
    "frequency caps no longer stop it"
)
_NO_LONGER_MANDATORY = (
    "BIG CHANGE: no longer a mandatory notice: it now ranks by priority among the offers, and suppressions, "
    "constraint pauses and frequency caps can stop it"
)


_CONVERSION_REDEFINED = (
    "BIG CHANGE: what counts as converted changes: conversions counted from now on cannot be compared with "
    "those measured before"
)
_CONVERSION_DROPPED = "BIG CHANGE: no longer declares a conversion: what it adds is no longer measured"
_HOLDOUT_SHARE = (
    "BIG CHANGE: the holdout share changes ({old} -> {new}): customers move between the groups, so measurement "
    "before and after cannot be compared"
)
_HOLDOUT_DRAW = (
    "BIG CHANGE: the holdout {parts} changes{what}: every customer is drawn again, so measurement before and after "
    "cannot be compared"
)


def _measurement_notes(parts: Mapping[str, PartChange]) -> list[str]:
    """Changes that break comparisons with what was measured before, flagged as the mandatory flag is."""
    notes = []
    conversion = parts.get("conversion")
    if conversion is not None and conversion.old is not None:
        notes.append(_CONVERSION_REDEFINED if conversion.new is not None else _CONVERSION_DROPPED)
    share = parts.get("holdout share")
    if share is not None:
        notes.append(_HOLDOUT_SHARE.format(old=share.old or "0%", new=share.new or "0%"))
    return notes


def _holdout_notes(changes: tuple[ItemChange, ...]) -> tuple[ItemChange, ...]:
    noted = []
    for change in changes:
        drawn = [p.part for p in change.parts if p.part in ("period", "seed")]
        if change.status != "changed" or not drawn:
            noted.append(change)
            continue
        what = " (a new period starts at once)" if "period" in drawn else ""
        noted.append(dataclasses.replace(change, notes=(_HOLDOUT_DRAW.format(parts=" and ".join(drawn), what=what),)))
    return tuple(noted)


def _holdouts(ruleset: Ruleset) -> dict[str, _Item]:
    """The programme as one item, present when some action holds out: its shares are parts of the actions."""
    if not any(a.holdout > 0 for a in ruleset.actions.values()):
        return {}
    holdouts = ruleset.holdouts
    parts: dict[str, _Part] = {"period": duration_text(holdouts.period), "seed": holdouts.seed}
    return {"holdouts": _Item(parts, holdouts_text(ruleset))}


def _action_notes(changes: tuple[ItemChange, ...], old: Ruleset, new: Ruleset) -> tuple[ItemChange, ...]:
    noted = []
    for change in changes:
        notes: list[str] = []
        parts = {p.part: p for p in change.parts}
        if change.status == "added" and new.actions[change.id].mandatory:
            notes.append("a mandatory notice: it ranks above every offer and skips suppressions, pauses and caps")
        kind = parts.get("type")
        if kind is not None:
            notes.append(_BECOMES_MANDATORY if kind.new == "mandatory" else _NO_LONGER_MANDATORY)
        purpose = parts.get("purpose")
        if purpose is not None:
            consent = [p for p in change.parts if p.part.startswith("consent needed")]
            moved = f"moves from purpose {purpose.old or '(none)'} to {purpose.new or '(none)'}"
            if consent:
                notes.append(f"{moved}, so the consent it needs changes (see the consent needed parts)")
            else:
                notes.append(f"{moved}; the consent it needs is the same")
            notes.append("caps, constraints and suppressions that name a purpose now count it under its new one")
        notes.extend(_measurement_notes(parts))
        noted.append(dataclasses.replace(change, notes=tuple(notes)) if notes else change)
    return tuple(noted)


def _purposes(ruleset: Ruleset) -> dict[str, _Item]:
    return {
        p.id: _Item(
            {"description": p.description, "categories": ", ".join(p.categories)},
            f"{p.id}: {p.description} (categories {', '.join(p.categories)})",
        )
        for p in ruleset.purposes.values()
    }


def _policies(ruleset: Ruleset) -> dict[str, _Item]:
    policies = ruleset.policies
    caps = {cap.id: cap for cap in policies.frequency_caps}
    constraints = {c.id: c for c in policies.constraints}
    suppressions = {s.id: s for s in policies.suppressions}
    items: dict[str, _Item] = {}
    for policy_id in policy_ids(ruleset):
        parts: dict[str, _Part]
        if policy_id.startswith("consent:"):
            entries = [c for c in policies.consent if c.id == policy_id]
            parts = {
                "purposes": "every purpose" if entries[0].purposes is None else ", ".join(sorted(entries[0].purposes))
            }
            if len(entries) == 1:
                parts["consent field"] = entries[0].field
                parts["directions"] = _directions(entries[0].directions)
            else:  # the same channel and purposes split by direction: one field per direction
                for entry in entries:
                    parts[f"consent field ({_directions(entry.directions)})"] = entry.field
        elif policy_id == "do_not_call":
            parts = {"do-not-call field": policies.do_not_call_field or ""}
        elif policy_id == "quiet_hours" and policies.quiet_hours is not None:
            quiet = policies.quiet_hours
            parts = {
                "quiet hours": f"{_clock(quiet.start_minute)} to {_clock(quiet.end_minute)}",
                "time zone field": quiet.timezone_field,
                "default time zone": quiet.default_timezone,
            }
        elif policy_id in caps:
            parts = _cap_parts(caps[policy_id])
        elif policy_id in constraints:
            parts = _constraint_parts(constraints[policy_id])
        else:
            parts = _suppression_parts(suppressions[policy_id], ruleset)
        items[policy_id] = _Item(parts, policy_text(ruleset, policy_id))
    return items


def _directions(directions: frozenset[Direction]) -> str:
    return ", ".join(d.value for d in Direction if d in directions)


def _scope_parts(scoped: FrequencyCap | Constraint) -> dict[str, _Part]:
    """What a cap or constraint counts and where; a part left out matches everything (shown as "(none)")."""
    parts: dict[str, _Part] = {}
    for name, value in (
        ("action", scoped.action),
        ("category", scoped.category),
        ("purpose", scoped.purpose),
        ("channel", scoped.channel),
        ("direction", scoped.direction),
    ):
        if value is not None:
            parts[name] = str(value)
    return parts


def _cap_parts(cap: FrequencyCap) -> dict[str, _Part]:
    parts: dict[str, _Part] = {"kind": "frequency cap", "max": str(cap.max), "within": duration_text(cap.within)}
    parts.update(_scope_parts(cap))
    parts["description"] = cap.description
    return parts


def _constraint_parts(constraint: Constraint) -> dict[str, _Part]:
    parts: dict[str, _Part] = {
        "kind": "constraint",
        "outcomes": ", ".join(sorted(constraint.outcomes)),
        "after": str(constraint.after),
        "within": duration_text(constraint.within),
        "per action": "yes" if constraint.per_action else "no",
    }
    parts.update(_scope_parts(constraint))
    parts["description"] = constraint.description
    return parts


def _suppression_parts(suppression: Suppression, ruleset: Ruleset) -> dict[str, _Part]:
    return {
        "kind": "suppression",
        "conditions": _Worded(suppression.when, when_text(suppression.when, ruleset)),
        "channels": ", ".join(c.value for c in Channel if c in suppression.channels),
        "directions": _directions(suppression.directions),
        "except categories": ", ".join(sorted(suppression.except_categories)) or "none",
        "except purposes": ", ".join(sorted(suppression.except_purposes)) or "none",
        "description": suppression.description,
    }


def _fields(ruleset: Ruleset) -> dict[str, _Item]:
    return {name: _Item(_field_parts(spec), name) for name, spec in ruleset.fields.items()}


def _field_parts(spec: FieldSpec) -> dict[str, _Part]:
    parts: dict[str, _Part] = {"type": spec.type, "description": spec.description}
    if spec.values is not None:
        parts["values"] = ", ".join(spec.values)
    return parts


def _events(ruleset: Ruleset) -> dict[str, _Item]:
    return {kind: _Item(_event_parts(spec), kind) for kind, spec in ruleset.events.items()}


def _event_parts(spec: EventSpec) -> dict[str, _Part]:
    parts: dict[str, _Part] = {"description": spec.description}
    for attribute in spec.attributes:
        described = ", ".join(f"{k}: {_shown(v)}" for k, v in _field_parts(attribute).items() if _shown(v))
        parts[f"attribute {attribute.name}"] = described
    return parts


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Movement of decisions


@dataclass(slots=True)
class Examples:
    """How many customers, and the first few of them by id (whichever order they were counted in)."""

    count: int = 0
    customer_ids: list[str] = field(default_factory=list)

    def add(self, customer_id: str) -> None:
        self.count += 1
        ids = self.customer_ids
        if len(ids) < EXAMPLES or customer_id < ids[-1]:
            ids.append(customer_id)
            ids.sort()
            del ids[EXAMPLES:]

    def merge(self, other: Examples) -> None:
        self.count += other.count
        self.customer_ids = heapq.nsmallest(EXAMPLES, [*self.customer_ids, *other.customer_ids])

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.customer_ids)}


@dataclass(slots=True)
class ActionMovement:
    """One action's movement: offered before/after (customers), and who gained, lost or kept it at another rank.

    Moving up means a better (smaller) rank under the new version."""

    before: int = 0
    after: int = 0
    gained: Examples = field(default_factory=Examples)
    lost: Examples = field(default_factory=Examples)
    moved_up: Examples = field(default_factory=Examples)
    moved_down: Examples = field(default_factory=Examples)

    @property
    def moved(self) -> int:
        return self.gained.count + self.lost.count + self.moved_up.count + self.moved_down.count

    def kinds(self) -> tuple[tuple[str, Examples], ...]:
        return (
            ("gained", self.gained),
            ("lost", self.lost),
            ("moved_up", self.moved_up),
            ("moved_down", self.moved_down),
        )

    def merge(self, other: ActionMovement) -> None:
        self.before += other.before
        self.after += other.after
        for (_, mine), (_, theirs) in zip(self.kinds(), other.kinds(), strict=True):
            mine.merge(theirs)

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, **{name: ex.to_json() for name, ex in self.kinds()}}


@dataclass(slots=True)
class ChannelImpact:
    """How the answers on one channel move from the old version to the new one, over a population."""

    channel: Channel
    customers: int = 0
    changed: Examples = field(default_factory=Examples)
    to_none: Examples = field(default_factory=Examples)
    from_none: Examples = field(default_factory=Examples)
    actions: dict[str, ActionMovement] = field(default_factory=dict)
    fallbacks_old: int = 0
    fallbacks_new: int = 0

    def add(self, customer_id: str, old: Sequence[str], new: Sequence[str]) -> None:
        """One customer's answers, best first, from the old and the new version."""
        self.customers += 1
        old_rank = {action_id: rank for rank, action_id in enumerate(old, start=1)}
        new_rank = {action_id: rank for rank, action_id in enumerate(new, start=1)}
        for action_id in old_rank:
            self._movement(action_id).before += 1
        for action_id in new_rank:
            self._movement(action_id).after += 1
        if tuple(old) == tuple(new):
            return
        self.changed.add(customer_id)
        if not new:
            self.to_none.add(customer_id)
        elif not old:
            self.from_none.add(customer_id)
        for action_id in _union(old_rank, new_rank):
            before, after = old_rank.get(action_id), new_rank.get(action_id)
            movement = self._movement(action_id)
            if before is None:
                movement.gained.add(customer_id)
            elif after is None:
                movement.lost.add(customer_id)
            elif after < before:
                movement.moved_up.add(customer_id)
            elif after > before:
                movement.moved_down.add(customer_id)

    def _movement(self, action_id: str) -> ActionMovement:
        movement = self.actions.get(action_id)
        if movement is None:
            movement = self.actions[action_id] = ActionMovement()
        return movement

    def merge(self, other: ChannelImpact) -> None:
        self.customers += other.customers
        self.changed.merge(other.changed)
        self.to_none.merge(other.to_none)
        self.from_none.merge(other.from_none)
        self.fallbacks_old += other.fallbacks_old
        self.fallbacks_new += other.fallbacks_new
        for action_id, movement in other.actions.items():
            self._movement(action_id).merge(movement)

    def ranked_actions(self) -> list[tuple[str, ActionMovement]]:
        """Most movement first (where a reviewer looks first), then by id."""
        return sorted(self.actions.items(), key=lambda item: (-item[1].moved, item[0]))

    def to_json(self, title: Callable[[str], str]) -> dict[str, Any]:
        return {
            "channel": self.channel.value,
            "customers": self.customers,
            "changed": self.changed.to_json(),
            "unchanged": self.customers - self.changed.count,
            "to_none": self.to_none.to_json(),
            "from_none": self.from_none.to_json(),
            "engine_fallbacks": {"old": self.fallbacks_old, "new": self.fallbacks_new},
            "actions": [
                {"action_id": action_id, "title": title(action_id), **movement.to_json()}
                for action_id, movement in self.ranked_actions()
            ],
        }


def merge_impacts(into: dict[Channel, ChannelImpact], more: Mapping[Channel, ChannelImpact]) -> None:
    for channel, impact in more.items():
        if channel in into:
            into[channel].merge(impact)
        else:
            into[channel] = impact


def titles(old: Ruleset, new: Ruleset) -> Callable[[str], str]:
    """An action's title for reports: the new version's words, the old one's for an action it removed."""

    def title(action_id: str) -> str:
        action = new.actions.get(action_id) or old.actions.get(action_id)
        return action_title(action) if action is not None else action_id

    return title
