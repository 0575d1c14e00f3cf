"""Static findings about a valid ruleset that a compliance reviewer can act on: what the schema cannot see.

The loader already refuses what is malformed (unknown fields, values outside a field's declared `values`,
script placeholders outside the allow-list, a missing owner or version); `invalid_findings` gives those
problems the same shape and codes as the findings here. What is left is meaning: conditions that can never
hold together, rules that can never produce an offer, rules that can never change an answer, actions no rule
uses, a holdout or value with no conversion to measure it by, and a version that does not move with the
content. Each finding names its file, line and the rule, action or policy it is about, in plain words;
`docs/reviewers/check.md` explains each code and its severity.

Pure: a ruleset (and its text, for line numbers) in, findings out. The meaning of a condition comes from the
reference evaluator (see `conditions`), and "never changes an answer" follows the arbitration's order.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from nba_service.domain.loader import _located
from nba_service.domain.model import (
    Action,
    Channel,
    Condition,
    Constraint,
    Direction,
    FieldSpec,
    FrequencyCap,
    Op,
    Rule,
    Ruleset,
    Scalar,
    When,
    direction_fits,
)
from nba_service.domain.policy import _binds, _cap_applies
from nba_service.domain.profile import OutcomeKind
from nba_service.domain.scripts import SCRIPT_FIELDS, placeholders
from nba_service.domain.wording import duration_text, share_text
from nba_service.errors import RulesetProblem
from nba_service.review.conditions import branches, conflict, equivalent, implies, satisfiable


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Code(enum.StrEnum):
    """Stable codes: tools match on these, never on the wording of a message."""

    CONTRADICTION = "contradiction"
    ANY_NEVER_HOLDS = "any-never-holds"
    VALUE_NOT_ALLOWED = "value-not-allowed"
    NEVER_OFFERED = "never-offered"
    SUPPRESSED_ALWAYS = "suppressed-always"
    NO_SCRIPT_FOR_ALLOWED_CHANNEL = "no-script-for-allowed-channel"
    DUPLICATE_RULE = "duplicate-rule"
    SHADOWED_RULE = "shadowed-rule"
    UNUSED_ACTION = "unused-action"
    UNKNOWN_PLACEHOLDER = "unknown-placeholder"
    MISSING_OWNER = "missing-owner"
    MISSING_VERSION = "missing-version"
    VERSION_NOT_BUMPED = "version-not-bumped"
    VERSION_WENT_BACK = "version-went-back"
    NO_PREVIOUS_VERSION = "no-previous-version"
    INVALID = "invalid"
    UNUSED_PURPOSE = "unused-purpose"
    POLICY_NEVER_APPLIES = "policy-never-applies"
    OUTCOME_NEVER_RECORDED = "outcome-never-recorded"
    REDUNDANT_POLICY = "redundant-policy"
    MANDATORY_NOT_EXCEPTED = "mandatory-not-excepted"
    HOLDOUT_WITHOUT_CONVERSION = "holdout-without-conversion"
    VALUE_WITHOUT_CONVERSION = "value-without-conversion"
    CONVERSION_OUTLASTS_PERIOD = "conversion-outlasts-period"


SEVERITY: Mapping[Code, Severity] = {
    Code.CONTRADICTION: Severity.ERROR,
    Code.ANY_NEVER_HOLDS: Severity.WARNING,
    Code.VALUE_NOT_ALLOWED: Severity.ERROR,
    Code.NEVER_OFFERED: Severity.ERROR,
    Code.SUPPRESSED_ALWAYS: Severity.ERROR,
    Code.NO_SCRIPT_FOR_ALLOWED_CHANNEL: Severity.ERROR,
    Code.DUPLICATE_RULE: Severity.WARNING,
    Code.SHADOWED_RULE: Severity.WARNING,
    Code.UNUSED_ACTION: Severity.WARNING,
    Code.UNKNOWN_PLACEHOLDER: Severity.ERROR,
    Code.MISSING_OWNER: Severity.ERROR,
    Code.MISSING_VERSION: Severity.ERROR,
    Code.VERSION_NOT_BUMPED: Severity.ERROR,
    Code.VERSION_WENT_BACK: Severity.ERROR,
    Code.NO_PREVIOUS_VERSION: Severity.WARNING,
    Code.INVALID: Severity.ERROR,
    Code.UNUSED_PURPOSE: Severity.WARNING,
    Code.POLICY_NEVER_APPLIES: Severity.WARNING,
    Code.OUTCOME_NEVER_RECORDED: Severity.WARNING,
    Code.REDUNDANT_POLICY: Severity.WARNING,
    Code.MANDATORY_NOT_EXCEPTED: Severity.WARNING,
    Code.HOLDOUT_WITHOUT_CONVERSION: Severity.WARNING,
    Code.VALUE_WITHOUT_CONVERSION: Severity.WARNING,
    Code.CONVERSION_OUTLASTS_PERIOD: Severity.WARNING,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a reviewer should look at. `kind` and `id` name the rule, action or policy it is about."""

    code: Code
    file: str
    line: int | None
    kind: str
    id: str
    message: str

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.code]

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line else self.file
        subject = f"{self.kind} {self.id!r}: " if self.id else ""
        return f"{location}: {self.severity} {self.code}: {subject}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": str(self.severity),
            "code": str(self.code),
            "file": self.file,
            "line": self.line,
            "kind": self.kind,
            "id": self.id,
            "message": self.message,
        }


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def fails(findings: Sequence[Finding], *, strict: bool) -> bool:
    """Errors always fail; warnings fail only in strict mode."""
    return bool(findings) if strict else bool(errors(findings))


