"""Rulesets and scenario files load through libyaml first; the round-trip parser runs only to locate problems.

Both paths must read every document the same way, or a file would mean one thing when a server starts and another
when `nba rulesets check` reads it: every scalar spelling YAML 1.1 and 1.2 disagree on, every file of this
repository (and each bundled ruleset version in git history), and problems still located by line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar

from nba_service.domain.loader import fast_document, load_round_trip, load_ruleset_text
from nba_service.domain.model import Ruleset
from nba_service.domain.scenarios import load_scenarios_text, scenarios_round_trip
from nba_service.errors import RulesetInvalid, RulesetProblem

ROOT = Path(__file__).resolve().parent.parent

# Spellings that YAML 1.1 and 1.2 (and parsers) read differently: booleans, octal, sexagesimal, underscores,
# special floats, nulls, dates and times, and strings that only look like them.
SCALARS = [
    "yes",
    "no",
    "Yes",
    "NO",
    "on",
    "off",
    "On",
    "OFF",
    "y",
    "n",
    "Y",
    "N",
    "true",
    "false",
    "True",
    "FALSE",
    "tRUE",
    "0",
    "-0",
    "+0",
    "007",
    "0o17",
    "0x1F",
    "0X1F",
    "0b101",
    "1_000",
    "1,000",
    "1:20",
    "190:20:30",
    "+12",
    "-12",
    "1e3",
    "1E3",
    "1.0e+3",
    "1.5",
    ".5",
    "5.",
    "-.5",
    "1.",
    "0.1e-2",
    "6.8523015e+5",
    "685.230_15e+03",
    ".inf",
    "-.inf",
    "+.inf",
    ".Inf",
    ".INF",
    "-.Inf",
    ".nan",
    ".NaN",
    ".NAN",
    "nan",
    "inf",
    "~",
    "null",
    "Null",
    "NULL",
    "",
    "nul",
    "None",
    "2026-01-01",
    "2026-1-1",
    "2026-01-01 10:00",
    "2026-01-01T10:00:00Z",
    "2026-01-01t10:00:00.5+01:00",
    "2026-01-01 10:00:00 -5",
    "10:00",
    "12:30:45",
    "'quoted'",
    '"double"',
    "'no'",
    '"yes"',
    "<<",
    "=",
    "!!str 1",
    "!!int '7'",
    "!!float 1",
    "!!bool yes",
    "12345678901234567890123",
    "-9223372036854775809",
    "0.0000000000000000000001",
    "1e400",
    "Ünïcødé",
    "🙂",
]


def plain(value: Any) -> Any:
    """A document as plain, comparable Python: the round-trip parser's own subclasses set aside."""
    if isinstance(value, dict):
        return {"__map__": [(repr(plain(k)), plain(v)) for k, v in value.items()]}  # in order: order can matter
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(float(value)))
    if isinstance(value, datetime):
        return ("datetime", datetime.isoformat(value), str(value.tzinfo))
    if isinstance(value, date):
        return ("date", date.isoformat(value))
    if isinstance(value, str):
        return ("str", str(value))
    if isinstance(value, TaggedScalar) and str(value.tag) == "tag:yaml.org,2002:str":
        # An explicit `!!str` stays wrapped in the round-trip parse; its value is the string libyaml gives.
        return ("str", str(value.value))
    return ("other", type(value).__name__, repr(value))


