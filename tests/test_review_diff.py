"""The pure part of `nba rulesets diff`: the tally of moved decisions, the structural diff of two versions, the
population file reader, and the report forms, on hand-made inputs."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Condition, FrequencyCap, Op, Ruleset, When
from nba_service.errors import InvalidArgument
from nba_service.review.diff import ChannelImpact, Examples, StructuralDiff, merge_impacts, structural_diff
from nba_service.review.diff_html import render_html
from nba_service.review.diff_report import DiffReport, render_text
from nba_service.review.population import FilePopulation, LineChunk, chunk_profiles
from nba_service.review.simulate import Versions
from nba_service.synthetic import SAMPLE_PATH

RULESET_PATH = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"
AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundled() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


def tally(*answers: tuple[str, list[str], list[str]]) -> ChannelImpact:
    impact = ChannelImpact(Channel.AGENT_DESKTOP)
    for customer_id, old, new in answers:
        impact.add(customer_id, old, new)
    return impact


class TestTally:
    def test_each_kind_of_movement_is_counted_for_its_action(self) -> None:
        """A customer who loses one action, gains another and sees a third move up is one changed customer, and
        each action counts exactly the movement it made; actions offered before and after are counted apart."""
        impact = tally(("C1", ["a", "b", "c"], ["c", "b", "d"]))
        assert impact.customers == 1
        assert impact.changed.to_json() == {"count": 1, "examples": ["C1"]}
        moves = {a: {k: ex.count for k, ex in m.kinds()} for a, m in impact.actions.items()}
        assert moves == {
            "a": {"gained": 0, "lost": 1, "moved_up": 0, "moved_down": 0},
            "b": {"gained": 0, "lost": 0, "moved_up": 0, "moved_down": 0},
            "c": {"gained": 0, "lost": 0, "moved_up": 1, "moved_down": 0},
            "d": {"gained": 1, "lost": 0, "moved_up": 0, "moved_down": 0},
        }
        assert {a: (m.before, m.after) for a, m in impact.actions.items()} == {
            "a": (1, 0),
            "b": (1, 1),
            "c": (1, 1),
            "d": (0, 1),
        }
        assert impact.to_none.count == impact.from_none.count == 0

    def test_same_answer_moves_nothing(self) -> None:
        """The same actions in the same order: counted as offered, not as changed."""
        impact = tally(("C1", ["a", "b"], ["a", "b"]), ("C2", [], []))
        assert impact.customers == 2
        assert impact.changed.count == 0
        assert all(m.moved == 0 for m in impact.actions.values())
        assert {a: (m.before, m.after) for a, m in impact.actions.items()} == {"a": (1, 1), "b": (1, 1)}

    def test_rank_moves_down_when_another_action_is_put_above(self) -> None:
        impact = tally(("C1", ["a", "b"], ["x", "a"]))
        assert impact.actions["a"].moved_down.count == 1
        assert impact.actions["b"].lost.count == 1
        assert impact.actions["x"].gained.count == 1

    def test_to_none_and_from_none(self) -> None:
        """Some action to none, and none to some, each with its customers; a change between two non-empty
        answers is neither."""
        impact = tally(("C3", ["a"], []), ("C1", [], ["b"]), ("C2", ["a"], ["b"]), ("C4", ["a"], []))
        assert impact.to_none.to_json() == {"count": 2, "examples": ["C3", "C4"]}
        assert impact.from_none.to_json() == {"count": 1, "examples": ["C1"]}
        assert impact.changed.count == 4

    def test_examples_are_the_first_five_by_id_whatever_the_order(self) -> None:
        ids = [f"CUST-{n:06d}" for n in range(1, 40)]
        shuffled = random.Random(3).sample(ids, len(ids))
        examples = Examples()
        for customer_id in shuffled:
            examples.add(customer_id)
        assert examples.to_json() == {"count": 39, "examples": ids[:5]}

    def test_merged_tallies_equal_one_tally_of_everyone(self) -> None:
        """Workers tally their own chunks; merging their tallies gives what one tally of all customers gives."""
        rng = random.Random(11)
        actions = ["a", "b", "c", "d", "e"]
        answers = [
            (f"C{n:03d}", rng.sample(actions, rng.randint(0, 3)), rng.sample(actions, rng.randint(0, 3)))
            for n in range(300)
        ]
        whole = tally(*answers)
        merged: dict[Channel, ChannelImpact] = {}
        for start in range(0, 300, 70):
            merge_impacts(merged, {Channel.AGENT_DESKTOP: tally(*answers[start : start + 70])})
        title = str
        assert merged[Channel.AGENT_DESKTOP].to_json(title) == whole.to_json(title)
        assert whole.changed.count > 0


def _rule(ruleset: Ruleset, rule_id: str) -> int:
    return next(i for i, r in enumerate(ruleset.rules) if r.id == rule_id)


class TestStructuralDiff:
    def test_identical_versions_have_no_changes(self, bundled: Ruleset) -> None:
        diff = structural_diff(bundled, bundled)
        assert diff.identical
        assert diff.metadata == ()
        assert all(items == () for _, items in diff.sections)

    def test_each_kind_of_change_names_its_parts(self, bundled: Ruleset) -> None:
        """A removed rule, a rule with new conditions and priority, an added rule, an action with a changed
        dialer script and trigger lifetime, and a cap with a new max are each reported with exactly the parts
        that changed, old and new values in plain text."""
        rules = list(bundled.rules)
        removed = rules.pop(_rule(bundled, "birthday-this-week"))
        index = _rule(bundled, "joining-anniversary") - 1
        anniversary = rules[index]
        extra = Condition("age", Op.GTE, (30.0,))
        rules[index] = dataclasses.replace(
            anniversary, priority=999, when=When((*anniversary.when.all, extra), anniversary.when.any)
        )
        rules.append(dataclasses.replace(removed, id="birthday-again"))
        action = bundled.actions["card-abroad-unblock"]
        assert action.trigger is not None
        actions = dict(bundled.actions)
        actions[action.id] = dataclasses.replace(
            action,
            scripts={**action.scripts, Channel.OUTBOUND_DIALER: "Call {first_name} about their card."},
            trigger=dataclasses.replace(action.trigger, lifetime=timedelta(hours=36)),
        )
        caps = tuple(
            dataclasses.replace(c, max=3) if c.id == "cross-sell-monthly" else c
            for c in bundled.policies.frequency_caps
        )
        changed = dataclasses.replace(
            bundled,
            meta=dataclasses.replace(bundled.meta, version="9.9.9"),
            rules=tuple(rules),
            actions=actions,
            policies=dataclasses.replace(bundled.policies, frequency_caps=caps),
            content_hash="f" * 64,
        )
        diff = structural_diff(bundled, changed)

        assert [(p.part, p.old, p.new) for p in diff.metadata] == [
            ("version", bundled.meta.version, "9.9.9"),
            ("content hash", bundled.content_hash, "f" * 64),
        ]
        by_id = {item.id: item for item in diff.rules}
        assert [(i.id, i.status) for i in diff.rules] == [
            ("birthday-this-week", "removed"),
            ("joining-anniversary", "changed"),
            ("birthday-again", "added"),
        ]
        parts = {p.part: p for p in by_id["joining-anniversary"].parts}
        assert set(parts) == {"conditions", "priority"}
        assert (parts["priority"].old, parts["priority"].new) == (str(anniversary.priority), "999")
        assert parts["conditions"].new is not None
        assert parts["conditions"].new.endswith("the customer's age is at least 30")
        assert "age is at least" not in str(parts["conditions"].old)
        assert by_id["birthday-this-week"].old_text is not None
        assert by_id["birthday-this-week"].old_text.endswith(f"priority {removed.priority}.")

        [card] = diff.actions
        assert (card.id, card.status) == ("card-abroad-unblock", "changed")
        assert {p.part: (p.old, p.new) for p in card.parts} == {
            "script (outbound_dialer)": (
                action.scripts[Channel.OUTBOUND_DIALER],
                "Call {first_name} about their card.",
            ),
            "trigger lifetime": ("2 days", "36 hours"),
        }
        [cap] = diff.policies
        assert (cap.id, cap.status, [(p.part, p.old, p.new) for p in cap.parts]) == (
            "cross-sell-monthly",
            "changed",
            [("max", "2", "3")],
        )
        assert diff.fields == diff.events == ()

    def test_added_and_removed_policies_and_reordered_rules(self, bundled: Ruleset) -> None:
        """A new cap is added, the quiet hours removed, two rules swapped: the swap alone is reported as a change
        of rule order (equal priorities are ranked by file order), not as changed rules."""
        rules = list(bundled.rules)
        rules[0], rules[1] = rules[1], rules[0]
        cap = FrequencyCap("everything-daily", 4, timedelta(days=1), description="At most four a day")
        policies = dataclasses.replace(
            bundled.policies, frequency_caps=(*bundled.policies.frequency_caps, cap), quiet_hours=None
        )
        changed = dataclasses.replace(bundled, rules=tuple(rules), policies=policies)
        diff = structural_diff(bundled, changed)
        assert diff.rules == ()
        assert [p.part for p in diff.metadata] == ["rule order"]
        statuses = [(p.id, p.status) for p in diff.policies]
        assert ("everything-daily", "added") in statuses
        assert bundled.policies.quiet_hours is not None
        assert ("quiet_hours", "removed") in statuses
        added = next(p for p in diff.policies if p.id == "everything-daily")
        assert added.new_text is not None
        assert "4" in added.new_text

    def test_reworded_field_description_does_not_change_the_rules_reading_it(self, bundled: Ruleset) -> None:
        """Conditions are compared as conditions: rewording a field's description changes how its conditions
        read, but not what they are, so only the field is reported."""
        fields = dict(bundled.fields)
        fields["has_term_deposit"] = dataclasses.replace(fields["has_term_deposit"], description="Has a deposit.")
        diff = structural_diff(bundled, dataclasses.replace(bundled, fields=fields))
        assert diff.rules == ()
        assert [(f.id, [p.part for p in f.parts]) for f in diff.fields] == [("has_term_deposit", ["description"])]


POLICY_MODEL = """\
ruleset: {name: policy-model, version: 1.0.0, owner: Conduct, description: The contact policy model}
fields:
  - {name: arrears_days, type: number}
  - {name: vulnerable, type: boolean}
  - {name: consent_marketing, type: boolean}
  - {name: consent_calls, type: boolean}
