"""Explaining a past decision: why each action was offered, why another was not, and that the stored inputs
replay to the very same answer. Every record here is made by the real pipeline (the reference evaluator and
the durable_rules engine), on hand-made profiles whose expected explanation follows from the ruleset below."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nba_service import json_text
from nba_service.app import activate
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import ActiveRuleset, evaluate, reference_active
from nba_service.domain.profile import Contact, Event, OutcomeKind, Profile
from nba_service.domain.records import DecisionInputs, DecisionRecord
from nba_service.errors import FailedPrecondition, NotFound
from nba_service.review.explain import explain, replay, why_not

RULESET = """\
ruleset: {name: explain-test, version: 1.0.0, owner: tests, description: explain tests, valid_for: 4h}
fields:
  - {name: first_name, type: string}
  - {name: stage, type: string}
  - {name: age, type: number}
  - {name: has_term_deposit, type: boolean, description: Holds a term deposit.}
  - {name: consent_calls, type: boolean}
  - {name: consent_offers, type: boolean}
  - {name: dnc, type: boolean}
  - {name: tz, type: string}
  - {name: vulnerable, type: boolean}
events:
  - type: large_deposit
    attributes: [{name: amount, type: number}]
actions:
  - id: rates
    category: upsell
    scripts: {agent_desktop: "Update the client on our new term deposit rates.", outbound_dialer: "Call about rates."}
  - id: hello
    category: service
    scripts: {agent_desktop: "Say hello to {first_name}."}
  - id: survey
    category: rescue
    scripts: {agent_desktop: "Offer a short survey.", outbound_dialer: "Offer a short survey."}
  - id: card
    category: upsell
    scripts: {outbound_dialer: "Call about a card."}
  - id: orphan
    category: service
    scripts: {agent_desktop: "Nobody offers this.", outbound_dialer: "Nobody offers this."}
rules:
  - {id: deposit-rates, description: d, reason: Recent large deposit, priority: 80, action: rates,
     when: {all: [{field: events.large_deposit.age_hours, op: lte, value: 72},
                  {field: events.large_deposit.amount, op: gte, value: 10000},
                  {field: has_term_deposit, op: eq, value: false}]}}
  - {id: survey-rescue, description: d, reason: Interest dropping, priority: 50, action: survey,
     when: {all: [{field: stage, op: eq, value: rescue}]}}
  - {id: card-adults, description: d, reason: Adult, priority: 30, action: card,
     when: {all: [{field: age, op: gte, value: 18}]}}
  - {id: hello-everyone, description: d, reason: Be nice, priority: 10, action: hello,
     when: {all: [{field: stage, op: exists}]}}
policies:
  consent: {agent_desktop: consent_offers, outbound_dialer: consent_calls}
  do_not_call: {field: dnc}
  frequency_caps:
    - {id: rates-monthly, action: rates, max: 1, within: 30d}
  suppressions:
    - {id: vulnerable, description: No sales to vulnerable customers,
       when: {all: [{field: vulnerable, op: eq, value: true}]}, except_categories: [service]}
  quiet_hours: {start: "20:00", end: "09:00", timezone_field: tz, default_timezone: Europe/London}
