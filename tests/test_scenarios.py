"""Scenario tests (`<name>.tests.yaml`): loaded and checked against their ruleset, run on the real engine.

The fixture is tests/scenarios/mini-bank.yaml with its cases in mini-bank.tests.yaml; inline cases below
pin the semantics a reviewer relies on (local time, the minute on each side of quiet hours, trigger
lifetimes and cap windows) and the problems reported for invalid files, with their lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nba_service import service
from nba_service.app import activate
from nba_service.cli import main
from nba_service.domain.loader import load_ruleset_dir, load_ruleset_file
from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.policy import policy_ids
from nba_service.domain.profile import OutcomeKind
from nba_service.domain.scenarios import (
    CUSTOMER_ID,
    DEFAULT_MAX_ACTIONS,
    DROP_REASONS,
    CaseResult,
    coverage,
    load_scenarios_file,
    load_scenarios_text,
    parse_duration,
    run_case,
    scenarios_schema,
)
from nba_service.errors import RulesetInvalid

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "scenarios"
RULESET = FIXTURES / "mini-bank.yaml"
TESTS = FIXTURES / "mini-bank.tests.yaml"
NBA = str(Path(sys.executable).parent / "nba")

HEADER = """\
ruleset: mini-bank
defaults:
  at: "2026-03-10 14:00"
  timezone: Europe/London
  profile: {first_name: Ada, segment: mass, balance: 500, vulnerable: false, consent_agent: true,
            consent_calls: true, dnc: false}
cases:
"""
DEPOSIT = "{type: large_deposit, age: 2h, attributes: {amount: 25000}}"


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET)


@pytest.fixture(scope="module")
def active(ruleset: Ruleset) -> Iterator[ActiveRuleset]:
    loaded = activate(ruleset)
    try:
        yield loaded
    finally:
        loaded.engine.close()


def _cases(ruleset: Ruleset, cases: str) -> list:
    return load_scenarios_text(HEADER + cases, ruleset, "inline.tests.yaml")


def _run(active: ActiveRuleset, cases: str) -> dict[str, CaseResult]:
    return {s.name: run_case(active, s) for s in _cases(active.ruleset, cases)}


def _problems(ruleset: Ruleset, text: str) -> list[str]:
    with pytest.raises(RulesetInvalid) as info:
        load_scenarios_text(text, ruleset, "bad.tests.yaml")
    return [str(p) for p in info.value.ruleset_problems]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["rulesets", "test", *args], catch_exceptions=False)


def _drops(result: CaseResult) -> list[tuple[str, str, str]]:
    return [(d.action_id, d.reason, d.policy) for d in result.evaluation.dropped]


class TestFixtureCases:
    def test_every_fixture_case_passes_on_the_real_engine(self, ruleset: Ruleset, active: ActiveRuleset) -> None:
        results = [run_case(active, s) for s in load_scenarios_file(TESTS, ruleset)]
        assert len(results) == 24
        assert [r.scenario.name for r in results if not r.passed] == []
        assert {r.evaluation.engine for r in results} == {"durable_rules"}

    def test_coverage_counts_rules_fired_actions_offered_and_policies_that_dropped(
        self, ruleset: Ruleset, active: ActiveRuleset
    ) -> None:
        results = [run_case(active, s) for s in load_scenarios_file(TESTS, ruleset)]
        full = coverage(ruleset, results)
        assert (str(full.rules), str(full.actions), str(full.policies)) == ("4/4", "3/3", "7/7")
        first = coverage(ruleset, results[:1])  # the large deposit alone: one rule fired, one action offered
        assert first.rules.missing == ("premier-rates", "card-declined", "loyal-balance")
        assert first.actions.missing == ("card-help", "loyalty-thanks")
        assert first.policies.count == 0
        assert first.policies.missing == tuple(policy_ids(ruleset))

    def test_policy_ids_list_every_contact_policy_in_file_order(self, ruleset: Ruleset) -> None:
        assert policy_ids(ruleset) == [
            "consent:agent_desktop",
            "consent:outbound_dialer",
            "do_not_call",
            "quiet_hours",
            "rates-monthly",
            "dialer-daily",
            "vulnerable-no-sales",
        ]


class TestCaseSemantics:
    def test_at_is_local_time_in_the_case_zone_and_becomes_the_customers_zone(self, ruleset: Ruleset) -> None:
        (paris, own, none) = _cases(
            ruleset,
            """\
  - {name: paris, at: "2026-03-10T20:00", timezone: Europe/Paris, expect: {actions: []}}
  - {name: own zone, profile: {timezone: America/New_York}, expect: {actions: []}}
  - {name: no zone, profile: {timezone: null}, expect: {actions: []}}