# --------------------------------------------------------------------------------------------------
# Problems the loader found
# --------------------------------------------------------------------------------------------------

_PROBLEM_CODES: Sequence[tuple[re.Pattern[str], Code]] = (
    (re.compile(r"is not one of the declared values of"), Code.VALUE_NOT_ALLOWED),
    (
        re.compile(r"^placeholder \{.*\} (is not allowed in scripts|needs a declared string field)"),
        Code.UNKNOWN_PLACEHOLDER,
    ),
    (re.compile(r"'owner' is a required property"), Code.MISSING_OWNER),
    (re.compile(r"'version' is a required property"), Code.MISSING_VERSION),
)
_WHERE = re.compile(r"^(rule|action|field|event) '([^']*)'")


def invalid_findings(problems: Sequence[RulesetProblem]) -> list[Finding]:
    """The loader's problems as findings (all errors), with the codes of the kinds this checker names."""
    found = []
    for problem in problems:
        code = next((c for pattern, c in _PROBLEM_CODES if pattern.search(problem.problem)), Code.INVALID)
        if problem.where in ("ruleset.owner", "ruleset.version"):
            code = Code.MISSING_OWNER if problem.where.endswith("owner") else Code.MISSING_VERSION
        match = _WHERE.match(problem.where)
        kind, ident = (match.group(1), match.group(2)) if match else ("ruleset", "")
        where = problem.where[match.end() :].strip() if match else problem.where
        message = f"{where}: {problem.problem}" if where else problem.problem
        found.append(Finding(code, problem.file, problem.line, kind, ident, message))
    return found


# --------------------------------------------------------------------------------------------------
# A valid ruleset
# --------------------------------------------------------------------------------------------------


def check_ruleset(ruleset: Ruleset, text: str, file: str | None = None) -> list[Finding]:
    """Every finding about one ruleset; `text` is the file it was loaded from (for line numbers)."""
    return _Checker(ruleset, text, file if file is not None else ruleset.source).run()