"""
NOON_LONDON = datetime(2026, 6, 15, 11, 0, 0, 123_456, tzinfo=UTC)  # 12:00 BST
EVENING_LONDON = datetime(2026, 6, 15, 20, 30, tzinfo=UTC)  # 21:30 BST: dialer quiet hours


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET, "explain-test.yaml")


@pytest.fixture(scope="module", params=["reference", "durable_rules"])
def active(request: pytest.FixtureRequest, ruleset: Ruleset) -> Iterator[ActiveRuleset]:
    """Records from both evaluators: the engine's answer must explain and replay like the reference's."""
    made = reference_active(ruleset) if request.param == "reference" else activate(ruleset)
    yield made
    made.engine.close()


def profile(**changes: Any) -> Profile:
    attributes: dict[str, Any] = {
        "first_name": "Ana",
        "stage": "rescue",
        "age": 42,
        "has_term_deposit": False,
        "consent_calls": True,
        "consent_offers": True,
        "dnc": False,
        "tz": "Europe/London",
        "vulnerable": False,
    }
    events = changes.pop("events", (Event("large_deposit", NOON_LONDON - timedelta(hours=5), {"amount": 48250.0}),))
    contacts = changes.pop("contacts", ())
    attributes.update(changes)
    attributes = {k: v for k, v in attributes.items() if v is not _ABSENT}
    return Profile("CUST-1", attributes, tuple(events), tuple(contacts))


_ABSENT = object()


def decide(
    active: ActiveRuleset,
    customer: Profile,
    channel: Channel = Channel.AGENT_DESKTOP,
    now: datetime = NOON_LONDON,
    limit: int = 5,
) -> DecisionRecord:
    """A record as the service writes it, read back through its JSON form as a store would give it."""
    result = evaluate(active, customer, channel, now, limit)
    record = DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=now,
        customer_id=customer.customer_id,
        channel=channel,
        ruleset=active.ref,
        engine=result.engine,
        rules_fired=result.rules_fired,
        dropped=result.dropped,
        actions=result.actions,
        latency_ms=1.0,
        profile_problems=result.profile_problems,
        inputs=DecisionInputs(customer, limit),
    )
    return DecisionRecord.from_json(json.loads(json.dumps(record.to_json())))


class TestExplain:
    def test_fired_and_offered(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """Each fired rule with its sentence and each condition with the value it read and whether it held;
        the ranking exactly as answered."""
        record = decide(active, profile())
        found = explain(record, ruleset)
        assert [a.action_id for a in found.actions] == ["rates", "survey", "hello"]
        assert found.replayable
        assert not found.dry_run
        deposit = next(rule for rule in found.fired if rule.rule_id == "deposit-rates")
        assert deposit.action_id == "rates"
        assert deposit.priority == 80
        assert "priority 80" in deposit.sentence
        assert "Rates" in deposit.sentence
        reads = {c.field: (c.value_read, c.held) for c in deposit.conditions}
        assert reads == {
            "events.large_deposit.age_hours": (5.0, True),
            "events.large_deposit.amount": (48250.0, True),
            "has_term_deposit": (False, True),
        }
        amount = next(c for c in deposit.conditions if c.field == "events.large_deposit.amount")
        assert amount.op == "gte"
        assert amount.values == (10000,)
        assert "48,250" in amount.words
        assert "10,000" in amount.words
        assert found.summary.startswith("3 actions offered")
        card = next(d for d in found.dropped if d.action_id == "card")
        assert (card.stage, card.reason) == ("policy", "channel_fit")
        assert why_not(record, ruleset, "rates").stage == "offered"
        assert why_not(record, ruleset, "rates").offered

    def test_frequency_cap_drop(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """Rates were heard a week ago; the monthly cap holds them back, and why-not names that cap."""
        heard = Contact("rates", Channel.AGENT_DESKTOP, NOON_LONDON - timedelta(days=7), OutcomeKind.ACCEPTED, "d-1")
        record = decide(active, profile(contacts=(heard,)))
        found = explain(record, ruleset)
        assert [a.action_id for a in found.actions] == ["survey", "hello"]
        capped = next(d for d in found.dropped if d.action_id == "rates")
        assert (capped.stage, capped.policy, capped.reason) == ("policy", "rates-monthly", "frequency_cap")
        assert "frequency cap" in capped.words
        assert "held back by policy rates-monthly" in found.summary
        answer = why_not(record, ruleset, "rates")
        assert (answer.offered, answer.stage, answer.policy, answer.rule_id) == (
            False,
            "policy",
            "rates-monthly",
            "deposit-rates",
        )
        assert "30 days" in answer.words

    def test_suppression_drop(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """A vulnerable customer hears only service actions; the suppression is named with its purpose."""
        record = decide(active, profile(vulnerable=True))
        assert [a.action_id for a in record.actions] == ["hello"]
        answer = why_not(record, ruleset, "survey")
        assert (answer.stage, answer.policy, answer.rule_id) == ("policy", "vulnerable", "survey-rescue")
        assert "No sales to vulnerable customers" in answer.words

    def test_quiet_hours(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """At 21:30 in London the dialer offers nothing; the summary says why in words."""
        record = decide(active, profile(), Channel.OUTBOUND_DIALER, now=EVENING_LONDON)
        found = explain(record, ruleset)
        assert found.actions == ()
        assert {d.policy for d in found.dropped} == {"quiet_hours"}
        assert found.summary.startswith("No action:")
        assert "quiet hours" in found.summary
        answer = why_not(record, ruleset, "card")
        assert (answer.stage, answer.policy, answer.rule_id) == ("policy", "quiet_hours", "card-adults")

    def test_no_consent(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        record = decide(active, profile(consent_calls=False), Channel.OUTBOUND_DIALER)
        found = explain(record, ruleset)
        assert found.actions == ()
        assert "consent" in found.summary
        answer = why_not(record, ruleset, "rates")
        assert (answer.stage, answer.policy) == ("policy", "consent:outbound_dialer")
        assert "consent" in answer.words

    def test_ranked_out(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """With room for one action, the rest are ranked out at arbitration."""
        record = decide(active, profile(), limit=1)
        assert [a.action_id for a in record.actions] == ["rates"]
        answer = why_not(record, ruleset, "survey")
        assert (answer.stage, answer.policy, answer.rule_id) == ("arbitration", "", "survey-rescue")
        assert "at most 1 action" in answer.words
        assert "2 ranked below the answer's limit" in explain(record, ruleset).summary

    def test_an_action_no_rule_uses_and_one_with_no_script(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        record = decide(active, profile())
        orphan = why_not(record, ruleset, "orphan")
        assert (orphan.stage, orphan.rule_id, orphan.offered) == ("no_rule", "", False)
        assert "no rule" in orphan.words
        card = why_not(record, ruleset, "card")
        assert card.stage == "no_script"
        assert "agent desktop" in card.words

    def test_an_action_the_version_does_not_have_is_named(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        with pytest.raises(NotFound, match="'no-such-action'"):
            why_not(decide(active, profile()), ruleset, "no-such-action")

    def test_the_first_condition_that_did_not_hold_with_the_value_read(
        self, active: ActiveRuleset, ruleset: Ruleset
    ) -> None:
        """A deposit four days old: the rule needs one within 3 days, and the answer says how old it was."""
        old = Event("large_deposit", NOON_LONDON - timedelta(hours=96), {"amount": 48250.0})
        record = decide(active, profile(events=(old,)))
        answer = why_not(record, ruleset, "rates")
        assert (answer.stage, answer.rule_id) == ("conditions", "deposit-rates")
        assert "3 days" in answer.words
        assert "96" in answer.words
        assert "deposit-rates" in answer.words
        rich = decide(active, profile(has_term_deposit=True))
        held = why_not(rich, ruleset, "rates")
        assert held.stage == "conditions"
        assert "holds a term deposit" in held.words

    def test_a_decision_with_no_action_because_no_rule_matched(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        quiet = profile(stage=_ABSENT, age=_ABSENT, events=())
        record = decide(active, quiet)
        found = explain(record, ruleset)
        assert found.actions == ()
        assert found.fired == ()
        assert found.summary == "No action: no rule's conditions held for this customer."
        answer = why_not(record, ruleset, "hello")
        assert answer.stage == "conditions"
        assert "stage is not known" in answer.words

    def test_a_record_without_inputs(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        """Records written before inputs were kept still explain; why-not says it cannot read conditions, and a
        replay is refused naming why."""
        old = Event("large_deposit", NOON_LONDON - timedelta(hours=96), {"amount": 48250.0})
        record = replace(decide(active, profile(events=(old,))), inputs=None)
        back = DecisionRecord.from_json(json.loads(json.dumps(record.to_json())))
        assert back.inputs is None
        found = explain(back, ruleset)
        assert not found.replayable
        assert [r.rule_id for r in found.fired] == ["survey-rescue", "card-adults", "hello-everyone"]
        answer = why_not(back, ruleset, "rates")
        assert answer.stage == "conditions"
        assert "not known" in answer.words
        with pytest.raises(FailedPrecondition, match="before decisions kept their inputs"):
            replay(back, reference_active(ruleset))

    def test_another_version_is_refused(self, active: ActiveRuleset, ruleset: Ruleset) -> None:
        other = load_ruleset_text(RULESET.replace("version: 1.0.0", "version: 1.0.1"), "other.yaml")
        record = decide(active, profile())
        with pytest.raises(FailedPrecondition, match=r"explain-test 1\.0\.0"):
            explain(record, other)


class TestReplay:
    @pytest.mark.parametrize(
        ("changes", "channel", "now", "limit"),
        [
            ({}, Channel.AGENT_DESKTOP, NOON_LONDON, 5),
            ({"vulnerable": True}, Channel.AGENT_DESKTOP, NOON_LONDON, 5),
            ({}, Channel.OUTBOUND_DIALER, EVENING_LONDON, 5),
            ({}, Channel.OUTBOUND_DIALER, NOON_LONDON, 1),
            ({"stage": _ABSENT, "events": ()}, Channel.AGENT_DESKTOP, NOON_LONDON, 3),
        ],
    )
    def test_an_untouched_record_replays_the_same(
        self, active: ActiveRuleset, changes: dict[str, Any], channel: Channel, now: datetime, limit: int
    ) -> None:
        record = decide(active, profile(**changes), channel, now, limit)
        assert replay(record, reference_active(active.ruleset)) == replay(record, active)
        assert replay(record, active).same
        assert replay(record, active).differences == ()

    def test_tampered_inputs_differ(self, active: ActiveRuleset) -> None:
        """A smaller deposit in the stored inputs no longer fires the deposit rule: replay says what moved."""
        record = decide(active, profile())
        assert record.inputs is not None
        small = Event("large_deposit", NOON_LONDON - timedelta(hours=5), {"amount": 5000.0})
        tampered = replace(
            record, inputs=replace(record.inputs, profile=replace(record.inputs.profile, events=(small,)))
        )
        result = replay(tampered, active)
        assert not result.same
        assert any(
            d.startswith("actions: recorded [rates, survey, hello], replayed [survey, hello]")
            for d in result.differences
        )
        assert any("rule fired: recorded only: deposit-rates" in d for d in result.differences)

    def test_a_changed_script_differs(self, active: ActiveRuleset) -> None:
        record = decide(active, profile())
        assert record.inputs is not None
        renamed = replace(
            record,
            inputs=replace(
                record.inputs,
                profile=replace(
                    record.inputs.profile, attributes={**record.inputs.profile.attributes, "first_name": "Bo"}
                ),
            ),
        )
        result = replay(renamed, active)
        assert not result.same
        assert result.differences == ("action hello script: recorded 'Say hello to Ana.', replayed 'Say hello to Bo.'",)


# Rescue calls are not placed outbound: only an inbound contact may carry the survey.
_OUTBOUND_SCOPED = RULESET.replace(
    "  quiet_hours:",
    "    - {id: no-rescue-calls-out, description: No rescue asks on calls we place,\n"
    "       when: {all: [{field: stage, op: eq, value: rescue}]}, directions: [outbound],\n"
    "       except_categories: [service, upsell]}\n"
    "  quiet_hours:",
    1,
)


@pytest.fixture(scope="module")
def scoped() -> ActiveRuleset:
    return reference_active(load_ruleset_text(_OUTBOUND_SCOPED, "explain-direction.yaml"))


class TestDirection:
    """A decision is explained and replayed in the direction it was made in, which a direction-scoped policy
    can turn on; a record that names none is read as the channel's usual direction."""

    def _record(self, active: ActiveRuleset, direction: Direction) -> DecisionRecord:
        customer = profile()
        result = evaluate(active, customer, Channel.AGENT_DESKTOP, NOON_LONDON, 5, direction=direction)
        record = DecisionRecord(
            decision_id=str(uuid.uuid4()),
            decided_at=NOON_LONDON,
            customer_id=customer.customer_id,
            channel=Channel.AGENT_DESKTOP,
            ruleset=active.ref,
            engine=result.engine,
            rules_fired=result.rules_fired,
            dropped=result.dropped,
            actions=result.actions,
            latency_ms=1.0,
            inputs=DecisionInputs(customer, 5),
            direction=direction,
        )
        return DecisionRecord.from_json(json.loads(json.dumps(record.to_json())))

    def test_an_outbound_decision_replays_and_explains_outbound(self, scoped: ActiveRuleset) -> None:
        outbound = self._record(scoped, Direction.OUTBOUND)
        inbound = self._record(scoped, Direction.INBOUND)
        assert [a.action_id for a in outbound.actions] == ["rates", "hello"]
        assert [a.action_id for a in inbound.actions] == ["rates", "survey", "hello"]
        assert replay(outbound, scoped).same
        assert replay(inbound, scoped).same
        assert explain(outbound, scoped.ruleset).direction is Direction.OUTBOUND
        assert explain(inbound, scoped.ruleset).direction is Direction.INBOUND
        assert "held back by policy no-rescue-calls-out" in explain(outbound, scoped.ruleset).summary
        assert explain(outbound, scoped.ruleset).summary.endswith(
            "The agent was calling the customer (outbound), not answering their call."
        )
        assert "outbound" not in explain(inbound, scoped.ruleset).summary

    def test_a_record_without_a_direction_is_the_channels_usual_one(self, scoped: ActiveRuleset) -> None:
        """The desktop's usual direction is inbound: an outbound decision stripped of its direction (as records
        from before directions were kept) replays inbound, and replay says what that changes."""
        unknown = replace(self._record(scoped, Direction.OUTBOUND), direction=None)
        assert explain(unknown, scoped.ruleset).direction is Direction.INBOUND
        result = replay(unknown, scoped)
        assert not result.same
        assert "actions: recorded [rates, hello], replayed [rates, survey, hello]" in result.differences


