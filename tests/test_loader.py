"""The loader turns reviewer-written YAML into the model, or reports every problem with its location."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nba_service.domain.loader import load_ruleset_dir, load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Op
from nba_service.errors import RulesetInvalid

BUNDLED = Path(__file__).resolve().parent.parent / "rulesets" / "retail-banking.yaml"
NBA = str(Path(sys.executable).parent / "nba")

GOOD = """\
ruleset:
  name: tiny
  version: 1.0.0
  owner: Compliance
  description: A tiny ruleset.
fields:
  - {name: first_name, type: string}
  - {name: segment, type: string, values: [mass, premier]}
  - {name: balance, type: number}
  - {name: consent, type: boolean}
events:
  - type: large_deposit
    attributes: [{name: amount, type: number}]
actions:
  - id: rates
    category: upsell
    scripts:
      agent_desktop: "Update {first_name} on our new term deposit rates."
    trigger: {event: large_deposit, lifetime: 3d}
rules:
  - id: big-deposit
    description: Idle money after a big deposit.
    reason: Recent large deposit
    priority: 80
    action: rates
    when:
      all:
        - {field: events.large_deposit.amount, op: gte, value: 20000}
        - {field: segment, op: in, value: [mass, premier]}
policies:
  consent: {agent_desktop: consent}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(RulesetInvalid) as info:
        load_ruleset_text(text, "bad.yaml")
    return [str(p) for p in info.value.ruleset_problems]


class TestLoadingValidRulesets:
    def test_bundled_ruleset_loads(self) -> None:
        """The bundled ruleset is valid, large enough, and covers both channels."""
        ruleset = load_ruleset_file(BUNDLED)
        assert ruleset.meta.name == "retail-banking"
        assert len(ruleset.rules) >= 40
        assert {c for a in ruleset.actions.values() for c in a.scripts} == set(Channel)
        assert len(ruleset.content_hash) == 64

    def test_model_reflects_the_file(self) -> None:
        """Constants become typed values; durations become timedeltas; the hash follows the bytes."""
        ruleset = load_ruleset_text(GOOD, "good.yaml")
        rule = ruleset.rules[0]
        assert rule.when.all[0].op is Op.GTE
        assert rule.when.all[0].values == (20000.0,)
        assert rule.when.all[1].values == ("mass", "premier")
        action = ruleset.actions["rates"]
        assert action.trigger is not None
        assert action.trigger.lifetime.days == 3
        assert ruleset.content_hash != load_ruleset_text(GOOD + "\n# comment\n").content_hash