def check_against(ruleset: Ruleset, text: str, previous: Ruleset | None, file: str | None = None) -> list[Finding]:
    """The version must move whenever the content does, and never go back (`previous` is the last signed-off
    file of the same ruleset, or None when there is none)."""
    meta = ruleset.meta
    if previous is None:
        code, message = Code.NO_PREVIOUS_VERSION, "no previous file of this ruleset given"
    elif previous.content_hash == ruleset.content_hash:
        return []
    elif (order := compare_versions(meta.version, previous.meta.version)) == 0:
        code = Code.VERSION_NOT_BUMPED
        message = (
            f"the content changed (sha256 {previous.content_hash[:12]} -> {ruleset.content_hash[:12]}) but the "
            f"version is still {meta.version}: raise it so records and sign-offs can tell the two apart"
        )
    elif order is not None and order < 0:
        code = Code.VERSION_WENT_BACK
        message = f"version {meta.version} is lower than the previous {previous.meta.version}: versions only go up"
    else:
        return []
    where = file if file is not None else ruleset.source
    return [Finding(code, where, _line_of_version(text), "ruleset", meta.name, message)]


def _line_of_version(text: str) -> int | None:
    """Read only when there is a finding to place: parsing a large file for its lines takes longer than a check."""
    return _located(_document(text), ["ruleset", "version"])


def compare_versions(new: str, old: str) -> int | None:
    """-1, 0 or 1 comparing dotted versions part by part as numbers (1.10.0 > 1.9.0); None when they differ and
    either has a part that is not a number."""
    if new == old:
        return 0
    new_parts, old_parts = new.split("."), old.split(".")
    if not all(p.isdigit() for p in (*new_parts, *old_parts)):
        return None
    width = max(len(new_parts), len(old_parts))
    first = [int(p) for p in new_parts] + [0] * (width - len(new_parts))
    second = [int(p) for p in old_parts] + [0] * (width - len(old_parts))
    return (first > second) - (first < second)


