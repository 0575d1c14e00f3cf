"""A deterministic synthetic customer population for a retail bank.

Demos, load tests and the bundled sample need customers whose facts hang together (a premier
customer holds more money, a lost customer has stopped logging in), without touching real data.

Each customer draws from its own random stream seeded by (seed, index), so any slice of the
population can be regenerated on its own and batches agree with one long run. Every time is a
whole number of minutes before `now`, and the sample file stores those offsets rather than
timestamps, so loading it at any later moment re-anchors the events to the load time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

from nba_service.domain.contact_points import PhoneNumber, PhoneType, phone_from_json, phone_to_json
from nba_service.domain.model import Channel
from nba_service.domain.profile import AttributeValue, Contact, Event, OutcomeKind, Profile

DEFAULT_SEED: Final = 20261122
DEFAULT_SAMPLE_COUNT: Final = 1000
SAMPLE_PATH: Final = Path(__file__).resolve().parent / "data" / "sample-customers.jsonl"

# The action ids of the bundled ruleset (rulesets/retail-banking.yaml), in file order, so generated
# contact history refers to real actions; a test keeps the two in step.
DEFAULT_ACTION_IDS: Final[tuple[str, ...]] = (
    "vulnerable-support-check",
    "fraud-concern-handover",
    "complaint-acknowledge",
    "complaint-progress-update",
    "card-abroad-unblock",
    "app-login-help",
    "hardship-check",
    "survey-follow-up",
    "term-deposit-rates",
    "savings-from-deposit",
    "loan-application-resume",
    "salary-rise-savings-plan",
    "mortgage-rate-switch",
    "wealth-review-invite",
    "premier-upgrade",
    "credit-card-offer",
    "card-offer-analytics",
    "savings-account-offer",
    "mortgage-consultation",
    "retirement-planning",
    "business-banking-review",
    "welcome-call",
    "app-setup-help",
    "first-month-checkin",
    "welcome-back-greeting",
    "welcome-back-review",
    "birthday-greeting",
    "anniversary-thanks",
    "loyalty-thanks",
    "upgrade-thanks",
    "referral-ask",
    "referral-after-survey",
    "large-withdrawal-check",
    "account-closure-followup",
    "rescue-check-in",
    "rescue-survey",
    "win-back-offer",
    "churn-retention-call",
)

EVENT_TYPES: Final[tuple[str, ...]] = (
    "large_deposit",
    "loan_application_abandoned",
    "salary_change",
    "card_declined_abroad",
    "complaint_opened",
    "survey_completed",
    "product_upgraded",
    "account_closed",
    "returned_after_absence",
    "large_withdrawal",
    "mortgage_rate_expiring",
    "app_login_failures",
)

MAX_CUSTOMERS: Final = 999_999
EVENT_WINDOW: Final = timedelta(days=20)
CONTACT_WINDOW: Final = timedelta(days=60)

Record = dict[str, Any]
_T = TypeVar("_T")

_MINUTE: Final = timedelta(minutes=1)
_MINUTES_PER_DAY: Final = 24 * 60
# Records are relative to `now`, so the anchor used when writing a sample never shows in the file.
_SAMPLE_ANCHOR: Final = datetime(2026, 1, 1, tzinfo=UTC)

_SEGMENTS: Final = {"mass": 60.0, "affluent": 22.0, "premier": 8.0, "small_business": 10.0}
_STAGES: Final = {"welcome": 10.0, "maintenance": 62.0, "rescue": 12.0, "lost": 6.0, "welcome_back": 10.0}
_TIMEZONES: Final = {
    "Europe/London": 55.0,
    "Europe/Dublin": 12.0,
    "America/New_York": 13.0,
    "Asia/Singapore": 10.0,
    "Australia/Sydney": 10.0,
}
_HOME_COUNTRY: Final = {
    "Europe/London": "GB",
    "Europe/Dublin": "IE",
    "America/New_York": "US",
    "Asia/Singapore": "SG",
    "Australia/Sydney": "AU",
}

# Numbers from ranges set aside for drama and testing where the country has one (Ofcom's 07700 900xxx and
# 020 7946 0xxx, the North American 555-01xx, ACMA's 0491 570 xxx and 02 5550 xxxx), so a synthetic call list
# can never ring a real person. Each entry: (prefix, how many random digits follow).
_PHONE_RANGES: Final[dict[str, dict[PhoneType, tuple[str, int]]]] = {
    "GB": {PhoneType.MOBILE: ("+447700900", 3), PhoneType.HOME: ("+44207946", 4), PhoneType.WORK: ("+441134960", 3)},
    "IE": {PhoneType.MOBILE: ("+35385155", 4), PhoneType.HOME: ("+35319110", 4), PhoneType.WORK: ("+35321490", 4)},
    "US": {PhoneType.MOBILE: ("+121255501", 2), PhoneType.HOME: ("+191755501", 2), PhoneType.WORK: ("+164655501", 2)},
    "SG": {PhoneType.MOBILE: ("+658555", 4), PhoneType.HOME: ("+656555", 4), PhoneType.WORK: ("+656556", 4)},
    "AU": {PhoneType.MOBILE: ("+61491570", 3), PhoneType.HOME: ("+61255501", 3), PhoneType.WORK: ("+61255502", 3)},
}
_PHONE_COUNTS: Final = {1: 55.0, 2: 35.0, 3: 10.0}
_PHONE_CONSENT: Final = 0.9

# fmt: off
_FIRST_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "british": ("Oliver", "Amelia", "George", "Isla", "Harry", "Olivia", "Jack", "Charlotte", "Thomas",
                "Sophie", "James", "Zoë", "Chloë", "Margaret", "Alfie", "Poppy", "Rhys", "Eleri"),
    "irish": ("Aoife", "Siobhán", "Seán", "Niamh", "Pádraig", "Caoimhe", "Eoin", "Róisín", "Ciarán",
              "Orla", "Saoirse", "Tadhg"),
    "american": ("Emma", "Liam", "Ava", "Noah", "Madison", "Jackson", "DeShawn", "Aaliyah", "Tyler",
                 "Brooklyn", "Ethan", "Kayla"),
    "australian": ("Lachlan", "Matilda", "Mia", "Cooper", "Harper", "Banjo", "Ruby", "Aroha", "Nikau"),
    "hispanic": ("José", "María", "Sofía", "Martín", "Lucía", "Andrés", "Inés", "Álvaro", "Nicolás",
                 "Begoña", "Ximena", "Joaquín"),
    "polish": ("Łukasz", "Małgorzata", "Wojciech", "Zofia", "Paweł", "Agnieszka", "Michał",
               "Katarzyna", "Jędrzej", "Bożena"),
    "germanic": ("Jürgen", "Lena", "Søren", "Björn", "Åsa", "Käthe", "Jörg", "Ingrid", "Lars"),
    "french": ("Élodie", "François", "Hélène", "Loïc", "Océane", "Jérôme", "Gaëlle", "Benoît"),
    "greek": ("Γιώργος", "Ελένη", "Dimitris", "Νίκος", "Katerina", "Σοφία"),
    "chinese": ("伟", "芳", "秀英", "建国", "丽娜", "子涵", "浩然", "欣怡", "Wei Ling", "Jun Jie", "Mei"),
    "japanese": ("美咲", "陽翔", "結衣", "蓮", "さくら", "Haruto", "Yui"),
    "korean": ("지민", "서연", "민준", "Min-jun", "Seo-yeon"),
    "vietnamese": ("Thảo", "Minh", "Quỳnh", "Phương", "Đức", "Ngọc"),
    "indian": ("Priya", "Arjun", "Aarav", "Ananya", "Rohan", "Kavya", "Vikram", "Saanvi", "अनन्या",
               "அருண்"),
    "malay": ("Nur Aisyah", "Muhammad Hafiz", "Siti", "Amirul", "Nurul", "Farhan"),
    "arabic": ("Mohammed", "Fatima", "Omar", "Layla", "Yusuf", "Aisha", "محمد", "فاطمة", "Zainab"),
    "west_african": ("Chinedu", "Ngozi", "Oluwaseun", "Adaeze", "Kwame", "Ama", "Thandiwe"),
}
_NAME_CULTURES: Final[dict[str, dict[str, float]]] = {
    "Europe/London": {"british": 44, "polish": 8, "indian": 12, "arabic": 6, "west_african": 6,
                      "hispanic": 4, "french": 4, "chinese": 3, "irish": 4, "greek": 2, "germanic": 3,
                      "vietnamese": 2, "japanese": 1, "korean": 1},
    "Europe/Dublin": {"irish": 55, "british": 12, "polish": 12, "hispanic": 4, "french": 4,
                      "west_african": 4, "indian": 5, "chinese": 2, "germanic": 2},
    "America/New_York": {"american": 42, "hispanic": 20, "chinese": 6, "indian": 8, "west_african": 7,
                         "irish": 5, "korean": 4, "polish": 3, "greek": 3, "arabic": 2},
    "Asia/Singapore": {"chinese": 48, "malay": 18, "indian": 16, "british": 6, "japanese": 4,
                       "korean": 4, "vietnamese": 4},
    "Australia/Sydney": {"australian": 28, "british": 18, "chinese": 12, "vietnamese": 8, "indian": 10,
                         "greek": 6, "korean": 4, "japanese": 3, "arabic": 4, "hispanic": 4, "irish": 3},
}
_PRODUCTS: Final[dict[str, tuple[str, ...]]] = {
    "mass": ("Everyday Account", "Everyday Account", "Basic Account", "Everyday Saver"),
    "affluent": ("Plus Current Account", "Rewards Account", "Plus Current Account"),
    "premier": ("Premier Current Account", "Premier World Account"),
    "small_business": ("Business Current Account", "Business Saver", "Business Current Account"),
}
_UPGRADED_PRODUCTS: Final = ("Premier Current Account", "Platinum Credit Card", "Rewards Account",
                             "Plus Current Account", "Fixed Rate Saver", "Business Current Account Plus")
_EMPLOYERS: Final = ("NHS", "Tesco", "Accenture", "Deloitte", "Self-employed", "Amazon", "Ørsted", "Siemens",
                     "City Council", "University of Leeds", "DBS Bank", "Qantas", "Ryanair", "Woolworths",
                     "Société Générale", "Müller Logistics")
_COUNTRIES: Final = ("ES", "FR", "IT", "PT", "DE", "GR", "US", "GB", "IE", "TH", "JP", "AE", "MX", "NZ", "SG",
                     "AU", "TR", "HR")
_MERCHANTS: Final = ("Booking.com", "Airbnb", "Café de Flore", "Uniqlo Ginza", "SNCF", "Marriott", "Dubai Duty Free",
                     "El Corte Inglés", "Shell", "Emirates", "7-Eleven", "Galeries Lafayette", "Hertz", "Uber")
_CLOSE_REASONS: Final = ("switched to competitor", "fees too high", "moved abroad", "unhappy with service",
                         "consolidating accounts", "bereavement")
_COMPLAINT_CATEGORIES: Final = {"fees": 35.0, "service": 35.0, "fraud": 12.0, "app": 18.0}
_LOAN_AMOUNTS: Final = {"personal": (1_000.0, 25_000.0), "car": (5_000.0, 40_000.0),
                        "home_improvement": (5_000.0, 60_000.0)}
# fmt: on

# A few short-lived events age out inside the 20-day window, which is what keeps some expired.
_EVENT_LIFETIME: Final[dict[str, timedelta | None]] = {
    "large_deposit": timedelta(days=30),
    "loan_application_abandoned": timedelta(days=30),
    "salary_change": None,
    "card_declined_abroad": timedelta(days=14),
    "complaint_opened": None,
    "survey_completed": None,
    "product_upgraded": timedelta(days=60),
    "account_closed": None,
    "returned_after_absence": timedelta(days=30),
    "large_withdrawal": timedelta(days=30),
    "mortgage_rate_expiring": None,
    "app_login_failures": timedelta(days=7),
}

# Bundled actions with a script for one channel only, so history never shows a contact the ruleset
# could not have made; action ids it does not know fit both channels.
_CHANNEL_UNFIT: Final[dict[Channel, frozenset[str]]] = {
    Channel.AGENT_DESKTOP: frozenset(
        {"card-offer-analytics", "rescue-survey", "win-back-offer", "churn-retention-call"}
    ),
    Channel.OUTBOUND_DIALER: frozenset(
        {"vulnerable-support-check", "fraud-concern-handover", "app-login-help", "hardship-check", "loyalty-thanks"}
    ),
}
# The actions a customer at each stage has most likely heard about lately; a share of contact history
# is about them, so the caps on those actions really bite. The rest is spread over every action.
_STAGE_ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "welcome": ("welcome-call", "app-setup-help", "first-month-checkin", "savings-account-offer"),
    "maintenance": (
        "credit-card-offer",
        "savings-account-offer",
        "referral-ask",
        "loyalty-thanks",
        "wealth-review-invite",
        "app-setup-help",
    ),
    "rescue": ("rescue-check-in", "rescue-survey", "win-back-offer", "churn-retention-call", "large-withdrawal-check"),
    "lost": ("win-back-offer", "rescue-check-in", "account-closure-followup", "churn-retention-call"),
    "welcome_back": ("welcome-back-review", "welcome-back-greeting", "app-setup-help", "credit-card-offer"),
}
_STAGE_ACTION_SHARE: Final = 0.4

# How much less likely a background event is when the customer already has one of that kind.
_REPEAT_WEIGHT: Final = 0.15

_DIALER_OUTCOMES: Final = {
    OutcomeKind.NO_ANSWER: 35.0,
    OutcomeKind.DECLINED: 25.0,
    OutcomeKind.ACCEPTED: 14.0,
    OutcomeKind.CALLBACK_REQUESTED: 10.0,
    OutcomeKind.CONVERTED: 6.0,
    OutcomeKind.NOT_OFFERED: 10.0,
}
_AGENT_OUTCOMES: Final = {
    OutcomeKind.DECLINED: 35.0,
    OutcomeKind.ACCEPTED: 20.0,
    OutcomeKind.CONVERTED: 10.0,
    OutcomeKind.CALLBACK_REQUESTED: 5.0,
    OutcomeKind.NOT_OFFERED: 30.0,
}


@dataclass(frozen=True, slots=True)
class _SegmentShape:
    """How a segment differs: who is in it, how much they hold, which products they tend to have."""

    age_low: int
    age_high: int
    age_mode: int
    balance_median: float
    balance_sigma: float
    credit_card: float
    mortgage: float
    term_deposit: float
    personal_loan: float
    savings: float


@dataclass(frozen=True, slots=True)
class _StageMood:
    """How a journey stage shows in behaviour: engagement, churn risk, satisfaction and complaints."""

    engagement: float
    churn: float
    satisfaction: float
    complaint: float
    upgrade: float


_SEGMENT_SHAPES: Final = {
    "mass": _SegmentShape(18, 95, 36, 4_000.0, 1.3, 0.35, 0.15, 0.06, 0.16, 0.45),
    "affluent": _SegmentShape(24, 92, 48, 40_000.0, 0.8, 0.6, 0.35, 0.22, 0.12, 0.7),
    "premier": _SegmentShape(28, 95, 54, 300_000.0, 0.7, 0.8, 0.45, 0.4, 0.05, 0.85),
    "small_business": _SegmentShape(21, 82, 45, 30_000.0, 1.1, 0.45, 0.2, 0.12, 0.2, 0.55),
}
_STAGE_MOODS: Final = {
    "welcome": _StageMood(engagement=0.35, churn=0.12, satisfaction=8.0, complaint=0.03, upgrade=0.02),
    "maintenance": _StageMood(engagement=0.05, churn=0.1, satisfaction=7.8, complaint=0.03, upgrade=0.08),
    "rescue": _StageMood(engagement=-0.45, churn=0.62, satisfaction=4.5, complaint=0.3, upgrade=0.02),
    "lost": _StageMood(engagement=-0.7, churn=0.9, satisfaction=3.0, complaint=0.15, upgrade=0.0),
    "welcome_back": _StageMood(engagement=0.4, churn=0.3, satisfaction=6.5, complaint=0.03, upgrade=0.05),
}


@dataclass(frozen=True, slots=True)
class _Person:
    """The attribute set of profile-fields.md, typed so the correlated draws can read each other."""

    first_name: str
    product_name: str
    segment: str
    stage: str
    tenure_days: int
    age: int
    satisfaction_score: int | None
    balance_total: float
    products_count: int
    has_credit_card: bool
    has_mortgage: bool
    has_term_deposit: bool
    has_personal_loan: bool
    has_savings: bool
    complaint_open: bool
    vulnerable: bool
    consent_marketing_calls: bool
    consent_agent_offers: bool
    do_not_call: bool
    timezone: str
    days_to_birthday: int
    days_to_anniversary: int
    digital_logins_30d: int
    engagement_trend: float
    churn_score: float
    card_propensity: float
    recent_upgrade: bool
    spend_change_pct: float

    def attributes(self) -> dict[str, AttributeValue]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def customer_id(index: int) -> str:
    if not 1 <= index <= MAX_CUSTOMERS:
        raise ValueError(f"customer index {index} is outside 1..{MAX_CUSTOMERS}")
    return f"CUST-{index:06d}"


def generate_profiles(
    count: int,
    *,
    seed: int = DEFAULT_SEED,
    now: datetime,
    start: int = 1,
    action_ids: Sequence[str] = DEFAULT_ACTION_IDS,
) -> Iterator[Profile]:
    """Customers `start` .. `start + count - 1`, lazily, so a load test can stream millions.

    Bad arguments fail at the call, not at the first `next()`, so a caller sees the mistake where it is made.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if start < 1 or start + count - 1 > MAX_CUSTOMERS:
        raise ValueError(f"customers {start}..{start + count - 1} do not fit in 1..{MAX_CUSTOMERS}")
    actions = tuple(action_ids)
    return (generate_profile(index, seed=seed, now=now, action_ids=actions) for index in range(start, start + count))