class TestReportingProblems:
    def test_all_problems_at_once_with_file_line_and_rule(self) -> None:
        """Several mistakes in one file are all reported, each naming the file, the line and the rule."""
        text = GOOD.replace("op: gte", "op: greater").replace("value: [mass, premier]", "value: [mass, gold]")
        text = text.replace("action: rates", "action: ratez")
        problems = _problems(text)
        assert any(p.startswith("bad.yaml:") and "'big-deposit'" in p and "greater" in p for p in problems)
        assert len(problems) >= 1
        semantic = _problems(
            GOOD.replace("value: [mass, premier]", "value: [mass, gold]").replace("action: rates", "action: ratez")
        )
        assert len(semantic) == 2
        assert any("rule 'big-deposit'" in p and "'gold' is not one of the declared values" in p for p in semantic)
        assert any("rule 'big-deposit'" in p and "action 'ratez' is not declared" in p for p in semantic)
        assert all(p.split(":")[1].isdigit() for p in semantic), semantic

    def test_line_numbers_point_at_the_problem(self) -> None:
        """The line reported is the line of the offending entry, so an editor can jump to it."""
        text = GOOD.replace("{field: segment, op: in", "{field: segmnt, op: in")
        [problem] = _problems(text)
        line = int(problem.split(":")[1])
        assert "segmnt" in text.splitlines()[line - 1]
        assert "field 'segmnt' is not declared" in problem

    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            (("op: gte, value: 20000", "op: gte, value: abc"), "is not a number"),
            (("op: gte, value: 20000", "op: gte, value: .inf"), "not a finite number"),
            (("op: gte, value: 20000", "op: gte, value: 18014398509481984"), "beyond +/-2^53"),
            (("op: gte, value: 20000", "op: gte"), "needs a value"),
            (("op: gte, value: 20000", "op: exists, value: 1"), "takes no value"),
            (("op: gte, value: 20000", "op: in, value: 5"), "needs a list"),
            (("{field: segment, op: in", "{field: segment, op: lt"), "does not apply to string"),
            (("lifetime: 3d", "lifetime: 3 days"), "a duration like"),
            (("{first_name}", "{balance}"), "placeholder {balance} is not allowed"),
            (("{first_name}", "{first_name!r}"), "bare field name"),
            (("{first_name}", "{first_name"), "malformed braces"),
            (("version: 1.0.0", "version: one"), "a version like"),
            (("id: big-deposit", "id: Big Deposit"), "an id of lower-case letters"),
            (("consent: {agent_desktop: consent}", "consent: {agent_desktop: balance}"), "must be a boolean field"),
            (("priority: 80", "priority: 80\n    colour: red"), "check the spelling"),
            (("reason: Recent large deposit", "reason: Deposit of {amount}"), "placeholders are not allowed"),
        ],
    )
    def test_each_mistake_is_named(self, change: tuple[str, str], expected: str) -> None:
        """Typical reviewer mistakes produce a message that says what is wrong in plain words."""
        old, new = change
        assert old in GOOD
        problems = _problems(GOOD.replace(old, new, 1))
        assert any(expected in p for p in problems), problems

    def test_yaml_syntax_error_has_a_line(self) -> None:
        problems = _problems(GOOD.replace("  - id: rates", "  - id: [rates"))
        assert problems[0].startswith("bad.yaml:")
        assert "YAML syntax" in problems[0]

    def test_duplicate_ids_are_reported(self) -> None:
        text = GOOD + GOOD[GOOD.index("  - id: big-deposit") : GOOD.index("policies:")].replace("policies:", "")
        text = GOOD.replace(
            "policies:", GOOD[GOOD.index("  - id: big-deposit") : GOOD.index("policies:")] + "policies:"
        )
        problems = _problems(text)
        assert any("duplicate id 'big-deposit'" in p for p in problems)

    def test_oversized_rule_is_rejected_before_the_engine(self) -> None:
        """A rule whose `in` lists expand past the engine's safe size is refused with advice to split it."""
        big = ", ".join(str(i) for i in range(10))
        text = GOOD.replace("op: gte, value: 20000", f"op: in, value: [{big}]").replace(
            "{field: segment, op: in, value: [mass, premier]}",
            "{field: balance, op: in, value: [" + big + "]}",
        )
        problems = _problems(text)
        assert any("needs 300 engine conditions" in p and "split it" in p for p in problems), problems

    def test_not_utf8_and_not_a_mapping(self) -> None:
        assert "not UTF-8" in _problems(b"\xff\xfe")[0]  # type: ignore[arg-type]
        assert "must hold a mapping" in _problems("- just\n- a list\n")[0]

    def test_directory_with_two_rulesets_of_one_name(self, tmp_path: Path) -> None:
        (tmp_path / "a.yaml").write_text(GOOD, "utf-8")
        (tmp_path / "b.yaml").write_text(GOOD.replace("A tiny ruleset.", "Another."), "utf-8")
        with pytest.raises(RulesetInvalid) as info:
            load_ruleset_dir(tmp_path)
        assert "also used by" in str(info.value)


class TestCheckCommand:
    def test_valid_files_exit_zero(self) -> None:
        """`nba rulesets check` reports each file and exits 0 when all are valid."""
        result = subprocess.run([NBA, "rulesets", "check", str(BUNDLED)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"ok {BUNDLED}")

    def test_any_invalid_file_exits_non_zero_and_lists_problems(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(GOOD.replace("op: gte", "op: greater"), "utf-8")
        result = subprocess.run(
            [NBA, "rulesets", "check", str(BUNDLED), str(bad)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 1
        assert f"INVALID {bad}" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        assert "1 of 2 file(s) invalid" in result.stdout

    def test_plan_shows_engine_rulesets(self) -> None:
        result = subprocess.run(
            [NBA, "rulesets", "check", "--plan", str(BUNDLED)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0
        assert "partition 0 cost" in result.stdout


def test_a_text_read_again_is_not_parsed_again_and_a_changed_or_broken_one_is() -> None:
    """The supervisor reads the configured files several times as it starts; the same text from the same source
    is the same ruleset, a changed text is parsed anew, and a broken one fails every time."""
    bundled = BUNDLED.read_text("utf-8")
    first = load_ruleset_text(bundled, "a.yaml")
    assert load_ruleset_text(bundled.encode("utf-8"), "a.yaml") is first
    elsewhere = load_ruleset_text(bundled, "b.yaml")
    assert elsewhere.source == "b.yaml"
    assert elsewhere.content_hash == first.content_hash
    changed = load_ruleset_text(bundled.replace("version: 1.4.0", "version: 1.4.1", 1), "a.yaml")
    assert changed.meta.version == "1.4.1"
    assert changed.content_hash != first.content_hash
    broken = bundled.replace("version: 1.4.0", "version: [", 1)
    for _ in range(2):
        with pytest.raises(RulesetInvalid, match="YAML syntax"):
            load_ruleset_text(broken, "a.yaml")
