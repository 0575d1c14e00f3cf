"""Reads ruleset YAML into the typed model, reporting every problem at once with file, line and rule.

Compliance reviewers edit these files by hand; a Python traceback tells them nothing, so every failure
becomes a `RulesetProblem` naming where it is and what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from nba_service.domain import compiler
from nba_service.domain.model import (
    ORDERING_OPS,
    PRESENCE_OPS,
    SET_OPS,
    Action,
    ActionType,
    Channel,
    Condition,
    Consent,
    Constraint,
    Conversion,
    Direction,
    EventSpec,
    FieldSpec,
    FieldType,
    FrequencyCap,
    Holdouts,
    Op,
    Policies,
    Purpose,
    QuietHours,
    Rule,
    Ruleset,
    RulesetMeta,
    Scalar,
    Suppression,
    Trigger,
    When,
)
from nba_service.domain.scripts import SCRIPT_FIELDS, placeholders
from nba_service.errors import RulesetInvalid, RulesetProblem

MAX_EXACT_INTEGER = 2**53
MAX_STRING_CONSTANT = 1000
_DURATION = re.compile(r"(\d+)([mhd])")  # fullmatch: `$` would accept "3d\n"
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
# Scenario tests sit beside their ruleset (`<name>.tests.yaml` next to `<name>.yaml`) and are never rulesets.
TESTS_SUFFIX = ".tests.yaml"


@cache
def ruleset_schema() -> dict[str, Any]:
    text = resources.files("nba_service.domain").joinpath("ruleset.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_ruleset_file(path: Path) -> Ruleset:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesetInvalid([RulesetProblem(str(path), None, "", f"cannot read file: {exc.strerror}")]) from exc
    return load_ruleset_text(data, str(path))


def ruleset_files(directory: Path) -> list[Path]:
    """The rulesets of a directory: every `*.yaml` but the scenario tests kept beside them."""
    return sorted(p for p in directory.glob("*.yaml") if not p.name.endswith(TESTS_SUFFIX))


def load_ruleset_dir(path: Path) -> list[Ruleset]:
    """Loads every `*.yaml` under a directory (or the one file given), failing with all problems of all files."""
    files = ruleset_files(path) if path.is_dir() else [path]
    if not files:
        raise RulesetInvalid([RulesetProblem(str(path), None, "", "no ruleset files (*.yaml) found")])
    rulesets: list[Ruleset] = []
    problems: list[RulesetProblem] = []
    for file in files:
        try:
            rulesets.append(load_ruleset_file(file))
        except RulesetInvalid as exc:
            problems.extend(exc.ruleset_problems)
    names: dict[str, str] = {}
    for ruleset in rulesets:
        if ruleset.meta.name in names:
            problems.append(
                RulesetProblem(
                    ruleset.source,
                    None,
                    "ruleset.name",
                    f"name {ruleset.meta.name!r} is also used by {names[ruleset.meta.name]}",
                )
            )
        names[ruleset.meta.name] = ruleset.source
    if problems:
        raise RulesetInvalid(problems)
    return rulesets


def load_ruleset_text(data: bytes | str, source: str = "<ruleset>") -> Ruleset:
    return _load_ruleset_bytes(data.encode("utf-8") if isinstance(data, str) else data, source)


@lru_cache(maxsize=8)
def _load_ruleset_bytes(raw: bytes, source: str) -> Ruleset:
    """Remembered by text and source: a supervisor reads the configured files three times as it starts (the first
    version, the store, the deploy state), and ruamel takes a quarter of a second for the bundled ruleset. A
    Ruleset is never changed once built; a file that fails is read again each time (errors are not kept)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesetInvalid([RulesetProblem(source, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    content_hash = hashlib.sha256(raw).hexdigest()
    fast = fast_document(text)
    if isinstance(fast, Mapping):
        with contextlib.suppress(RulesetInvalid):  # located below, from the round-trip document
            return dataclasses.replace(_Builder(source, fast, content_hash).build(), text=text)
    return load_round_trip(text, source, content_hash)


def load_round_trip(text: str, source: str, content_hash: str) -> Ruleset:
    """The ruleset from the round-trip parse, which knows every node's line: how each problem is located."""
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise RulesetInvalid([RulesetProblem(source, line, "", f"YAML syntax: {exc.problem or exc}")]) from exc
    except YAMLError as exc:
        raise RulesetInvalid([RulesetProblem(source, None, "", f"YAML syntax: {exc}")]) from exc
    if not isinstance(document, Mapping):
        raise RulesetInvalid(
            [RulesetProblem(source, None, "", "the file must hold a mapping with ruleset, fields, actions and rules")]
        )
    return dataclasses.replace(_Builder(source, document, content_hash).build(), text=text)


def fast_document(text: str) -> Any | None:
    """The document through libyaml (ruamel's C parser, with the same YAML 1.2 types), or None when that fails.

    The round-trip parser keeps every node's line for the problems a reviewer reads, but costs 5-8x as much: 0.34
    s for the bundled ruleset and 0.43 s for its scenarios, on every process start, every worker of a roll and
    every `nba rulesets check`. Callers build from this document first and parse again round-trip only when there
    is a problem to locate, so problems read exactly as before.
    """
    if "<<" in text:
        return None  # merge keys: the two constructors order a merged mapping's keys differently
    try:
        return YAML(typ="safe", pure=False).load(text)
    except Exception:  # any failure here is the round-trip parser's to report
        return None


def _located(document: Any, path: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest node along `path` that ruamel knows a position for."""
    line: int | None = None
    node = document
    for key in path:
        lc = getattr(node, "lc", None)
        if lc is not None:
            with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
                line = (lc.item(key) if isinstance(key, int) else lc.key(key))[0] + 1
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    if line is None and getattr(document, "lc", None) is not None:
        line = document.lc.line + 1
    return line


class _Builder:
    def __init__(self, source: str, document: Any, content_hash: str) -> None:
        self.source = source
        self.document = document
        self.content_hash = content_hash
        self.problems: list[RulesetProblem] = []

    def problem(self, path: Sequence[str | int], problem: str, where: str | None = None) -> None:
        self.problems.append(
            RulesetProblem(
                self.source, _located(self.document, path), where if where is not None else self._where(path), problem
            )
        )

    def _where(self, path: Sequence[str | int]) -> str:
        """Names the rule, action or policy a path points into, by id where there is one."""
        if not path:
            return ""
        head = path[0]
        if len(path) >= 2 and isinstance(path[1], int) and head in ("rules", "actions", "fields", "events"):
            try:
                item = self.document[head][path[1]]
                ident = item.get("id") or item.get("name") or item.get("type")
            except (KeyError, IndexError, TypeError, AttributeError):
                ident = None
            label = {"rules": "rule", "actions": "action", "fields": "field", "events": "event"}[str(head)]
            name = f"{label} {ident!r}" if ident else f"{label} #{path[1] + 1}"
            rest = ".".join(str(p) for p in path[2:])
            return f"{name} {rest}".strip()
        return ".".join(str(p) for p in path)

    def build(self) -> Ruleset:
        validator = _SchemaValidator(ruleset_schema())
        for error in sorted(validator.iter_errors(self.document), key=lambda e: [str(p) for p in e.absolute_path]):
            self.problem(list(error.absolute_path), _schema_message(error))
        if self.problems:
            raise RulesetInvalid(self.problems)
        ruleset = self._semantic()
        if self.problems:
            raise RulesetInvalid(self.problems)
        assert ruleset is not None
        return ruleset

    def _semantic(self) -> Ruleset | None:
        doc = self.document
        meta_doc = doc["ruleset"]
        meta = RulesetMeta(
            name=str(meta_doc["name"]),
            version=str(meta_doc["version"]),
            owner=str(meta_doc["owner"]),
            description=str(meta_doc["description"]),
            valid_for=_duration(meta_doc.get("valid_for", "1h")),
        )
        fields = self._fields(doc["fields"])
        journey_field = str(meta_doc.get("journey_field", ""))
        if journey_field:
            spec = fields.get(journey_field)
            if spec is None:
                self.problem(["ruleset", "journey_field"], f"field {journey_field!r} is not declared under fields")
            elif spec.type != "string":
                self.problem(["ruleset", "journey_field"], f"journey field {journey_field!r} must be a string field")
            meta = dataclasses.replace(meta, journey_field=journey_field)
        events = self._events(doc.get("events", []))
        partial = Ruleset(meta, fields, events, {}, (), Policies(), self.content_hash, self.source)
        fact_fields = partial.fact_fields()
        purposes = self._purposes(doc.get("purposes", []))
        actions = self._actions(doc["actions"], fields, events, purposes)
        holdouts = Holdouts()
        if "holdouts" in doc:
            holdouts, actions = self._holdouts(doc["holdouts"], actions, meta.name)
        rules = self._rules(doc["rules"], fact_fields, actions)
        policies = self._policies(doc.get("policies", {}), fields, fact_fields, actions, purposes)
        return Ruleset(
            meta,
            fields,
            events,
            actions,
            rules,
            policies,
            self.content_hash,
            self.source,
            purposes=purposes,
            holdouts=holdouts,
        )

    def _holdouts(self, doc: Any, actions: dict[str, Action], name: str) -> tuple[Holdouts, dict[str, Action]]:
        """Each action's share: its own entry, else its category's, else its purpose's. Service, compliance and
        mandatory actions are never held out: naming one is an error, and a wider entry passes over them."""
        period = _duration(doc.get("period", "90d"))
        if period <= timedelta(0):
            self.problem(["holdouts", "period"], "the period must be longer than zero")
        categories = {a.category for a in actions.values()}
        purposes = {a.purpose for a in actions.values() if a.purpose}
        by_scope: dict[tuple[str, str], float] = {}
        for index, item in enumerate(doc["shares"]):
            path: list[str | int] = ["holdouts", "shares", index]
            given = [key for key in ("action", "category", "purpose") if key in item]
            if len(given) != 1:
                self.problem(path, "give exactly one of action, category or purpose")
                continue
            scope, target = given[0], str(item[given[0]])
            known = {"action": set(actions), "category": categories, "purpose": purposes}[scope]
            if target not in known:
                self.problem(
                    [*path, scope],
                    f"no action has {scope} {target!r}"
                    if scope != "action"
                    else f"action {target!r} is not declared under actions",
                )
                continue
            if (scope, target) in by_scope:
                self.problem([*path, scope], f"{scope} {target!r} already has a share")
            if scope in ("category", "purpose") and target in _NEVER_HELD_OUT:
                self.problem([*path, scope], f"{target} actions are never held out")
            if scope == "action" and _never_held_out(actions[target]):
                self.problem([*path, "action"], f"action {target!r} is {_why_never(actions[target])}: never held out")
            by_scope[(scope, target)] = float(item["share"])
        resolved: dict[str, Action] = {}
        for action_id, action in actions.items():
            share = 0.0
            if not _never_held_out(action):
                for key in (("action", action_id), ("category", action.category), ("purpose", action.purpose)):
                    if key in by_scope:
                        share = by_scope[key]
                        break
            resolved[action_id] = dataclasses.replace(action, holdout=share)
        return Holdouts(period, str(doc.get("seed", name))), resolved

    def _purposes(self, items: list[Any]) -> dict[str, Purpose]:
        self._unique(items, "id", "purposes")
        purposes: dict[str, Purpose] = {}
        owner: dict[str, str] = {}
        for index, item in enumerate(items):
            ident = str(item["id"])
            for position, category in enumerate(item["categories"]):
                if category in owner and owner[category] != ident:
                    self.problem(
                        ["purposes", index, "categories", position],
                        f"category {category!r} already belongs to purpose {owner[category]!r}",
                    )
                owner.setdefault(str(category), ident)
            purposes.setdefault(
                ident, Purpose(ident, str(item["description"]), tuple(str(c) for c in item["categories"]))
            )
        return purposes

    def _unique(self, items: Iterable[Any], key: str, section: str) -> None:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            ident = str(item[key])
            if ident in seen:
                self.problem([section, index, key], f"duplicate {key} {ident!r} (first at item #{seen[ident] + 1})")
            seen.setdefault(ident, index)

    def _fields(self, items: list[Any]) -> dict[str, FieldSpec]:
        self._unique(items, "name", "fields")
        fields: dict[str, FieldSpec] = {}
        for index, item in enumerate(items):
            values = tuple(str(v) for v in item["values"]) if "values" in item else None
            if values is not None and item["type"] != "string":
                self.problem(["fields", index, "values"], "a list of allowed values only applies to string fields")
            fields.setdefault(
                str(item["name"]),
                FieldSpec(str(item["name"]), cast(FieldType, item["type"]), str(item.get("description", "")), values),
            )
        return fields

    def _events(self, items: list[Any]) -> dict[str, EventSpec]:
        self._unique(items, "type", "events")
        events: dict[str, EventSpec] = {}
        for index, item in enumerate(items):
            attributes = item.get("attributes", [])
            seen: set[str] = set()
            specs: list[FieldSpec] = []
            for position, attribute in enumerate(attributes):
                name = str(attribute["name"])
                if name == "age_hours":
                    self.problem(
                        ["events", index, "attributes", position, "name"],
                        "age_hours is derived from the event time and cannot be an attribute",
                    )
                if name in seen:
                    self.problem(["events", index, "attributes", position, "name"], f"duplicate attribute {name!r}")
                seen.add(name)
                specs.append(FieldSpec(name, cast(FieldType, attribute["type"]), str(attribute.get("description", ""))))
            events.setdefault(
                str(item["type"]), EventSpec(str(item["type"]), str(item.get("description", "")), tuple(specs))
            )
        return events

    def _actions(
        self,
        items: list[Any],
        fields: Mapping[str, FieldSpec],
        events: Mapping[str, EventSpec],
        purposes: Mapping[str, Purpose],
    ) -> dict[str, Action]:
        self._unique(items, "id", "actions")
        actions: dict[str, Action] = {}
        purpose_of = {category: p.id for p in purposes.values() for category in p.categories}
        for index, item in enumerate(items):
            purpose = purpose_of.get(str(item["category"]), "")
            if purposes and not purpose:
                self.problem(
                    ["actions", index, "category"],
                    f"category {item['category']!r} belongs to no purpose; add it to one under purposes",
                )
            scripts: dict[Channel, str] = {}
            for channel_name, text in item["scripts"].items():
                scripts[Channel(channel_name)] = str(text)
                path: list[str | int] = ["actions", index, "scripts", channel_name]
                try:
                    names = placeholders(str(text))
                except ValueError as exc:
                    self.problem(path, str(exc))
                    continue
                for name in names:
                    if name not in SCRIPT_FIELDS:
                        allowed = ", ".join(sorted(SCRIPT_FIELDS))
                        self.problem(
                            path,
                            f"placeholder {{{name}}} is not allowed in scripts (allowed: {allowed}); "
                            "raw profile and trigger data never reach agents or dialers",
                        )
                    elif name not in fields or fields[name].type != "string":
                        self.problem(path, f"placeholder {{{name}}} needs a declared string field {name!r}")
            conversion = None
            if "conversion" in item:
                conversion = self._conversion(item["conversion"], ["actions", index, "conversion"], events)
            trigger = None
            if "trigger" in item:
                event = str(item["trigger"]["event"])
                if event not in events:
                    self.problem(
                        ["actions", index, "trigger", "event"], f"trigger event {event!r} is not declared under events"
                    )
                trigger = Trigger(event, _duration(item["trigger"]["lifetime"]))
                if trigger.lifetime <= timedelta(0):
                    self.problem(["actions", index, "trigger", "lifetime"], "lifetime must be longer than zero")
            actions.setdefault(
                str(item["id"]),
                Action(
                    str(item["id"]),
                    str(item["category"]),
                    scripts,
                    str(item.get("description", "")),
                    trigger,
                    purpose,
                    ActionType(item.get("type", ActionType.OFFER.value)),
                    conversion,
                    _value(item.get("value")),
                ),
            )
        return actions

    def _conversion(self, doc: Any, path: list[str | int], events: Mapping[str, EventSpec]) -> Conversion | None:
        event = str(doc["event"])
        spec = events.get(event)
        if spec is None:
            self.problem([*path, "event"], f"conversion event {event!r} is not declared under events")
            return None
        within = _duration(doc["within"])
        if within <= timedelta(0):
            self.problem([*path, "within"], "the window must be longer than zero")
        attributes = {a.name: a for a in spec.attributes}
        when = self._when(doc["when"], [*path, "when"], attributes) if "when" in doc else When()
        return Conversion(event, within, when)

    def _rules(
        self, items: list[Any], fact_fields: Mapping[str, FieldSpec], actions: Mapping[str, Action]
    ) -> tuple[Rule, ...]:
        self._unique(items, "id", "rules")
        rules: list[Rule] = []
        for index, item in enumerate(items):
            when = self._when(item["when"], ["rules", index, "when"], fact_fields)
            action = str(item["action"])
            if action not in actions:
                self.problem(["rules", index, "action"], f"action {action!r} is not declared under actions")
            if "{" in str(item["reason"]) or "}" in str(item["reason"]):
                self.problem(["rules", index, "reason"], "reasons are plain text; placeholders are not allowed")
            rule = Rule(
                str(item["id"]), str(item["description"]), when, action, int(item["priority"]), str(item["reason"])
            )
            cost = compiler.rule_cost(rule)
            if cost > compiler.MAX_RULE_COST:
                self.problem(
                    ["rules", index, "when"],
                    f"needs {cost} engine conditions once its 'in' lists and 'any' block are expanded; the engine "
                    f"safely evaluates at most {compiler.MAX_RULE_COST} per rule: split it into several rules",
                )
            rules.append(rule)
        return tuple(rules)

    def _when(self, item: Any, path: list[str | int], fact_fields: Mapping[str, FieldSpec]) -> When:
        parts: dict[str, tuple[Condition, ...]] = {}
        for part in ("all", "any"):
            conditions: list[Condition] = []
            for position, raw in enumerate(item.get(part, [])):
                condition = self._condition(raw, [*path, part, position], fact_fields)
                if condition is not None:
                    conditions.append(condition)
            parts[part] = tuple(conditions)
        return When(parts["all"], parts["any"])

    def _condition(self, raw: Any, path: list[str | int], fact_fields: Mapping[str, FieldSpec]) -> Condition | None:
        name = str(raw["field"])
        op = Op(raw["op"])
        spec = fact_fields.get(name)
        if spec is None:
            self.problem(
                [*path, "field"], f"field {name!r} is not declared (declare it under fields, or its event under events)"
            )
            return None
        if spec.type == "string" and op in ORDERING_OPS:
            self.problem(
                [*path, "op"], f"op {op.value!r} does not apply to string field {name!r} (use eq, ne, in, not_in)"
            )
            return None
        if spec.type == "boolean" and op not in (Op.EQ, Op.NE, *PRESENCE_OPS):
            self.problem(
                [*path, "op"],
                f"op {op.value!r} does not apply to boolean field {name!r} (use eq, ne, exists or missing)",
            )
            return None
        has_value = "value" in raw
        if op in PRESENCE_OPS:
            if has_value:
                self.problem([*path, "value"], f"op {op.value!r} takes no value")
            return Condition(name, op)
        if not has_value:
            self.problem(path, f"op {op.value!r} needs a value")
            return None
        value = raw["value"]
        if op in SET_OPS:
            if not isinstance(value, list):
                self.problem([*path, "value"], f"op {op.value!r} needs a list of values")
                return None
            values = value
        elif isinstance(value, list):
            self.problem([*path, "value"], f"op {op.value!r} compares with one value, not a list (use 'in')")
            return None
        else:
            values = [value]
        constants: list[Scalar] = []
        for position, constant in enumerate(values):
            where = [*path, "value", position] if op in SET_OPS else [*path, "value"]
            checked = self._constant(constant, spec, where)
            if checked is not None:
                constants.append(checked)
        if len(constants) != len(values):
            return None
        if len(set(map(repr, constants))) != len(constants):
            self.problem([*path, "value"], "the list repeats a value")
            return None
        return Condition(name, op, tuple(constants))

    def _constant(self, value: Any, spec: FieldSpec, path: list[str | int]) -> Scalar | None:
        if spec.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem(path, f"{spec.name!r} is a number field; {value!r} is not a number")
                return None
            if isinstance(value, float) and not math.isfinite(value):
                self.problem(path, f"{value!r} is not a finite number")
                return None
            if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
                self.problem(path, f"{value} is beyond +/-2^53 and cannot be compared exactly as a number")
                return None
            return float(value)
        if spec.type == "boolean":
            if not isinstance(value, bool):
                self.problem(path, f"{spec.name!r} is a boolean field; use true or false, not {value!r}")
                return None
            return bool(value)
        if not isinstance(value, str):
            self.problem(path, f"{spec.name!r} is a string field; quote the value {value!r}")
            return None
        if len(value) > MAX_STRING_CONSTANT:
            self.problem(path, f"string constant longer than {MAX_STRING_CONSTANT} characters")
            return None
        if spec.values is not None and value not in spec.values:
            self.problem(
                path, f"{value!r} is not one of the declared values of {spec.name!r}: {', '.join(spec.values)}"
            )
            return None
        return str(value)

    def _policies(
        self,
        doc: Any,
        fields: Mapping[str, FieldSpec],
        fact_fields: Mapping[str, FieldSpec],
        actions: Mapping[str, Action],
        purposes: Mapping[str, Purpose],
    ) -> Policies:
        def boolean_field(name: str, path: list[str | int]) -> None:
            spec = fields.get(name)
            if spec is None:
                self.problem(path, f"field {name!r} is not declared under fields")
            elif spec.type != "boolean":
                self.problem(path, f"field {name!r} must be a boolean field")

        def known_purpose(name: Any, path: list[str | int]) -> str:
            if str(name) not in purposes:
                known = ", ".join(purposes) or "none are declared"
                self.problem(path, f"purpose {name!r} is not declared under purposes ({known})")
            return str(name)

        def directions(item: Any, key: str) -> frozenset[Direction]:
            return frozenset(Direction(d) for d in item.get(key, [d.value for d in Direction]))

        consent: list[Consent] = []
        consent_doc = doc.get("consent", {})
        if isinstance(consent_doc, dict):
            for channel_name, name in consent_doc.items():
                boolean_field(str(name), ["policies", "consent", channel_name])
                consent.append(Consent(str(name), Channel(channel_name)))
        else:
            seen_ids: dict[str, int] = {}
            for index, item in enumerate(consent_doc):
                path0: list[str | int] = ["policies", "consent", index]
                boolean_field(str(item["field"]), [*path0, "field"])
                named = item.get("purposes")
                entry = Consent(
                    str(item["field"]),
                    Channel(item["channel"]),
                    None
                    if named is None
                    else frozenset(known_purpose(p, [*path0, "purposes", i]) for i, p in enumerate(named)),
                    directions(item, "directions"),
                    str(item.get("description", "")),
                )
                if entry.id in seen_ids and consent[seen_ids[entry.id]].directions & entry.directions:
                    self.problem(path0, f"consent for the same channel and purposes as item #{seen_ids[entry.id] + 1}")
                seen_ids.setdefault(entry.id, index)
                consent.append(entry)
        dnc = None
        if "do_not_call" in doc:
            dnc = str(doc["do_not_call"]["field"])
            boolean_field(dnc, ["policies", "do_not_call", "field"])
        categories = {a.category for a in actions.values()}

        def scoped(item: Any, path: list[str | int]) -> tuple[str | None, str | None, str | None, timedelta]:
            """The scope and window every cap and constraint has: (action, category, purpose, within)."""
            action = item.get("action")
            if action is not None and action not in actions:
                self.problem([*path, "action"], f"action {action!r} is not declared under actions")
            category = item.get("category")
            if category is not None and category not in categories:
                self.problem([*path, "category"], f"no action has category {category!r}")
            purpose = item.get("purpose")
            if purpose is not None:
                known_purpose(purpose, [*path, "purpose"])
            if sum(x is not None for x in (action, category, purpose)) > 1:
                self.problem(path, "give one of action, category or purpose, not more")
            within = _duration(item["within"])
            if within <= timedelta(0):
                self.problem([*path, "within"], "the window must be longer than zero")
            return (
                None if action is None else str(action),
                None if category is None else str(category),
                None if purpose is None else str(purpose),
                within,
            )

        caps: list[FrequencyCap] = []
        cap_items = doc.get("frequency_caps", [])
        self._unique(cap_items, "id", "frequency_caps")
        for index, item in enumerate(cap_items):
            path: list[str | int] = ["policies", "frequency_caps", index]
            action, category, purpose, within = scoped(item, path)
            caps.append(
                FrequencyCap(
                    str(item["id"]),
                    int(item["max"]),
                    within,
                    action,
                    category,
                    Channel(item["channel"]) if "channel" in item else None,
                    str(item.get("description", "")),
                    purpose,
                    Direction(item["direction"]) if "direction" in item else None,
                )
            )
        constraints: list[Constraint] = []
        constraint_items = doc.get("constraints", [])
        self._unique(constraint_items, "id", "constraints")
        taken = {cap.id for cap in caps}
        for index, item in enumerate(constraint_items):
            path = ["policies", "constraints", index]
            if str(item["id"]) in taken:
                self.problem([*path, "id"], f"id {item['id']!r} is already a frequency cap's id")
            action, category, purpose, within = scoped(item, path)
            if action is not None and item.get("per_action"):
                self.problem([*path, "per_action"], "per_action counts each action apart; one action needs no more")
            constraints.append(
                Constraint(
                    str(item["id"]),
                    frozenset(str(o) for o in item["outcomes"]),
                    int(item["after"]),
                    within,
                    action,
                    category,
                    purpose,
                    Channel(item["channel"]) if "channel" in item else None,
                    Direction(item["direction"]) if "direction" in item else None,
                    str(item.get("description", "")),
                    bool(item.get("per_action", False)),
                )
            )
        suppressions: list[Suppression] = []
        items = doc.get("suppressions", [])
        self._unique(items, "id", "suppressions")
        for index, item in enumerate(items):
            path = ["policies", "suppressions", index]
            when = self._when(item["when"], [*path, "when"], fact_fields)
            channels = frozenset(Channel(c) for c in item.get("channels", [c.value for c in Channel]))
            suppressions.append(
                Suppression(
                    str(item["id"]),
                    str(item["description"]),
                    when,
                    channels,
                    frozenset(str(c) for c in item.get("except_categories", [])),
                    directions(item, "directions"),
                    frozenset(
                        known_purpose(p, [*path, "except_purposes", i])
                        for i, p in enumerate(item.get("except_purposes", []))
                    ),
                )
            )
        quiet = None
        if "quiet_hours" in doc:
            q = doc["quiet_hours"]
            path = ["policies", "quiet_hours"]
            tz_field = str(q["timezone_field"])
            spec = fields.get(tz_field)
            if spec is None or spec.type != "string":
                self.problem([*path, "timezone_field"], f"field {tz_field!r} must be a declared string field")
            default_tz = str(q.get("default_timezone", "UTC"))
            try:
                zoneinfo.ZoneInfo(default_tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                self.problem([*path, "default_timezone"], f"unknown time zone {default_tz!r}")
            start, end = _minutes(q["start"]), _minutes(q["end"])
            if start == end:
                self.problem(path, "start and end are equal; remove quiet_hours instead")
            quiet = QuietHours(start, end, tz_field, default_tz)
        return Policies(tuple(consent), dnc, tuple(caps), tuple(suppressions), quiet, tuple(constraints))


_NEVER_HELD_OUT = frozenset({"service", "compliance"})


def _never_held_out(action: Action) -> bool:
    return action.mandatory or action.category in _NEVER_HELD_OUT or action.purpose in _NEVER_HELD_OUT


def _why_never(action: Action) -> str:
    if action.mandatory:
        return "mandatory"
    return action.purpose if action.purpose in _NEVER_HELD_OUT else action.category


def _value(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(str(text))
    if match is None:
        raise ValueError(text)
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _minutes(clock: str) -> int:
    hours, minutes = str(clock).split(":")
    return int(hours) * 60 + int(minutes)


def _ecma_pattern(pattern: str) -> str:
    """The pattern with ECMA-262's meaning of `$`, the schema's dialect: the end of the text. Python's `$`
    also matches before a final newline, so `^[0-9]+$` would accept "1\\n"; Python's `\\Z` is ECMA's `$`."""
    out: list[str] = []
    escaped = in_class = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            out.append(r"\Z")
            continue
        out.append(ch)
    return "".join(out)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not re.search(_ecma_pattern(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_SchemaValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # jsonschema is untyped here
    jsonschema.Draft202012Validator, {"pattern": _pattern}
)


def unknown_keys(error: jsonschema.ValidationError) -> list[tuple[list[str | int], str]]:
    """One problem per key a schema does not allow, naming the keys it does: what a reviewer editing any of our
    YAML files (scenario tests, access policies) needs to fix a misspelt key. Empty for other errors."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, Mapping):
        return []
    allowed = list(cast(Mapping[str, Any], error.schema).get("properties", {}))
    return [
        ([*error.absolute_path, key], f"unknown key {key!r} (check the spelling; allowed here: {', '.join(allowed)})")
        for key in error.instance
        if key not in allowed
    ]


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"{error.message} (check the spelling)"
    if error.validator == "pattern" and isinstance(error.instance, str):
        hints = {
            "^[0-9]{1,6}(m|h|d)$": "a duration like 90m, 48h or 3d",
            "^[a-z][a-z0-9_-]{0,63}$": "an id of lower-case letters, digits, '-' and '_', starting with a letter",
            "^[a-z][a-z0-9_]{0,63}$": "a name of lower-case letters, digits and '_', starting with a letter",
            "^([01][0-9]|2[0-3]):[0-5][0-9]$": "a 24-hour clock time like 20:00",
            "^[0-9]+\\.[0-9]+\\.[0-9]+$": "a version like 1.2.0",
        }
        return (
            f"{error.instance!r} is not {hints.get(str(error.validator_value), 'valid: ' + str(error.validator_value))}"
        )
    return error.message