""",
        )
        assert paris.now == datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
        assert paris.profile.attributes["timezone"] == "Europe/Paris"
        assert paris.profile.customer_id == CUSTOMER_ID
        assert own.now == datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
        assert own.profile.attributes["timezone"] == "America/New_York"
        assert "timezone" not in none.profile.attributes  # the ruleset's default_timezone applies
        assert paris.channel is Channel.AGENT_DESKTOP
        assert paris.max_actions == DEFAULT_MAX_ACTIONS

    def test_quiet_hours_start_at_their_first_minute_and_end_at_their_last(self, active: ActiveRuleset) -> None:
        cases = "".join(
            f"""\
  - name: "{at} {zone}"
    channel: outbound_dialer
    at: "{at}"
    timezone: {zone}
    profile: {{balance: 20000}}
    expect: {{actions: []}}
"""
            for at, zone in [
                ("2026-03-10 19:59", "Europe/Paris"),
                ("2026-03-10 20:00", "Europe/Paris"),
                ("2026-03-11 08:59", "Europe/Paris"),
                ("2026-03-11 09:00", "Europe/Paris"),
                ("2026-07-10 20:00", "America/New_York"),  # summer time: 00:00 UTC the next day
            ]
        )
        results = _run(active, cases)
        offered = {name: r.evaluation.action_ids for name, r in results.items()}
        assert offered == {
            "2026-03-10 19:59 Europe/Paris": ("loyalty-thanks",),
            "2026-03-10 20:00 Europe/Paris": (),
            "2026-03-11 08:59 Europe/Paris": (),
            "2026-03-11 09:00 Europe/Paris": ("loyalty-thanks",),
            "2026-07-10 20:00 America/New_York": (),
        }
        assert _drops(results["2026-03-10 20:00 Europe/Paris"]) == [("loyalty-thanks", "quiet_hours", "quiet_hours")]

    def test_an_event_as_old_as_the_trigger_lifetime_counts_and_a_minute_older_has_expired(
        self, active: ActiveRuleset
    ) -> None:
        results = _run(
            active,
            """\
  - {name: at lifetime, events: [{type: large_deposit, age: 3d, attributes: {amount: 25000}}], expect: {actions: []}}
  - {name: past it, events: [{type: large_deposit, age: 3d1m, attributes: {amount: 25000}}], expect: {actions: []}}
""",
        )
        assert results["at lifetime"].evaluation.action_ids == ("rates",)
        assert results["past it"].evaluation.action_ids == ()
        assert _drops(results["past it"]) == [("rates", "expired_trigger", "")]

    def test_a_contact_exactly_one_window_ago_is_outside_the_cap_and_a_minute_later_inside(
        self, active: ActiveRuleset
    ) -> None:
        results = _run(
            active,
            f"""\
  - name: window ago
    events: [{DEPOSIT}]
    contacts: [{{action: rates, age: 30d, outcome: accepted}}]
    expect: {{actions: []}}
  - name: inside
    events: [{DEPOSIT}]
    contacts: [{{action: rates, age: 29d23h59m, outcome: accepted}}]
    expect: {{actions: []}}
""",
        )
        assert results["window ago"].evaluation.action_ids == ("rates",)
        assert _drops(results["inside"]) == [("rates", "frequency_cap", "rates-monthly")]

    def test_events_and_contacts_are_placed_before_at_and_each_contact_is_its_own_decision(
        self, ruleset: Ruleset
    ) -> None:
        (case,) = _cases(
            ruleset,
            f"""\
  - name: history
    channel: outbound_dialer
    events: [{DEPOSIT}, {{type: card_declined, age: 1d12h, expires_in: 2h, attributes: {{country: null}}}}]
    contacts:
      - {{action: rates, age: 3d, outcome: accepted}}
      - {{action: rates, channel: agent_desktop, age: 3d, outcome: converted}}
    expect: {{actions: []}}