purposes:
  - {id: service, description: Own accounts, categories: [service]}
  - {id: marketing, description: Selling, categories: [cross_sell, upsell]}
actions:
  - {id: savings-offer, category: cross_sell, scripts: {agent_desktop: Savings., outbound_dialer: Savings.}}
  - {id: address-check, category: service, scripts: {agent_desktop: Address.}}
rules:
  - {id: savings, description: d, reason: Save, priority: 50, action: savings-offer,
     when: {all: [{field: arrears_days, op: lt, value: 30}]}}
  - {id: address, description: d, reason: Check, priority: 10, action: address-check,
     when: {all: [{field: arrears_days, op: exists}]}}
policies:
  consent:
    - {field: consent_marketing, channel: agent_desktop, purposes: [marketing], directions: [inbound]}
    - {field: consent_calls, channel: agent_desktop, purposes: [marketing], directions: [outbound]}
    - {field: consent_calls, channel: outbound_dialer, purposes: [marketing]}
  frequency_caps:
    - {id: marketing-calls, purpose: marketing, direction: outbound, max: 2, within: 7d}
  suppressions:
    - {id: vulnerable, description: Not sold to, when: {all: [{field: vulnerable, op: eq, value: true}]},
       except_purposes: [service]}
  constraints:
    - {id: two-declines, purpose: marketing, outcomes: [declined], after: 2, within: 90d}