def generate_profile(
    index: int,
    *,
    seed: int = DEFAULT_SEED,
    now: datetime,
    action_ids: Sequence[str] = DEFAULT_ACTION_IDS,
) -> Profile:
    """One customer, independent of every other index, so batches and single runs agree."""
    ident = customer_id(index)
    # String seeds are hashed with SHA-512 by CPython, so this is stable across runs and hash seeds.
    rng = random.Random(f"{seed}:{index}")
    person = _draw_person(rng)
    events = _draw_events(rng, person, now)
    contacts = _draw_contacts(rng, person, now, action_ids)
    # A stream of its own, so adding numbers changed none of the draws above for any existing seed.
    phones = _draw_phones(random.Random(f"{seed}:{index}:phones"), person)
    return Profile(ident, person.attributes(), events, contacts, phones)


def profile_to_record(profile: Profile, now: datetime) -> Record:
    """Times become minutes relative to `now` so the record means the same whenever it is loaded."""
    events: list[Record] = []
    for event in profile.events:
        item: Record = {
            "type": event.type,
            "age_minutes": _minutes(now - event.time),
            "attributes": dict(event.attributes),
        }
        if event.expires_at is not None:
            item["expires_in_minutes"] = _minutes(event.expires_at - now)
        events.append(item)
    contacts: list[Record] = [
        {
            "action_id": contact.action_id,
            "channel": contact.channel.value,
            "age_minutes": _minutes(now - contact.time),
            "outcome": contact.outcome.value,
        }
        for contact in profile.contacts
    ]
    return {
        "customer_id": profile.customer_id,
        "attributes": dict(profile.attributes),
        "events": events,
        "contacts": contacts,
        "phones": [phone_to_json(phone) for phone in profile.phones],
    }


