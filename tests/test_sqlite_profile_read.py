"""The embedded store reads a whole profile in one statement (JSON lists built by SQLite); this checks that read
against a plain one, table by table, over generated rows: hundreds of contacts, events and listings inserted
out of order, attribute values across their range and spelling, expired and removed rows, unknown customers."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.domain.contact_points import PhoneNumber, PhoneType
from nba_service.domain.model import Channel, Direction
from nba_service.domain.profile import Contact, DoNotContact, DoNotContactReason, Event, OutcomeKind, Profile
from nba_service.stores.sqlite import CONSENT_PREFIX, DO_NOT_CALL, SqliteStore
from nba_service.stores.sqlite_time import stamp

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HISTORY = timedelta(days=30)
TYPES = ("deposit", "card_abroad", "login-failed", "ünïcødé", "x" * 64)
CUSTOMERS = 40

VALUES: list[object] = [
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 + 7,
    -(10**30),
    1e-308,
    5e-324,
    1.7976931348623157e308,
    -0.0,
    0.1,
    True,
    False,
    None,
    "",
    "plain",
    'quote " and backslash \\ and slash /',
    "tab\tnewline\nreturn\r",
    "\u2028\u2029",
    "日本語 🙂",
    "\ud800 lone",
    "1234567890123456789012345",
    "[1, 2]",
    '{"not": "json"}',
]


def _attributes(rng: random.Random, size: int) -> dict[str, object]:
    return {f"a{i}_{rng.randrange(1000)}": rng.choice(VALUES) for i in range(size)}


def _fill(path: Path, seed: int) -> list[str]:
    """Writes customers as another system would, rows in shuffled order; returns the customer ids."""
    rng = random.Random(seed)
    ids = [f"CUST-{i:06d}" for i in range(1, CUSTOMERS + 1)]
    seconds = list(range(1, 200_000))
    rng.shuffle(seconds)
    moments = iter(seconds)  # every time unique: the order of equal times is not specified by either read

    def moment(past: bool = True) -> str:
        offset = timedelta(seconds=next(moments))
        return stamp(NOW - offset if past else NOW + offset)

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        for index, customer in enumerate(ids):
            attributes = _attributes(rng, rng.choice([0, 1, 5, 200]))
            conn.execute("INSERT INTO customers VALUES (?, ?, ?)", (customer, json.dumps(attributes), stamp(NOW)))
            for purpose in rng.sample(["marketing", "dialer", "ünï", "sms"], rng.randrange(5)):
                conn.execute("INSERT INTO consents VALUES (?, ?, ?)", (customer, purpose, rng.randrange(2)))
            if rng.random() < 0.3:
                conn.execute("INSERT INTO do_not_call (customer_id, listed_at) VALUES (?, ?)", (customer, stamp(NOW)))
            events: list[tuple[str, str, str, str, str, str | None]] = []
            for _ in range(300 if index % 7 == 0 else rng.choice([0, 3, 10])):
                time = moment()
                expires = rng.choice([None, moment(past=False), moment()])
                if expires is not None and expires <= time:
                    expires = None
                kind = rng.choice([*TYPES, "not-read-by-the-ruleset"])
                events.append(
                    (f"{customer}-{len(events)}", customer, kind, time, json.dumps(_attributes(rng, 3)), expires)
                )
            conn.executemany(
                "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                events,
            )
            contacts = []
            for n in range(400 if index % 5 == 0 else rng.choice([0, 2, 20])):
                time = stamp(NOW - timedelta(seconds=next(moments) * 20))  # some beyond the history window
                contacts.append(
                    (
                        customer,
                        rng.choice([None, f"d-{customer}-{n}"]),
                        rng.choice(["offer-a", "offer-ü", "x" * 80]),
                        rng.choice(["agent_desktop", "outbound_dialer"]),
                        time,
                        rng.choice(list(OutcomeKind)).value,
                        rng.randrange(2),
                        rng.choice(["", "note ✓", 'a "quoted" note']),
                        rng.choice([None, "inbound", "outbound"]),
                        rng.choice([None, moment(past=False)]),
                        rng.choice([None, "", "camp-1"]),
                    )
                )
            conn.executemany(
                "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached, note,"
                " direction, pending_until, campaign_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                contacts,
            )
            positions = rng.sample(range(10), rng.randrange(5))
            for position in positions:
                conn.execute(
                    "INSERT INTO phones VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        customer,
                        position,
                        f"+4420{rng.randrange(10**7, 10**8)}",
                        rng.choice(["mobile", "home", "work"]),
                        rng.randrange(2),
                        rng.choice([None, stamp(NOW)]),
                    ),
                )
            for _ in range(120 if index % 9 == 0 else rng.choice([0, 1, 3])):
                added = moment()
                expires = rng.choice([None, moment(past=False), stamp(NOW - timedelta(microseconds=1))])
                removed = rng.random() < 0.2
                conn.execute(
                    "INSERT INTO do_not_contact (customer_id, channel, reason, source, note, added_by, added_at,"
                    " expires_at, removed_by, removed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        customer,
                        rng.choice([None, "agent_desktop", "outbound_dialer"]),
                        rng.choice(list(DoNotContactReason)).value,
                        rng.choice(["crm", "régulateur"]),
                        rng.choice(["", "🙂 note"]),
                        "ops",
                        added,
                        expires if expires is None or expires > added else None,
                        "ops" if removed else None,
                        stamp(NOW) if removed else None,
                    ),
                )
    return ids


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _plain_read(path: Path, customer: str) -> Profile | None:
    """The profile read one table at a time, ordered in Python: the reference the one statement must agree with."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT attributes FROM customers WHERE customer_id = ?", (customer,)).fetchone()
        if row is None:
            return None
        attributes = json.loads(row[0])
        for purpose, granted in conn.execute(
            "SELECT purpose, granted FROM consents WHERE customer_id = ?", (customer,)
        ):
            attributes[CONSENT_PREFIX + purpose] = bool(granted)
        attributes[DO_NOT_CALL] = (
            conn.execute("SELECT 1 FROM do_not_call WHERE customer_id = ?", (customer,)).fetchone() is not None
        )
        latest: dict[str, tuple[str, str, str | None]] = {}
        for kind, time, values, expires in conn.execute(
            "SELECT type, time, attributes, expires_at FROM events WHERE customer_id = ?", (customer,)
        ):
            live = kind in TYPES and (expires is None or expires > stamp(NOW))
            if live and (kind not in latest or time > latest[kind][0]):
                latest[kind] = (time, values, expires)
        events = sorted(
            (Event(kind, _time(t), json.loads(v), _time(e) if e else None) for kind, (t, v, e) in latest.items()),
            key=lambda event: event.time,
        )
        contacts = sorted(
            (
                Contact(
                    action,
                    Channel(channel),
                    _time(time),
                    OutcomeKind(outcome),
                    decision or "",
                    reached=bool(reached),
                    direction=None if way is None else Direction(way),
                    pending_until=_time(until) if until else None,
                    campaign_id=campaign or "",
                )
                for action, channel, time, outcome, decision, reached, way, until, campaign in conn.execute(
                    "SELECT action_id, channel, time, outcome, decision_id, reached, direction, pending_until,"
                    " campaign_id FROM contacts WHERE customer_id = ?",
                    (customer,),
                )
                if time > stamp(NOW - HISTORY)
            ),
            key=lambda contact: contact.time,
        )
        phones = [
            PhoneNumber(number, PhoneType(kind), bool(consent), wrong is not None)
            for _, number, kind, consent, wrong in sorted(
                conn.execute(
                    "SELECT position, number, type, consent, wrong_number_at FROM phones WHERE customer_id = ?",
                    (customer,),
                )
            )
        ]
        listings = [
            DoNotContact(
                None if channel is None else Channel(channel),
                DoNotContactReason(reason),
                source,
                _time(added),
                None if expires is None else _time(expires),
                by,
                note,
            )
            for _, channel, reason, source, added, expires, by, note, removed in sorted(
                conn.execute(
                    "SELECT listing_id, channel, reason, source, added_at, expires_at, added_by, note, removed_at"
                    " FROM do_not_contact WHERE customer_id = ?",
                    (customer,),
                )
            )
            if removed is None and (expires is None or expires > stamp(NOW))
        ]
    return Profile(customer, attributes, tuple(events), tuple(contacts), tuple(phones), tuple(listings))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_one_statement_reads_what_a_plain_read_of_each_table_reads(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "nba.db"
    store = SqliteStore(path, event_types=TYPES, history=HISTORY, clock=lambda: NOW)
    await store.open()
    try:
        ids = _fill(path, seed)
        sizes = []
        for customer in ids:
            read = await store.get_profile(customer)
            expected = _plain_read(path, customer)
            assert read == expected, customer
            sizes.append((len(read.contacts), len(read.events), len(read.do_not_contact)))
        batch = await store.get_profiles([*reversed(ids), "CUST-999999"])
        assert [p.customer_id for p in batch] == list(reversed(ids))
        assert batch == [_plain_read(path, c) for c in reversed(ids)]
    finally:
        await store.close()
    # The generated data reached the sizes it is meant to test: hundreds of contacts, every event type, listings.
    assert max(c for c, _, _ in sizes) >= 100
    assert max(e for _, e, _ in sizes) == len(TYPES)
    assert max(d for _, _, d in sizes) >= 20
