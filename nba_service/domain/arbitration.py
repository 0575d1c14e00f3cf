"""Ranks the candidates that survived policy; deterministic so a decision can be replayed exactly."""

from __future__ import annotations

from nba_service.domain.policy import Candidate
from nba_service.domain.records import DroppedCandidate


def rank(candidates: list[Candidate], max_actions: int) -> tuple[list[Candidate], list[DroppedCandidate]]:
    """Highest priority first, then file order of the rule, one entry per action, at most `max_actions`."""
    ordered = sorted(candidates, key=lambda c: (-c.rule.priority, c.rule_index, c.action.id))
    chosen: list[Candidate] = []
    dropped: list[DroppedCandidate] = []
    seen: dict[str, str] = {}
    for candidate in ordered:
        if candidate.action.id in seen:
            dropped.append(
                DroppedCandidate(
                    candidate.rule.id,
                    candidate.action.id,
                    "duplicate_action",
                    f"already chosen through rule {seen[candidate.action.id]}",
                    "arbitration",
                )
            )
            continue
        if len(chosen) >= max_actions:
            dropped.append(
                DroppedCandidate(
                    candidate.rule.id, candidate.action.id, "ranked_out", f"below the top {max_actions}", "arbitration"
                )
            )
            continue
        seen[candidate.action.id] = candidate.rule.id
        chosen.append(candidate)
    return chosen, dropped