def record_to_profile(record: Mapping[str, Any], now: datetime) -> Profile:
    """Rebuild a profile anchored at `now`; rejects values a real store could never return."""
    events = tuple(
        Event(
            type=str(item["type"]),
            time=now - int(item["age_minutes"]) * _MINUTE,
            attributes=_checked_attributes(item.get("attributes", {})),
            expires_at=(
                None if item.get("expires_in_minutes") is None else now + int(item["expires_in_minutes"]) * _MINUTE
            ),
        )
        for item in record.get("events", ())
    )
    contacts = tuple(
        Contact(
            action_id=str(item["action_id"]),
            channel=Channel(item["channel"]),
            time=now - int(item["age_minutes"]) * _MINUTE,
            outcome=OutcomeKind(item["outcome"]),
        )
        for item in record.get("contacts", ())
    )
    phones = tuple(phone_from_json(item, f"phones[{i}]") for i, item in enumerate(record.get("phones", ())))
    return Profile(
        customer_id=str(record["customer_id"]),
        attributes=_checked_attributes(record["attributes"]),
        events=events,
        contacts=contacts,
        phones=phones,
    )


def write_sample(
    path: str | Path,
    count: int = DEFAULT_SAMPLE_COUNT,
    seed: int = DEFAULT_SEED,
    action_ids: Sequence[str] = DEFAULT_ACTION_IDS,
) -> None:
    """JSON Lines with sorted keys, so regenerating an unchanged population gives a byte-identical file."""
    target = Path(path)
    profiles = generate_profiles(count, seed=seed, now=_SAMPLE_ANCHOR, action_ids=action_ids)
    lines = (_record_line(profile_to_record(profile, _SAMPLE_ANCHOR)) for profile in profiles)
    with _open_text(target, "w") as stream:
        for line in lines:
            stream.write(line)
            stream.write("\n")


