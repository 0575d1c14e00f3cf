"""Scenario tests: cases a compliance reviewer writes beside a ruleset, run through the one decision pipeline.

A case is a customer (attributes, recent events, past contacts), a channel and a local time, with what the
reviewer expects: the actions offered, in order, and optionally candidates dropped and rules fired. The file
(`<name>.tests.yaml` beside `<name>.yaml`) is checked against scenarios.schema.json and then against the
ruleset itself, so a misspelt action, attribute or policy is reported with its line instead of letting a case
pass for the wrong reason. Cases run through `pipeline.evaluate`, the function the service calls, so a
passing case states what the service would do; this module never imports the engine and never re-composes
the pipeline.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from nba_service.domain.loader import (
    TESTS_SUFFIX,
    _duration,
    _located,
    _schema_message,
    _SchemaValidator,
    fast_document,
    unknown_keys,
)
from nba_service.domain.model import Channel, Direction, FieldSpec, Ruleset, default_direction, direction_fits
from nba_service.domain.pipeline import ActiveRuleset, Evaluation, evaluate
from nba_service.domain.policy import DO_NOT_CONTACT, policy_ids
from nba_service.domain.profile import (
    AttributeValue,
    Contact,
    DoNotContact,
    DoNotContactReason,
    Event,
    OutcomeKind,
    Profile,
)
from nba_service.domain.records import DroppedCandidate
from nba_service.errors import RulesetInvalid, RulesetProblem

CUSTOMER_ID = "SCENARIO"
# What a Decide without max_actions gets (nba_service.service.DEFAULT_MAX_ACTIONS; a test keeps them equal).
DEFAULT_MAX_ACTIONS = 3
# Every reason policy.apply_policies and arbitration.rank give; the schema's enum lists the same (tested).
DROP_REASONS = (
    "do_not_contact",
    "no_consent",
    "do_not_call",
    "quiet_hours",
    "suppression",
    "channel_fit",
    "missing_trigger",
    "expired_trigger",
    "constraint",
    "frequency_cap",
    "duplicate_action",
    "held_out",
    "ranked_out",
)
_DURATION_PART = re.compile(r"([0-9]+)([dhm])")
_PATTERN_HINTS = {
    "^(?=[0-9])([0-9]{1,6}d)?([0-9]{1,6}h)?([0-9]{1,6}m)?$": "a duration like 30m, 2h, 3d or 1d12h",
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$": (
        'a local date and time like "2026-03-10 14:00"'
    ),
}


@cache
def scenarios_schema() -> dict[str, Any]:
    text = resources.files("nba_service.domain").joinpath("scenarios.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


def tests_path_for(ruleset_path: Path) -> Path:
    return ruleset_path.with_name(ruleset_path.stem + TESTS_SUFFIX)


def ruleset_path_for(tests_path: Path) -> Path:
    return tests_path.with_name(tests_path.name.removesuffix(TESTS_SUFFIX) + ".yaml")


def parse_duration(text: str) -> timedelta:
    """The ruleset's own duration units (m, h, d), several in a row as in 1d12h: a case often sits a minute
    beside a lifetime or a cap window, and `4319m` hides that `3d` does not."""
    return sum((_duration(f"{amount}{unit}") for amount, unit in _DURATION_PART.findall(text)), timedelta())


@dataclass(frozen=True, slots=True)
class ExpectedDrop:
    """A candidate the reviewer expects policy or arbitration to drop; unset keys match anything."""

    reason: str
    action: str | None = None
    rule: str | None = None
    policy: str | None = None

    def matches(self, dropped: DroppedCandidate) -> bool:
        return (
            dropped.reason == self.reason
            and (self.action is None or dropped.action_id == self.action)
            and (self.rule is None or dropped.rule_id == self.rule)
            and (self.policy is None or dropped.policy == self.policy)
        )

    def concerns(self, dropped: DroppedCandidate) -> bool:
        """Whether a dropped candidate is the one meant, whatever its reason."""
        return (self.action is None or dropped.action_id == self.action) and (
            self.rule is None or dropped.rule_id == self.rule
        )

    def __str__(self) -> str:
        parts = [f"action {self.action}" if self.action else "", f"rule {self.rule}" if self.rule else ""]
        parts += [f"reason {self.reason}", f"policy {self.policy}" if self.policy else ""]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class Expectation:
    actions: tuple[str, ...]
    dropped: tuple[ExpectedDrop, ...] = ()
    fired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    """One case, resolved: the profile as a store would return it and the moment of the decision."""

    name: str
    source: str
    line: int | None
    channel: Channel
    local_time: datetime  # aware, in the case's time zone: what the reviewer wrote
    max_actions: int
    profile: Profile
    expect: Expectation
    description: str = ""
    direction: Direction | None = None
    # The actions this customer is in the holdout of; none unless the case says so, so that a case never
    # depends on the random draw.
    held_out: tuple[str, ...] = ()

    @property
    def now(self) -> datetime:
        return self.local_time.astimezone(UTC)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True, slots=True)
class CaseResult:
    scenario: Scenario
    evaluation: Evaluation
    missing_drops: tuple[ExpectedDrop, ...]
    missing_fired: tuple[str, ...]

    @property
    def actions_match(self) -> bool:
        return self.evaluation.action_ids == self.scenario.expect.actions

    @property
    def passed(self) -> bool:
        # An engine failure fails the case even though the reference evaluator answered: the point of these
        # tests is the engine the service runs.
        return (
            self.actions_match
            and not self.missing_drops
            and not self.missing_fired
            and self.evaluation.engine_error is None
        )


def run_case(active: ActiveRuleset, scenario: Scenario) -> CaseResult:
    evaluation = evaluate(
        active,
        scenario.profile,
        scenario.channel,
        scenario.now,
        scenario.max_actions,
        direction=scenario.direction,
        held_out=scenario.held_out,
    )
    fired = {f.rule_id for f in evaluation.rules_fired}
    return CaseResult(
        scenario,
        evaluation,
        tuple(e for e in scenario.expect.dropped if not any(e.matches(d) for d in evaluation.dropped)),
        tuple(rule for rule in scenario.expect.fired if rule not in fired),
    )


@dataclass(frozen=True, slots=True)
class Covered:
    """Which of a ruleset's ids (rules, actions or policies) at least one case exercised."""

    ids: tuple[str, ...]
    exercised: frozenset[str]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(i for i in self.ids if i not in self.exercised)

    @property
    def count(self) -> int:
        return len(self.ids) - len(self.missing)

    @property
    def complete(self) -> bool:
        return not self.missing

    def __str__(self) -> str:
        return f"{self.count}/{len(self.ids)}"


