"""The simulated world and its known truth, read from a YAML file checked against a schema and the ruleset.

What a simulation proves rests on this file: a report's uplift can only be judged against a truth that is
exactly what the simulator drew from. So every problem is refused before anything runs, each with its file,
line and place, as a ruleset's are: an action the ruleset does not have, one with no conversion to count, a
probability outside 0..1, a conversion whose conditions no event the simulator writes could meet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, cast

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from nba_service.domain.loader import _located, _schema_message, _SchemaValidator, unknown_keys
from nba_service.domain.model import Action, Condition, Conversion, EventSpec, Op, Ruleset
from nba_service.domain.profile import AttributeValue
from nba_service.errors import RulesetProblem, TruthInvalid

DEFAULT_TRUTH: Final = Path(str(resources.files("nba_service.data").joinpath("simulation-truth.yaml")))


@dataclass(frozen=True, slots=True)
class World:
    inbound_calls: float
    dialer_calls: float
    dialer_hours: tuple[int, ...]
    events: float
    no_answer: float
    converted_recorded: float


@dataclass(frozen=True, slots=True)
class Responses:
    accepted: float
    declined: float
    not_now: float


@dataclass(frozen=True, slots=True)
class ActionTruth:
    """`base`: the conversion probability of a customer considered for the action and held out of it; shown it,
    they convert with `base + uplift`. A converter gets an event of `conversion.event` with `attributes`, which
    meet the conversion's conditions."""

    base: float
    uplift: float
    conversion: Conversion
    attributes: Mapping[str, AttributeValue]

    @property
    def shown(self) -> float:
        return self.base + self.uplift


@dataclass(frozen=True, slots=True)
class Truth:
    world: World
    responses: Responses
    actions: Mapping[str, ActionTruth]
    source: str

    def shared_conversion(self, action_id: str) -> tuple[str, ...]:
        """The other actions whose conversion is the same event and conditions: one event counts for each."""
        mine = self.actions[action_id].conversion
        return tuple(
            other
            for other, truth in self.actions.items()
            if other != action_id and (truth.conversion.event, truth.conversion.when) == (mine.event, mine.when)
        )


@cache
def truth_schema() -> dict[str, Any]:
    text = resources.files("nba_service.simulator").joinpath("truth.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_truth_file(path: Path, ruleset: Ruleset) -> Truth:
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TruthInvalid([RulesetProblem(str(path), None, "", f"cannot read file: {reason}")]) from exc
    return load_truth_text(data, ruleset, str(path))


def load_truth_text(data: bytes | str, ruleset: Ruleset, source: str = "<truth>") -> Truth:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise TruthInvalid([RulesetProblem(source, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise TruthInvalid([RulesetProblem(source, line, "", f"YAML syntax: {exc.problem or exc}")]) from exc
    except YAMLError as exc:
        raise TruthInvalid([RulesetProblem(source, None, "", f"YAML syntax: {exc}")]) from exc
    if not isinstance(document, Mapping):
        raise TruthInvalid(
            [RulesetProblem(source, None, "", "the file must hold a mapping: world, responses, actions")]
        )
    return _Reader(source, document, ruleset).read()


class _Reader:
    def __init__(self, source: str, document: Any, ruleset: Ruleset) -> None:
        self.source = source
        self.document = document
        self.ruleset = ruleset
        self.problems: list[RulesetProblem] = []

    def problem(self, path: list[str | int], message: str) -> None:
        where = ".".join(str(p) for p in path)
        self.problems.append(RulesetProblem(self.source, _located(self.document, path), where, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise TruthInvalid(sorted(self.problems, key=lambda p: p.line or 0))

    def read(self) -> Truth:
        validator = _SchemaValidator(truth_schema())
        for error in sorted(validator.iter_errors(self.document), key=lambda e: [str(p) for p in e.absolute_path]):
            unknown = unknown_keys(error)
            for path, message in unknown:
                self.problem(path, message)
            if not unknown:
                self.problem(list(error.absolute_path), _schema_message(error))
        self.raise_if_any()
        doc = self.document
        raw_world, raw_responses = doc["world"], doc["responses"]
        world = World(
            float(raw_world["inbound_calls"]),
            float(raw_world["dialer_calls"]),
            tuple(sorted(int(h) for h in raw_world["dialer_hours"])),
            float(raw_world["events"]),
            float(raw_world["no_answer"]),
            float(raw_world["converted_recorded"]),
        )
        responses = Responses(
            float(raw_responses["accepted"]), float(raw_responses["declined"]), float(raw_responses["not_now"])
        )
        total = responses.accepted + responses.declined + responses.not_now
        if total > 1 + 1e-9:
            self.problem(
                ["responses"], f"accepted + declined + not_now = {total:g}: the shares must add up to 1 or less"
            )
        actions = {
            str(action_id): truth
            for action_id, item in doc["actions"].items()
            if (truth := self._action(str(action_id), item)) is not None
        }
        self.raise_if_any()
        return Truth(world, responses, actions, self.source)

    def _action(self, action_id: str, item: Any) -> ActionTruth | None:
        path: list[str | int] = ["actions", action_id]
        action = self.ruleset.actions.get(action_id)
        if action is None:
            known = ", ".join(a.id for a in self.ruleset.actions.values() if a.conversion is not None) or "none"
            self.problem(
                path,
                f"unknown action {action_id!r}: ruleset {self.ruleset.meta.name} has no such action "
                f"(actions with a conversion: {known})",
            )
            return None
        if action.conversion is None:
            self.problem(
                path,
                f"action {action_id!r} declares no conversion in ruleset {self.ruleset.meta.name}: nothing would count "
                "as it working",
            )
            return None
        base, uplift = float(item["base"]), float(item["uplift"])
        shown = base + uplift
        if not 0 <= shown <= 1:
            self.problem(
                [*path, "uplift"],
                f"base + uplift = {base:g} + {uplift:g} = {shown:g}: the conversion probability of a customer shown "
                "the action must be between 0 and 1",
            )
            return None
        attributes, why = conversion_attributes(action, self.ruleset.events[action.conversion.event])
        if attributes is None:
            self.problem(path, f"the simulator cannot write a conversion event for {action_id!r}: {why}")
            return None
        return ActionTruth(base, uplift, action.conversion, attributes)


def conversion_attributes(action: Action, spec: EventSpec) -> tuple[dict[str, AttributeValue] | None, str]:
    """Attributes of an event of the conversion's type that meet its `when` (every `all` condition and the first
    `any` one), or None and why not."""
    assert action.conversion is not None
    when = action.conversion.when
    types = {a.name: a.type for a in spec.attributes}
    attributes: dict[str, AttributeValue] = {}
    for condition in (*when.all, *when.any[:1]):
        value = _meeting(condition, types.get(condition.field))
        if value is None:
            return None, f"no value of {condition.field} meets `{condition.op.value}` (write that event by hand)"
        attributes[condition.field] = value
    return attributes, ""


def _meeting(condition: Condition, field_type: str | None) -> AttributeValue | None:
    op, values = condition.op, condition.values
    if op in (Op.EQ, Op.IN, Op.GTE, Op.LTE):
        return values[0]
    if op is Op.GT and isinstance(values[0], int | float) and not isinstance(values[0], bool):
        return values[0] + 1
    if op is Op.LT and isinstance(values[0], int | float) and not isinstance(values[0], bool):
        return values[0] - 1
    if op is Op.EXISTS:
        return {"number": 1, "boolean": True}.get(field_type or "string", "simulated")
    return None