def read_sample(path: str | Path, now: datetime) -> Iterator[Profile]:
    """Profiles from a sample file, re-anchored to `now`; lazy, so large samples stream."""
    with _open_text(Path(path), "r") as stream:
        for line in stream:
            if line.strip():
                yield record_to_profile(json.loads(line), now)


def record_line(profile: Profile, now: datetime) -> str:
    """The exact line `write_sample` writes for a profile, for comparing a file with the generator."""
    return _record_line(profile_to_record(profile, now))


def _record_line(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _open_text(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if not path.name.endswith(".gz"):
        return path.open(mode, encoding="utf-8", newline="\n")
    if mode == "w":
        return gzip.open(path, "wt", encoding="utf-8", newline="\n")
    return gzip.open(path, "rt", encoding="utf-8", newline="\n")


def _minutes(delta: timedelta) -> int:
    return round(delta / _MINUTE)


def _checked_attributes(raw: object) -> dict[str, AttributeValue]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"attributes must be an object, got {type(raw).__name__}")
    checked: dict[str, AttributeValue] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str | int | float | bool)):
            raise TypeError(f"attribute {key!r} has unsupported value {value!r}")
        checked[key] = value
    return checked


def _pick(rng: random.Random, weights: Mapping[_T, float]) -> _T:
    return rng.choices(tuple(weights), weights=tuple(weights.values()))[0]


