"""The ruleset as the document a compliance reviewer signs off: every rule, action and policy in words.

Pure: a loaded ruleset (and, when the caller ran them, its scenario cases) in, text out. Running the cases
needs the engine, so `render_cli` does that and passes the results here; the Review service can render a
stored version without them, and the document then says coverage was not computed rather than claiming
there are no tests. The words come from `domain.wording` only, so the document, `nba explain` and the
Review service describe a rule the same way.

The HTML is one self-contained file: the CSS is inlined, and nothing (script, font, image) is fetched, so
the file a reviewer signs is the whole document, readable offline and years later. Everything from the
ruleset is escaped by Jinja2's autoescape; Markdown gets its own escaping (`markdown_text`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import jinja2

from nba_service.domain import wording
from nba_service.domain.model import Channel, Direction, Ruleset, direction_fits
from nba_service.domain.policy import DO_NOT_CONTACT, policy_ids
from nba_service.domain.scenarios import CaseResult, Coverage, coverage

Format = Literal["html", "markdown"]
FORMATS: tuple[Format, ...] = ("html", "markdown")
EXAMPLE_CASES = 2  # case names shown beside each covered item
_TEMPLATES = {"html": "ruleset.html.j2", "markdown": "ruleset.md.j2"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


@dataclass(frozen=True, slots=True)
class ScenarioEvidence:
    """The scenario cases kept beside the ruleset, as run by the caller; `results` is None without a file."""

    tests_file: str
    results: tuple[CaseResult, ...] | None


@dataclass(frozen=True, slots=True)
class Script:
    channel: str
    text: str | None  # None: the action is never offered on this channel


@dataclass(frozen=True, slots=True)
class RuleItem:
    id: str
    sentence: str
    priority: int
    reason: str
    description: str
    action_id: str
    mandatory: bool = False


@dataclass(frozen=True, slots=True)
class ActionItem:
    id: str
    title: str
    category: str
    description: str
    trigger: str | None
    scripts: tuple[Script, ...]
    rules: tuple[str, ...]
    purpose: str = ""  # the purpose's id; "" when the ruleset declares none
    mandatory: bool = False
    # Measurement, in words; None when the action declares no conversion, no value or no holdout share.
    conversion: str | None = None
    value: str | None = None
    holdout: str | None = None

    @property
    def measured(self) -> bool:
        return self.conversion is not None or self.value is not None or self.holdout is not None


MANDATORY_NOTE = (
    "Mandatory notice: ranks above every offer and is given whatever the suppressions, constraint pauses and "
    "frequency caps say; a do-not-contact listing, do-not-call, consent for its purpose and quiet hours still stop it."
)


POLICY_ORDER = (
    "Applied after the rules, in this order: consent for the action's purpose on the channel in the contact's "
    "direction; do not call and quiet hours for the dialer; suppressions; the action's script for the channel and "
    "its trigger; constraint pauses; frequency caps. A mandatory notice skips the suppressions, constraint pauses "
    "and frequency caps, never the others."
)


@dataclass(frozen=True, slots=True)
class ConsentNeed:
    """Which consent fields a purpose's actions need on one channel in one direction (none: `fields` is empty)."""

    channel: str
    direction: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PurposeItem:
    id: str
    description: str
    categories: tuple[str, ...]
    actions: tuple[str, ...]  # action ids, file order
    consent: tuple[ConsentNeed, ...]


@dataclass(frozen=True, slots=True)
class PolicyItem:
    id: str
    kind: str
    sentence: str


@dataclass(frozen=True, slots=True)
class CoverageRow:
    kind: str
    id: str
    cases: int
    examples: tuple[str, ...]

    @property
    def exercised(self) -> bool:
        return self.cases > 0


@dataclass(frozen=True, slots=True)
class ScenarioSection:
    """What the document says about tests: `state` is "run", "no_tests" or "not_run"."""

    state: Literal["run", "no_tests", "not_run"]
    tests_file: str = ""
    cases: int = 0
    failed: tuple[str, ...] = ()
    rows: tuple[CoverageRow, ...] = ()
    summary: tuple[tuple[str, int, int], ...] = ()  # (kind, exercised, total)