""",
        )
        now = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
        deposit, card = case.profile.events
        assert (deposit.time, dict(deposit.attributes), deposit.expires_at) == (
            now - timedelta(hours=2),
            {"amount": 25000},
            None,
        )
        assert (card.time, dict(card.attributes), card.expires_at) == (
            now - timedelta(hours=36),
            {},
            now + timedelta(hours=2),
        )
        first, second = case.profile.contacts
        assert (first.channel, second.channel) == (Channel.OUTBOUND_DIALER, Channel.AGENT_DESKTOP)
        assert (first.outcome, second.outcome) == (OutcomeKind.ACCEPTED, OutcomeKind.CONVERTED)
        assert first.time == now - timedelta(days=3)
        assert first.decision_id
        assert first.decision_id != second.decision_id

    def test_durations_chain_days_hours_and_minutes(self) -> None:
        assert parse_duration("1d12h") == timedelta(hours=36)
        assert parse_duration("2h30m") == timedelta(minutes=150)
        assert parse_duration("3d1m") == timedelta(days=3, minutes=1)
        assert parse_duration("0m") == timedelta(0)

    def test_failing_expectations_are_reported_as_what_is_missing(self, active: ActiveRuleset) -> None:
        (result,) = _run(
            active,
            f"""\
  - name: wrong
    events: [{DEPOSIT}]
    expect:
      actions: [loyalty-thanks]
      dropped: [{{action: rates, reason: frequency_cap}}, {{action: rates, reason: ranked_out}}]
      fired: [big-deposit, card-declined]
""",
        ).values()
        assert not result.passed
        assert not result.actions_match
        assert [str(d) for d in result.missing_drops] == [
            "action rates, reason frequency_cap",
            "action rates, reason ranked_out",
        ]
        assert result.missing_fired == ("card-declined",)


class TestValidation:
    def test_schema_problems_name_file_line_and_what_is_wrong(self, ruleset: Ruleset) -> None:
        text = """\
ruleset: mini-bank
defaults:
  at: 2026-03-10 14:00:00
  channel: phone
  max_actions: 0
  profle: {}
cases:
  - name: one
    events:
      - {type: large_deposit, age: 2 hours}
    contacts:
      - {action: rates, age: 1d, outcome: hung_up}
    expect:
      actions: rates
      dropped:
        - {action: rates, reason: capped}
  - name: two
    Profile: {}
    expect: {actions: []}
  - name: three
    at: "2026-03-10 25:00"
    profile: {Segment: mass}
    events:
      - {type: large_deposit, age: 1h, attributes: {amount: [1, 2]}}
    expect: {actions: [], fired: big-deposit}
  - name: four
"""
        assert _problems(ruleset, text) == [
            'bad.tests.yaml:3: defaults.at: write the date and time in quotes, like "2026-03-10 14:00"',
            "bad.tests.yaml:4: defaults.channel: 'phone' is not one of ['agent_desktop', 'outbound_dialer']",
            "bad.tests.yaml:5: defaults.max_actions: 0 is less than the minimum of 1",
            "bad.tests.yaml:6: defaults.profle: unknown key 'profle' (check the spelling; allowed here: channel, at, "
            "timezone, max_actions, profile, direction)",
            "bad.tests.yaml:10: case 'one' events[0].age: '2 hours' is not a duration like 30m, 2h, 3d or 1d12h",
            "bad.tests.yaml:12: case 'one' contacts[0].outcome: 'hung_up' is not one of ['accepted', 'declined', "
            "'no_answer', 'converted', 'callback_requested', 'not_offered', 'not_now']",
            "bad.tests.yaml:14: case 'one' expect.actions: 'rates' is not of type 'array'",
            "bad.tests.yaml:16: case 'one' expect.dropped[0].reason: 'capped' is not one of ['do_not_contact', "
            "'no_consent', 'do_not_call', 'quiet_hours', 'suppression', 'channel_fit', 'missing_trigger', "
            "'expired_trigger', 'constraint', 'frequency_cap', 'duplicate_action', 'held_out', 'ranked_out']",
            "bad.tests.yaml:18: case 'two' Profile: unknown key 'Profile' (check the spelling; allowed here: name, "
            "description, channel, at, timezone, max_actions, profile, events, contacts, expect, direction, "
            "do_not_contact, held_out)",
            "bad.tests.yaml:21: case 'three' at: '2026-03-10 25:00' is not a local date and time like "
            '"2026-03-10 14:00"',
            "bad.tests.yaml:22: case 'three' profile.Segment: 'Segment' is not a name of lower-case letters, digits "
            "and '_', starting with a letter",
            "bad.tests.yaml:24: case 'three' events[0].attributes.amount: [1, 2] is not of type 'string', 'number', "
            "'boolean', 'null'",
            "bad.tests.yaml:25: case 'three' expect.fired: 'big-deposit' is not of type 'array'",
            "bad.tests.yaml:26: case 'four': 'expect' is a required property",
        ]

    def test_cases_are_checked_against_the_ruleset(self, ruleset: Ruleset) -> None:
        text = """\