def _chance(rng: random.Random, probability: float) -> bool:
    return rng.random() < probability


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(median), sigma)


def _cents(value: float) -> float:
    return float(round(value, 2))


def _draw_person(rng: random.Random) -> _Person:
    segment = _pick(rng, _SEGMENTS)
    stage = _pick(rng, _STAGES)
    timezone = _pick(rng, _TIMEZONES)
    first_name = rng.choice(_FIRST_NAMES[_pick(rng, _NAME_CULTURES[timezone])])
    shape = _SEGMENT_SHAPES[segment]
    mood = _STAGE_MOODS[stage]

    age = round(rng.triangular(shape.age_low, shape.age_high, shape.age_mode))

    max_tenure = min(15_000, (age - 16) * 365)
    if stage == "welcome":
        tenure_days = rng.randint(0, 90)
    else:
        low, mode = {"welcome_back": (365, 3_000), "lost": (180, 2_000)}.get(stage, (91, 2_500))
        tenure_days = round(rng.triangular(low, max_tenure, min(max_tenure, mode)))

    if segment == "mass" and age < 24 and _chance(rng, 0.6):
        product_name = "Student Account"
    else:
        product_name = rng.choice(_PRODUCTS[segment])

    balance = _lognormal(rng, shape.balance_median, shape.balance_sigma)
    if stage == "lost":
        balance = 0.0 if _chance(rng, 0.4) else balance * 0.05
    elif stage == "welcome":
        balance *= 0.4
    balance_total = _cents(_clip(balance, 0.0, 2_000_000.0))

    holding = 0.3 if stage == "lost" else 1.0
    mortgage_age = 0.1 if age < 25 else 0.4 if age > 70 else 1.0
    has_credit_card = _chance(rng, holding * shape.credit_card)
    has_mortgage = _chance(rng, holding * mortgage_age * shape.mortgage)
    has_term_deposit = _chance(rng, holding * (1.5 if age > 60 else 1.0) * shape.term_deposit)
    has_personal_loan = _chance(rng, holding * shape.personal_loan)
    has_savings = _chance(rng, holding * shape.savings)
    holdings = sum((has_credit_card, has_mortgage, has_term_deposit, has_personal_loan, has_savings))
    extras = 0 if stage == "lost" else _pick(rng, {0: 60.0, 1: 30.0, 2: 10.0})
    products_count = min(8, 1 + holdings + extras)

    complaint_open = _chance(rng, mood.complaint)
    vulnerable = _chance(rng, 0.09 if age >= 80 else 0.025)
    do_not_call = _chance(rng, 0.08)
    consent_marketing_calls = _chance(rng, 0.15 if do_not_call else 0.75)
    consent_agent_offers = _chance(rng, 0.9)

    engagement_trend = round(_clip(rng.gauss(mood.engagement, 0.25), -1.0, 1.0), 2)
    churn = mood.churn + (0.15 if complaint_open else 0.0) - 0.1 * engagement_trend + rng.gauss(0.0, 0.08)
    churn_score = round(_clip(churn, 0.001, 0.999), 3)

    propensity = rng.betavariate(1.5, 9.0) if has_credit_card else rng.betavariate(2.0, 4.0)
    if 25 <= age <= 55:
        propensity += 0.1
    if segment in ("affluent", "premier"):
        propensity += 0.08
    card_propensity = round(_clip(propensity, 0.001, 0.999), 3)

    if stage == "lost":
        digital_logins_30d = rng.randint(0, 2)
    else:
        mean_logins = 25.0 if age < 35 else 14.0 if age < 60 else 5.0
        if stage == "rescue":
            mean_logins *= 0.5
        digital_logins_30d = round(_clip(rng.gammavariate(1.5, mean_logins / 1.5), 0.0, 120.0))

    if stage == "lost":
        spend = rng.uniform(-100.0, -50.0)
    elif stage == "rescue":
        spend = rng.gauss(-25.0, 25.0)
    elif has_credit_card and _chance(rng, 0.06):
        # The card went into a drawer, or spending moved to another bank's card.
        spend = rng.uniform(-100.0, -40.0)
    elif _chance(rng, 0.05):
        spend = rng.uniform(50.0, 300.0)
    else:
        spend = rng.gauss(4.0, 22.0)
    spend_change_pct = round(_clip(spend, -100.0, 300.0), 1)

    satisfaction_score: int | None = None
    if not _chance(rng, 0.3):
        expected = mood.satisfaction - (3.0 if complaint_open else 0.0)
        satisfaction_score = round(_clip(rng.gauss(expected, 1.8), 0.0, 10.0))

    recent_upgrade = _chance(rng, mood.upgrade)

    return _Person(
        first_name=first_name,
        product_name=product_name,
        segment=segment,
        stage=stage,
        tenure_days=tenure_days,
        age=age,
        satisfaction_score=satisfaction_score,
        balance_total=balance_total,
        products_count=products_count,
        has_credit_card=has_credit_card,
        has_mortgage=has_mortgage,
        has_term_deposit=has_term_deposit,
        has_personal_loan=has_personal_loan,
        has_savings=has_savings,
        complaint_open=complaint_open,
        vulnerable=vulnerable,
        consent_marketing_calls=consent_marketing_calls,
        consent_agent_offers=consent_agent_offers,
        do_not_call=do_not_call,
        timezone=timezone,
        days_to_birthday=rng.randint(0, 364),
        days_to_anniversary=(365 - tenure_days % 365) % 365,
        digital_logins_30d=digital_logins_30d,
        engagement_trend=engagement_trend,
        churn_score=churn_score,
        card_propensity=card_propensity,
        recent_upgrade=recent_upgrade,
        spend_change_pct=spend_change_pct,
    )