# --------------------------------------------------------------------------------------------------
# The inputs' JSON form


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e16, 1e-300, 5e-324, 1.7976931348623157e308, 2.0**63, 0.1]),
    st.text(),
)
_TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


def _same(a: Any, b: Any) -> bool:
    """Equal with the exact type; NaN equals NaN, and -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@st.composite
def inputs(draw: st.DrawFn) -> DecisionInputs:
    names = st.text(min_size=1, max_size=12)
    attributes = draw(st.dictionaries(names, _VALUES, max_size=8))
    events = draw(
        st.lists(
            st.builds(
                Event,
                st.text(min_size=1, max_size=10),
                _TIMES,
                st.dictionaries(names, _VALUES, max_size=4),
                st.one_of(st.none(), _TIMES),
            ),
            max_size=3,
        )
    )
    contacts = draw(
        st.lists(
            st.builds(
                Contact,
                st.text(min_size=1, max_size=10),
                st.sampled_from(Channel),
                _TIMES,
                st.sampled_from(OutcomeKind),
                st.text(max_size=36),
                st.text(max_size=20),
                st.one_of(st.none(), st.booleans()),
            ),
            max_size=3,
        )
    )
    return DecisionInputs(
        Profile(draw(st.text(max_size=20)), attributes, tuple(events), tuple(contacts)), draw(st.integers(1, 20))
    )


def assert_same_inputs(back: DecisionInputs, made: DecisionInputs) -> None:
    assert back.limit == made.limit
    a, b = back.profile, made.profile
    assert a.customer_id == b.customer_id
    assert list(a.attributes) == list(b.attributes)
    assert all(_same(a.attributes[k], b.attributes[k]) for k in b.attributes), (a.attributes, b.attributes)
    assert len(a.events) == len(b.events)
    for x, y in zip(a.events, b.events, strict=True):
        assert (x.type, x.time, x.expires_at) == (y.type, y.time, y.expires_at)
        assert list(x.attributes) == list(y.attributes)
        assert all(_same(x.attributes[k], y.attributes[k]) for k in y.attributes)
    assert a.contacts == b.contacts


@given(inputs())
def test_inputs_survive_the_json_round_trip_exactly(made: DecisionInputs) -> None:
    """Every attribute value comes back with its exact type and value through the record's JSON text: big
    ints, tiny and huge floats, -0.0, NaN and infinities (tagged, as no JSON number holds them), Unicode."""
    text = json.dumps(made.to_json(), ensure_ascii=False)
    assert_same_inputs(DecisionInputs.from_json(json.loads(text)), made)
    # The stores' fast JSON (nba_service.json_text), both ways.
    text = json_text.dumps(made.to_json(), finite=made.finite)
    assert_same_inputs(DecisionInputs.from_json(json_text.loads(text)), made)


def test_a_float_jsonb_would_turn_into_an_int_is_tagged() -> None:
    """jsonb keeps numbers as decimals and hands 1e16 back as an integer; such floats are written as tags."""
    # An object value is not an AttributeValue, but a store could hand one over: it must not pass for a tag.
    attributes: dict[str, Any] = {"f": 1e16, "z": -0.0, "p": 0.5, "i": 10**20, "o": {"$float": "x"}}
    made = DecisionInputs(Profile("c", attributes), 3)
    data = made.to_json()["profile"]["attributes"]
    assert data == {
        "f": {"$float": "1e+16"},
        "z": {"$float": "-0.0"},
        "p": 0.5,
        "i": 10**20,
        "o": {"$json": {"$float": "x"}},
    }
    assert_same_inputs(DecisionInputs.from_json(made.to_json()), made)


def test_a_malformed_inputs_object_is_named() -> None:
    with pytest.raises(ValueError, match="not decision inputs"):
        DecisionInputs.from_json({"limit": 3})


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_is_plain_only_where_jsonb_gives_it_back(value: float) -> None:
    """jsonb keeps a number as the decimal it was written as, and hands it back as a float only when that
    decimal has a point and no exponent; -0.0 comes back as 0. Any other float must be written as a tag."""
    written = DecisionInputs(Profile("c", {"v": value}), 1).to_json()["profile"]["attributes"]["v"]
    if isinstance(written, float):
        text = json.dumps(written)
        assert "." in text
        assert "e" not in text.lower()
        assert not text.startswith("-0.0") or float(text) != 0.0
        assert float(text) == value
    else:
        assert written == {"$float": repr(value)}
