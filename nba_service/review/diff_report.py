"""The diff of two ruleset versions as one report: its JSON form (stable keys, for tools) and its text form.

The text is for a terminal and a reviewer: first what changed in the file, then how decisions move, per
channel, per action, with a few customer ids to look up (`nba decide`, `nba explain`). Counts are of
customers: "gained" is how many customers the new version offers the action who did not get it before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nba_service.domain.model import Direction, Ruleset
from nba_service.domain.records import RulesetRef
from nba_service.review.diff import (
    DIFF_FORMAT,
    ActionMovement,
    ChannelImpact,
    Examples,
    ItemChange,
    StructuralDiff,
    titles,
)

_MOVES = (("gained", "gained"), ("lost", "lost"), ("moved_up", "moved up"), ("moved_down", "moved down"))


@dataclass(frozen=True, slots=True)
class DiffReport:
    old: Ruleset
    new: Ruleset
    structure: StructuralDiff
    population: str
    customers: int
    at: datetime
    limit: int
    channels: tuple[ChannelImpact, ...]
    seconds: float
    workers: int
    desk: Direction = Direction.INBOUND

    @property
    def title(self) -> Callable[[str], str]:
        return titles(self.old, self.new)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DIFF_FORMAT,
            "old": _version(self.structure.old, self.old.source),
            "new": _version(self.structure.new, self.new.source),
            "identical": self.structure.identical,
            "structure": self.structure.to_json(),
            "impact": {
                "population": self.population,
                "customers": self.customers,
                "at": self.at.isoformat(),
                "limit": self.limit,
                "desk_direction": self.desk.value,
                "channels": [impact.to_json(self.title) for impact in self.channels],
            },
            "run": {"seconds": round(self.seconds, 3), "workers": self.workers},
        }


def _version(ref: RulesetRef, source: str) -> dict[str, str]:
    return {"name": ref.name, "version": ref.version, "hash": ref.hash, "file": source}


def short(ref: RulesetRef) -> str:
    return f"{ref.name} {ref.version} ({ref.hash[:12]})"


def percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


# --------------------------------------------------------------------------------------------------
# Text


def render_text(report: DiffReport) -> str:
    lines = [f"Ruleset diff: {short(report.structure.old)} -> {short(report.structure.new)}"]
    lines += ["", *structure_lines(report.structure)]
    lines += ["", *impact_lines(report)]
    return "\n".join(lines)


def structure_lines(structure: StructuralDiff) -> list[str]:
    if structure.identical:
        return ["The two files are identical (same content hash): nothing changed."]
    lines = ["What changed in the file"]
    for part in structure.metadata:
        if part.part == "content hash":
            lines.append(f"  content hash: {str(part.old)[:12]} -> {str(part.new)[:12]}")
        elif part.part == "rule order":
            lines.append("  rule order changed (equal priorities are ranked by file order)")
        else:
            lines.append(f"  {part.part}: {_value(part.old)} -> {_value(part.new)}")
    for name, items in structure.sections:
        lines.append(f"  {name.capitalize()}: {_counts(items)}")
        for item in items:
            lines.extend(_item_lines(item))
    return lines


def _counts(items: tuple[ItemChange, ...]) -> str:
    if not items:
        return "no change"
    counts = [(status, sum(1 for i in items if i.status == status)) for status in ("added", "removed", "changed")]
    return ", ".join(f"{count} {status}" for status, count in counts if count)


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _item_lines(item: ItemChange) -> list[str]:
    lines = [f"    {_MARK[item.status]} {item.id} ({item.status})"]
    if item.status == "added":
        lines.append(f"        {item.new_text}")
    elif item.status == "removed":
        lines.append(f"        was: {item.old_text}")
    else:
        for part in item.parts:
            lines.append(f"        {part.part}: {_value(part.old)} -> {_value(part.new)}")
    lines.extend(f"        !! {note}" for note in item.notes)
    return lines


def _value(text: str | None) -> str:
    if text is None:
        return "(none)"
    return text if len(text) <= 100 else text[:97] + "..."


def impact_lines(report: DiffReport) -> list[str]:
    head = (
        f"How decisions move: {report.customers:,} customers from {report.population}, "
        f"at {report.at.isoformat(timespec='seconds')}, up to {report.limit} action{'s' if report.limit > 1 else ''} "
        "each, both versions through the same pipeline"
        + ("; the agent desktop calling out (outbound)" if report.desk is Direction.OUTBOUND else "")
    )
    lines = [head]
    for impact in report.channels:
        lines += ["", *_channel_lines(impact)]
    return lines


def _channel_lines(impact: ChannelImpact) -> list[str]:
    """Action ids, not titles, in the table: ids line up and are what `nba decide` and the records show."""
    changed = impact.changed.count
    lines = [
        f"{impact.channel.value}: {changed:,} of {impact.customers:,} customers get a different answer "
        f"({percent(changed, impact.customers)})"
    ]
    if impact.fallbacks_old or impact.fallbacks_new:
        lines.append(
            f"  the engine failed and the reference evaluator answered instead: {impact.fallbacks_old} times "
            f"(old), {impact.fallbacks_new} times (new)"
        )
    moved = [(action_id, m) for action_id, m in impact.ranked_actions() if m.moved]
    if moved:
        width = max(len("action"), *(len(a) for a, _ in moved))
        header = f"  {'action':<{width}} {'before':>7} {'after':>7} {'gained':>7} {'lost':>7} {'up':>5} {'down':>5}"
        lines += ["", header]
        lines += [f"  {action_id:<{width}} {_row(m)}" for action_id, m in moved]
    still = len(impact.actions) - len(moved)
    if still:
        lines.append(f"  {still} other offered action{'s' if still > 1 else ''}: no customer moved")
    lines.append(f"  from some action to none: {_examples(impact.to_none)}")
    lines.append(f"  from no action to some:   {_examples(impact.from_none)}")
    if moved:
        lines += ["", "  Example customers (first by id):"]
        for action_id, movement in moved:
            for name, label in _MOVES:
                examples: Examples = getattr(movement, name)
                if examples.count:
                    lines.append(f"    {action_id} {label}: {', '.join(examples.customer_ids)}")
    return lines


def _row(m: ActionMovement) -> str:
    return (
        f"{m.before:>7,} {m.after:>7,} {m.gained.count:>7,} {m.lost.count:>7,} "
        f"{m.moved_up.count:>5,} {m.moved_down.count:>5,}"
    )


def _examples(examples: Examples) -> str:
    if not examples.count:
        return "0"
    return f"{examples.count:,} (e.g. {', '.join(examples.customer_ids)})"