def _event_weights(person: _Person) -> dict[str, float]:
    """How likely each event is as a customer's 'background' event, given who they are."""
    wealthy = person.segment in ("affluent", "premier")
    return {
        "large_deposit": 14.0 if wealthy else 8.0,
        "loan_application_abandoned": 8.0 if person.stage == "welcome" else 3.0 if person.has_personal_loan else 6.0,
        "salary_change": 4.0 if person.segment == "small_business" else 9.0,
        "card_declined_abroad": 7.0,
        "complaint_opened": 3.0,
        "survey_completed": 0.0 if person.satisfaction_score is None else 10.0,
        "product_upgraded": 2.0 if person.recent_upgrade else 0.0,
        "account_closed": 1.0,
        "returned_after_absence": 0.5,
        "large_withdrawal": 14.0 if person.stage == "rescue" else 6.0,
        "mortgage_rate_expiring": 14.0 if person.has_mortgage else 0.0,
        "app_login_failures": (
            1.0 if person.digital_logins_30d == 0 else 11.0 if person.age >= 70 or person.stage == "welcome" else 6.0
        ),
    }


def _draw_events(rng: random.Random, person: _Person, now: datetime) -> tuple[Event, ...]:
    # Events that explain the customer's state are drawn before background ones, so they fit the 0..4 budget.
    linked = [
        kind
        for kind, probability in (
            ("account_closed", 0.75 if person.stage == "lost" else 0.0),
            ("returned_after_absence", 0.8 if person.stage == "welcome_back" else 0.0),
            ("complaint_opened", 0.6 if person.complaint_open else 0.0),
            ("product_upgraded", 0.7 if person.recent_upgrade else 0.0),
        )
        if _chance(rng, probability)
    ]
    count = max(len(linked), _pick(rng, {0: 6.0, 1: 15.0, 2: 26.0, 3: 28.0, 4: 25.0}))
    weights = _event_weights(person)
    kinds = list(linked)
    while len(kinds) < count:
        # A second event of a kind already drawn is possible (two deposits) but rarer than a new kind.
        kind = _pick(rng, {k: w * (_REPEAT_WEIGHT if k in kinds else 1.0) for k, w in weights.items()})
        kinds.append(kind)
    events = [_draw_event(rng, person, now, kind) for kind in kinds]
    return tuple(sorted(events, key=lambda event: event.time))


