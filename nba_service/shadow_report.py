"""`nba rulesets shadow-report`: how often, and where, a candidate ruleset run in shadow disagreed with the
active one.

A candidate is promoted on evidence, and the evidence is already in the decision records (`shadow`): this
module only counts it. It reads the records through `nba decisions export`'s own code, so it works on either
store, needs no SQL of its own, and sees exactly what an auditor's export shows.

Per action, a disagreement is one of three things a reviewer acts on differently: the active ruleset
offered it and the candidate would not (a lost offer), the candidate would offer it and the active one did
not (a new offer), or both offer it at a different rank (a change of emphasis). A few decision ids of each
are kept so a reviewer can open those records and see why.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nba_service.domain.records import DecisionRecord, RulesetRef
from nba_service.export import export_records
from nba_service.settings import Settings

EXAMPLES = 3


@dataclass(slots=True)
class Examples:
    """A count and the first few decision ids behind it (oldest first, as the export reads them)."""

    count: int = 0
    decision_ids: list[str] = field(default_factory=list)

    def add(self, decision_id: str) -> None:
        self.count += 1
        if len(self.decision_ids) < EXAMPLES:
            self.decision_ids.append(decision_id)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.decision_ids)}


@dataclass(slots=True)
class ActionDifferences:
    active_only: Examples = field(default_factory=Examples)
    candidate_only: Examples = field(default_factory=Examples)
    other_rank: Examples = field(default_factory=Examples)

    @property
    def total(self) -> int:
        return self.active_only.count + self.candidate_only.count + self.other_rank.count


@dataclass(slots=True)
class Tally:
    shadowed: int = 0
    agreed: int = 0
    disagreed: int = 0
    failed: int = 0

    def add(self, agreed: bool, failed: bool) -> None:
        self.shadowed += 1
        if failed:
            self.failed += 1
        elif agreed:
            self.agreed += 1
        else:
            self.disagreed += 1

    def to_json(self) -> dict[str, Any]:
        return {"shadowed": self.shadowed, "agreed": self.agreed, "disagreed": self.disagreed, "failed": self.failed}


@dataclass(slots=True)
class ShadowReport:
    since: datetime | None = None
    until: datetime | None = None
    decisions: int = 0
    total: Tally = field(default_factory=Tally)
    active: Counter[RulesetRef] = field(default_factory=Counter)
    candidates: dict[RulesetRef, Tally] = field(default_factory=dict)
    channels: dict[str, Tally] = field(default_factory=dict)
    actions: dict[str, ActionDifferences] = field(default_factory=dict)
    errors: dict[str, Examples] = field(default_factory=dict)

    def add(self, record: DecisionRecord) -> None:
        self.decisions += 1
        shadow = record.shadow
        if shadow is None:
            return
        failed = shadow.error is not None
        self.total.add(shadow.agreed, failed)
        self.active[record.ruleset] += 1
        self.candidates.setdefault(shadow.ruleset, Tally()).add(shadow.agreed, failed)
        self.channels.setdefault(record.channel.value, Tally()).add(shadow.agreed, failed)
        if failed:
            self.errors.setdefault(str(shadow.error), Examples()).add(record.decision_id)
            return
        if shadow.agreed:
            return
        answered = {a.action_id: a.priority for a in record.actions}
        # Ranks from the candidate's order, the way `priority` numbers the answer's actions (from 1).
        candidate = {action_id: rank for rank, action_id in enumerate(shadow.action_ids, start=1)}
        for action_id in answered.keys() | candidate.keys():
            differences = self.actions.setdefault(action_id, ActionDifferences())
            if action_id not in candidate:
                differences.active_only.add(record.decision_id)
            elif action_id not in answered:
                differences.candidate_only.add(record.decision_id)
            elif answered[action_id] != candidate[action_id]:
                differences.other_rank.add(record.decision_id)
        # An action offered at the same rank by both is no difference; drop entries that only saw that.
        for action_id in [a for a, d in self.actions.items() if d.total == 0]:
            del self.actions[action_id]

    def ranked_actions(self) -> list[tuple[str, ActionDifferences]]:
        """Most differences first: where a reviewer should look first."""
        return sorted(self.actions.items(), key=lambda item: (-item[1].total, item[0]))

    def to_json(self) -> dict[str, Any]:
        shadowed = self.total.shadowed
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "decisions": self.decisions,
            **self.total.to_json(),
            "disagreement_rate": round(self.total.disagreed / shadowed, 6) if shadowed else None,
            "active": [{**_ref(ref), "decisions": count} for ref, count in sorted(self.active.items(), key=_by_ref)],
            "candidates": [
                {**_ref(ref), **tally.to_json()} for ref, tally in sorted(self.candidates.items(), key=_by_ref)
            ],
            "channels": {channel: tally.to_json() for channel, tally in sorted(self.channels.items())},
            "actions": [
                {
                    "action_id": action_id,
                    "active_only": d.active_only.to_json(),
                    "candidate_only": d.candidate_only.to_json(),
                    "other_rank": d.other_rank.to_json(),
                }
                for action_id, d in self.ranked_actions()
            ],
            "errors": [{"error": error, **ex.to_json()} for error, ex in sorted(self.errors.items())],
        }


def _ref(ref: RulesetRef) -> dict[str, str]:
    return {"name": ref.name, "version": ref.version, "hash": ref.hash}


def _by_ref(item: tuple[RulesetRef, Any]) -> tuple[str, str, str]:
    return (item[0].name, item[0].version, item[0].hash)


async def shadow_report(
    settings: Settings, *, since: datetime | None = None, until: datetime | None = None
) -> ShadowReport:
    """Counts the shadow runs of the decisions made in [since, until); raises what the export raises."""
    report = ShadowReport(since, until)

    def take(line: str) -> None:
        item = json.loads(line)
        if item.get("kind") == "decision":
            report.add(DecisionRecord.from_json(item))

    await export_records(settings, take, since=since, until=until)
    return report


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _short(ref: RulesetRef) -> str:
    return f"{ref.name} {ref.version} ({ref.hash[:12]})"


def render(report: ShadowReport) -> str:
    """The report for a person: totals, which versions were compared, then per action where they differ."""
    since = report.since.isoformat() if report.since else "the first record"
    until = report.until.isoformat() if report.until else "now"
    total = report.total
    lines = [f"{report.decisions} decisions from {since} until {until}, {total.shadowed} of them shadowed"]
    if not total.shadowed:
        lines.append("No shadowed decisions in this period (start `nba serve --shadow CANDIDATE` to make some).")
        return "\n".join(lines)
    lines += [
        f"  agreed     {total.agreed:>8}  {_percent(total.agreed, total.shadowed):>6}",
        f"  disagreed  {total.disagreed:>8}  {_percent(total.disagreed, total.shadowed):>6}",
        f"  failed     {total.failed:>8}  {_percent(total.failed, total.shadowed):>6}",
    ]
    for ref, count in sorted(report.active.items(), key=_by_ref):
        lines.append(f"Active:    {_short(ref)}: {count} shadowed decisions")
    for ref, tally in sorted(report.candidates.items(), key=_by_ref):
        lines.append(
            f"Candidate: {_short(ref)}: {tally.shadowed} shadowed, {tally.disagreed} disagreed "
            f"({_percent(tally.disagreed, tally.shadowed)}), {tally.failed} failed"
        )
    lines.append(
        "By channel: "
        + "; ".join(
            f"{channel} {tally.disagreed} of {tally.shadowed} disagreed ({_percent(tally.disagreed, tally.shadowed)})"
            for channel, tally in sorted(report.channels.items())
        )
    )
    if report.actions:
        lines += ["", "Where they disagreed, per action:"]
        lines.append(f"  {'action':<32} {'active only':>12} {'candidate only':>15} {'other rank':>11}")
        ranked = report.ranked_actions()
        for action_id, d in ranked:
            lines.append(
                f"  {action_id:<32} {d.active_only.count:>12} {d.candidate_only.count:>15} {d.other_rank.count:>11}"
            )
        lines += ["", "Example decisions (`nba decisions export` shows their records):"]
        for action_id, d in ranked:
            for label, examples in (
                ("active only", d.active_only),
                ("candidate only", d.candidate_only),
                ("other rank", d.other_rank),
            ):
                if examples.count:
                    lines.append(f"  {action_id}, {label}: {', '.join(examples.decision_ids)}")
    if report.errors:
        lines += ["", "Candidate failures:"]
        for error, examples in sorted(report.errors.items()):
            lines.append(f"  {examples.count} x {error}: {', '.join(examples.decision_ids)}")
    return "\n".join(lines)
