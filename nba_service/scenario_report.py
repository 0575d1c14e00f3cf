"""`nba rulesets test`: finds each ruleset's scenario tests, runs them on the real engine and reports.

Outside the domain because it loads durable_rules (through `app.activate`, the loading the service itself
does) and prints; outside cli.py so the command stays a few lines. The report is written for the reviewer
who wrote the cases: a failing case says what was expected, what came out, what happened to each candidate
the case expected to be dropped, and which rules fired with the values they read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nba_service.domain.loader import TESTS_SUFFIX, load_ruleset_file, ruleset_files
from nba_service.domain.model import Ruleset
from nba_service.domain.records import DroppedCandidate
from nba_service.domain.scenarios import (
    CaseResult,
    Coverage,
    Covered,
    ExpectedDrop,
    Scenario,
    coverage,
    load_scenarios_file,
    ruleset_path_for,
    run_case,
    tests_path_for,
)
from nba_service.errors import RulesetInvalid, RulesetProblem

EXIT_PASSED = 0
EXIT_FAILED = 1  # a case failed, or --strict found something never exercised or a ruleset without tests
EXIT_INVALID = 2  # a ruleset or tests file is invalid, or a path holds nothing to test
BRIEF = 6  # ids listed per kind of unexercised item without --strict


@dataclass(frozen=True, slots=True)
class Target:
    ruleset: Path
    tests: Path  # beside the ruleset; may not exist


@dataclass(frozen=True, slots=True)
class RulesetRun:
    ruleset: Ruleset
    tests: Path
    results: tuple[CaseResult, ...] | None  # None: no tests file
    coverage: Coverage | None

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results or ())

    def strict_problems(self) -> list[str]:
        if self.coverage is None:
            return ["no scenario tests"]
        return [
            f"{kind} never exercised: {', '.join(covered.missing)}"
            for kind, covered in (("rules", self.coverage.rules), ("policies", self.coverage.policies))
            if not covered.complete
        ]


def find_targets(paths: Sequence[Path]) -> tuple[list[Target], list[RulesetProblem]]:
    """Rulesets with their tests: a ruleset names its tests, a tests file its ruleset, a directory both."""
    targets: list[Target] = []
    problems: list[RulesetProblem] = []
    for path in paths:
        if path.is_dir():
            found = ruleset_files(path)
            if not found:
                problems.append(RulesetProblem(str(path), None, "", "no ruleset files (*.yaml) found"))
            targets.extend(Target(file, tests_path_for(file)) for file in found)
            for tests in sorted(path.glob(f"*{TESTS_SUFFIX}")):
                if not ruleset_path_for(tests).is_file():
                    problems.append(_orphan(tests))
        elif not path.is_file():
            problems.append(RulesetProblem(str(path), None, "", "no such file or directory"))
        elif path.name.endswith(TESTS_SUFFIX):
            if ruleset_path_for(path).is_file():
                targets.append(Target(ruleset_path_for(path), path))
            else:
                problems.append(_orphan(path))
        else:
            targets.append(Target(path, tests_path_for(path)))
    return list(dict.fromkeys(targets)), problems


def _orphan(tests: Path) -> RulesetProblem:
    return RulesetProblem(str(tests), None, "", f"no ruleset beside it: {ruleset_path_for(tests)} does not exist")


def load_targets(
    targets: Sequence[Target],
) -> tuple[list[tuple[Target, Ruleset, list[Scenario] | None]], list[RulesetProblem]]:
    loaded: list[tuple[Target, Ruleset, list[Scenario] | None]] = []
    problems: list[RulesetProblem] = []
    for target in targets:
        try:
            ruleset = load_ruleset_file(target.ruleset)
        except RulesetInvalid as exc:
            problems.extend(exc.ruleset_problems)
            continue
        scenarios = None
        if target.tests.is_file():
            try:
                scenarios = load_scenarios_file(target.tests, ruleset)
            except RulesetInvalid as exc:
                problems.extend(exc.ruleset_problems)
                continue
        loaded.append((target, ruleset, scenarios))
    return loaded, problems


def execute(target: Target, ruleset: Ruleset, scenarios: list[Scenario] | None) -> RulesetRun:
    if scenarios is None:
        return RulesetRun(ruleset, target.tests, None, None)
    from nba_service.app import activate  # noqa: PLC0415 - the engine only once every file is valid

    active = activate(ruleset)
    try:
        results = tuple(run_case(active, scenario) for scenario in scenarios)
    finally:
        active.engine.close()
    return RulesetRun(ruleset, target.tests, results, coverage(ruleset, results))


def run_scenario_tests(paths: Sequence[Path], *, strict: bool, as_json: bool, echo: Callable[[str], None]) -> int:
    """Runs and reports; returns the exit code. Every file is checked before any case runs, so an invalid
    file reports all its problems at once instead of half a run."""
    targets, problems = find_targets(paths)
    loaded, load_problems = load_targets(targets)
    problems.extend(load_problems)
    if problems:
        if as_json:
            echo(_json({"passed": False, "strict": strict, "problems": [_problem_json(p) for p in problems]}))
        else:
            for problem in problems:
                echo(str(problem))
            files = len({p.file for p in problems})
            echo(f"{len(problems)} problem(s) in {files} file(s); no case was run")
        return EXIT_INVALID
    runs = [execute(*item) for item in loaded]
    failed = any(run.failed for run in runs) or (strict and any(run.strict_problems() for run in runs))
    if as_json:
        echo(_json({"passed": not failed, "strict": strict, "rulesets": [run_json(run) for run in runs]}))
    else:
        for run in runs:
            for line in run_lines(run, strict):
                echo(line)
    return EXIT_FAILED if failed else EXIT_PASSED


def run_lines(run: RulesetRun, strict: bool) -> list[str]:
    meta = run.ruleset.meta
    title = f"{meta.name} {meta.version}"
    if run.results is None or run.coverage is None:
        needed = "; --strict requires them" if strict else ""
        return [f"{title}: no scenario tests ({run.tests} does not exist){needed}"]
    lines = [f"{title}: {len(run.results)} cases from {run.tests}"]
    for result in run.results:
        lines.extend(case_lines(result))
    cov = run.coverage
    lines.append(
        f"{title}: {len(run.results)} cases, {len(run.results) - run.failed} passed; "
        f"coverage: rules {cov.rules}, actions {cov.actions}, policies {cov.policies}"
    )
    for kind, covered in (("rules", cov.rules), ("actions", cov.actions), ("policies", cov.policies)):
        if not covered.complete:
            lines.append(f"  never exercised: {kind} {_listing(covered, brief=not strict)}")
    if strict and run.strict_problems():
        lines.append(f"{title}: --strict fails: every rule and every policy must be exercised by some case")
    return lines


def _listing(covered: Covered, brief: bool) -> str:
    missing = covered.missing
    if brief and len(missing) > BRIEF:
        return f"{', '.join(missing[:BRIEF])} and {len(missing) - BRIEF} more (--strict lists all)"
    return ", ".join(missing)


def case_lines(result: CaseResult) -> list[str]:
    scenario = result.scenario
    if result.passed:
        return [f"PASS {scenario.name}"]
    evaluation = result.evaluation
    expect = scenario.expect
    local = scenario.local_time
    lines = [
        f"FAIL {scenario.name}",
        f"  case at {scenario.location}: {scenario.channel.value}, {local:%Y-%m-%d %H:%M} {local.tzinfo} "
        f"({scenario.now:%Y-%m-%d %H:%M} UTC), at most {scenario.max_actions} action(s)",
        f"  expected actions: {_ids(expect.actions)}",
        f"  got actions:      {_ids(evaluation.action_ids)}" + ("" if result.actions_match else "   <- differs"),
    ]
    for expected in result.missing_drops:
        lines.append(f"  expected dropped: {expected}; not so:")
        lines.extend(f"    {fate}" for fate in fates(result, expected))
    if result.missing_fired:
        lines.append(f"  expected fired:   {', '.join(result.missing_fired)}; did not fire")
    if evaluation.engine_error is not None:
        lines.append(f"  the rules engine failed ({evaluation.engine_error}); the reference evaluator answered")
    lines.append("  rules fired:" if evaluation.rules_fired else "  rules fired: none")
    for fired in evaluation.rules_fired:
        values = ", ".join(f"{name}={_value(value)}" for name, value in fired.values.items())
        lines.append(f"    {fired.rule_id} -> {fired.action_id} (priority {fired.priority}) read {values or 'nothing'}")
    if evaluation.dropped:
        lines.append("  dropped:")
        lines.extend(f"    {d.rule_id} -> {d.action_id}: {_drop(d)}" for d in evaluation.dropped)
    return lines


def fates(result: CaseResult, expected: ExpectedDrop) -> list[str]:
    """What became of the candidate an unmet `dropped` entry named: offered, dropped otherwise, or never fired."""
    evaluation = result.evaluation
    found = [
        f"{a.action_id} was offered at position {a.priority} through rule {a.rule_id}"
        for a in evaluation.actions
        if (expected.action is None or a.action_id == expected.action)
        and (expected.rule is None or a.rule_id == expected.rule)
    ]
    found += [
        f"{d.action_id} was dropped through rule {d.rule_id}: {_drop(d)}"
        for d in evaluation.dropped
        if expected.concerns(d)
    ]
    if found:
        return found
    if expected.rule is not None:
        return [f"rule {expected.rule} did not fire"]
    return [f"no rule proposing {expected.action} fired"]


def _drop(dropped: DroppedCandidate) -> str:
    policy = f" [{dropped.policy}]" if dropped.policy else ""
    return f"{dropped.reason}{policy} ({dropped.detail})"


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "(none)"


def _value(value: object) -> str:
    """A fact as a reviewer wrote it: 25000 rather than 25000.0, true rather than True."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return repr(value) if isinstance(value, str) else str(value)


