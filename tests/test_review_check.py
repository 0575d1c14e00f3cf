"""`nba rulesets check --strict`: static findings a compliance reviewer can act on, each with file, line and id.

The seeded fixtures under tests/review/ mark every line a finding must point at with a `# seeded: CODE ID`
comment, so the expected findings come from the files themselves, not from the checker's output.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nba_service.deploy.gate import Candidate, parse, prepare
from nba_service.domain.facts import FactValue
from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Condition, Direction, FieldSpec, Op, Ruleset, When
from nba_service.domain.pipeline import ActiveRuleset, evaluate, reference_active
from nba_service.domain.profile import Contact, OutcomeKind, Profile
from nba_service.domain.reference import condition_holds, when_holds
from nba_service.errors import CandidateRefused, RulesetInvalid
from nba_service.review import conditions
from nba_service.review.check import Code, Finding, check_against, check_ruleset, compare_versions, invalid_findings

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "rulesets" / "retail-banking.yaml"
MINI_BANK = ROOT / "tests" / "scenarios" / "mini-bank.yaml"
SEEDED = ROOT / "tests" / "review" / "seeded-mistakes.yaml"
SEEDED_INVALID = ROOT / "tests" / "review" / "seeded-invalid.yaml"
SEEDED_NO_OWNER = ROOT / "tests" / "review" / "seeded-no-owner.yaml"
SEEDED_POLICY = ROOT / "tests" / "review" / "seeded-contact-policy.yaml"
SEEDED_MEASUREMENT = ROOT / "tests" / "review" / "seeded-measurement.yaml"
EXAMPLE = ROOT / "docs" / "reviewers" / "examples" / "contact-policy.yaml"
NBA = str(Path(sys.executable).parent / "nba")
MARKER = re.compile(r"# seeded: (.*)$")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def tiny(rules: list[str]) -> str:
    """A small valid ruleset whose rules (flow mappings without action, reason, description) offer one action."""
    lines = [
        "ruleset: {name: tiny, version: 1.0.0, owner: Compliance, description: Tiny.}",
        "fields: [{name: balance, type: number}]",
        "actions:",
        "  - id: savings-offer",
        "    category: cross_sell",
        "    scripts: {agent_desktop: Suggest a savings account.}",
        "rules:",
    ]
    lines.extend(f"  - {rule[:-1]}, action: savings-offer, reason: R, description: D}}" for rule in rules)
    return "\n".join(lines) + "\n"


def seeded(path: Path) -> set[tuple[str, int, str]]:
    """(code, line, id) of every `# seeded: CODE [ID]; CODE [ID]` marker; no ID means a ruleset-level problem."""
    expected = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = MARKER.search(line)
        if match is None:
            continue
        for item in match.group(1).split(";"):
            code, _, ident = item.strip().partition(" ")
            expected.add((code, number, ident))
    return expected


def found(findings: list[Finding]) -> set[tuple[str, int, str]]:
    return {(str(f.code), f.line or 0, f.id) for f in findings}


def check_file(path: Path) -> list[Finding]:
    try:
        ruleset = load_ruleset_file(path)
    except RulesetInvalid as exc:
        return invalid_findings(exc.ruleset_problems)
    return check_ruleset(ruleset, path.read_text(encoding="utf-8"))


def nba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NBA, *args], capture_output=True, text=True, check=False, cwd=ROOT)


class TestSeededMistakes:
    def test_the_seeded_file_marks_every_kind_the_checker_names_in_a_valid_file(self) -> None:
        codes = {code for code, _, _ in seeded(SEEDED)}
        assert codes == {
            "missing-owner",
            "unused-action",
            "shadowed-rule",
            "duplicate-rule",
            "contradiction",
            "any-never-holds",
            "suppressed-always",
            "no-script-for-allowed-channel",
            "never-offered",
        }

    @pytest.mark.parametrize(
        "path", [SEEDED, SEEDED_INVALID, SEEDED_NO_OWNER, SEEDED_POLICY, SEEDED_MEASUREMENT], ids=lambda p: p.name
    )
    def test_each_seeded_mistake_is_found_at_its_line_with_its_id_and_nothing_else(self, path: Path) -> None:
        assert found(check_file(path)) == seeded(path)

    def test_severities_errors_for_what_misleads_warnings_for_what_is_dead_weight(self) -> None:
        by_code = {str(f.code): str(f.severity) for f in check_file(SEEDED)}
        assert {c for c, s in by_code.items() if s == "warning"} == {
            "unused-action",
            "shadowed-rule",
            "duplicate-rule",
            "any-never-holds",
        }

    def test_contradiction_names_both_conditions_and_the_consequence(self) -> None:
        teen = next(f for f in check_file(SEEDED) if f.id == "teen-retiree")
        assert teen.message == "`age < 18` and `age > 65` can never hold together: the rule never fires"

    def test_the_invalid_file_problems_keep_the_loaders_words(self) -> None:
        with pytest.raises(RulesetInvalid) as info:
            load_ruleset_file(SEEDED_INVALID)
        messages = {f.message for f in invalid_findings(info.value.ruleset_problems)}
        assert all(any(p.problem in m for m in messages) for p in info.value.ruleset_problems)

    def test_shadowed_rule_never_changes_an_answer_in_the_real_pipeline(self) -> None:
        """The shadowed rule fires, but the answer names the rule that ranks first, as the finding says."""
        ruleset = load_ruleset_file(SEEDED)
        profile = Profile("C1", {"has_savings": False, "balance": 60000.0, "consent_agent": True})
        result = evaluate(reference_active(ruleset), profile, Channel.AGENT_DESKTOP, NOW, 3)
        assert {"savings-large-balance", "savings-healthy-balance"} <= {r.rule_id for r in result.rules_fired}
        assert [(a.action_id, a.rule_id) for a in result.actions] == [("savings-offer", "savings-healthy-balance")]


class TestContactPolicyModel:
    """Findings about purposes, consent per purpose and direction, caps, constraints and mandatory notices."""

    def test_the_seeded_file_marks_every_new_kind(self) -> None:
        assert {code for code, _, _ in seeded(SEEDED_POLICY)} == {
            "unused-purpose",
            "suppressed-always",
            "policy-never-applies",
            "redundant-policy",
            "mandatory-not-excepted",
            "outcome-never-recorded",
        }

    def test_only_a_notice_that_can_never_be_given_is_an_error(self) -> None:
        by_code = {str(f.code): str(f.severity) for f in check_file(SEEDED_POLICY)}
        assert {c for c, s in by_code.items() if s == "error"} == {"suppressed-always"}

    def test_a_mandatory_notice_stopped_by_consent_is_named_as_one(self) -> None:
        finding = next(f for f in check_file(SEEDED_POLICY) if f.id == "fee-without-consent")
        assert finding.message == (
            "can never produce an offer: mandatory notice 'fee-notice' is always stopped on agent_desktop by consent "
            "(consent_notice is never true when the rule fires) and on outbound_dialer by consent (consent_notice is "
            "never true when the rule fires)"
        )

    def test_a_suppression_that_excepts_the_notice_is_quiet(self) -> None:
        """`deep-arrears` excepts `compliance`, so saying the notice goes through is already in the file; adding the
        purpose to `vulnerable` silences its finding the same way."""
        findings = check_file(SEEDED_POLICY)
        assert not [f for f in findings if f.id == "deep-arrears"]
        text = SEEDED_POLICY.read_text(encoding="utf-8").replace(
            "except_purposes: [service]}", "except_purposes: [service, regulatory]}", 1
        )
        assert not [f for f in check_ruleset(load_ruleset_text(text), text) if f.code is Code.MANDATORY_NOT_EXCEPTED]

    def test_the_mandatory_notice_really_is_offered_under_the_suppression(self) -> None:
        """What the finding says, in the real pipeline: a vulnerable customer in arrears still hears the notice."""
        ruleset = load_ruleset_file(SEEDED_POLICY)
        profile = Profile("C1", {"vulnerable": True, "arrears_days": 45.0, "consent_notice": True})
        result = evaluate(reference_active(ruleset), profile, Channel.AGENT_DESKTOP, NOW, 3)
        assert [a.action_id for a in result.actions] == ["arrears-notice", "address-check"]
        assert {d.policy for d in result.dropped} == set()

    def test_a_redundant_cap_is_never_the_one_that_binds(self) -> None:
        """Two marketing offers this week: the loose cap (3) would still allow a third; the tight one (2) drops it."""
        ruleset = load_ruleset_file(SEEDED_POLICY)
        contacts = tuple(
            Contact("savings-offer", Channel.AGENT_DESKTOP, NOW - timedelta(days=d), OutcomeKind.ACCEPTED, f"d{d}")
            for d in (1, 2)
        )
        profile = Profile("C1", {"arrears_days": 1.0, "consent_marketing": True}, (), contacts)
        result = evaluate(reference_active(ruleset), profile, Channel.AGENT_DESKTOP, NOW, 3)
        assert [(d.action_id, d.policy) for d in result.dropped] == [("savings-offer", "marketing-weekly")]

    @pytest.mark.parametrize(
        ("conditions", "stopped"),
        [
            ("[{field: consent_in, op: eq, value: false}, {field: consent_out, op: missing}]", True),
            ("[{field: consent_in, op: eq, value: false}]", False),
        ],
        ids=["both-directions-fail", "outbound-still-open"],
    )
    def test_consent_split_by_direction_stops_a_notice_only_when_both_fail(
        self, conditions: str, stopped: bool
    ) -> None:
        """The desk takes calls both ways; one entry per direction: the notice is never given only when the rule
        makes both fail, and the pipeline agrees in each direction."""
        text = f"""\