"""


def policy_model_v2() -> str:
    """Every kind of change the contact policy model adds, each one a line of the first version rewritten."""
    edits = [
        ("1.0.0", "2.0.0"),
        ("categories: [cross_sell, upsell]}", "categories: [cross_sell]}"),
        ("{id: savings-offer, category: cross_sell,", "{id: savings-offer, category: service,"),
        ("{id: address-check, category: service,", "{id: address-check, category: service, type: mandatory,"),
        (
            "    - {field: consent_calls, channel: outbound_dialer, purposes: [marketing]}",
            "    - {field: consent_calls, channel: outbound_dialer, purposes: [marketing, service]}",
        ),
        ("direction: outbound, max: 2", "max: 2"),
        ("except_purposes: [service]}", "except_purposes: [service], directions: [outbound]}"),
        (
            "outcomes: [declined], after: 2, within: 90d}",
            "outcomes: [declined, not_now], after: 3, within: 90d}\n"
            "    - {id: unanswered, channel: agent_desktop, direction: outbound, outcomes: [no_answer], after: 3,"
            " within: 7d}",
        ),
    ]
    text = POLICY_MODEL
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


class TestContactPolicyModel:
    """Purposes, consent entries, constraints, action types and direction scopes in the structural diff."""

    @staticmethod
    def diff() -> StructuralDiff:
        return structural_diff(load_ruleset_text(POLICY_MODEL), load_ruleset_text(policy_model_v2()))

    def test_an_action_moving_purpose_says_which_consent_it_now_needs(self) -> None:
        actions = {item.id: item for item in self.diff().actions}
        savings = actions["savings-offer"]
        assert {p.part: (p.old, p.new) for p in savings.parts} == {
            "category": ("cross_sell", "service"),
            "purpose": ("marketing", "service"),
            "consent needed (agent_desktop, inbound)": ("consent_marketing", "no consent"),
            "consent needed (agent_desktop, outbound)": ("consent_calls", "no consent"),
        }
        assert savings.notes == (
            "moves from purpose marketing to service, so the consent it needs changes (see the consent needed parts)",
            "caps, constraints and suppressions that name a purpose now count it under its new one",
        )

    def test_an_offer_becoming_mandatory_is_flagged(self) -> None:
        address = next(item for item in self.diff().actions if item.id == "address-check")
        assert [(p.part, p.old, p.new) for p in address.parts] == [("type", "offer", "mandatory")]
        assert len(address.notes) == 1
        assert address.notes[0].startswith("BIG CHANGE: now a mandatory notice")
        back = structural_diff(load_ruleset_text(policy_model_v2()), load_ruleset_text(POLICY_MODEL))
        address_back = next(item for item in back.actions if item.id == "address-check")
        assert address_back.notes[0].startswith("BIG CHANGE: no longer a mandatory notice")

    def test_purposes(self) -> None:
        assert [(i.id, i.status, [(p.part, p.old, p.new) for p in i.parts]) for i in self.diff().purposes] == [
            ("marketing", "changed", [("categories", "cross_sell, upsell", "cross_sell")])
        ]

    def test_consent_constraints_and_direction_scopes(self) -> None:
        policies = {item.id: item for item in self.diff().policies}
        parts = {key: {p.part: (p.old, p.new) for p in item.parts} for key, item in policies.items()}
        assert [(i.id, i.status) for i in self.diff().policies] == [
            ("consent:marketing:outbound_dialer", "removed"),
            ("consent:marketing+service:outbound_dialer", "added"),
            ("marketing-calls", "changed"),
            ("vulnerable", "changed"),
            ("two-declines", "changed"),
            ("unanswered", "added"),
        ]
        assert parts["marketing-calls"] == {"direction": ("outbound", None)}
        assert parts["vulnerable"] == {"directions": ("inbound, outbound", "outbound")}
        assert parts["two-declines"] == {"outcomes": ("declined", "declined, not_now"), "after": ("2", "3")}
        added = policies["unanswered"].new_text
        assert added is not None
        assert added.startswith("Once 3 contacts we started on the agent desktop ended with no answer")

    def test_consent_split_by_direction_shows_each_field(self) -> None:
        old = load_ruleset_text(POLICY_MODEL)
        new = load_ruleset_text(
            POLICY_MODEL.replace(
                "{field: consent_calls, channel: agent_desktop", "{field: consent_phone, channel: agent_desktop"
            ).replace(
                "  - {name: consent_calls, type: boolean}",
                "  - {name: consent_calls, type: boolean}\n  - {name: consent_phone, type: boolean}",
            )
        )
        [consent] = structural_diff(old, new).policies
        assert consent.id == "consent:marketing:agent_desktop:outbound"  # a direction-scoped entry has its own id
        assert [(p.part, p.old, p.new) for p in consent.parts] == [("consent field", "consent_calls", "consent_phone")]
        # The actions it reaches show what they now need.
        [savings] = structural_diff(old, new).actions
        assert [(p.part, p.old, p.new) for p in savings.parts] == [
            ("consent needed (agent_desktop, outbound)", "consent_calls", "consent_phone")
        ]

    def test_text_and_html_show_the_notes(self) -> None:
        old, new = load_ruleset_text(POLICY_MODEL), load_ruleset_text(policy_model_v2())
        report = DiffReport(old, new, structural_diff(old, new), "nobody", 0, AT, 3, (), 0.1, 1)
        text = render_text(report)
        assert "    ~ address-check (changed)\n        type: offer -> mandatory\n        !! BIG CHANGE: now a" in text
        assert "  Purposes: 1 changed" in text
        assert "        categories: cross_sell, upsell -> cross_sell" in text
        page = render_html(report)
        assert '<p class="note-flag"><strong>BIG CHANGE: now a mandatory notice' in page
        assert "<h3>Purposes</h3>" in page
        notes = report.to_json()["structure"]["actions"][0]["notes"]
        assert notes[0].startswith("moves from purpose marketing to service")


def test_the_reviewer_guide_example_shows_each_kind_of_change() -> None:
    """docs/reviewers/diff.md shows this diff: the two example files must keep loading and keep the changes the
    guide describes."""
    examples = Path(__file__).resolve().parents[1] / "docs" / "reviewers" / "examples"
    diff = structural_diff(
        load_ruleset_file(examples / "contact-policy.yaml"), load_ruleset_file(examples / "contact-policy-next.yaml")
    )
    notes = {item.id: item.notes for item in diff.actions}
    assert notes["address-check"][0].startswith("BIG CHANGE: now a mandatory notice")
    assert notes["savings-offer"][0].startswith("moves from purpose marketing to service, so the consent it needs")
    assert {(i.id, i.status) for i in diff.policies} >= {
        ("unanswered-desk-calls", "added"),
        ("two-declines", "changed"),
    }


class TestPopulationFile:
    def test_a_bad_line_is_named_by_file_and_line(self, tmp_path: Path) -> None:
        lines = SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:3]
        path = tmp_path / "people.jsonl"
        path.write_text("\n".join([lines[0], "", lines[1], "{not json", lines[2]]) + "\n", encoding="utf-8")
        with FilePopulation(path) as population:
            assert population.count() == 4
            [chunk] = list(population.chunks(10))
            with pytest.raises(InvalidArgument, match=rf"^{path}:4: not a JSON line"):
                list(chunk_profiles(chunk, AT))

    def test_chunks_keep_line_numbers(self, tmp_path: Path) -> None:
        lines = SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:5]
        path = tmp_path / "people.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with FilePopulation(path) as population:
            chunks = list(population.chunks(2))
        assert [c.first_line for c in chunks if isinstance(c, LineChunk)] == [1, 3, 5]
        ids = [p.customer_id for c in chunks for p in chunk_profiles(c, AT)]
        assert ids == [json.loads(line)["customer_id"] for line in lines]

    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            ("[1, 2]", "a customer must be a JSON object, not list"),
            ('{"attributes": {}}', "missing 'customer_id'"),
            ('{"customer_id": "C", "attributes": {"x": [1]}}', "not a customer as `nba sample generate` writes one"),
            (
                '{"customer_id": "C", "attributes": {}, "contacts": [{"action_id": "a", "channel": "fax", '
                '"age_minutes": 1, "outcome": "accepted"}]}',
                "'fax' is not a valid Channel",
            ),
        ],
    )
    def test_not_a_customer(self, tmp_path: Path, line: str, problem: str) -> None:
        chunk = LineChunk("people.jsonl", 7, (line,))
        with pytest.raises(InvalidArgument) as caught:
            list(chunk_profiles(chunk, AT))
        assert caught.value.message.startswith("people.jsonl:7: ")
        assert problem in caught.value.message

    def test_bad_bytes_are_named_by_line(self, tmp_path: Path) -> None:
        path = tmp_path / "people.jsonl"
        path.write_bytes(SAMPLE_PATH.read_bytes().splitlines(keepends=True)[0] + b'{"customer_id": "\xff"}\n')
        with FilePopulation(path) as population, pytest.raises(InvalidArgument, match=rf"{path}:2: not UTF-8"):
            population.count()


def test_engine_versions_and_reports_on_a_few_sample_customers(bundled: Ruleset) -> None:
    """Both versions loaded into durable_rules, one chunk of ten sample customers: the tally counts them on every
    channel, and the text and HTML forms show the change and escape what the files say."""
    rules = tuple(
        dataclasses.replace(r, priority=1001, reason="<b>urgent</b> & first") if r.id == "long-tenure-loyalty" else r
        for r in bundled.rules
    )
    changed = dataclasses.replace(bundled, rules=rules, content_hash="e" * 64)
    chunk = LineChunk("sample", 1, tuple(SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:10]))
    versions = Versions.load(bundled, changed, list(Channel), AT, 3)
    try:
        customers, impacts = versions.tally(chunk)
    finally:
        versions.close()
    assert customers == 10
    assert {c: i.customers for c, i in impacts.items()} == {Channel.AGENT_DESKTOP: 10, Channel.OUTBOUND_DIALER: 10}
    report = DiffReport(
        bundled,
        changed,
        structural_diff(bundled, changed),
        "ten customers",
        customers,
        AT,
        3,
        tuple(impacts.values()),
        0.5,
        1,
    )
    text = render_text(report)
    assert "~ long-tenure-loyalty (changed)" in text
    assert "reason: " in text
    assert "10 customers from ten customers" in text
    page = render_html(report)
    assert "&lt;b&gt;urgent&lt;/b&gt; &amp; first" in page
    assert "<b>urgent</b>" not in page
    document = report.to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["impact"]["channels"][0]["customers"] == 10


MEASURED = """\
ruleset: {name: measured, version: 1.0.0, owner: Conduct, description: Measurement}
fields:
  - {name: balance, type: number}
