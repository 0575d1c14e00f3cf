"""Ranks the candidates that survived policy; deterministic so a decision can be replayed exactly."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from nba_service.domain.model import Channel, Direction, FrequencyCap, Ruleset
from nba_service.domain.policy import Candidate, PolicyScopes, _cap_count
from nba_service.domain.profile import Profile
from nba_service.domain.records import DroppedCandidate


def rank(
    candidates: list[Candidate],
    max_actions: int,
    *,
    ruleset: Ruleset,
    profile: Profile,
    channel: Channel,
    now: datetime,
    direction: Direction,
    held_out: Callable[[Candidate], bool] = lambda _candidate: False,
    scopes: PolicyScopes | None = None,
) -> tuple[list[Candidate], list[DroppedCandidate]]:
    """Mandatory actions (regulatory notices) first, then highest priority, then file order of the rule, one entry
    per action, at most `max_actions`.

    Frequency caps also count the actions already chosen above a candidate in this same decision: every
    action in the answer becomes a contact once it is delivered, so two referral asks in one answer breach
    "at most one referral ask" just as two answers would. Policy has already checked each candidate against
    the contact history alone; here a candidate is dropped (`frequency_cap`, stage `arbitration`) when the
    history plus the actions chosen before it would already reach a cap's max. A capped candidate takes no
    place in the answer; once the answer is full, the rest are `ranked_out` whatever their caps. A mandatory
    action is capped only by a cap that names it, though it counts toward the caps of what follows it, as any
    contact does.

    A candidate that would be shown but whose customer is in its action's holdout (`held_out`) is recorded as
    `held_out` and takes no place: the customer hears the next best instead, as a customer without that action
    would, and no contact is counted for it.
    """
    ordered = sorted(candidates, key=lambda c: (not c.action.mandatory, -c.rule.priority, c.rule_index, c.action.id))
    chosen: list[Candidate] = []
    dropped: list[DroppedCandidate] = []
    seen: dict[str, str] = {}
    history: dict[str, int] = {}
    scope = scopes or PolicyScopes(ruleset.policies)

    def breached_cap(candidate: Candidate) -> tuple[FrequencyCap, int, int] | None:
        """(cap, contacts in the history, actions chosen in this decision) of the first cap it would breach."""
        for cap in scope.binding(candidate.action, channel, direction)[1]:
            in_decision = sum(1 for c in chosen if cap.id in scope.counted_by(c.action, channel, direction))
            if in_decision == 0:
                continue  # nothing chosen yet counts for this cap: policy's check against the history stands
            if cap.id not in history:
                history[cap.id] = _cap_count(cap, ruleset, profile, now)
            if history[cap.id] + in_decision >= cap.max:
                return cap, history[cap.id], in_decision
        return None

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
        breach = breached_cap(candidate)
        if breach is not None:
            cap, past, in_decision = breach
            dropped.append(
                DroppedCandidate(
                    candidate.rule.id,
                    candidate.action.id,
                    "frequency_cap",
                    f"{cap.id}: at most {cap.max} within {cap.within}; {past} in the contact history and "
                    f"{in_decision} already chosen in this same decision",
                    "arbitration",
                    cap.id,
                )
            )
            continue
        seen[candidate.action.id] = candidate.rule.id
        if held_out(candidate):
            dropped.append(
                DroppedCandidate(
                    candidate.rule.id,
                    candidate.action.id,
                    "held_out",
                    f"in the {candidate.action.holdout:.0%} holdout of {candidate.action.id}",
                    "arbitration",
                )
            )
            continue
        chosen.append(candidate)
    return chosen, dropped
