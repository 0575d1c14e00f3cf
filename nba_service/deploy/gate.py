"""The gate every version passes before it serves: it loads, compiles, loads into the engine, and passes
its own scenario tests, all through the very pipeline that will answer calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nba_service.domain.loader import TESTS_SUFFIX, load_ruleset_text
from nba_service.domain.model import Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.scenarios import CaseResult, Scenario, load_scenarios_text, run_case
from nba_service.errors import CandidateRefused, FieldProblem, RulesetInvalid
from nba_service.review.check import check_ruleset, errors

MAX_REPORTED_FAILURES = 20
CASES_PER_TURN = 8


@dataclass(frozen=True, slots=True)
class Candidate:
    """A version as text: what an admin call carries and what the deploy folder keeps."""

    file_name: str
    content: str
    tests: str | None

    @classmethod
    def from_file(cls, path: Path) -> Candidate:
        tests_path = path.with_name(path.name.removesuffix(".yaml") + TESTS_SUFFIX)
        tests = tests_path.read_text(encoding="utf-8") if tests_path.exists() else None
        return cls(path.name, path.read_text(encoding="utf-8"), tests)


@dataclass(frozen=True, slots=True)
class Prepared:
    ruleset: Ruleset
    active: ActiveRuleset
    scenarios_passed: int


def parse(candidate: Candidate) -> Ruleset:
    """Raises RulesetInvalid naming every problem with its line."""
    return load_ruleset_text(candidate.content, candidate.file_name)


def prepare(candidate: Candidate, ruleset: Ruleset, load: Callable[[Ruleset], ActiveRuleset]) -> Prepared:
    """Loads the version and runs its scenarios; raises CandidateRefused naming each failing case (and
    releases what it loaded), so a version that fails its own tests never answers a call."""
    refuse_check_errors(candidate, ruleset)
    scenarios = load_scenarios(candidate, ruleset)
    active = load(ruleset)
    try:
        results = [run_case(active, s) for s in scenarios]
    except BaseException:
        active.engine.close()
        raise
    return verdict(ruleset, active, results)


async def prepare_in_service(
    candidate: Candidate, ruleset: Ruleset, load: Callable[[Ruleset], ActiveRuleset]
) -> Prepared:
    """`prepare` inside a serving process: the text is read on a thread and the cases run a few at a time, so
    decisions go on being answered meanwhile (the engine itself belongs to the event loop's thread)."""
    await asyncio.to_thread(refuse_check_errors, candidate, ruleset)
    scenarios = await asyncio.to_thread(load_scenarios, candidate, ruleset)
    active = load(ruleset)
    results: list[CaseResult] = []
    try:
        for index, scenario in enumerate(scenarios):
            results.append(run_case(active, scenario))
            if index % CASES_PER_TURN == CASES_PER_TURN - 1:
                await asyncio.sleep(0)
    except BaseException:
        active.engine.close()
        raise
    return verdict(ruleset, active, results)


def refuse_check_errors(candidate: Candidate, ruleset: Ruleset) -> None:
    """A version with errors in `nba rulesets check` (a contradiction, a rule that can never produce an offer)
    does not say what its reviewers signed off, so it never serves; warnings do not stop it."""
    found = errors(check_ruleset(ruleset, candidate.content, candidate.file_name))
    if found:
        raise CandidateRefused(
            f"{_shown(ruleset)} has {len(found)} error(s) in `nba rulesets check`; the running version stays",
            tuple(FieldProblem("ruleset.content", str(f)) for f in found[:MAX_REPORTED_FAILURES]),
        )


def load_scenarios(candidate: Candidate, ruleset: Ruleset) -> list[Scenario]:
    if candidate.tests is None:
        return []
    tests_name = candidate.file_name.removesuffix(".yaml") + TESTS_SUFFIX
    try:
        return load_scenarios_text(candidate.tests, ruleset, tests_name)
    except RulesetInvalid as exc:
        raise CandidateRefused(
            f"the scenario tests of {_shown(ruleset)} are invalid",
            tuple(FieldProblem("ruleset.tests_content", str(p)) for p in exc.ruleset_problems),
        ) from exc


def verdict(ruleset: Ruleset, active: ActiveRuleset, results: list[CaseResult]) -> Prepared:
    failed = [result for result in results if not result.passed]
    if failed:
        active.engine.close()
        raise CandidateRefused(
            f"{_shown(ruleset)} failed {len(failed)} of {len(results)} scenario tests; the running version stays",
            tuple(FieldProblem(f"scenarios[{r.scenario.name}]", _failure(r)) for r in failed[:MAX_REPORTED_FAILURES]),
        )
    return Prepared(ruleset, active, len(results))


def _failure(result: CaseResult) -> str:
    """One line per failing case: enough for the caller to know what to look at in `nba rulesets test`."""
    parts = []
    if not result.actions_match:
        parts.append(f"expected {list(result.scenario.expect.actions)}, got {list(result.evaluation.action_ids)}")
    parts.extend(f"expected drop not seen: {drop}" for drop in result.missing_drops)
    parts.extend(f"expected rule {rule} to fire" for rule in result.missing_fired)
    if result.evaluation.engine_error is not None:
        parts.append(f"engine failed: {result.evaluation.engine_error}")
    return "; ".join(parts)


def _shown(ruleset: Ruleset) -> str:
    return f"{ruleset.meta.name} {ruleset.meta.version} ({ruleset.content_hash[:12]})"