ruleset: mini-bonk
defaults:
  at: "2026-03-10 14:00"
  timezone: Europe/London
  profile: {segment: gold, balanse: 5, consent_agent: "yes", balance: "500"}
cases:
  - name: one
    timezone: Mars/Olympus
    events:
      - {type: large_deposits, age: 2h}
      - {type: large_deposit, age: 2h, attributes: {amount: 25000, branch: x}}
    contacts:
      - {action: ratez, age: 1d, outcome: accepted}
    expect:
      actions: [rates, card-help, rates]
      dropped:
        - {reason: frequency_cap}
        - {action: rates, rule: card-declined, reason: frequency_cap, policy: rates-weekly}
        - {action: rates, reason: frequency_cap, policy: "consent:phone"}
      fired: [big-deposits]
  - name: one
    at: "2026-02-30 10:00"
    channel: outbound_dialer
    max_actions: 1
    expect: {actions: [card-help, rates]}
  - name: spring forward
    at: "2026-03-29 01:30"
    expect: {actions: []}
  - name: no time
    expect: {actions: []}
"""
        problems = _problems(ruleset, text.replace('  at: "2026-03-10 14:00"\n', "", 1))
        assert problems == [
            f"bad.tests.yaml:1: ruleset: these cases are for ruleset 'mini-bonk', but {RULESET} is 'mini-bank'",
            "bad.tests.yaml:4: defaults.profile.segment: 'gold' is not one of the declared values of 'segment': "
            "mass, premier",
            "bad.tests.yaml:4: defaults.profile.balanse: field 'balanse' is not declared in ruleset mini-bank "
            "(did you mean 'balance'?)",
            "bad.tests.yaml:4: defaults.profile.consent_agent: 'consent_agent' is a boolean field; use true or "
            "false, not 'yes'",
            "bad.tests.yaml:4: defaults.profile.balance: 'balance' is a number field; '500' is not a number",
            "bad.tests.yaml:6: case 'one': no `at`: give the local date and time of the decision here or under "
            "defaults",
            "bad.tests.yaml:7: case 'one' timezone: unknown time zone 'Mars/Olympus' (an IANA name like Europe/London)",
            "bad.tests.yaml:9: case 'one' events[0].type: event type 'large_deposits' is not declared in ruleset "
            "mini-bank (did you mean 'large_deposit'?)",
            "bad.tests.yaml:10: case 'one' events[1].attributes.branch: 'branch' is not an attribute of "
            "large_deposit events in ruleset mini-bank (declared: amount)",
            "bad.tests.yaml:12: case 'one' contacts[0].action: action 'ratez' is not declared in ruleset mini-bank "
            "(did you mean 'rates'?)",
            "bad.tests.yaml:14: case 'one' expect.actions[2]: action 'rates' is listed twice; a decision offers "
            "each action once",
            "bad.tests.yaml:16: case 'one' expect.dropped[0]: name the candidate: give action, rule or both",
            "bad.tests.yaml:17: case 'one' expect.dropped[1].action: rule 'card-declined' proposes 'card-help', "
            "never 'rates'",
            "bad.tests.yaml:17: case 'one' expect.dropped[1].policy: policy 'rates-weekly' is not declared in "
            "ruleset mini-bank (did you mean 'rates-monthly'?)",
            "bad.tests.yaml:18: case 'one' expect.dropped[2].policy: policy 'consent:phone' is not declared in "
            "ruleset mini-bank (did you mean 'consent:outbound_dialer'?)",
            "bad.tests.yaml:19: case 'one' expect.fired[0]: rule 'big-deposits' is not declared in ruleset "
            "mini-bank (did you mean 'big-deposit'?)",
            "bad.tests.yaml:20: case 'one' name: duplicate case name 'one' (first at line 6)",
            "bad.tests.yaml:21: case 'one' at: '2026-02-30 10:00' is not a date and time that exists",
            "bad.tests.yaml:24: case 'one' expect.actions[0]: action 'card-help' has no outbound_dialer script, so "
            "it is never offered there",
            "bad.tests.yaml:24: case 'one' expect.actions: expects 2 actions, but at most 1 are offered (max_actions)",
            "bad.tests.yaml:26: case 'spring forward' at: 2026-03-29 01:30 does not exist in Europe/London (the "
            "clocks go forward)",
            "bad.tests.yaml:28: case 'no time': no `at`: give the local date and time of the decision here or "
            "under defaults",
        ]

    def test_yaml_syntax_and_shape(self, ruleset: Ruleset) -> None:
        assert _problems(ruleset, "ruleset: mini-bank\ncases:\n  - name: [unclosed\n") == [
            "bad.tests.yaml:4: YAML syntax: expected ',' or ']', but got '<stream end>'"
        ]
        assert _problems(ruleset, "- just a list\n") == [
            "bad.tests.yaml: the file must hold a mapping with ruleset and cases"
        ]
        assert _problems(ruleset, "ruleset: mini-bank\ncases:\n  - {name: a, expect: {actions: []}}\n  name: b\n")

    def test_the_schema_lists_exactly_the_reasons_outcomes_and_channels_the_code_has(self) -> None:
        defs = scenarios_schema()["$defs"]
        reasons = defs["expect"]["properties"]["dropped"]["items"]["properties"]["reason"]["enum"]
        assert tuple(reasons) == DROP_REASONS
        assert defs["contact"]["properties"]["outcome"]["enum"] == [o.value for o in OutcomeKind]
        assert defs["channel"]["enum"] == [c.value for c in Channel]
        assert DEFAULT_MAX_ACTIONS == service.DEFAULT_MAX_ACTIONS
        assert defs["maxActions"]["maximum"] == service.MAX_ACTIONS_LIMIT


class TestTestsFilesAreNeverRulesets:
    def test_load_ruleset_dir_skips_tests_files(self) -> None:
        assert TESTS.exists()
        assert [r.meta.name for r in load_ruleset_dir(FIXTURES)] == ["mini-bank"]

    def test_check_on_a_directory_skips_tests_files(self) -> None:
        result = CliRunner().invoke(main, ["rulesets", "check", str(FIXTURES)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"ok {RULESET}: mini-bank 0.1.0, 4 rules, 3 actions")
        assert ".tests.yaml" not in result.output


class TestCommand:
    def test_passing_cases_print_pass_and_coverage(self) -> None:
        result = _invoke(str(FIXTURES))
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == f"mini-bank 0.1.0: 24 cases from {TESTS}"
        assert lines[1] == "PASS large deposit brings term deposit rates"
        assert len([line for line in lines if line.startswith("PASS ")]) == 24
        assert lines[-1] == "mini-bank 0.1.0: 24 cases, 24 passed; coverage: rules 4/4, actions 3/3, policies 7/7"

    @pytest.mark.parametrize("path", [RULESET, TESTS, FIXTURES])
    def test_a_ruleset_its_tests_or_their_directory_selects_the_same_cases(self, path: Path) -> None:
        result = _invoke("--strict", str(path))
        assert result.exit_code == 0, result.output
        assert "24 cases, 24 passed" in result.output

    def test_a_failing_case_shows_expected_got_the_candidates_fate_and_fired_rules(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        tests = tmp_path / "mini-bank.tests.yaml"
        tests.write_text(
            HEADER
            + f"""\
  - name: deposit brings rates
    events: [{DEPOSIT}]
    expect: {{actions: [rates]}}
  - name: wrong on purpose
    profile: {{balance: 20000}}
    events: [{DEPOSIT}]
    expect:
      actions: [loyalty-thanks]
      dropped:
        - {{action: rates, reason: frequency_cap, policy: rates-monthly}}
        - {{rule: premier-rates, reason: duplicate_action}}
      fired: [card-declined]
