"""`nba rulesets check`: is each file a valid ruleset, and what in it should a reviewer look at.

The findings come from `nba_service.review.check`; this module reads the files, prints and picks the exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nba_service.errors import RulesetInvalid, RulesetProblem

if TYPE_CHECKING:  # the analysis is imported when the command runs: registering it keeps `nba decide` fast
    from nba_service.domain.model import Ruleset
    from nba_service.review.check import Finding

ERROR, WARNING = "error", "warning"  # nba_service.review.check.Severity
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STATUS = {
    str(EXIT_OK): "every file is valid and has no error (and, with --strict, no warning)",
    str(EXIT_FAILED): "a file is invalid or has an error, or --strict is given and a file has a warning",
}


@dataclass(slots=True)
class FileResult:
    path: Path
    ruleset: Ruleset | None = None
    summary: str = ""
    plan: str | None = None
    problems: list[RulesetProblem] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def status(self, *, strict: bool) -> str:
        if self.ruleset is None:
            return "invalid"
        return "fail" if self.count(ERROR) or (strict and self.count(WARNING)) else "ok"

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


def register(group: click.Group) -> None:
    @group.command("check")
    @click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--plan", is_flag=True, help="Also print the durable_rules plan the compiler makes.")
    @click.option("--strict", is_flag=True, help="Fail on warnings too, not only on errors.")
    @click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON document.")
    @click.option(
        "--against",
        type=click.Path(exists=True, path_type=Path),
        help="The previously signed-off file (or directory): the version must be raised whenever the content "
        "changed, and never lowered.",
    )
    def check(paths: tuple[Path, ...], plan: bool, strict: bool, as_json: bool, against: Path | None) -> None:
        """Validate ruleset files and report what a reviewer should look at, each with file, line and id.

        \b
        Errors (contradictions, rules that can never produce an offer, a version not raised...) always
        fail; warnings (shadowed or duplicated rules, unused actions...) fail only with --strict. Every
        code is explained in docs/reviewers/check.md. Exit 0 when nothing fails, 1 otherwise."""
        results = check_paths(paths, plan=plan, against=against)
        status = exit_status(results, strict=strict)
        if as_json:
            click.echo(json.dumps(report_json(results, strict=strict, status=status), indent=2, ensure_ascii=False))
        else:
            print_report(results, strict=strict, echo=click.echo)
        sys.exit(status)


def check_paths(paths: tuple[Path, ...], *, plan: bool, against: Path | None) -> list[FileResult]:
    """One result per ruleset file (directories stand for their rulesets), and one for an invalid --against."""
    from nba_service.domain.compiler import compile_ruleset, describe  # noqa: PLC0415
    from nba_service.domain.loader import load_ruleset_dir, load_ruleset_text, ruleset_files  # noqa: PLC0415
    from nba_service.review.check import check_against, check_ruleset  # noqa: PLC0415

    results: list[FileResult] = []
    previous: dict[str, Ruleset] | None = None
    if against is not None:
        try:
            previous = {r.meta.name: r for r in load_ruleset_dir(against)}
        except RulesetInvalid as exc:
            results.append(_invalid(against, exc.ruleset_problems))  # nothing to compare with: that fails
    files: list[Path] = []
    for path in paths:
        files.extend(ruleset_files(path) if path.is_dir() else [path])  # scenario tests (*.tests.yaml) left out
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            results.append(_invalid(file, [RulesetProblem(str(file), None, "", f"cannot read file: {exc.strerror}")]))
            continue
        try:
            ruleset = load_ruleset_text(data, str(file))
        except RulesetInvalid as exc:
            results.append(_invalid(file, exc.ruleset_problems))
            continue
        text = data.decode("utf-8")
        compiled = compile_ruleset(ruleset)
        meta = ruleset.meta
        result = FileResult(
            file,
            ruleset,
            f"{meta.name} {meta.version}, {len(ruleset.rules)} rules, {len(ruleset.actions)} actions, "
            f"{len(compiled.partitions)} engine rulesets, sha256 {ruleset.content_hash[:12]}",
            describe(compiled) if plan else None,
        )
        result.findings = check_ruleset(ruleset, text, str(file))
        if previous is not None:
            result.findings += check_against(ruleset, text, previous.get(meta.name), str(file))
            result.findings.sort(key=lambda f: (f.line or 0, f.code))
        results.append(result)
    return results


def _invalid(path: Path, problems: Sequence[RulesetProblem]) -> FileResult:
    from nba_service.review.check import invalid_findings  # noqa: PLC0415

    return FileResult(path, problems=list(problems), findings=invalid_findings(problems))


def exit_status(results: list[FileResult], *, strict: bool) -> int:
    if not results or any(r.status(strict=strict) != "ok" for r in results):
        return EXIT_FAILED
    return EXIT_OK


def print_report(results: list[FileResult], *, strict: bool, echo: Callable[[str], None]) -> None:
    """Valid files keep the one-line summary `nba rulesets check` always printed; findings follow, indented."""
    for result in results:
        if result.ruleset is None:
            echo(f"INVALID {result.path}: {len(result.problems)} problem(s)")
            for problem, finding in zip(result.problems, result.findings, strict=True):
                echo(f"  {problem}" + ("" if finding.code == "invalid" else f" [{finding.code}]"))
            continue
        echo(f"{'FAIL' if result.status(strict=strict) == 'fail' else 'ok'} {result.path}: {result.summary}")
        for finding in result.findings:
            echo(f"  {finding}")
        if result.plan is not None:
            echo(result.plan)
    if not results:
        echo("no ruleset files given")
        return
    invalid = sum(1 for r in results if r.ruleset is None)
    if invalid:
        echo(f"{invalid} of {len(results)} file(s) invalid")
    checked = [r for r in results if r.ruleset is not None]
    errors = sum(r.count(ERROR) for r in checked)
    warnings = sum(r.count(WARNING) for r in checked)
    if errors or warnings:
        hint = "" if strict or not warnings else "; warnings fail only with --strict"
        echo(f"{errors} error(s), {warnings} warning(s) in {len(checked)} valid file(s){hint}")


def report_json(results: list[FileResult], *, strict: bool, status: int) -> dict[str, Any]:
    files = []
    for result in results:
        entry: dict[str, Any] = {
            "file": str(result.path),
            "status": result.status(strict=strict),
            "ruleset": None,
            "errors": result.count(ERROR),
            "warnings": result.count(WARNING),
        }
        if result.ruleset is not None:
            meta = result.ruleset.meta
            entry["ruleset"] = {"name": meta.name, "version": meta.version, "hash": result.ruleset.content_hash}
        if result.plan is not None:
            entry["plan"] = result.plan
        files.append(entry)
    findings = [f.to_json() for r in results for f in r.findings]
    return {
        "strict": strict,
        "files": files,
        "findings": findings,
        "summary": {
            "files": len(results),
            "invalid": sum(1 for r in results if r.ruleset is None),
            "errors": sum(1 for f in findings if f["severity"] == ERROR),
            "warnings": sum(1 for f in findings if f["severity"] == WARNING),
            "exit_status": status,
        },
        "exit_status": EXIT_STATUS,
    }