@dataclass(frozen=True, slots=True)
class HoldoutRow:
    action_id: str
    title: str
    share: str
    conversion: str | None  # None: nothing is measured against this holdout


@dataclass(frozen=True, slots=True)
class HoldoutSection:
    """The holdout programme: empty `rows` when no action holds out."""

    period: str
    seed: str
    sentence: str
    rows: tuple[HoldoutRow, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewDocument:
    name: str
    version: str
    owner: str
    description: str
    content_hash: str
    valid_for: str
    source_file: str
    rules: tuple[RuleItem, ...]
    actions: tuple[ActionItem, ...]
    policies: tuple[PolicyItem, ...]
    scenarios: ScenarioSection
    purposes: tuple[PurposeItem, ...] = ()
    do_not_contact: str = ""  # the service-wide listing policy in words: it applies to every ruleset
    holdouts: HoldoutSection | None = None


def build_document(
    ruleset: Ruleset, evidence: ScenarioEvidence | None = None, *, source_file: str = ""
) -> ReviewDocument:
    meta = ruleset.meta
    return ReviewDocument(
        name=meta.name,
        version=meta.version,
        owner=meta.owner,
        description=" ".join(meta.description.split()),
        content_hash=ruleset.content_hash,
        valid_for=wording.duration_text(meta.valid_for),
        source_file=source_file,
        rules=tuple(
            RuleItem(
                r.id,
                wording.rule_text(r, ruleset),
                r.priority,
                r.reason,
                r.description,
                r.action,
                ruleset.actions[r.action].mandatory,
            )
            for r in ruleset.rules
        ),
        actions=tuple(_action(ruleset, action_id) for action_id in ruleset.actions),
        policies=tuple(
            PolicyItem(pid, _policy_kind(ruleset, pid), text) for pid, text in wording.policy_texts(ruleset)
        ),
        scenarios=_scenarios(ruleset, evidence),
        purposes=tuple(_purpose(ruleset, purpose_id) for purpose_id in ruleset.purposes),
        do_not_contact=wording.policy_text(ruleset, DO_NOT_CONTACT),
        holdouts=_holdouts(ruleset),
    )


HOLDOUT_NOTE = (
    "Who is held out is a hash of the seed, the customer, the action and the period, and of nothing the rules "
    "read: random with respect to every fact about the customer, the same for a customer and action for the whole "
    "period, on every process and every replay. A held-out customer's decision is recorded with the action dropped "
    "as held_out, and the next best action is shown instead. Service, compliance and mandatory actions are never "
    "held out."
)


def _holdouts(ruleset: Ruleset) -> HoldoutSection:
    holdouts = ruleset.holdouts
    rows = tuple(
        HoldoutRow(
            a.id,
            wording.action_title(a),
            wording.share_text(a.holdout),
            wording.conversion_text(a.conversion) if a.conversion is not None else None,
        )
        for a in ruleset.actions.values()
        if a.holdout > 0
    )
    return HoldoutSection(wording.duration_text(holdouts.period), holdouts.seed, wording.holdouts_text(ruleset), rows)


_DIRECTION_LABELS = {Direction.INBOUND: "The customer contacts us", Direction.OUTBOUND: "We contact the customer"}


def _purpose(ruleset: Ruleset, purpose_id: str) -> PurposeItem:
    """A purpose with what serves it and, per channel and direction a contact can take, the consent it needs."""
    purpose = ruleset.purposes[purpose_id]
    needs = tuple(
        ConsentNeed(
            _channel_label(channel),
            _DIRECTION_LABELS[direction],
            tuple(
                dict.fromkeys(c.field for c in ruleset.policies.consent if c.applies(channel, purpose_id, direction))
            ),
        )
        for channel in Channel
        for direction in Direction
        if direction_fits(channel, direction)
    )
    return PurposeItem(
        purpose.id,
        purpose.description,
        tuple(wording.category_text(c) for c in purpose.categories),
        tuple(a.id for a in ruleset.actions.values() if a.purpose == purpose_id),
        needs,
    )


def _action(ruleset: Ruleset, action_id: str) -> ActionItem:
    action = ruleset.actions[action_id]
    trigger = None
    if action.trigger is not None:
        trigger = (
            f"Offered only while there is an unexpired {wording.event_text(action.trigger.event)}, and for at most "
            f"{wording.duration_text(action.trigger.lifetime)} after it arrived."
        )
    scripts = tuple(Script(_channel_label(c), action.scripts.get(c)) for c in Channel)
    conversion = None
    if action.conversion is not None:
        conversion = f"Counts as converted: {wording.conversion_text(action.conversion)}."
    holdout = None
    if action.holdout > 0 or action.conversion is not None:
        holdout = wording.holdout_text(action, ruleset.holdouts)
    return ActionItem(
        action.id,
        wording.action_title(action),
        wording.category_text(action.category),
        action.description,
        trigger,
        scripts,
        tuple(r.id for r in ruleset.rules if r.action == action.id),
        action.purpose,
        action.mandatory,
        conversion,
        wording.value_worth_text(action.value) if action.value is not None else None,
        holdout,
    )


def _channel_label(channel: Channel) -> str:
    words = wording.channel_text(channel).removeprefix("the ")
    return words[:1].upper() + words[1:]


def _policy_kind(ruleset: Ruleset, policy_id: str) -> str:
    if policy_id.startswith("consent:"):
        return "Consent"
    if policy_id == "do_not_call":
        return "Do not call"
    if policy_id == "quiet_hours":
        return "Quiet hours"
    if any(cap.id == policy_id for cap in ruleset.policies.frequency_caps):
        return "Frequency cap"
    if any(constraint.id == policy_id for constraint in ruleset.policies.constraints):
        return "Constraint"
    return "Suppression"


def _scenarios(ruleset: Ruleset, evidence: ScenarioEvidence | None) -> ScenarioSection:
    if evidence is None:
        return ScenarioSection("not_run")
    if evidence.results is None:
        return ScenarioSection("no_tests", evidence.tests_file)
    results = evidence.results
    per_case = [(result.scenario.name, coverage(ruleset, [result])) for result in results]
    whole = coverage(ruleset, results)
    rows: list[CoverageRow] = []
    kinds: list[tuple[str, Sequence[str]]] = [
        ("Rule", [r.id for r in ruleset.rules]),
        ("Action", list(ruleset.actions)),
        ("Policy", policy_ids(ruleset)),
    ]
    for kind, ids in kinds:
        for item in ids:
            names = [name for name, cov in per_case if item in _exercised(cov, kind)]
            rows.append(CoverageRow(kind, item, len(names), tuple(names[:EXAMPLE_CASES])))
    summary = tuple(
        (label, covered.count, len(covered.ids))
        for label, covered in (("rules", whole.rules), ("actions", whole.actions), ("policies", whole.policies))
    )
    return ScenarioSection(
        "run",
        evidence.tests_file,
        len(results),
        tuple(r.scenario.name for r in results if not r.passed),
        tuple(rows),
        summary,
    )


def _exercised(cov: Coverage, kind: str) -> frozenset[str]:
    covered = {"Rule": cov.rules, "Action": cov.actions, "Policy": cov.policies}[kind]
    return covered.exercised


def markdown_text(text: object) -> str:
    """Text safe inside a Markdown paragraph or table cell: one line, pipes and markup characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


@cache
def _environment() -> jinja2.Environment:
    folder = resources.files("nba_service.review").joinpath("templates")
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text("utf-8")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = markdown_text
    return env


def render_document(document: ReviewDocument, fmt: Format) -> str:
    template = _environment().get_template(_TEMPLATES[fmt])
    return template.render(
        doc=document,
        css=_stylesheet() if fmt == "html" else "",
        mandatory_note=MANDATORY_NOTE,
        policy_order=POLICY_ORDER,
        holdout_note=HOLDOUT_NOTE,
    )


@cache
def _stylesheet() -> str:
    return resources.files("nba_service.review").joinpath("templates", "ruleset.css").read_text("utf-8")


def render(ruleset: Ruleset, fmt: Format, evidence: ScenarioEvidence | None = None, *, source_file: str = "") -> str:
    """The ruleset as an HTML or Markdown document (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    return render_document(build_document(ruleset, evidence, source_file=source_file), fmt)