def live_event(rng: random.Random, attributes: Mapping[str, AttributeValue], at: datetime) -> Event:
    """A background event happening at `at` to the customer `generate_profile` made with these attributes: the
    kinds are weighted by who they are, as in their generated history, so a simulated day's events (`nba
    simulate`) look like the ones the sample already holds."""
    person = _Person(**{f.name: attributes[f.name] for f in fields(_Person)})  # type: ignore[arg-type]
    kind = _pick(rng, _event_weights(person))
    return _draw_event(rng, person, at, kind, age_minutes=0)


def _event_age_minutes(rng: random.Random) -> int:
    """Skewed to the recent past, as live event feeds are: most events are hours or a few days old."""
    band = rng.random()
    if band < 0.4:
        return rng.randint(1, _MINUTES_PER_DAY)
    if band < 0.65:
        return rng.randint(_MINUTES_PER_DAY, 3 * _MINUTES_PER_DAY)
    if band < 0.82:
        return rng.randint(3 * _MINUTES_PER_DAY, 7 * _MINUTES_PER_DAY)
    return rng.randint(7 * _MINUTES_PER_DAY, int(EVENT_WINDOW / _MINUTE))


def _draw_event(rng: random.Random, person: _Person, now: datetime, kind: str, age_minutes: int | None = None) -> Event:
    time = now - (_event_age_minutes(rng) if age_minutes is None else age_minutes) * _MINUTE
    attributes = _event_attributes(rng, person, kind)
    lifetime = _EVENT_LIFETIME[kind]
    if kind == "mortgage_rate_expiring":
        # The event stops mattering when the rate it warns about has expired.
        days_left = attributes["days_left"]
        assert isinstance(days_left, int)
        lifetime = timedelta(days=days_left)
    expires_at = None if lifetime is None else time + lifetime
    return Event(type=kind, time=time, attributes=attributes, expires_at=expires_at)