""",
            "utf-8",
        )
        result = _invoke(str(tmp_path))
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [
            f"mini-bank 0.1.0: 2 cases from {tests}",
            "PASS deposit brings rates",
            "FAIL wrong on purpose",
            f"  case at {tests}:11: agent_desktop, 2026-03-10 14:00 Europe/London (2026-03-10 14:00 UTC), "
            "at most 3 action(s)",
            "  expected actions: loyalty-thanks",
            "  got actions:      rates, loyalty-thanks   <- differs",
            "  expected dropped: action rates, reason frequency_cap, policy rates-monthly; not so:",
            "    rates was offered at position 1 through rule big-deposit",
            "  expected dropped: rule premier-rates, reason duplicate_action; not so:",
            "    rule premier-rates did not fire",
            "  expected fired:   card-declined; did not fire",
            "  rules fired:",
            "    big-deposit -> rates (priority 800) read events.large_deposit.amount=25000",
            "    loyal-balance -> loyalty-thanks (priority 400) read balance=20000",
            "mini-bank 0.1.0: 2 cases, 1 passed; coverage: rules 2/4, actions 2/3, policies 0/7",
            "  never exercised: rules premier-rates, card-declined",
            "  never exercised: actions card-help",
            "  never exercised: policies consent:agent_desktop, consent:outbound_dialer, do_not_call, quiet_hours, "
            "rates-monthly, dialer-daily and 1 more (--strict lists all)",
        ]

    def test_an_expected_drop_that_happened_otherwise_shows_the_other_reason(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        (tmp_path / "mini-bank.tests.yaml").write_text(
            HEADER
            + """\
  - name: vulnerable
    profile: {vulnerable: true, balance: 20000}
    expect:
      actions: []
      dropped: [{action: loyalty-thanks, reason: frequency_cap}]