ruleset: {{name: split, version: 1.0.0, owner: Compliance, description: Split consent.}}
fields: [{{name: consent_in, type: boolean}}, {{name: consent_out, type: boolean}}]
purposes: [{{id: regulatory, description: Notices, categories: [compliance]}}]
actions:
  - {{id: notice, category: compliance, type: mandatory,
     scripts: {{agent_desktop: Read the notice., outbound_dialer: Read the notice.}}}}
rules:
  - {{id: give-notice, priority: 10, action: notice, reason: R, description: D, when: {{all: {conditions}}}}}
policies:
  consent:
    - {{field: consent_in, channel: agent_desktop, directions: [inbound]}}
    - {{field: consent_out, channel: agent_desktop, directions: [outbound]}}
    - {{field: consent_out, channel: outbound_dialer}}
"""
        ruleset = load_ruleset_text(text)
        findings = check_ruleset(ruleset, text)
        if stopped:
            (finding,) = findings
            assert finding.code is Code.SUPPRESSED_ALWAYS
            assert finding.message == (
                "can never produce an offer: mandatory notice 'notice' is always stopped on agent_desktop by consent "
                "(consent_in and consent_out are never true when the rule fires) and on outbound_dialer by consent "
                "(consent_out is never true when the rule fires)"
            )
        else:
            assert findings == []
        facts: dict[str, object] = {"consent_in": False}
        if not stopped:
            facts["consent_out"] = True
        offered = {
            direction: evaluate(
                reference_active(ruleset), Profile("C1", facts), Channel.AGENT_DESKTOP, NOW, 3, direction=direction
            ).actions
            for direction in Direction
        }
        assert bool(offered[Direction.OUTBOUND]) is not stopped
        assert offered[Direction.INBOUND] == ()

    def test_a_notice_whose_rule_never_fires_is_not_said_to_pass_a_suppression(self) -> None:
        text = """\