@dataclass(frozen=True, slots=True)
class Coverage:
    rules: Covered  # fired (matched by the engine) in at least one case
    actions: Covered  # offered in at least one case
    policies: Covered  # dropped a candidate in at least one case


def coverage(ruleset: Ruleset, results: Iterable[CaseResult]) -> Coverage:
    """What the cases exercised, whether or not they passed: a failing case still showed the rule at work."""
    fired: set[str] = set()
    offered: set[str] = set()
    acted: set[str] = set()
    for result in results:
        fired.update(f.rule_id for f in result.evaluation.rules_fired)
        offered.update(result.evaluation.action_ids)
        acted.update(d.policy for d in result.evaluation.dropped if d.policy)
    return Coverage(
        Covered(tuple(r.id for r in ruleset.rules), frozenset(fired)),
        Covered(tuple(ruleset.actions), frozenset(offered)),
        Covered(tuple(policy_ids(ruleset)), frozenset(acted)),
    )


def load_scenarios_file(path: Path, ruleset: Ruleset) -> list[Scenario]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesetInvalid([RulesetProblem(str(path), None, "", f"cannot read file: {exc.strerror}")]) from exc
    return load_scenarios_text(data, ruleset, str(path))


def load_scenarios_text(data: bytes | str, ruleset: Ruleset, source: str = "<tests>") -> list[Scenario]:
    """The cases of a tests file, or RulesetInvalid naming every problem with its file and line."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesetInvalid([RulesetProblem(source, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    fast = fast_document(text)
    lines = _case_lines(text) if isinstance(fast, Mapping) else None
    if isinstance(fast, Mapping) and lines is not None:
        with contextlib.suppress(RulesetInvalid):  # located below, from the round-trip document
            return _Reader(source, fast, ruleset, lines).read()
    return scenarios_round_trip(text, ruleset, source)


def scenarios_round_trip(text: str, ruleset: Ruleset, source: str) -> list[Scenario]:
    """The cases from the round-trip parse, which knows every node's line: how each problem is located."""
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise RulesetInvalid([RulesetProblem(source, line, "", f"YAML syntax: {exc.problem or exc}")]) from exc
    except YAMLError as exc:
        raise RulesetInvalid([RulesetProblem(source, None, "", f"YAML syntax: {exc}")]) from exc
    if not isinstance(document, Mapping):
        raise RulesetInvalid([RulesetProblem(source, None, "", "the file must hold a mapping with ruleset and cases")])
    return _Reader(source, document, ruleset).read()