def run_json(run: RulesetRun) -> dict[str, Any]:
    meta = run.ruleset.meta
    out: dict[str, Any] = {
        "name": meta.name,
        "version": meta.version,
        "file": run.ruleset.source,
        "tests": str(run.tests),
        "tests_found": run.results is not None,
    }
    if run.results is None or run.coverage is None:
        return out
    out["cases"] = [case_json(r) for r in run.results]
    out["passed"] = len(run.results) - run.failed
    out["failed"] = run.failed
    out["coverage"] = {
        kind: {"exercised": covered.count, "total": len(covered.ids), "missing": list(covered.missing)}
        for kind, covered in (
            ("rules", run.coverage.rules),
            ("actions", run.coverage.actions),
            ("policies", run.coverage.policies),
        )
    }
    return out


def case_json(result: CaseResult) -> dict[str, Any]:
    scenario = result.scenario
    evaluation = result.evaluation
    return {
        "name": scenario.name,
        "line": scenario.line,
        "passed": result.passed,
        "channel": scenario.channel.value,
        "at": scenario.local_time.isoformat(),
        "max_actions": scenario.max_actions,
        "expected": {
            "actions": list(scenario.expect.actions),
            "dropped": [_expected_json(e) for e in scenario.expect.dropped],
            "fired": list(scenario.expect.fired),
        },
        "actions": list(evaluation.action_ids),
        "missing_dropped": [{**_expected_json(e), "instead": fates(result, e)} for e in result.missing_drops],
        "missing_fired": list(result.missing_fired),
        "rules_fired": [dataclasses.asdict(f) for f in evaluation.rules_fired],
        "dropped": [dataclasses.asdict(d) for d in evaluation.dropped],
        "engine_error": evaluation.engine_error,
    }


def _expected_json(expected: ExpectedDrop) -> dict[str, str]:
    return {k: v for k, v in dataclasses.asdict(expected).items() if v is not None}


def _problem_json(problem: RulesetProblem) -> dict[str, Any]:
    return dataclasses.asdict(problem)


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)
