from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.domain.facts import project
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.profile import AttributeValue, OutcomeKind, Profile
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.synthetic import (
    DEFAULT_ACTION_IDS,
    EVENT_TYPES,
    SAMPLE_PATH,
    customer_id,
    generate_profiles,
    profile_to_record,
    read_sample,
    record_line,
    record_to_profile,
    write_sample,
)

RULESET_PATH = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"

# Seconds on purpose: times must still be whole minutes relative to it.
NOW = datetime(2031, 5, 17, 8, 42, 13, tzinfo=UTC)
COUNT = 1000

STRING, NUMBER, BOOLEAN = "string", "number", "boolean"
ATTRIBUTES: dict[str, str] = {
    "first_name": STRING,
    "product_name": STRING,
    "segment": STRING,
    "stage": STRING,
    "tenure_days": NUMBER,
    "age": NUMBER,
    "satisfaction_score": NUMBER,
    "balance_total": NUMBER,
    "products_count": NUMBER,
    "has_credit_card": BOOLEAN,
    "has_mortgage": BOOLEAN,
    "has_term_deposit": BOOLEAN,
    "has_personal_loan": BOOLEAN,
    "has_savings": BOOLEAN,
    "complaint_open": BOOLEAN,
    "vulnerable": BOOLEAN,
    "consent_marketing_calls": BOOLEAN,
    "consent_agent_offers": BOOLEAN,
    "do_not_call": BOOLEAN,
    "timezone": STRING,
    "days_to_birthday": NUMBER,
    "days_to_anniversary": NUMBER,
    "digital_logins_30d": NUMBER,
    "engagement_trend": NUMBER,
    "churn_score": NUMBER,
    "card_propensity": NUMBER,
    "recent_upgrade": BOOLEAN,
    "spend_change_pct": NUMBER,
}
RANGES: dict[str, tuple[float, float]] = {
    "tenure_days": (0, 15_000),
    "age": (18, 95),
    "satisfaction_score": (0, 10),
    "balance_total": (0, 2_000_000),
    "products_count": (1, 8),
    "days_to_birthday": (0, 364),
    "days_to_anniversary": (0, 364),
    "digital_logins_30d": (0, 120),
    "engagement_trend": (-1.0, 1.0),
    "churn_score": (0.0, 1.0),
    "card_propensity": (0.0, 1.0),
    "spend_change_pct": (-100, 300),
}
CHOICES: dict[str, set[str]] = {
    "segment": {"mass", "affluent", "premier", "small_business"},
    "stage": {"welcome", "maintenance", "rescue", "lost", "welcome_back"},
    "timezone": {"Europe/London", "Europe/Dublin", "America/New_York", "Asia/Singapore", "Australia/Sydney"},
}
EVENT_ATTRIBUTES: dict[str, dict[str, str]] = {
    "large_deposit": {"amount": NUMBER, "account_last4": STRING},
    "loan_application_abandoned": {"amount": NUMBER, "loan_type": STRING},
    "salary_change": {"change_pct": NUMBER, "employer": STRING},
    "card_declined_abroad": {"country": STRING, "amount": NUMBER, "merchant": STRING},
    "complaint_opened": {"category": STRING},
    "survey_completed": {"score": NUMBER},
    "product_upgraded": {"product": STRING},
    "account_closed": {"reason": STRING},
    "returned_after_absence": {"days_away": NUMBER},
    "large_withdrawal": {"amount": NUMBER},
    "mortgage_rate_expiring": {"days_left": NUMBER},
    "app_login_failures": {"failures": NUMBER},
}
# Complaints are logged before they are triaged, so a category may be absent.
OPTIONAL_EVENT_ATTRIBUTES: dict[str, set[str]] = {"complaint_opened": {"category"}}
EVENT_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("large_deposit", "amount"): (10_000, 500_000),
    ("salary_change", "change_pct"): (-50, 80),
    ("survey_completed", "score"): (0, 10),
    ("returned_after_absence", "days_away"): (60, 1000),
    ("mortgage_rate_expiring", "days_left"): (0, 180),
    ("app_login_failures", "failures"): (3, 20),
}
EVENT_CHOICES: dict[tuple[str, str], set[str]] = {
    ("loan_application_abandoned", "loan_type"): {"personal", "car", "home_improvement"},
    ("complaint_opened", "category"): {"fees", "service", "fraud", "app"},
}