events:
  - type: product_opened
    attributes: [{name: product, type: string}]
actions:
  - id: savings-offer
    category: cross_sell
    scripts: {agent_desktop: Savings.}
    conversion: {event: product_opened, within: 30d, when: {all: [{field: product, op: eq, value: savings}]}}
    value: 40
  - id: card-offer
    category: cross_sell
    scripts: {agent_desktop: Card.}
    conversion: {event: product_opened, within: 30d, when: {all: [{field: product, op: eq, value: card}]}}
    value: 90
holdouts:
  period: 90d
  seed: first
  shares:
    - {action: savings-offer, share: 0.1}
rules:
  - {id: savings, description: d, reason: Save, priority: 50, action: savings-offer,
     when: {all: [{field: balance, op: gte, value: 1000}]}}
  - {id: card, description: d, reason: Card, priority: 40, action: card-offer,
     when: {all: [{field: balance, op: gte, value: 100}]}}
"""


def measured(*edits: tuple[str, str]) -> Ruleset:
    text = MEASURED
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return load_ruleset_text(text)


class TestMeasurement:
    """Conversions, values and holdouts in the structural diff; changes that break comparisons with past
    measurement are flagged as big changes."""

    def test_a_value_change_is_a_change_and_not_a_big_one(self) -> None:
        [card] = structural_diff(measured(), measured(("value: 90", "value: 95"))).actions
        assert [(p.part, p.old, p.new) for p in card.parts] == [("value", "90", "95")]
        assert card.notes == ()

    def test_a_redefined_conversion_is_a_big_change(self) -> None:
        new = measured(
            (
                "within: 30d, when: {all: [{field: product, op: eq, value: card}]}}",
                "within: 60d, when: {all: [{field: product, op: eq, value: credit_card}]}}",
            )
        )
        [card] = structural_diff(measured(), new).actions
        assert [(p.part, p.old, p.new) for p in card.parts] == [
            (
                "conversion",
                "a product opened event whose product is “card”, within 30 days of the decision",
                "a product opened event whose product is “credit card”, within 60 days of the decision",
            )
        ]
        assert card.notes == (
            "BIG CHANGE: what counts as converted changes: conversions counted from now on cannot be compared with "
            "those measured before",
        )

    def test_declaring_a_conversion_is_not_a_big_change_and_dropping_one_is(self) -> None:
        without = measured(
            (
                "    conversion: {event: product_opened, within: 30d, "
                "when: {all: [{field: product, op: eq, value: card}]}}\n",
                "",
            )
        )
        [added] = structural_diff(without, measured()).actions
        assert [(p.part, p.old) for p in added.parts] == [("conversion", None)]
        assert added.notes == ()
        [dropped] = structural_diff(measured(), without).actions
        assert dropped.notes == ("BIG CHANGE: no longer declares a conversion: what it adds is no longer measured",)

    def test_a_holdout_share_change_is_a_big_change(self) -> None:
        new = measured(
            (
                "{action: savings-offer, share: 0.1}",
                "{action: savings-offer, share: 0.2}\n    - {action: card-offer, share: 0.05}",
            )
        )
        actions = {item.id: item for item in structural_diff(measured(), new).actions}
        assert [(p.part, p.old, p.new) for p in actions["savings-offer"].parts] == [("holdout share", "10%", "20%")]
        assert [(p.part, p.old, p.new) for p in actions["card-offer"].parts] == [("holdout share", None, "5%")]
        assert actions["savings-offer"].notes == (
            "BIG CHANGE: the holdout share changes (10% -> 20%): customers move between the groups, so measurement "
            "before and after cannot be compared",
        )
        assert actions["card-offer"].notes[0].startswith("BIG CHANGE: the holdout share changes (0% -> 5%)")

    @pytest.mark.parametrize(
        ("edit", "parts", "note"),
        [
            (("seed: first", "seed: second"), [("seed", "first", "second")], "the holdout seed changes:"),
            (
                ("period: 90d", "period: 30d"),
                [("period", "90 days", "30 days")],
                "the holdout period changes (a new period starts at once):",
            ),
        ],
    )
    def test_a_new_seed_or_period_draws_everyone_again(
        self, edit: tuple[str, str], parts: list[tuple[str, str, str]], note: str
    ) -> None:
        diff = structural_diff(measured(), measured(edit))
        assert diff.actions == ()
        [holdouts] = diff.holdouts
        assert [(p.part, p.old, p.new) for p in holdouts.parts] == parts
        assert holdouts.notes == (
            f"BIG CHANGE: {note} every customer is drawn again, so measurement before and after cannot be compared",
        )

    def test_holdouts_appear_and_disappear_as_a_whole(self) -> None:
        without = measured(("{action: savings-offer, share: 0.1}", "{action: savings-offer, share: 0}"))
        [added] = structural_diff(without, measured()).holdouts
        assert (added.id, added.status) == ("holdouts", "added")
        assert added.new_text == (
            "Held out at random, per customer and action, again every 90 days (seed “first”): Savings offer 10%."
        )
        [removed] = structural_diff(measured(), without).holdouts
        assert removed.status == "removed"

    def test_text_html_and_json_show_the_flags(self) -> None:
        old, new = measured(), measured(("seed: first", "seed: second"), ("share: 0.1", "share: 0.15"))
        report = DiffReport(old, new, structural_diff(old, new), "nobody", 0, AT, 3, (), 0.1, 1)
        text = render_text(report)
        assert (
            "  Holdouts: 1 changed\n    ~ holdouts (changed)\n        seed: first -> second\n        !! BIG CHANGE"
            in text
        )
        assert "        holdout share: 10% -> 15%\n        !! BIG CHANGE: the holdout share changes" in text
        page = render_html(report)
        assert "<h3>Holdouts</h3>" in page
        assert '<p class="note-flag"><strong>BIG CHANGE: the holdout seed changes' in page
        structure = report.to_json()["structure"]
        assert structure["holdouts"][0]["notes"][0].startswith("BIG CHANGE: the holdout seed changes")