def round_trip_document(text: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except Exception:  # both parsers must refuse the same texts
        return None


@pytest.mark.parametrize("scalar", SCALARS)
def test_every_scalar_spelling_reads_the_same_on_both_paths(scalar: str) -> None:
    text = f"as_value: {scalar}\nin_a_list: [{scalar}, 1]\nnested:\n  - key: {scalar}\n"
    if scalar and not scalar.startswith(("!", "'", '"', "<<")):
        text += f"{scalar}: as a key\n"
    fast, slow = fast_document(text), round_trip_document(text)
    if fast is None:
        # libyaml refuses a few texts the round-trip parser reads (`[1:20]` in a flow list): the loaders then take
        # the round-trip path, so such a file still reads as before, only slower.
        return
    assert slow is not None, scalar
    assert plain(fast) == plain(slow), scalar


def test_a_merge_key_takes_the_round_trip_path() -> None:
    """The two constructors order a merged mapping's keys differently, and a ruleset's order can matter."""
    text = "base: &b {k: 1}\nmerged: {<<: *b, j: 2}\n"
    assert fast_document(text) is None
    assert plain(round_trip_document(text)) == plain({"base": {"k": 1}, "merged": {"j": 2, "k": 1}})


def ruleset_texts() -> list[tuple[str, str]]:
    """Every ruleset file here, and every version of the bundled one in git history."""
    files = [ROOT / "rulesets" / "retail-banking.yaml", ROOT / "tests" / "golden" / "tiny.yaml"]
    files += sorted((ROOT / "tests" / "review").glob("seeded-*.yaml"))
    files += sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))
    files += sorted((ROOT / "docs" / "reviewers" / "examples").glob("*.yaml"))
    texts = [(str(f.relative_to(ROOT)), f.read_text("utf-8")) for f in files if not f.name.endswith(".tests.yaml")]
    history = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--format=%H", "--", "rulesets/retail-banking.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    for commit in history.stdout.split():
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:rulesets/retail-banking.yaml"],
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode == 0:
            texts.append((f"retail-banking.yaml@{commit[:12]}", shown.stdout))
    return texts


@pytest.mark.parametrize(("name", "text"), ruleset_texts(), ids=lambda v: v if "\n" not in v else "")
def test_every_ruleset_here_builds_the_same_on_both_paths(name: str, text: str) -> None:
    content_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        slow: Ruleset | tuple[RulesetProblem, ...] = load_round_trip(text, name, content_hash)
    except RulesetInvalid as exc:
        slow = exc.ruleset_problems
    if isinstance(slow, tuple):
        with pytest.raises(RulesetInvalid) as fast_error:
            load_ruleset_text(text, name)
        assert fast_error.value.ruleset_problems == slow
        return
    assert load_ruleset_text(text, name) == dataclasses.replace(slow, text=text)


def test_scenarios_build_the_same_on_both_paths_with_their_lines() -> None:
    for ruleset_file in (ROOT / "rulesets" / "retail-banking.yaml", ROOT / "tests" / "scenarios" / "mini-bank.yaml"):
        ruleset = load_ruleset_text(ruleset_file.read_text("utf-8"), str(ruleset_file))
        tests_file = ruleset_file.with_name(ruleset_file.stem + ".tests.yaml")
        text = tests_file.read_text("utf-8")
        fast = load_scenarios_text(text, ruleset, str(tests_file))
        slow = scenarios_round_trip(text, ruleset, str(tests_file))
        assert fast == slow
        assert all(s.line for s in fast)
        assert len(fast) > 10


def test_a_problem_is_still_located_by_line() -> None:
    """A valid document that the builder refuses is read again round-trip, so the problem keeps its line."""
    text = (ROOT / "rulesets" / "retail-banking.yaml").read_text("utf-8")
    broken = text.replace("  version: ", "  version: [not, a, version] #", 1)
    with pytest.raises(RulesetInvalid) as info:
        load_ruleset_text(broken, "broken.yaml")
    [problem] = [p for p in info.value.ruleset_problems if p.where == "ruleset.version"]
    assert problem.line == broken.splitlines().index(next(s for s in broken.splitlines() if "[not, a" in s)) + 1


def test_a_failing_scenario_case_and_a_duplicate_name_keep_their_lines() -> None:
    ruleset_file = ROOT / "tests" / "scenarios" / "mini-bank.yaml"
    ruleset = load_ruleset_text(ruleset_file.read_text("utf-8"), str(ruleset_file))
    text = ruleset_file.with_name("mini-bank.tests.yaml").read_text("utf-8")
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  - name:")]
    first_case = lines[starts[0] : starts[1]]
    doubled = "\n".join([*lines, *first_case]) + "\n"
    with pytest.raises(RulesetInvalid) as info:
        load_scenarios_text(doubled, ruleset, "doubled.tests.yaml")
    [problem] = info.value.ruleset_problems
    assert problem.line == len(lines) + 1
    assert f"(first at line {starts[0] + 1})" in problem.problem, problem
    failing = text.replace("      actions: [rates]\n", "      actions: [loyalty-thanks]\n", 1)
    assert failing != text
    cases = load_scenarios_text(failing, ruleset, "failing.tests.yaml")
    assert cases[0].location == f"failing.tests.yaml:{starts[0] + 1}"