""",
            "utf-8",
        )
        result = _invoke(str(tmp_path))
        assert result.exit_code == 1
        assert (
            "    loyalty-thanks was dropped through rule loyal-balance: suppression [vulnerable-no-sales] "
            "(vulnerable-no-sales: Vulnerable clients get service actions only.)"
        ) in result.output.splitlines()

    def test_strict_fails_when_a_rule_or_policy_is_never_exercised(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        (tmp_path / "mini-bank.tests.yaml").write_text(
            HEADER + f"  - {{name: deposit, events: [{DEPOSIT}], expect: {{actions: [rates]}}}}\n", "utf-8"
        )
        assert _invoke(str(tmp_path)).exit_code == 0
        result = _invoke("--strict", str(tmp_path))
        assert result.exit_code == 1, result.output
        lines = result.output.splitlines()
        assert "mini-bank 0.1.0: 1 cases, 1 passed; coverage: rules 1/4, actions 1/3, policies 0/7" in lines
        assert "  never exercised: rules premier-rates, card-declined, loyal-balance" in lines
        assert (
            "  never exercised: policies consent:agent_desktop, consent:outbound_dialer, do_not_call, quiet_hours, "
            "rates-monthly, dialer-daily, vulnerable-no-sales"
        ) in lines
        assert (
            lines[-1] == "mini-bank 0.1.0: --strict fails: every rule and every policy must be exercised by some case"
        )

    def test_an_invalid_file_exits_2_with_every_problem(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        tests = tmp_path / "mini-bank.tests.yaml"
        tests.write_text(HEADER + "  - {name: a, expect: {actions: [ratez]}}\n  - {name: a, expect: {}}\n", "utf-8")
        result = _invoke(str(tmp_path))
        assert result.exit_code == 2
        assert result.output.splitlines() == [
            f"{tests}:9: case 'a' expect: 'actions' is a required property",
            "1 problem(s) in 1 file(s); no case was run",
        ]
        tests.write_text(HEADER + "  - {name: a, expect: {actions: [ratez]}}\n  - {name: a, expect: {actions: []}}\n")
        result = _invoke(str(tmp_path))
        assert result.exit_code == 2
        assert result.output.splitlines() == [
            f"{tests}:8: case 'a' expect.actions[0]: action 'ratez' is not declared in ruleset mini-bank "
            "(did you mean 'rates'?)",
            f"{tests}:9: case 'a' name: duplicate case name 'a' (first at line 8)",
            "2 problem(s) in 1 file(s); no case was run",
        ]

    def test_an_invalid_ruleset_exits_2(self, tmp_path: Path) -> None:
        (tmp_path / "broken.yaml").write_text("ruleset: {name: broken}\n", "utf-8")
        result = _invoke(str(tmp_path))
        assert result.exit_code == 2
        assert f"{tmp_path / 'broken.yaml'}:1: ruleset: 'version' is a required property" in result.output

    def test_a_ruleset_without_tests_is_reported_and_fails_only_strict(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        result = _invoke(str(tmp_path))
        assert result.exit_code == 0
        expected = f"mini-bank 0.1.0: no scenario tests ({tmp_path / 'mini-bank.tests.yaml'} does not exist)"
        assert result.output.splitlines() == [expected]
        strict = _invoke("--strict", str(tmp_path))
        assert strict.exit_code == 1
        assert strict.output.splitlines() == [f"{expected}; --strict requires them"]

    def test_tests_without_their_ruleset_or_a_missing_path_exit_2(self, tmp_path: Path) -> None:
        orphan = tmp_path / "gone.tests.yaml"
        shutil.copy(TESTS, orphan)
        result = _invoke(str(orphan))
        assert result.exit_code == 2
        assert (
            result.output.splitlines()[0] == f"{orphan}: no ruleset beside it: {tmp_path / 'gone.yaml'} does not exist"
        )
        shutil.copy(RULESET, tmp_path)
        result = _invoke(str(tmp_path))  # the directory's orphan is reported too
        assert result.exit_code == 2
        assert _invoke(str(tmp_path / "nothing.yaml")).exit_code == 2

    def test_json_output(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        (tmp_path / "mini-bank.tests.yaml").write_text(
            HEADER
            + f"""\
  - name: wrong
    events: [{DEPOSIT}]
    expect: {{actions: [], dropped: [{{action: rates, reason: frequency_cap}}]}}