def _event_attributes(rng: random.Random, person: _Person, kind: str) -> dict[str, AttributeValue]:
    wealthy = person.segment in ("affluent", "premier")
    match kind:
        case "large_deposit":
            amount = 10_000.0 + _lognormal(rng, 50_000.0 if wealthy else 8_000.0, 1.0)
            return {"amount": _cents(min(amount, 500_000.0)), "account_last4": f"{rng.randint(0, 9999):04d}"}
        case "loan_application_abandoned":
            # Homeowners are the ones who borrow to improve a home.
            home_improvement = 60.0 if person.has_mortgage else 10.0
            loan_type = _pick(rng, {"personal": 55.0, "car": 30.0, "home_improvement": home_improvement})
            low, high = _LOAN_AMOUNTS[loan_type]
            return {"amount": float(round(rng.uniform(low, high), -2)), "loan_type": loan_type}
        case "salary_change":
            roll = rng.random()
            if roll < 0.15:  # fewer hours, a pay cut or a lower-paid job
                change = rng.uniform(-50.0, -5.0)
            elif roll < 0.27:  # a promotion or a new employer
                change = rng.triangular(15.0, 80.0, 25.0)
            else:  # the annual pay award
                change = _clip(rng.gauss(6.0, 8.0), -5.0, 80.0)
            return {"change_pct": round(change, 1), "employer": rng.choice(_EMPLOYERS)}
        case "card_declined_abroad":
            home = _HOME_COUNTRY[person.timezone]
            country = rng.choice(tuple(code for code in _COUNTRIES if code != home))
            return {
                "country": country,
                "amount": _cents(_lognormal(rng, 120.0, 1.0)),
                "merchant": rng.choice(_MERCHANTS),
            }
        case "complaint_opened":
            # Complaints are logged first and triaged later, so some arrive without a category.
            return {} if _chance(rng, 0.1) else {"category": _pick(rng, _COMPLAINT_CATEGORIES)}
        case "survey_completed":
            score = person.satisfaction_score
            return {"score": rng.randint(0, 10) if score is None else score}
        case "product_upgraded":
            return {"product": rng.choice(_UPGRADED_PRODUCTS)}
        case "account_closed":
            return {"reason": rng.choice(_CLOSE_REASONS)}
        case "returned_after_absence":
            return {"days_away": round(rng.triangular(60, 1000, 150))}
        case "large_withdrawal":
            ceiling = max(20_000.0, person.balance_total)
            return {"amount": _cents(rng.uniform(5_000.0, min(ceiling, 250_000.0)))}
        case "mortgage_rate_expiring":
            return {"days_left": rng.randint(1, 180)}
        case "app_login_failures":
            # Most customers are locked out after a few tries; a few keep going for a long time.
            return {"failures": min(20, 3 + int(rng.expovariate(0.35)))}
    raise ValueError(f"unknown event type {kind!r}")


def _draw_contacts(
    rng: random.Random, person: _Person, now: datetime, action_ids: Sequence[str]
) -> tuple[Contact, ...]:
    if not action_ids:
        return ()
    weights = {0: 30.0, 1: 20.0, 2: 17.0, 3: 13.0, 4: 10.0, 5: 6.0, 6: 4.0}
    if person.stage == "lost":
        weights = {0: 60.0, 1: 25.0, 2: 15.0}
    count = _pick(rng, weights)
    # The generator stays compliant: nobody without call consent, or on do-not-call, was dialled.
    dialable = person.consent_marketing_calls and not person.do_not_call
    usual = tuple(action for action in _STAGE_ACTIONS[person.stage] if action in action_ids)
    # Nobody was contacted before they joined.
    window = max(60, min(int(CONTACT_WINDOW / _MINUTE), person.tenure_days * _MINUTES_PER_DAY))
    contacts: list[Contact] = []
    for _ in range(count):
        channel = Channel.OUTBOUND_DIALER if dialable and _chance(rng, 0.5) else Channel.AGENT_DESKTOP
        outcomes = _DIALER_OUTCOMES if channel is Channel.OUTBOUND_DIALER else _AGENT_OUTCOMES
        pool = usual if usual and _chance(rng, _STAGE_ACTION_SHARE) else action_ids
        fitting = [action for action in pool if action not in _CHANNEL_UNFIT[channel]]
        contacts.append(
            Contact(
                action_id=rng.choice(fitting or pool),
                channel=channel,
                time=now - rng.randint(1, window) * _MINUTE,
                outcome=_pick(rng, outcomes),
            )
        )
    return tuple(sorted(contacts, key=lambda contact: contact.time))


def _draw_phones(rng: random.Random, person: _Person) -> tuple[PhoneNumber, ...]:
    """1-3 distinct numbers in the customer's home country, a mobile first for most; each with its own consent."""
    ranges = _PHONE_RANGES[_HOME_COUNTRY[person.timezone]]
    count = _pick(rng, _PHONE_COUNTS)
    first = PhoneType.MOBILE if _chance(rng, 0.8) else PhoneType.HOME
    kinds = [first, *rng.sample([k for k in PhoneType if k is not first], count - 1)]
    phones: list[PhoneNumber] = []
    for kind in kinds:
        prefix, digits = ranges[kind]
        number = prefix + "".join(str(rng.randrange(10)) for _ in range(digits))
        phones.append(PhoneNumber(number, kind, consent=_chance(rng, _PHONE_CONSENT)))
    return tuple(phones)


def main(argv: Iterable[str] | None = None) -> None:
    """Regenerate the bundled sample (or another file) after a deliberate change to the generator."""
    parser = argparse.ArgumentParser(prog="python -m nba_service.synthetic", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    parser.add_argument("--count", type=int, default=DEFAULT_SAMPLE_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--action-ids", default=",".join(DEFAULT_ACTION_IDS), help="comma-separated action ids for contact history"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    write_sample(args.out, args.count, args.seed, [a for a in args.action_ids.split(",") if a])


if __name__ == "__main__":
    main()