@pytest.fixture(scope="module")
def population() -> list[Profile]:
    return list(generate_profiles(COUNT, now=NOW))


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


def has_type(value: AttributeValue, kind: str) -> bool:
    if kind == STRING:
        return isinstance(value, str)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole_minutes(delta: timedelta) -> bool:
    return delta % timedelta(minutes=1) == timedelta(0)


def test_same_arguments_give_identical_profiles() -> None:
    assert list(generate_profiles(200, now=NOW)) == list(generate_profiles(200, now=NOW))


def test_batches_equal_one_call(population: list[Profile]) -> None:
    batches = [profile for start in range(1, 301, 75) for profile in generate_profiles(75, now=NOW, start=start)]
    assert batches == population[:300]


def test_seed_changes_the_population() -> None:
    assert list(generate_profiles(20, now=NOW)) != list(generate_profiles(20, seed=7, now=NOW))


def test_ids_are_zero_padded_and_consecutive(population: list[Profile]) -> None:
    assert [p.customer_id for p in population] == [f"CUST-{i:06d}" for i in range(1, COUNT + 1)]
    assert all(re.fullmatch(r"CUST-\d{6}", p.customer_id) for p in population)
    assert [p.customer_id for p in generate_profiles(2, now=NOW, start=41)] == ["CUST-000041", "CUST-000042"]
    assert customer_id(999_999) == "CUST-999999"
    assert list(generate_profiles(0, now=NOW)) == []


@pytest.mark.parametrize(("count", "start"), [(-1, 1), (1, 0), (2, 999_999)])
def test_out_of_range_requests_are_rejected(count: int, start: int) -> None:
    with pytest.raises(ValueError, match=r"count|customers"):
        generate_profiles(count, now=NOW, start=start)


def test_every_attribute_present_with_its_type(population: list[Profile]) -> None:
    for profile in population:
        assert set(profile.attributes) == set(ATTRIBUTES)
        for name, kind in ATTRIBUTES.items():
            value = profile.attributes[name]
            if name == "satisfaction_score" and value is None:
                continue
            assert has_type(value, kind), (profile.customer_id, name, value)


def test_values_within_documented_ranges(population: list[Profile]) -> None:
    for profile in population:
        attributes = profile.attributes
        for name, (low, high) in RANGES.items():
            value = attributes[name]
            if value is None:
                continue
            assert isinstance(value, int | float)
            assert low <= value <= high, (profile.customer_id, name, value)
        for name, allowed in CHOICES.items():
            assert attributes[name] in allowed
        assert attributes["first_name"]
        assert attributes["product_name"]


def test_distributions_are_plausible(population: list[Profile]) -> None:
    def share(name: str, value: AttributeValue = True) -> float:
        return sum(p.attributes[name] == value for p in population) / COUNT

    assert 0.22 <= share("satisfaction_score", None) <= 0.38
    assert 0.005 <= share("vulnerable") <= 0.06
    assert 0.62 <= share("consent_marketing_calls") <= 0.78
    assert 0.85 <= share("consent_agent_offers") <= 0.95
    assert 0.04 <= share("do_not_call") <= 0.12
    assert share("stage", "lost") > 0.02
    assert all(set(CHOICES[name]) == {p.attributes[name] for p in population} for name in CHOICES)