ruleset: {name: dead-notice, version: 1.0.0, owner: Compliance, description: A notice that never fires.}
fields: [{name: arrears_days, type: number}]
actions:
  - {id: notice, category: compliance, type: mandatory, scripts: {agent_desktop: Read the notice.}}
rules:
  - {id: give-notice, priority: 10, action: notice, reason: R, description: D,
     when: {all: [{field: arrears_days, op: gt, value: 90}, {field: arrears_days, op: lt, value: 30}]}}
policies:
  suppressions:
    - {id: early, description: Nothing early on, when: {all: [{field: arrears_days, op: lt, value: 60}]}}
"""
        findings = check_ruleset(load_ruleset_text(text), text)
        assert [(f.code, f.id) for f in findings] == [(Code.CONTRADICTION, "give-notice")]

    def test_the_short_consent_form_is_located_by_its_channel(self) -> None:
        text = tiny(["{id: healthy, priority: 300, when: {all: [{field: balance, op: gte, value: 10000}]}}"])
        text = text.replace(
            "fields: [{name: balance, type: number}]",
            "fields: [{name: balance, type: number}, {name: consent_calls, type: boolean}]",
        )
        text += "policies:\n  consent:\n    outbound_dialer: consent_calls\n"
        (finding,) = check_ruleset(load_ruleset_text(text), text)
        assert (finding.code, finding.id, finding.line) == (Code.POLICY_NEVER_APPLIES, "consent:outbound_dialer", 11)
        assert finding.message == (
            "no action has a script for outbound_dialer, so consent_calls is never asked for: remove the entry or "
            "fix its scope"
        )


class TestCleanRulesets:
    @pytest.mark.parametrize("path", [BUNDLED, MINI_BANK, EXAMPLE], ids=lambda p: p.name)
    def test_no_findings(self, path: Path) -> None:
        assert check_file(path) == []

    def test_a_narrower_rule_that_ranks_first_is_not_shadowed(self) -> None:
        """Arbitration breaks a priority tie by file order: a narrower rule of the same priority placed first wins
        whenever it fires, so its reason is shown; placed after the broader rule, it never is."""
        narrower = "{id: large, priority: 300, when: {all: [{field: balance, op: gte, value: 50000}]}}"
        broader = "{id: healthy, priority: 300, when: {all: [{field: balance, op: gte, value: 10000}]}}"
        first = tiny([narrower, broader])
        assert check_ruleset(load_ruleset_text(first), first) == []
        second = tiny([broader, narrower])
        (finding,) = check_ruleset(load_ruleset_text(second), second)
        assert (finding.code, finding.id, finding.line) == (Code.SHADOWED_RULE, "large", 9)


HEALTHY = "{id: healthy, priority: 300, when: {all: [{field: balance, op: gte, value: 10000}]}}"
LARGE = "{id: large, priority: 300, when: {all: [{field: balance, op: gte, value: 50000}]}}"
TEEN_RETIREE = (
    "{id: teen-retiree, priority: 300, when: {all: [{field: balance, op: lt, value: 18}, "
    "{field: balance, op: gt, value: 65}]}}"
)


def versioned(version: str, rules: list[str]) -> tuple[Ruleset, str]:
    text = tiny(rules).replace("version: 1.0.0", f"version: {version}")
    return load_ruleset_text(text, "new.yaml"), text


class TestAgainst:
    def test_same_version_other_content_is_an_error(self) -> None:
        old, _ = versioned("1.2.0", [HEALTHY])
        new, text = versioned("1.2.0", [LARGE])
        (finding,) = check_against(new, text, old)
        assert (finding.code, finding.line, finding.id, str(finding.severity)) == (
            Code.VERSION_NOT_BUMPED,
            1,
            "tiny",
            "error",
        )

    def test_a_lower_version_is_an_error_and_a_higher_one_is_fine(self) -> None:
        old, _ = versioned("1.9.0", [HEALTHY])
        (finding,) = check_against(*versioned("1.8.9", [LARGE]), old)
        assert (finding.code, str(finding.severity)) == (Code.VERSION_WENT_BACK, "error")
        assert check_against(*versioned("1.10.0", [LARGE]), old) == []

    def test_the_same_file_needs_no_bump(self) -> None:
        old, text = versioned("1.2.0", [HEALTHY])
        assert check_against(old, text, old) == []

    @pytest.mark.parametrize(
        ("new", "old", "order"),
        [
            ("1.10.0", "1.9.0", 1),
            ("1.2.0", "1.2.0", 0),
            ("1.2", "1.2.0", 0),
            ("0.9.9", "1.0.0", -1),
            ("1.a", "1.b", None),
        ],
    )
    def test_versions_compare_by_number_part_by_part(self, new: str, old: str, order: int | None) -> None:
        assert compare_versions(new, old) == order


# --------------------------------------------------------------------------------------------------
# The checker agrees with the reference evaluator
# --------------------------------------------------------------------------------------------------

NUMBER = FieldSpec("n", "number")
TEXT = FieldSpec("s", "string")
DECLARED = FieldSpec("d", "string", values=("a", "b", "c"))
FLAG = FieldSpec("f", "boolean")
AGE = FieldSpec("events.e.age_hours", "number")
AMOUNT = FieldSpec("events.e.amount", "number")
FIELDS = {spec.name: spec for spec in (NUMBER, TEXT, DECLARED, FLAG, AGE, AMOUNT)}
# A sample wide and fine enough to hold one value of every piece the constants below cut the domain into.
SAMPLES: dict[str, list[FactValue]] = {
    "n": [x / 2 for x in range(-10, 11)],
    "s": ["a", "b", "c", "zz"],
    "d": ["a", "b", "c"],
    "f": [True, False],
    "events.e.age_hours": [x / 2 for x in range(11)],
    "events.e.amount": [x / 2 for x in range(-10, 11)],
}
NUMBERS = st.sampled_from([-3.0, -1.0, 0.0, 1.0, 2.0, 3.0])
OPS_BY_TYPE = {
    "number": list(Op),
    "string": [Op.EQ, Op.NE, Op.IN, Op.NOT_IN, Op.EXISTS, Op.MISSING],
    "boolean": [Op.EQ, Op.NE, Op.EXISTS, Op.MISSING],
}


@st.composite
def condition(draw: st.DrawFn, names: tuple[str, ...] = tuple(FIELDS)) -> Condition:
    spec = FIELDS[draw(st.sampled_from(names))]
    op = draw(st.sampled_from(OPS_BY_TYPE[spec.type]))
    if op in (Op.EXISTS, Op.MISSING):
        return Condition(spec.name, op)
    pool: st.SearchStrategy[Any] = {
        "number": NUMBERS,
        "string": st.sampled_from(["a", "b", "c"]),
        "boolean": st.booleans(),
    }[spec.type]
    if op in (Op.IN, Op.NOT_IN):
        return Condition(spec.name, op, tuple(draw(st.lists(pool, min_size=1, max_size=3, unique=True))))
    return Condition(spec.name, op, (draw(pool),))


def worlds(names: set[str]) -> list[dict[str, FactValue]]:
    """Every combination of sampled values (or missing) of the named facts that the projection can produce."""
    options = [[None, *SAMPLES[name]] for name in sorted(names)]
    found = []
    for combination in itertools.product(*options):
        facts = {n: v for n, v in zip(sorted(names), combination, strict=True) if v is not None}
        event_facts = [n for n in facts if n.startswith("events.e.")]
        if event_facts and "events.e.age_hours" not in facts and "events.e.age_hours" in names:
            continue  # an event's facts come with its age
        found.append(facts)
    return found


def brute_force(when: When) -> bool:
    names = {c.field for c in when.conditions()}
    return any(when_holds(when, facts) for facts in worlds(names))


class TestAgreesWithTheReferenceEvaluator:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(condition(), min_size=1, max_size=2))
    def test_contradiction_exactly_when_no_sampled_facts_satisfy_the_pair(self, pair: list[Condition]) -> None:
        """Whenever the checker says "can never hold together", no facts satisfy the conditions per the reference
        evaluator; and whenever it says they can, some sampled facts do (the samples cover every piece)."""
        assert conditions.satisfiable(pair, FIELDS) == brute_force(When(all=tuple(pair)))

    @settings(max_examples=150, deadline=None)
    @given(condition())
    def test_negation_holds_exactly_when_the_condition_does_not(self, original: Condition) -> None:
        for value in [None, *SAMPLES[original.field]]:
            facts = {} if value is None else {original.field: value}
            negated = any(condition_holds(c, facts) for c in conditions.negation(original))
            assert negated is not condition_holds(original, facts)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(condition(("n", "d", "f")), min_size=1, max_size=2),
        st.lists(condition(("n", "d", "f")), max_size=2),
        st.lists(condition(("n", "d", "f")), min_size=1, max_size=2),
    )
    def test_implies_agrees_with_brute_force(
        self, premise: list[Condition], options: list[Condition], conclusion: list[Condition]
    ) -> None:
        first = When(all=tuple(premise), any=tuple(options))
        second = When(all=tuple(conclusion))
        names = {c.field for c in (*first.conditions(), *second.conditions())}
        expected = all(when_holds(second, facts) for facts in worlds(names) if when_holds(first, facts))
        assert conditions.implies(first, second, FIELDS) == expected

    def test_an_event_age_is_never_negative_and_comes_with_the_event(self) -> None:
        age, amount = "events.e.age_hours", "events.e.amount"
        assert not conditions.satisfiable([Condition(age, Op.LT, (0.0,))], FIELDS)
        assert not conditions.satisfiable([Condition(age, Op.MISSING), Condition(amount, Op.GT, (1.0,))], FIELDS)
        assert conditions.satisfiable([Condition(age, Op.EXISTS), Condition(amount, Op.MISSING)], FIELDS)

    def test_huge_constants_do_not_fool_the_witnesses(self) -> None:
        """1e20 + 1 == 1e20 in floats: the value above a constant must really be above it."""
        assert conditions.satisfiable([Condition("n", Op.GT, (1e20,))], FIELDS)
        assert not conditions.satisfiable([Condition("n", Op.GT, (1.0,)), Condition("n", Op.LT, (1.0,))], FIELDS)


# --------------------------------------------------------------------------------------------------
# The deploy gate
# --------------------------------------------------------------------------------------------------


class TestGate:
    def test_a_candidate_with_a_check_error_is_refused_before_anything_loads(self) -> None:
        candidate = Candidate("tiny.yaml", tiny([HEALTHY, TEEN_RETIREE]), None)
        loaded: list[Ruleset] = []

        def load(ruleset: Ruleset) -> ActiveRuleset:
            loaded.append(ruleset)
            return reference_active(ruleset)

        with pytest.raises(CandidateRefused) as refused:
            prepare(candidate, parse(candidate), load)
        assert "nba rulesets check" in refused.value.message
        (problem,) = refused.value.problems
        assert problem.field == "ruleset.content"
        assert problem.problem.startswith("tiny.yaml:9: error contradiction: rule 'teen-retiree': ")
        assert loaded == []

    def test_warnings_do_not_stop_a_candidate(self) -> None:
        candidate = Candidate("tiny.yaml", tiny([HEALTHY, LARGE]), None)
        ruleset = parse(candidate)
        assert {str(f.code) for f in check_ruleset(ruleset, candidate.content)} == {"shadowed-rule"}
        prepared = prepare(candidate, ruleset, reference_active)
        assert prepared.ruleset.content_hash == ruleset.content_hash


# --------------------------------------------------------------------------------------------------
# The command, through the real `nba` entry point
# --------------------------------------------------------------------------------------------------


class TestCommand:
    def test_the_bundled_rulesets_pass_strict(self) -> None:
        result = nba("rulesets", "check", "--strict", "rulesets/")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("ok rulesets/retail-banking.yaml: retail-banking ")
        assert len(result.stdout.splitlines()) == 1

    def test_errors_fail_and_each_finding_is_printed_with_file_line_severity_code_and_id(self) -> None:
        result = nba("rulesets", "check", str(SEEDED.relative_to(ROOT)))
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert lines[0].startswith("FAIL tests/review/seeded-mistakes.yaml: seeded 1.0.0, 9 rules")
        for code, line, ident in seeded(SEEDED):
            assert any(
                text.startswith(f"  tests/review/seeded-mistakes.yaml:{line}: ")
                and f" {code}: " in text
                and ident in text
                for text in lines
            ), (code, line)
        assert lines[-1] == "7 error(s), 4 warning(s) in 1 valid file(s); warnings fail only with --strict"

    def test_warnings_fail_only_with_strict(self, tmp_path: Path) -> None:
        shadowed = tmp_path / "retail-banking.yaml"
        shadowed.write_text(
            BUNDLED.read_text(encoding="utf-8").replace("    priority: 321\n", "    priority: 240\n", 1), "utf-8"
        )
        relaxed = nba("rulesets", "check", str(shadowed))
        assert relaxed.returncode == 0, relaxed.stdout
        assert relaxed.stdout.splitlines()[0].startswith(f"ok {shadowed}: ")
        assert "warning shadowed-rule: rule 'business-savings'" in relaxed.stdout
        strict = nba("rulesets", "check", "--strict", str(shadowed))
        assert strict.returncode == 1
        assert strict.stdout.startswith(f"FAIL {shadowed}: ")

    def test_json_gives_the_same_findings_with_a_summary(self) -> None:
        result = nba("rulesets", "check", "--json", "--strict", str(SEEDED), str(BUNDLED))
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert {(f["code"], f["line"], f["id"]) for f in report["findings"]} == seeded(SEEDED)
        assert {f["file"] for f in report["findings"]} == {str(SEEDED)}
        assert [(f["file"], f["status"]) for f in report["files"]] == [(str(SEEDED), "fail"), (str(BUNDLED), "ok")]
        assert report["summary"] == {"files": 2, "invalid": 0, "errors": 7, "warnings": 4, "exit_status": 1}
        assert set(report["exit_status"]) == {"0", "1"}
        assert report["files"][1]["ruleset"]["hash"] == load_ruleset_file(BUNDLED).content_hash

    def test_invalid_files_keep_their_output_and_exit_code(self) -> None:
        result = nba("rulesets", "check", str(BUNDLED), str(SEEDED_INVALID))
        assert result.returncode == 1
        assert f"INVALID {SEEDED_INVALID}: 2 problem(s)" in result.stdout
        assert "[value-not-allowed]" in result.stdout
        assert "[unknown-placeholder]" in result.stdout
        assert "1 of 2 file(s) invalid" in result.stdout
        report = json.loads(nba("rulesets", "check", "--json", str(SEEDED_INVALID)).stdout)
        assert {(f["code"], f["line"], f["id"]) for f in report["findings"]} == seeded(SEEDED_INVALID)
        assert report["files"][0]["status"] == "invalid"

    def test_against_an_older_file_both_ways(self, tmp_path: Path) -> None:
        old = tmp_path / "old" / "retail-banking.yaml"
        old.parent.mkdir()
        shutil.copy(BUNDLED, old)
        changed = tmp_path / "retail-banking.yaml"
        changed.write_text(BUNDLED.read_text(encoding="utf-8").replace("priority: 321", "priority: 322"), "utf-8")
        not_bumped = nba("rulesets", "check", "--against", str(old), str(changed))
        assert not_bumped.returncode == 1
        assert "error version-not-bumped: ruleset 'retail-banking'" in not_bumped.stdout
        version = load_ruleset_file(BUNDLED).meta.version
        major_minor, _, patch = version.rpartition(".")
        before = changed.read_text(encoding="utf-8")
        bumped = before.replace(f"  version: {version}", f"  version: {major_minor}.{int(patch) + 1}", 1)
        assert bumped != before, f"version {version} not found in the bundled ruleset"
        changed.write_text(bumped, "utf-8")
        assert nba("rulesets", "check", "--strict", "--against", str(old.parent), str(changed)).returncode == 0
        back = nba("rulesets", "check", "--json", "--against", str(changed), str(old))
        assert back.returncode == 1
        (finding,) = json.loads(back.stdout)["findings"]
        assert (finding["code"], finding["severity"]) == ("version-went-back", "error")

    def test_plan_still_prints_the_engine_plan(self) -> None:
        result = nba("rulesets", "check", "--plan", str(BUNDLED))
        assert result.returncode == 0
        assert "partition 0 cost" in result.stdout


class TestMeasurement:
    """Findings about conversions, values and holdouts."""

    def test_the_seeded_file_marks_every_kind(self) -> None:
        assert {code for code, _, _ in seeded(SEEDED_MEASUREMENT)} == {
            "value-without-conversion",
            "holdout-without-conversion",
            "conversion-outlasts-period",
            "contradiction",
            "any-never-holds",
        }

    def test_only_a_conversion_that_never_counts_is_an_error(self) -> None:
        by_code = {str(f.code): str(f.severity) for f in check_file(SEEDED_MEASUREMENT)}
        assert {c for c, s in by_code.items() if s == "error"} == {"contradiction"}

    def test_a_conversion_that_can_never_hold_says_so(self) -> None:
        finding = next(f for f in check_file(SEEDED_MEASUREMENT) if f.code is Code.CONTRADICTION)
        assert (finding.kind, finding.id) == ("action", "loan-offer")
        assert finding.message == (
            "`amount < 0` and `amount > 100` can never hold together: no event ever counts as a conversion of this "
            "action"
        )

    def test_a_share_from_a_category_is_found_at_that_entry(self) -> None:
        """The finding points at the entry that gives the action its share, not at the action."""
        text = SEEDED_MEASUREMENT.read_text(encoding="utf-8").replace(
            "    - {action: card-offer, share: 0.1}  # seeded: holdout-without-conversion card-offer\n", ""
        )
        text = text.replace("    value: 90  # seeded: value-without-conversion card-offer\n", "")
        text = text.replace(
            "category: cross_sell\n    scripts: {agent_desktop: Suggest a card.}",
            "category: upsell\n    scripts: {agent_desktop: Suggest a card.}",
        )
        ruleset = load_ruleset_text(text, "measured.yaml")
        [finding] = [f for f in check_ruleset(ruleset, text) if f.code is Code.HOLDOUT_WITHOUT_CONVERSION]
        lines = text.splitlines()
        assert finding.id == "card-offer"
        assert finding.line is not None
        assert lines[finding.line - 1] == "    - {category: upsell, share: 0.05}"
        assert finding.message.startswith("5% of its customers are held out, but it declares no conversion")

    def test_the_bundled_ruleset_measures_what_it_holds_out(self) -> None:
        ruleset = load_ruleset_file(BUNDLED)
        held = [a for a in ruleset.actions.values() if a.holdout > 0]
        assert held, "the bundled ruleset holds out some offers"
        assert all(a.conversion is not None for a in held)
        measurement = {
            Code.HOLDOUT_WITHOUT_CONVERSION,
            Code.VALUE_WITHOUT_CONVERSION,
            Code.CONVERSION_OUTLASTS_PERIOD,
        }
        text = BUNDLED.read_text(encoding="utf-8")
        assert [f for f in check_ruleset(ruleset, text) if f.code in measurement] == []