""",
            "utf-8",
        )
        result = _invoke("--json", str(tmp_path))
        assert result.exit_code == 1
        document = json.loads(result.output)
        assert document["passed"] is False
        (run,) = document["rulesets"]
        assert (run["name"], run["passed"], run["failed"]) == ("mini-bank", 0, 1)
        assert run["coverage"]["rules"] == {
            "exercised": 1,
            "total": 4,
            "missing": ["premier-rates", "card-declined", "loyal-balance"],
        }
        (case,) = run["cases"]
        assert case["actions"] == ["rates"]
        assert case["expected"]["actions"] == []
        assert case["missing_dropped"] == [
            {
                "action": "rates",
                "reason": "frequency_cap",
                "instead": ["rates was offered at position 1 through rule big-deposit"],
            }
        ]
        assert case["rules_fired"] == [
            {
                "rule_id": "big-deposit",
                "action_id": "rates",
                "priority": 800,
                "values": {"events.large_deposit.amount": 25000.0},
            }
        ]
        assert case["at"] == "2026-03-10T14:00:00+00:00"

    def test_the_installed_command_exits_with_the_documented_codes(self, tmp_path: Path) -> None:
        shutil.copy(RULESET, tmp_path)
        passing = subprocess.run([NBA, "rulesets", "test", str(FIXTURES)], capture_output=True, text=True, check=False)
        assert passing.returncode == 0, passing.stdout + passing.stderr
        (tmp_path / "mini-bank.tests.yaml").write_text(HEADER + "  - {name: a, expect: {actions: [rates]}}\n")
        failing = subprocess.run([NBA, "rulesets", "test", str(tmp_path)], capture_output=True, text=True, check=False)
        assert failing.returncode == 1, failing.stdout + failing.stderr
        (tmp_path / "mini-bank.tests.yaml").write_text(HEADER + "  - {name: a}\n")
        invalid = subprocess.run([NBA, "rulesets", "test", str(tmp_path)], capture_output=True, text=True, check=False)
        assert invalid.returncode == 2, invalid.stdout + invalid.stderr


class TestBundledRulesets:
    def test_the_bundled_rulesets_pass_their_scenario_tests_strictly(self) -> None:
        """Runs what CI and a reviewer run: `nba rulesets test --strict` on the bundled folder, no PATH."""
        tests = REPO / "rulesets" / "retail-banking.tests.yaml"
        assert tests.exists(), f"{tests} is missing: the bundled ruleset must ship with its scenario tests"
        result = subprocess.run([NBA, "rulesets", "test", "--strict"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert not [line for line in lines if line.startswith("FAIL ")]
        assert lines[-1].startswith("retail-banking "), lines[-1]
        assert "; coverage: rules " in lines[-1]