def test_attributes_are_correlated(population: list[Profile]) -> None:
    def by(name: str, value: str) -> list[Profile]:
        return [p for p in population if p.attributes[name] == value]

    def median(profiles: list[Profile], name: str) -> float:
        return statistics.median(float(p.attributes[name] or 0) for p in profiles)

    welcome = by("stage", "welcome")
    assert welcome
    assert all(float(p.attributes["tenure_days"] or 0) <= 90 for p in welcome)
    assert median(by("segment", "premier"), "balance_total") > 5 * median(by("segment", "mass"), "balance_total")
    assert median(by("stage", "lost"), "churn_score") > median(by("stage", "maintenance"), "churn_score")
    mortgage_events = [p for p in population for e in p.events if e.type == "mortgage_rate_expiring"]
    assert all(p.attributes["has_mortgage"] for p in mortgage_events)


def test_names_and_balances_look_real(population: list[Profile]) -> None:
    names = {str(p.attributes["first_name"]) for p in population}
    assert len(names) > 100
    assert sum(not name.isascii() for name in names) > 20
    balances = [float(p.attributes["balance_total"] or 0) for p in population]
    assert sum(not b.is_integer() for b in balances) > COUNT // 2
    assert all(round(b, 2) == b for b in balances)


def test_events_are_recent_well_formed_and_cover_every_type(population: list[Profile]) -> None:
    seen: Counter[str] = Counter()
    unclassified = 0
    for profile in population:
        assert 0 <= len(profile.events) <= 4
        assert list(profile.events) == sorted(profile.events, key=lambda e: e.time)
        for event in profile.events:
            seen[event.type] += 1
            age = NOW - event.time
            assert timedelta(0) < age <= timedelta(days=20)
            assert is_whole_minutes(age)
            if event.expires_at is not None:
                assert event.expires_at > event.time
                assert is_whole_minutes(event.expires_at - NOW)
            spec = EVENT_ATTRIBUTES[event.type]
            optional = OPTIONAL_EVENT_ATTRIBUTES.get(event.type, set())
            assert set(spec) - optional <= set(event.attributes) <= set(spec)
            unclassified += event.type == "complaint_opened" and "category" not in event.attributes
            for name, kind in spec.items():
                if name in event.attributes:
                    assert has_type(event.attributes[name], kind), (event.type, name)
            for (kind, name), (low, high) in EVENT_RANGES.items():
                if kind == event.type:
                    value = event.attributes[name]
                    assert isinstance(value, int | float)
                    assert low <= value <= high
            for (kind, name), allowed in EVENT_CHOICES.items():
                if kind == event.type and name in event.attributes:
                    assert event.attributes[name] in allowed
    assert set(seen) == set(EVENT_TYPES) == set(EVENT_ATTRIBUTES)
    assert 0 < unclassified < seen["complaint_opened"] // 4
    assert min(seen.values()) >= 30, seen


def test_some_events_have_already_expired(population: list[Profile]) -> None:
    events = [e for p in population for e in p.events]
    with_expiry = [e for e in events if e.expires_at is not None]
    expired = [e for e in with_expiry if e.expires_at is not None and e.expires_at <= NOW]
    assert len(with_expiry) > len(events) // 4
    assert 0.01 * len(events) <= len(expired) <= 0.1 * len(events)


def test_contacts_use_given_actions_within_sixty_days(population: list[Profile]) -> None:
    for profile in population:
        assert 0 <= len(profile.contacts) <= 6
        for contact in profile.contacts:
            assert contact.action_id in DEFAULT_ACTION_IDS
            assert isinstance(contact.channel, Channel)
            assert isinstance(contact.outcome, OutcomeKind)
            age = NOW - contact.time
            assert timedelta(0) < age <= timedelta(days=60)
            tenure = profile.attributes["tenure_days"]
            assert isinstance(tenure, int)
            assert age <= max(timedelta(hours=1), timedelta(days=tenure)), "contacted before joining"
            assert is_whole_minutes(age)
            if contact.channel is Channel.OUTBOUND_DIALER:
                assert profile.attributes["consent_marketing_calls"]
                assert not profile.attributes["do_not_call"]
    contacts = [c for p in population for c in p.contacts]
    assert {c.channel for c in contacts} == set(Channel)
    # The sample predates "not now" and is kept as it was, so the sample customers named in the docs stay the same.
    assert {c.outcome for c in contacts} == set(OutcomeKind) - {OutcomeKind.NOT_NOW}

    custom = list(generate_profiles(100, now=NOW, action_ids=["only-this"]))
    assert {c.action_id for p in custom for c in p.contacts} == {"only-this"}
    assert all(not p.contacts for p in generate_profiles(50, now=NOW, action_ids=()))