def _case_lines(text: str) -> list[int] | None:
    """The line each case starts on, from libyaml's node tree: all a valid file needs of the round-trip parse."""
    try:
        root = YAML(typ="safe", pure=False).compose(text)
    except Exception:  # the round-trip parser reports it
        return None
    if not isinstance(root, MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "cases" and isinstance(value, SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return None


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(value: Any) -> AttributeValue:
    """The plain Python value of a YAML scalar (ruamel hands out its own str, int and float subclasses)."""
    if value is None or isinstance(value, bool):
        return cast(AttributeValue, value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _unknown(message: str, value: str, known: Sequence[str]) -> str:
    """The message, with the id the reviewer probably meant, or the short list of what there is."""
    close = difflib.get_close_matches(value, known, n=1)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    if len(known) <= 12:
        return f"{message} (declared: {', '.join(known) or 'none'})"
    return message


class _Reader:
    def __init__(self, source: str, document: Any, ruleset: Ruleset, case_lines: Sequence[int] | None = None) -> None:
        self.source = source
        self.document = document
        self.case_lines = case_lines
        self.ruleset = ruleset
        self.problems: list[RulesetProblem] = []
        self.rule_actions = {rule.id: rule.action for rule in ruleset.rules}
        self.policies = [*policy_ids(ruleset), DO_NOT_CONTACT]
        self.where_declared = f"ruleset {ruleset.meta.name}"

    def _undeclared(self, kind: str, value: str, known: Sequence[str]) -> str:
        return _unknown(f"{kind} {value!r} is not declared in {self.where_declared}", value, known)

    def problem(self, path: Sequence[str | int], message: str) -> None:
        self.problems.append(RulesetProblem(self.source, _located(self.document, path), self._where(path), message))

    def _where(self, path: Sequence[str | int]) -> str:
        if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
            try:
                name = self.document["cases"][path[1]]["name"]
            except (KeyError, IndexError, TypeError):
                name = None
            label = f"case {name!r}" if isinstance(name, str) else f"case #{path[1] + 1}"
            return f"{label} {_dotted(path[2:])}".strip()
        return _dotted(path)

    def read(self) -> list[Scenario]:
        validator = _SchemaValidator(scenarios_schema())
        for error in sorted(validator.iter_errors(self.document), key=lambda e: [str(p) for p in e.absolute_path]):
            self._schema_problem(error)
        self._raise_if_any()
        scenarios = self._cases()
        self._raise_if_any()
        return scenarios

    def _raise_if_any(self) -> None:
        if self.problems:
            # In file order, as a reviewer fixes them; problems on one line keep the order they were found in.
            raise RulesetInvalid(sorted(self.problems, key=lambda p: p.line or 0))

    def _schema_problem(self, error: jsonschema.ValidationError) -> None:
        path: list[str | int] = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            for key_path, problem in unknown_keys(error):
                self.problem(key_path, problem)
            return
        if "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
            self.problem([*path, error.instance], _schema_message(error))
            return
        if error.validator == "type" and isinstance(error.instance, date):
            self.problem(path, 'write the date and time in quotes, like "2026-03-10 14:00"')
            return
        hint = _PATTERN_HINTS.get(str(error.validator_value)) if error.validator == "pattern" else None
        self.problem(path, f"{error.instance!r} is not {hint}" if hint else _schema_message(error))

    def _cases(self) -> list[Scenario]:
        doc = self.document
        ruleset = self.ruleset
        name = str(doc["ruleset"])
        if name != ruleset.meta.name:
            self.problem(
                ["ruleset"],
                f"these cases are for ruleset {name!r}, but {ruleset.source or 'the ruleset'} is {ruleset.meta.name!r}",
            )
        defaults = doc.get("defaults", {})
        self._check_profile(defaults.get("profile", {}), ["defaults", "profile"])
        default_zone = self._zone(defaults["timezone"], ["defaults", "timezone"]) if "timezone" in defaults else None
        default_at = self._local(defaults["at"], ["defaults", "at"]) if "at" in defaults else None
        first_line: dict[str, int | None] = {}
        scenarios: list[Scenario] = []
        for index, case in enumerate(doc["cases"]):
            case_name = str(case["name"])
            if case_name in first_line:
                self.problem(
                    ["cases", index, "name"],
                    f"duplicate case name {case_name!r} (first at line {first_line[case_name]})",
                )
            first_line.setdefault(case_name, self._case_line(index))
            scenario = self._case(index, case, defaults, default_zone, default_at)
            if scenario is not None:
                scenarios.append(scenario)
        return scenarios

    def _case_line(self, index: int) -> int | None:
        if self.case_lines is not None and index < len(self.case_lines):
            return self.case_lines[index]
        return _located(self.document, ["cases", index])

    def _zone(self, name: str, path: list[str | int]) -> zoneinfo.ZoneInfo | None:
        try:
            return zoneinfo.ZoneInfo(str(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.problem(path, f"unknown time zone {name!r} (an IANA name like Europe/London)")
            return None

    def _local(self, text: str, path: list[str | int]) -> datetime | None:
        try:
            return datetime.fromisoformat(str(text))
        except ValueError:
            self.problem(path, f"{text!r} is not a date and time that exists")
            return None

    def _fallback_zone(self) -> zoneinfo.ZoneInfo:
        quiet = self.ruleset.policies.quiet_hours
        return zoneinfo.ZoneInfo(quiet.default_timezone if quiet is not None else "UTC")

    def _case(
        self,
        index: int,
        case: Any,
        defaults: Any,
        default_zone: zoneinfo.ZoneInfo | None,
        default_at: datetime | None,
    ) -> Scenario | None:
        path: list[str | int] = ["cases", index]
        before = len(self.problems)
        channel = Channel(case.get("channel", defaults.get("channel", Channel.AGENT_DESKTOP.value)))
        direction_name = case.get("direction", defaults.get("direction"))
        direction = default_direction(channel) if direction_name is None else Direction(direction_name)
        if not direction_fits(channel, direction):
            where = [*path, "direction"] if "direction" in case else [*path, "channel"]
            self.problem(where, "the outbound dialer only calls out; an inbound case is an agent_desktop case")
        max_actions = int(case.get("max_actions", defaults.get("max_actions", DEFAULT_MAX_ACTIONS)))
        if "timezone" in case:
            zone = self._zone(case["timezone"], [*path, "timezone"])
        elif "timezone" in defaults:
            zone = default_zone
        else:
            zone = self._fallback_zone()
        at_path: list[str | int] = [*path, "at"] if "at" in case else ["defaults", "at"]
        if "at" in case:
            naive = self._local(case["at"], at_path)
        elif "at" in defaults:
            naive = default_at
        else:
            naive = None
            self.problem(path, "no `at`: give the local date and time of the decision here or under defaults")
        local: datetime | None = None
        if zone is not None and naive is not None:
            local = naive.replace(tzinfo=zone)
            if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
                self.problem(at_path, f"{naive:%Y-%m-%d %H:%M} does not exist in {zone.key} (the clocks go forward)")
        profile_doc = case.get("profile", {})
        self._check_profile(profile_doc, [*path, "profile"])
        # Checked even when the time is wrong, so that one run reports every problem of the case.
        now = local.astimezone(UTC) if local is not None else datetime.fromtimestamp(0, UTC)
        events = self._events(case.get("events", []), [*path, "events"], now)
        contacts = self._contacts(case.get("contacts", []), [*path, "contacts"], now, channel, index)
        listings = [
            DoNotContact(
                None if item.get("channel") is None else Channel(item["channel"]),
                DoNotContactReason(item["reason"]),
                str(item.get("source", "scenario")),
                now - parse_duration(str(item.get("age", "1d"))),
                None if "expires_in" not in item else now + parse_duration(str(item["expires_in"])),
            )
            for item in case.get("do_not_contact", [])
        ]
        expectation = self._expectation(case["expect"], [*path, "expect"], channel, max_actions)
        held_out: list[str] = []
        for position, raw in enumerate(case.get("held_out", [])):
            action_id = str(raw)
            spot: list[str | int] = [*path, "held_out", position]
            if action_id not in self.ruleset.actions:
                self.problem(spot, self._undeclared("action", action_id, list(self.ruleset.actions)))
            elif self.ruleset.actions[action_id].holdout <= 0:
                self.problem(spot, f"action {action_id!r} has no holdout share in {self.where_declared}")
            held_out.append(action_id)
        if local is None or len(self.problems) > before:
            return None
        attributes: dict[str, AttributeValue] = {}
        given: set[str] = set()
        for layer in (defaults.get("profile", {}), profile_doc):
            for key, value in layer.items():
                given.add(str(key))
                if value is None:
                    attributes.pop(str(key), None)
                else:
                    attributes[str(key)] = _plain(value)
        quiet = self.ruleset.policies.quiet_hours
        if quiet is not None and quiet.timezone_field not in given:
            # `at` is the customer's local time unless the case says the customer lives elsewhere.
            attributes[quiet.timezone_field] = cast(zoneinfo.ZoneInfo, local.tzinfo).key
        return Scenario(
            name=str(case["name"]),
            source=self.source,
            line=self._case_line(index),
            channel=channel,
            local_time=local,
            max_actions=max_actions,
            profile=Profile(CUSTOMER_ID, attributes, tuple(events), tuple(contacts), do_not_contact=tuple(listings)),
            expect=expectation,
            description=str(case.get("description", "")),
            direction=direction,
            held_out=tuple(held_out),
        )

    def _check_value(self, spec: FieldSpec, value: Any, path: list[str | int]) -> None:
        if value is None:
            return
        if spec.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem(path, f"{spec.name!r} is a number field; {value!r} is not a number")
            elif isinstance(value, float) and not math.isfinite(value):
                self.problem(path, f"{value!r} is not a finite number")
        elif spec.type == "boolean":
            if not isinstance(value, bool):
                self.problem(path, f"{spec.name!r} is a boolean field; use true or false, not {value!r}")
        elif not isinstance(value, str):
            self.problem(path, f"{spec.name!r} is a string field; quote the value {value!r}")
        elif spec.values is not None and value not in spec.values:
            self.problem(
                path, f"{value!r} is not one of the declared values of {spec.name!r}: {', '.join(spec.values)}"
            )

    def _check_profile(self, profile: Any, path: list[str | int]) -> None:
        fields = self.ruleset.fields
        for key, value in profile.items():
            spec = fields.get(str(key))
            if spec is None:
                self.problem([*path, key], self._undeclared("field", str(key), list(fields)))
            else:
                self._check_value(spec, value, [*path, key])

    def _events(self, items: Any, path: list[str | int], now: datetime) -> list[Event]:
        events: list[Event] = []
        for position, item in enumerate(items):
            event_path = [*path, position]
            event_type = str(item["type"])
            spec = self.ruleset.events.get(event_type)
            if spec is None:
                self.problem(
                    [*event_path, "type"],
                    self._undeclared("event type", event_type, list(self.ruleset.events)),
                )
                continue
            attributes = {a.name: a for a in spec.attributes}
            values: dict[str, AttributeValue] = {}
            for key, value in item.get("attributes", {}).items():
                name = str(key)
                if name not in attributes:
                    self.problem(
                        [*event_path, "attributes", key],
                        _unknown(
                            f"{name!r} is not an attribute of {event_type} events in {self.where_declared}",
                            name,
                            list(attributes),
                        ),
                    )
                    continue
                self._check_value(attributes[name], value, [*event_path, "attributes", key])
                if value is not None:
                    values[name] = _plain(value)
            expires = now + parse_duration(str(item["expires_in"])) if "expires_in" in item else None
            events.append(Event(event_type, now - parse_duration(str(item["age"])), values, expires))
        return events

    def _contacts(
        self, items: Any, path: list[str | int], now: datetime, channel: Channel, case_index: int
    ) -> list[Contact]:
        contacts: list[Contact] = []
        for position, item in enumerate(items):
            action = str(item["action"])
            if action not in self.ruleset.actions:
                self.problem(
                    [*path, position, "action"],
                    self._undeclared("action", action, list(self.ruleset.actions)),
                )
                continue
            contacts.append(
                Contact(
                    action_id=action,
                    channel=Channel(item.get("channel", channel.value)),
                    time=now - parse_duration(str(item["age"])),
                    outcome=OutcomeKind(item["outcome"]),
                    # One synthetic decision per entry, so two entries are two contacts (policy counts one
                    # contact per decision and action).
                    decision_id=f"scenario-{case_index + 1}-contact-{position + 1}",
                    direction=None if item.get("direction") is None else Direction(item["direction"]),
                    pending_until=None if "pending_for" not in item else now + parse_duration(str(item["pending_for"])),
                )
            )
        return contacts

    def _expectation(self, doc: Any, path: list[str | int], channel: Channel, max_actions: int) -> Expectation:
        actions = self.ruleset.actions
        expected: list[str] = []
        for position, raw in enumerate(doc["actions"]):
            action = str(raw)
            where: list[str | int] = [*path, "actions", position]
            if action not in actions:
                self.problem(where, self._undeclared("action", action, list(actions)))
            elif channel not in actions[action].scripts:
                self.problem(where, f"action {action!r} has no {channel.value} script, so it is never offered there")
            elif action in expected:
                self.problem(where, f"action {action!r} is listed twice; a decision offers each action once")
            expected.append(action)
        if len(expected) > max_actions:
            self.problem(
                [*path, "actions"],
                f"expects {len(expected)} actions, but at most {max_actions} are offered (max_actions)",
            )
        drops: list[ExpectedDrop] = []
        for position, item in enumerate(doc.get("dropped", [])):
            where = [*path, "dropped", position]
            action_id = None if item.get("action") is None else str(item["action"])
            rule_id = None if item.get("rule") is None else str(item["rule"])
            policy = None if item.get("policy") is None else str(item["policy"])
            if action_id is None and rule_id is None:
                self.problem(where, "name the candidate: give action, rule or both")
            if action_id is not None and action_id not in actions:
                self.problem([*where, "action"], self._undeclared("action", action_id, list(actions)))
            if rule_id is not None and rule_id not in self.rule_actions:
                self.problem([*where, "rule"], self._undeclared("rule", rule_id, list(self.rule_actions)))
            elif rule_id is not None and action_id is not None and self.rule_actions[rule_id] != action_id:
                self.problem(
                    [*where, "action"], f"rule {rule_id!r} proposes {self.rule_actions[rule_id]!r}, never {action_id!r}"
                )
            if policy is not None and policy not in self.policies:
                self.problem([*where, "policy"], self._undeclared("policy", policy, self.policies))
            drops.append(ExpectedDrop(str(item["reason"]), action_id, rule_id, policy))
        fired: list[str] = []
        for position, raw in enumerate(doc.get("fired", [])):
            rule = str(raw)
            if rule not in self.rule_actions:
                self.problem([*path, "fired", position], self._undeclared("rule", rule, list(self.rule_actions)))
            fired.append(rule)
        return Expectation(tuple(expected), tuple(drops), tuple(fired))