def _document(text: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except YAMLError:
        return None  # the ruleset loaded from this text, so this only happens when given another text


def shown(condition: Condition) -> str:
    """A condition as a reviewer writes it: `age < 18`, `stage in [lost, rescue]`, `vulnerable is missing`."""
    symbols = {Op.EQ: "=", Op.NE: "!=", Op.LT: "<", Op.LTE: "<=", Op.GT: ">", Op.GTE: ">="}
    if condition.op is Op.EXISTS:
        return f"`{condition.field} exists`"
    if condition.op is Op.MISSING:
        return f"`{condition.field} is missing`"
    if condition.op in (Op.IN, Op.NOT_IN):
        word = "in" if condition.op is Op.IN else "not in"
        return f"`{condition.field} {word} [{', '.join(_constant(v) for v in condition.values)}]`"
    return f"`{condition.field} {symbols[condition.op]} {_constant(condition.value)}`"


def _constant(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Checker:
    def __init__(self, ruleset: Ruleset, text: str, file: str) -> None:
        self.ruleset = ruleset
        self.file = file
        self.text = text
        self.fields: Mapping[str, FieldSpec] = ruleset.fact_fields()
        self.findings: list[Finding] = []
        self.contradictory: set[int] = set()

    @functools.cached_property
    def document(self) -> Any:
        """Parsed only when there is something to locate: ruamel takes longer than the whole analysis."""
        return _document(self.text)

    def line(self, path: Sequence[str | int]) -> int | None:
        return _located(self.document, path) if self.document is not None else None

    def add(self, code: Code, path: Sequence[str | int], kind: str, ident: str, message: str) -> None:
        self.findings.append(Finding(code, self.file, self.line(path), kind, ident, message))

    def run(self) -> list[Finding]:
        self._metadata()
        for index, rule in enumerate(self.ruleset.rules):
            self._when(rule.when, ["rules", index, "when"], "rule", rule.id, "the rule never fires", index)
        for index, suppression in enumerate(self.ruleset.policies.suppressions):
            path: list[str | int] = ["policies", "suppressions", index, "when"]
            self._when(suppression.when, path, "policy", suppression.id, "the suppression never applies", None)
        for index, rule in enumerate(self.ruleset.rules):
            if index not in self.contradictory:
                self._offered(index, rule)
        self._overlaps()
        self._actions()
        self._purposes()
        self._consent()
        self._suppressions_reach()
        self._scoped()
        self._mandatory_under_suppressions()
        self._measurement()
        return sorted(self.findings, key=lambda f: (f.line or 0, f.code))

    def _metadata(self) -> None:
        meta = self.ruleset.meta
        if not meta.owner.strip():
            self.add(Code.MISSING_OWNER, ["ruleset", "owner"], "ruleset", meta.name, "no owner: name who signs it off")
        if not meta.version.strip():
            self.add(Code.MISSING_VERSION, ["ruleset", "version"], "ruleset", meta.name, "no version")

    def _when(
        self,
        when: When,
        path: list[str | int],
        kind: str,
        ident: str,
        consequence: str,
        rule: int | None,
        fields: Mapping[str, FieldSpec] | None = None,
        lets: str = "",
    ) -> None:
        """`fields` are what the conditions read: the rules' facts unless given (a conversion reads its event's
        attributes); `lets` what a live `any` condition would let happen, "this <kind> apply" unless given."""
        if fields is None:
            fields = self.fields
        if not satisfiable(when.all, fields):
            positions = conflict(when.all, fields)
            conflicting = [when.all[i] for i in positions]
            position = positions[-1]
            words = (
                f"{shown(conflicting[0])} can never hold"
                if len(conflicting) == 1
                else f"{_listed([shown(c) for c in conflicting])} can never hold together"
            )
            self.add(Code.CONTRADICTION, [*path, "all", position], kind, ident, f"{words}: {consequence}")
            if rule is not None:
                self.contradictory.add(rule)
            return
        if not when.any:
            return
        dead = [i for i, option in enumerate(when.any) if not satisfiable((*when.all, option), fields)]
        if len(dead) == len(when.any):
            self.add(
                Code.CONTRADICTION,
                [*path, "any"],
                kind,
                ident,
                f"none of the `any` conditions can hold together with the `all` conditions: {consequence}",
            )
            if rule is not None:
                self.contradictory.add(rule)
            return
        for position in dead:
            option = when.any[position]
            self.add(
                Code.ANY_NEVER_HOLDS,
                [*path, "any", position],
                kind,
                ident,
                f"{shown(option)} can never hold together with the `all` conditions, so it never lets "
                f"{lets or f'this {kind} apply'}: remove it or fix it",
            )

    def _always(self, rule: Rule, *alternatives: Condition) -> bool:
        """Whether one of the alternatives holds whenever the rule fires."""
        return implies(rule.when, When(any=alternatives), self.fields)

    def _policy_block(self, rule: Rule, action: Action, channel: Channel) -> str | None:
        """Why contact policy stops this rule's action on this channel whenever the rule fires, or None."""
        policies = self.ruleset.policies
        every_direction = [d for d in Direction if direction_fits(channel, d)]
        # Blocked only when every direction the channel can take has a consent entry that always fails: one
        # entry for both, or one per direction (the same channel and purpose split by direction).
        failing: list[str] = []
        for direction in every_direction:
            field_name = next(
                (
                    c.field
                    for c in policies.consent
                    if c.applies(channel, action.purpose, direction)
                    and self._always(rule, Condition(c.field, Op.MISSING), Condition(c.field, Op.NE, (True,)))
                ),
                None,
            )
            if field_name is None:
                break
            failing.append(field_name)
        else:
            fields = " and ".join(dict.fromkeys(failing))
            return f"consent ({fields} {'is' if len(set(failing)) == 1 else 'are'} never true when the rule fires)"
        dnc = policies.do_not_call_field
        if (
            channel is Channel.OUTBOUND_DIALER
            and dnc is not None
            and self._always(rule, Condition(dnc, Op.MISSING), Condition(dnc, Op.NE, (False,)))
        ):
            return f"do-not-call ({dnc} is never false when the rule fires)"
        for suppression in policies.suppressions:
            if (
                channel in suppression.channels
                and suppression.directions.issuperset(every_direction)
                and not action.mandatory
                and action.category not in suppression.except_categories
                and action.purpose not in suppression.except_purposes
                and implies(rule.when, suppression.when, self.fields)
            ):
                return f"suppression {suppression.id!r} (its conditions hold whenever the rule's do)"
        for cap in policies.frequency_caps:
            applies = all(_cap_applies(cap, action, channel, d) for d in every_direction)
            if cap.max == 0 and applies and (cap.action == action.id or not action.mandatory):
                return f"frequency cap {cap.id!r} (max 0)"
        return None

    def _trigger_block(self, rule: Rule, action: Action) -> str | None:
        trigger = action.trigger
        if trigger is None:
            return None
        age = f"events.{trigger.event}.age_hours"
        hours = trigger.lifetime.total_seconds() / 3600
        if self._always(rule, Condition(age, Op.MISSING)):
            return f"action {action.id!r} needs a live {trigger.event} event, and the rule only fires without one"
        if self._always(rule, Condition(age, Op.MISSING), Condition(age, Op.GT, (hours,))):
            return (
                f"action {action.id!r} expires {_constant(hours)}h after its {trigger.event} event, and the rule "
                "only fires later than that"
            )
        return None

    def _offered(self, index: int, rule: Rule) -> None:
        action = self.ruleset.actions[rule.action]
        path: list[str | int] = ["rules", index, "action"]
        if not action.scripts:
            self.add(Code.NEVER_OFFERED, path, "rule", rule.id, f"action {action.id!r} has no script for any channel")
            return
        trigger = self._trigger_block(rule, action)
        if trigger is not None:
            self.add(Code.NEVER_OFFERED, path, "rule", rule.id, f"can never produce an offer: {trigger}")
            return
        blocks = {channel: self._policy_block(rule, action, channel) for channel in Channel}
        if any(blocks[c] is None for c in action.scripts):
            return
        scripted = [f"on {c.value} by {blocks[c]}" for c in Channel if c in action.scripts]
        what = f"mandatory notice {action.id!r}" if action.mandatory else f"action {action.id!r}"
        open_channels = [c.value for c in Channel if blocks[c] is None]
        if open_channels:
            self.add(
                Code.NO_SCRIPT_FOR_ALLOWED_CHANNEL,
                path,
                "rule",
                rule.id,
                f"can never produce an offer: {what} is always stopped {_listed(scripted)}, and has "
                f"no script for {_listed(open_channels)}, where the policies would allow it",
            )
            return
        self.add(
            Code.SUPPRESSED_ALWAYS,
            path,
            "rule",
            rule.id,
            f"can never produce an offer: {what} is always stopped {_listed(scripted)}",
        )

    def _overlaps(self) -> None:
        """A rule whose action an earlier-ranked rule with the same action always wins: arbitration keeps the first
        candidate per action in (priority descending, file order), so the later one's reason is never shown."""
        rules = self.ruleset.rules
        ranked = sorted(
            (i for i in range(len(rules)) if i not in self.contradictory),
            key=lambda i: (-rules[i].priority, i),
        )
        for position, later in enumerate(ranked):
            rule = rules[later]
            for earlier in ranked[:position]:
                winner = rules[earlier]
                if winner.action != rule.action or not implies(rule.when, winner.when, self.fields):
                    continue
                ranked_by = (
                    "a higher priority" if winner.priority > rule.priority else "the same priority, earlier in the file"
                )
                if equivalent(rule.when, winner.when, self.fields):
                    code = Code.DUPLICATE_RULE
                    what = f"has the same action and the same conditions as rule {winner.id!r}"
                else:
                    code = Code.SHADOWED_RULE
                    what = f"only fires when rule {winner.id!r} does, which has the same action"
                self.add(
                    code,
                    ["rules", later],
                    "rule",
                    rule.id,
                    f"{what} and ranks first ({ranked_by}): it can never change an answer",
                )
                break

    def _actions(self) -> None:
        used = {rule.action for rule in self.ruleset.rules}
        allowed = ", ".join(sorted(SCRIPT_FIELDS))
        for index, action in enumerate(self.ruleset.actions.values()):  # file order: the loader keeps it
            path: list[str | int] = ["actions", index]
            if action.id not in used:
                self.add(Code.UNUSED_ACTION, path, "action", action.id, "no rule offers this action")
            for channel, text in action.scripts.items():
                try:
                    names = placeholders(text)
                except ValueError as exc:
                    self.add(Code.UNKNOWN_PLACEHOLDER, [*path, "scripts", channel.value], "action", action.id, str(exc))
                    continue
                for name in names:
                    if name not in SCRIPT_FIELDS:
                        self.add(
                            Code.UNKNOWN_PLACEHOLDER,
                            [*path, "scripts", channel.value],
                            "action",
                            action.id,
                            f"placeholder {{{name}}} is not allowed in scripts (allowed: {allowed})",
                        )

    # --- the contact policy model: purposes, consent per purpose and direction, caps, constraints, mandatory

    def _purposes(self) -> None:
        served = {action.purpose for action in self.ruleset.actions.values()}
        for index, purpose in enumerate(self.ruleset.purposes.values()):
            if purpose.id not in served:
                categories = _listed([f"`{c}`" for c in purpose.categories])
                self.add(
                    Code.UNUSED_PURPOSE,
                    ["purposes", index],
                    "purpose",
                    purpose.id,
                    f"no action has its categories ({categories}): remove it, or the consent and policies naming it "
                    "guard nothing",
                )

    def _consent_path(self, index: int) -> list[str | int]:
        """The list form is located by position, the short `{channel: field}` form by its channel key."""
        document = self.document
        section = document.get("policies", {}).get("consent") if isinstance(document, Mapping) else None
        if isinstance(section, Mapping):
            return ["policies", "consent", self.ruleset.policies.consent[index].channel.value]
        return ["policies", "consent", index]

    def _suppressions_reach(self) -> None:
        """A suppression for inbound contacts on the outbound dialer alone never applies: the dialer only calls out."""
        for index, suppression in enumerate(self.ruleset.policies.suppressions):
            if not any(direction_fits(c, d) for c in suppression.channels for d in suppression.directions):
                self.add(
                    Code.POLICY_NEVER_APPLIES,
                    ["policies", "suppressions", index],
                    "policy",
                    suppression.id,
                    "it is for inbound contacts on the outbound dialer only, which only calls out, so it never "
                    "applies: fix its channels or directions",
                )

    def _consent(self) -> None:
        for index, consent in enumerate(self.ruleset.policies.consent):
            directions = [d for d in Direction if d in consent.directions and direction_fits(consent.channel, d)]
            if not directions:
                why = f"{consent.channel.value} only calls out, and this consent is for inbound contacts only"
            elif not any(
                consent.channel in a.scripts and (consent.purposes is None or a.purpose in consent.purposes)
                for a in self.ruleset.actions.values()
            ):
                purposes = ""
                if consent.purposes is not None:
                    plural = "s" if len(consent.purposes) > 1 else ""
                    purposes = f" for the {_listed(sorted(consent.purposes))} purpose{plural}"
                why = f"no action{purposes} has a script for {consent.channel.value}"
            else:
                continue
            self.add(
                Code.POLICY_NEVER_APPLIES,
                self._consent_path(index),
                "policy",
                consent.id,
                f"{why}, so {consent.field} is never asked for: remove the entry or fix its scope",
            )

    def _counted(self, scoped: FrequencyCap | Constraint) -> list[Action]:
        """The actions a cap or constraint can hold back: in its scope, offered on its channel, and not a mandatory
        notice unless it names that very notice (its repeat limit)."""
        return [
            a
            for a in self.ruleset.actions.values()
            if any(
                c in a.scripts and _binds(scoped, a, c, d) for c in Channel for d in Direction if direction_fits(c, d)
            )
        ]

    def _scoped(self) -> None:
        policies = self.ruleset.policies
        items: list[tuple[str, int, FrequencyCap | Constraint]] = [
            *(("frequency_caps", i, cap) for i, cap in enumerate(policies.frequency_caps)),
            *(("constraints", i, constraint) for i, constraint in enumerate(policies.constraints)),
        ]
        for section, index, scoped in items:
            kind = "frequency cap" if section == "frequency_caps" else "constraint"
            path: list[str | int] = ["policies", section, index]
            if scoped.channel is Channel.OUTBOUND_DIALER and scoped.direction is Direction.INBOUND:
                self.add(
                    Code.POLICY_NEVER_APPLIES,
                    [*path, "direction"],
                    "policy",
                    scoped.id,
                    f"the outbound dialer only calls out, so this inbound-only {kind} never holds anything back",
                )
                continue
            if not self._counted(scoped):
                scope = [a for a in self.ruleset.actions.values() if _matches(scoped, a)]
                if not scope:
                    named = [f"{k} {v!r}" for k, v in (("category", scoped.category), ("purpose", scoped.purpose)) if v]
                    why = f"no action is in its scope ({_listed(named)})" if named else "no action is in its scope"
                elif any(_in_scope_anywhere(scoped, a) for a in scope):
                    why = "every action in its scope is a mandatory notice, which it never holds back"
                else:
                    why = f"no action in its scope has a script for {scoped.channel}"
                self.add(Code.POLICY_NEVER_APPLIES, path, "policy", scoped.id, f"{why}: remove it or fix its scope")
                continue
            if isinstance(scoped, Constraint):
                self._recorded(scoped, path)
        self._redundant("frequency_caps", policies.frequency_caps)
        self._redundant("constraints", policies.constraints)

    def _recorded(self, constraint: Constraint, path: list[str | int]) -> None:
        """A contact the customer started is never unanswered: a pause counting only that never starts."""
        inbound_only = constraint.direction is Direction.INBOUND
        if inbound_only and constraint.outcomes <= _OUTBOUND_ONLY_OUTCOMES:
            self.add(
                Code.OUTCOME_NEVER_RECORDED,
                [*path, "outcomes"],
                "policy",
                constraint.id,
                f"it counts only {_listed(sorted(constraint.outcomes))}, which a contact the customer started never "
                "ends with, so the pause never starts: count other outcomes or make it outbound",
            )

    def _redundant(self, section: str, items: Sequence[FrequencyCap | Constraint]) -> None:
        """One of two with the same scope and window that never holds back anything the other would not: the
        other counts at least as much (same or more outcomes) and stops at the same count or sooner."""
        for later, item in enumerate(items):
            for earlier, other in enumerate(items):
                if earlier == later or _scope(item) != _scope(other) or item.within != other.within:
                    continue
                if isinstance(item, FrequencyCap) and isinstance(other, FrequencyCap):
                    tighter = other.max < item.max or (other.max == item.max and earlier < later)
                    limit = f"max {other.max}" if other.max != item.max else "the same max"
                elif isinstance(item, Constraint) and isinstance(other, Constraint):
                    more = other.outcomes >= item.outcomes
                    tighter = more and (
                        other.after < item.after
                        or (other.after == item.after and (other.outcomes > item.outcomes or earlier < later))
                    )
                    limit = f"after {other.after}" if other.after != item.after else "the same count"
                else:
                    continue
                if not tighter:
                    continue
                kind = "frequency cap" if section == "frequency_caps" else "constraint"
                self.add(
                    Code.REDUNDANT_POLICY,
                    ["policies", section, later],
                    "policy",
                    item.id,
                    f"{kind} {other.id!r} has the same scope and window and stops at {limit}, so this one never holds "
                    "back anything it would not: remove one, or give them different scopes or windows",
                )
                break

    def _mandatory_under_suppressions(self) -> None:
        """A mandatory notice skips suppressions. Listing its category or purpose under the suppression's
        exceptions says so in the file; without that, a reader of the suppression alone would think it stops the
        notice too."""
        rules = self.ruleset.rules
        for index, suppression in enumerate(self.ruleset.policies.suppressions):
            overridden = []
            for action in self.ruleset.actions.values():
                if (
                    not action.mandatory
                    or action.category in suppression.except_categories
                    or action.purpose in suppression.except_purposes
                    or not any(
                        c in suppression.channels and any(direction_fits(c, d) for d in suppression.directions)
                        for c in action.scripts
                    )
                ):
                    continue
                if any(
                    rule.action == action.id
                    and position not in self.contradictory
                    and _together(rule.when, suppression.when, self.fields)
                    for position, rule in enumerate(rules)
                ):
                    overridden.append(action)
            if not overridden:
                continue
            names = _listed([repr(a.id) for a in overridden])
            categories = _listed(sorted({f"`{a.category}`" for a in overridden}))
            self.add(
                Code.MANDATORY_NOT_EXCEPTED,
                ["policies", "suppressions", index],
                "policy",
                suppression.id,
                f"mandatory {'notice' if len(overridden) == 1 else 'notices'} {names} can be offered while it holds "
                f"(mandatory notices skip suppressions), but it does not except {categories}: add "
                f"{'it' if len(overridden) == 1 else 'them'} to except_categories (or the purpose to except_purposes) "
                "so the file says what happens",
            )

    # --- measurement: conversions, values and holdouts

    def _measurement(self) -> None:
        holdouts = self.ruleset.holdouts
        for index, action in enumerate(self.ruleset.actions.values()):
            path: list[str | int] = ["actions", index]
            conversion = action.conversion
            if conversion is not None:
                attributes = {a.name: a for a in self.ruleset.events[conversion.event].attributes}
                self._when(
                    conversion.when,
                    [*path, "conversion", "when"],
                    "action",
                    action.id,
                    "no event ever counts as a conversion of this action",
                    None,
                    attributes,
                    "an event count as a conversion",
                )
            if action.holdout > 0 and conversion is None:
                self.add(
                    Code.HOLDOUT_WITHOUT_CONVERSION,
                    self._share_path(action, index),
                    "action",
                    action.id,
                    f"{share_text(action.holdout)} of its customers are held out, but it declares no conversion, so "
                    "nothing is measured against them: declare its conversion or remove the share",
                )
            if action.value is not None and conversion is None:
                self.add(
                    Code.VALUE_WITHOUT_CONVERSION,
                    [*path, "value"],
                    "action",
                    action.id,
                    "it has a value but no conversion, so the value is never counted: declare what counts as "
                    "converted or remove the value",
                )
            if action.holdout > 0 and conversion is not None and conversion.within > holdouts.period:
                self.add(
                    Code.CONVERSION_OUTLASTS_PERIOD,
                    [*path, "conversion", "within"],
                    "action",
                    action.id,
                    f"its conversion window ({duration_text(conversion.within)}) is longer than the holdout period "
                    f"({duration_text(holdouts.period)}): a customer held out is drawn again before their window "
                    "closes and may be shown the action, so the groups mix: shorten the window or lengthen the period",
                )

    def _share_path(self, action: Action, index: int) -> list[str | int]:
        """The `holdouts.shares` entry that gives the action its share (its own, else its category's, else its
        purpose's, as the loader resolves them), or the action when the file cannot be read."""
        document = self.document
        section = document.get("holdouts") if isinstance(document, Mapping) else None
        shares = section.get("shares") if isinstance(section, Mapping) else None
        if isinstance(shares, Sequence):
            for key, value in (("action", action.id), ("category", action.category), ("purpose", action.purpose)):
                for position, item in enumerate(shares):
                    if isinstance(item, Mapping) and item.get(key) == value:
                        return ["holdouts", "shares", position]
        return ["actions", index]


_OUTBOUND_ONLY_OUTCOMES = frozenset({OutcomeKind.NO_ANSWER.value})


def _scope(scoped: FrequencyCap | Constraint) -> tuple[object, ...]:
    return (scoped.action, scoped.category, scoped.purpose, scoped.channel, scoped.direction)


def _matches(scoped: FrequencyCap | Constraint, action: Action) -> bool:
    """In scope by action, category or purpose, wherever it is offered."""
    if scoped.action is not None:
        return action.id == scoped.action
    if scoped.category is not None:
        return action.category == scoped.category
    return scoped.purpose is None or action.purpose == scoped.purpose


def _in_scope_anywhere(scoped: FrequencyCap | Constraint, action: Action) -> bool:
    return any(c in action.scripts and _cap_applies(scoped, action, c, d) for c in Channel for d in Direction)


def _together(first: When, second: When, fields: Mapping[str, FieldSpec]) -> bool:
    """Whether some facts make both hold at once."""
    return any(satisfiable((*a, *b), fields) for a in branches(first) for b in branches(second))