def test_record_round_trip_is_exact_and_reanchors(population: list[Profile]) -> None:
    later = NOW + timedelta(days=400, minutes=7)
    for profile in population:
        record = json.loads(json.dumps(profile_to_record(profile, NOW), ensure_ascii=False))
        assert record_to_profile(record, NOW) == profile
        moved = record_to_profile(record, later)
        assert [e.time - NOW for e in profile.events] == [e.time - later for e in moved.events]
        assert [c.time - NOW for c in profile.contacts] == [c.time - later for c in moved.contacts]
    expired = next(e for p in population for e in p.events if e.expires_at and e.expires_at <= NOW)
    owner = next(p for p in population if expired in p.events)
    expired_record = next(e for e in profile_to_record(owner, NOW)["events"] if e.get("expires_in_minutes", 0) < 0)
    assert expired_record["age_minutes"] > 0


def test_record_rejects_non_scalar_attributes() -> None:
    record = {"customer_id": "CUST-000001", "attributes": {"age": [1]}, "events": [], "contacts": []}
    with pytest.raises(TypeError):
        record_to_profile(record, NOW)


@pytest.mark.parametrize("name", ["sample.jsonl", "sample.jsonl.gz"])
def test_write_then_read_sample(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_sample(path, 40, 99, ("a", "b"))
    assert list(read_sample(path, NOW)) == list(generate_profiles(40, seed=99, now=NOW, action_ids=("a", "b")))
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    else:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert list(json.loads(first)) == sorted(json.loads(first))


def test_bundled_sample_matches_the_generator() -> None:
    assert SAMPLE_PATH.is_file()
    assert (SAMPLE_PATH.parent / "__init__.py").is_file()
    lines = SAMPLE_PATH.read_text(encoding="utf-8").splitlines()
    expected = [record_line(p, NOW) for p in generate_profiles(COUNT, now=NOW)]
    assert len(lines) == COUNT
    assert lines == expected, "bundled sample is stale: run `python -m nba_service.synthetic`"
    assert next(read_sample(SAMPLE_PATH, NOW)).customer_id == "CUST-000001"


def test_default_action_ids_are_the_bundled_rulesets(ruleset: Ruleset) -> None:
    """The sample's contact history uses the bundled ruleset's actions. The overdraft notice came with ruleset
    1.3.0 and is left out so that the sample, and the customers the docs name, stay as they were."""
    assert tuple(a for a in ruleset.actions if a != "overdraft-terms-notice") == DEFAULT_ACTION_IDS


def test_contacts_only_use_channels_the_action_has_a_script_for(population: list[Profile], ruleset: Ruleset) -> None:
    for profile in population:
        for contact in profile.contacts:
            assert contact.channel in ruleset.actions[contact.action_id].scripts, contact


def test_bundled_sample_exercises_the_bundled_ruleset(ruleset: Ruleset) -> None:
    evaluator = ReferenceEvaluator(ruleset)
    counts: list[int] = []
    matched_rules: set[int] = set()
    for profile in read_sample(SAMPLE_PATH, NOW):
        matched = evaluator.evaluate(project(ruleset, profile, NOW).facts)
        counts.append(len(matched))
        matched_rules.update(matched)
    never = sorted(rule.id for index, rule in enumerate(ruleset.rules) if index not in matched_rules)
    assert len(matched_rules) >= 0.85 * len(ruleset.rules), never
    assert statistics.median(counts) >= 2
