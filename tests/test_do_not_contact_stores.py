"""The do-not-contact register on both stores, in process, against a real SQLite file and a real PostgreSQL
database: a listing reaches every profile read until it is lifted or lapses, an addition is checked field by
field and never duplicates an active listing, a removal is kept with who made it, and the history cannot be
deleted or rewritten even by SQL written past the service."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from nba_service.app import contact_history_window
from nba_service.domain.do_not_contact import Listing, Selection, new_listing
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.ports import DoNotContactRegistry, ProfileStore
from nba_service.domain.profile import DoNotContact, DoNotContactReason
from nba_service.domain.segments import Segment
from nba_service.errors import FailedPrecondition, InvalidArgument, NotFound
from nba_service.stores import sqlite as sqlite_module
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from nba_service.stores.postgres.seed import seed
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import RULESET_PATH

NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)
COUNT = 20
CUSTOMER = "CUST-000004"  # called by the dialer and answered on the desktop when not listed


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Register:
    kind: str
    store: Any  # both a ProfileStore and a DoNotContactRegistry
    clock: Clock
    sql: Callable[[str], Awaitable[None]]

    @property
    def profiles(self) -> ProfileStore:
        store: ProfileStore = self.store
        return store

    @property
    def registry(self) -> DoNotContactRegistry:
        registry: DoNotContactRegistry = self.store
        return registry


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


@pytest.fixture(params=["sqlite", "postgres"])
async def register(request: pytest.FixtureRequest, tmp_path: Path, ruleset: Ruleset) -> AsyncIterator[Register]:
    clock = Clock()
    if request.param == "sqlite":
        path = tmp_path / "nba.db"
        store = SqliteStore(
            path, event_types=tuple(ruleset.events), history=contact_history_window(ruleset), clock=clock
        )
        await store.open(lambda: generate_profiles(COUNT, now=NOW, seed=DEFAULT_SEED))

        async def sqlite_sql(statement: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(statement)

        try:
            yield Register("sqlite", store, clock, sqlite_sql)
        finally:
            await store.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    conn = await asyncpg.connect(dsn)
    try:
        await seed(conn, COUNT, seed=DEFAULT_SEED, now=NOW)
    finally:
        await conn.close()
    pool = await create_pool(dsn)
    profiles = PostgresProfileStore(
        pool, history=contact_history_window(ruleset), event_types=tuple(ruleset.events), clock=clock
    )

    async def pg_sql(statement: str) -> None:
        async with pool.acquire() as connection:
            await connection.execute(statement)

    try:
        yield Register("postgres", profiles, clock, pg_sql)
    finally:
        await profiles.close()


def listing(channel: str = "outbound_dialer", reason: str = "customer_request", **more: Any) -> DoNotContact:
    fields: dict[str, Any] = {"source": "call 2031-05-14", "added_by": "alice", "now": NOW, **more}
    return new_listing(channel=channel, reason=reason, **fields)


# --------------------------------------------------------------------------------------------------
# Checking an addition (pure)


def test_a_bad_addition_names_every_bad_field_at_once() -> None:
    """Channel, reason, an empty source or name, an expiry in the past: one InvalidArgument names them all."""
    with pytest.raises(InvalidArgument) as caught:
        new_listing(
            channel="email", reason="annoyed", source=" ", added_by="", now=NOW, expires_at=NOW - timedelta(days=1)
        )
    fields = {p.field: p.problem for p in caught.value.problems}
    assert sorted(fields) == ["added_by", "channel", "expires_at", "reason", "source"]
    assert fields["channel"] == "'email' is not one of agent_desktop, outbound_dialer, all"
    assert fields["reason"] == "'annoyed' is not one of customer_request, regulator_list, bereavement, vulnerability"
    assert "in the past" in fields["expires_at"]


def test_all_means_every_channel_and_text_is_trimmed() -> None:
    entry = new_listing(channel="all", reason="bereavement", source="  branch  ", added_by=" bob ", now=NOW)
    assert entry == DoNotContact(None, DoNotContactReason.BEREAVEMENT, "branch", NOW, None, "bob", "")


# --------------------------------------------------------------------------------------------------
# The register on both stores


async def test_a_listing_reaches_every_profile_read_until_lifted(register: Register, ruleset: Ruleset) -> None:
    """get_profile, get_profiles and segment_page carry the active listing exactly as added (times to the
    microsecond); the dialer decision on that profile drops every candidate as do_not_contact while the agent
    desktop still answers; once lifted, no read carries it."""
    entry = listing(expires_at=NOW + timedelta(days=30, microseconds=7), note="asked on the phone")
    added = await register.registry.add_listing(CUSTOMER, entry)
    assert added.entry == entry
    assert added.customer_id == CUSTOMER
    assert added.listing_id > 0

    profile = await register.profiles.get_profile(CUSTOMER)
    assert profile.do_not_contact == (entry,)
    [batch] = await register.profiles.get_profiles([CUSTOMER])
    assert batch.do_not_contact == (entry,)
    page = await register.profiles.segment_page(Segment(), CUSTOMER[:-1], COUNT)
    assert {p.customer_id: p.do_not_contact for p in page if p.do_not_contact} == {CUSTOMER: (entry,)}
    other = await register.profiles.get_profile("CUST-000006")
    assert other.do_not_contact == ()

    active = reference_active(ruleset)
    dialer = evaluate(active, profile, Channel.OUTBOUND_DIALER, NOW, limit=5)
    assert dialer.actions == ()
    assert dialer.dropped
    assert {d.reason for d in dialer.dropped if d.stage == "policy"} == {"do_not_contact"}
    inbound = evaluate(active, profile, Channel.AGENT_DESKTOP, NOW, limit=5)
    assert inbound.actions
    assert "do_not_contact" not in {d.reason for d in inbound.dropped}

    lifted = await register.registry.remove_listings(CUSTOMER, Selection(), "bob", "customer called back")
    assert [x.listing_id for x in lifted] == [added.listing_id]
    assert (await register.profiles.get_profile(CUSTOMER)).do_not_contact == ()


async def test_an_expired_listing_is_not_read_and_may_be_added_again(register: Register) -> None:
    """The read returns listings unexpired at its time; an addition repeating an expired one is a new listing."""
    first = await register.registry.add_listing(CUSTOMER, listing(expires_at=NOW + timedelta(hours=1)))
    register.clock.now = NOW + timedelta(hours=2)
    assert (await register.profiles.get_profile(CUSTOMER)).do_not_contact == ()
    assert await register.registry.listings(CUSTOMER) == []
    again = await register.registry.add_listing(CUSTOMER, listing(now=register.clock.now))
    assert again.listing_id > first.listing_id
    everything = await register.registry.listings(CUSTOMER, include_inactive=True)
    assert [(x.listing_id, x.state(register.clock.now).value) for x in everything] == [
        (first.listing_id, "expired"),
        (again.listing_id, "active"),
    ]


async def test_an_active_listing_is_not_added_twice(register: Register) -> None:
    """The same customer, channel and reason while active is refused naming the listing, and nothing changes;
    another reason or another channel is a listing of its own."""
    first = await register.registry.add_listing(CUSTOMER, listing())
    with pytest.raises(FailedPrecondition) as caught:
        await register.registry.add_listing(CUSTOMER, listing(source="regulator file", expires_at=NOW + timedelta(1)))
    assert [p.field for p in caught.value.problems] == ["channel"]
    assert f"listing {first.listing_id}" in caught.value.message
    assert "remove it first" in caught.value.message
    assert await register.registry.listings(CUSTOMER) == [first]

    await register.registry.add_listing(CUSTOMER, listing(reason="vulnerability"))
    await register.registry.add_listing(CUSTOMER, listing(channel="all"))
    profile = await register.profiles.get_profile(CUSTOMER)
    assert [(d.channel, d.reason.value) for d in profile.do_not_contact] == [
        (Channel.OUTBOUND_DIALER, "customer_request"),
        (Channel.OUTBOUND_DIALER, "vulnerability"),
        (None, "customer_request"),
    ]


async def test_two_people_adding_the_same_listing_at_once_store_it_once(register: Register) -> None:
    """Concurrent additions of one listing (two agents, two workers): one is stored, the others refused."""
    results = await asyncio.gather(
        *(register.registry.add_listing(CUSTOMER, listing(added_by=f"agent-{n}")) for n in range(6)),
        return_exceptions=True,
    )
    stored = [r for r in results if isinstance(r, Listing)]
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert (len(stored), len(refused)) == (1, 5)
    assert await register.registry.listings(CUSTOMER, include_inactive=True) == stored


async def test_unknown_customers_and_removing_what_is_not_listed_are_refused(register: Register) -> None:
    with pytest.raises(NotFound) as caught:
        await register.registry.add_listing("CUST-999999", listing())
    assert [p.field for p in caught.value.problems] == ["customer_id"]
    with pytest.raises(NotFound) as caught:
        await register.registry.remove_listings("CUST-999999", Selection(), "bob")
    assert [p.field for p in caught.value.problems] == ["customer_id"]
    with pytest.raises(NotFound) as caught:
        await register.registry.remove_listings(CUSTOMER, Selection(), "bob")
    assert [p.field for p in caught.value.problems] == ["channel"]
    assert "no active do-not-contact listing" in caught.value.message
    with pytest.raises(InvalidArgument) as invalid:
        await register.registry.remove_listings(CUSTOMER, Selection(), " ")
    assert [p.field for p in invalid.value.problems] == ["removed_by"]
    assert await register.registry.listings(include_inactive=True) == []


async def test_a_removal_is_narrowed_by_channel_and_reason_and_kept_in_the_history(register: Register) -> None:
    """`all` lifts only the every-channel listing; a reason only its own; each lifted listing keeps who lifted
    it, when and why; lifting it again is refused; the export holds every listing in the order added."""
    dialer = await register.registry.add_listing(CUSTOMER, listing())
    every = await register.registry.add_listing(CUSTOMER, listing(channel="all", reason="bereavement"))
    desk = await register.registry.add_listing("CUST-000005", listing(channel="agent_desktop"))
    register.clock.now = NOW + timedelta(minutes=3)

    lifted = await register.registry.remove_listings(CUSTOMER, Selection(None, True), "carol", "probate done")
    assert [x.listing_id for x in lifted] == [every.listing_id]
    with pytest.raises(NotFound):
        await register.registry.remove_listings(CUSTOMER, Selection(None, True), "carol")
    with pytest.raises(NotFound) as caught:
        await register.registry.remove_listings(CUSTOMER, Selection(reason=DoNotContactReason.REGULATOR_LIST), "carol")
    assert "no active do-not-contact listing for regulator_list" in caught.value.message
    assert [x.listing_id for x in await register.registry.listings(CUSTOMER)] == [dialer.listing_id]

    history = await register.registry.listings(CUSTOMER, include_inactive=True)
    removed = next(x for x in history if x.listing_id == every.listing_id)
    assert (removed.removed_at, removed.removed_by, removed.removal_note) == (
        register.clock.now,
        "carol",
        "probate done",
    )
    assert removed.entry == every.entry

    exported: list[Listing] = [x async for x in register.registry.export_listings()]
    assert [x.listing_id for x in exported] == [dialer.listing_id, every.listing_id, desk.listing_id]
    rows = [x.to_json(register.clock.now) for x in exported]
    assert [(r["channel"], r["state"], r["removed_by"]) for r in rows] == [
        ("outbound_dialer", "active", None),
        ("all", "removed", "carol"),
        ("agent_desktop", "active", None),
    ]
    assert rows[1]["added_by"] == "alice"
    assert rows[1]["removed_at"] == register.clock.now.isoformat()


async def test_the_history_cannot_be_deleted_or_rewritten(register: Register) -> None:
    """Even SQL written past the service cannot delete a listing, change one, or lift one twice."""
    await register.registry.add_listing(CUSTOMER, listing())
    error = sqlite3.IntegrityError if register.kind == "sqlite" else asyncpg.RaiseError
    with pytest.raises(error, match="keeps its history"):
        await register.sql("DELETE FROM do_not_contact")
    with pytest.raises(error, match="keeps its history"):
        await register.sql("UPDATE do_not_contact SET reason = 'bereavement'")
    await register.registry.remove_listings(CUSTOMER, Selection(), "bob")
    with pytest.raises(error, match="keeps its history"):
        await register.sql("UPDATE do_not_contact SET removed_at = NULL, removed_by = NULL")
    [kept] = await register.registry.listings(CUSTOMER, include_inactive=True)
    assert kept.removed_by == "bob"
    assert kept.entry.reason is DoNotContactReason.CUSTOMER_REQUEST


async def test_a_version_4_database_upgrades_and_keeps_its_customers(tmp_path: Path, ruleset: Ruleset) -> None:
    """An embedded file made before the register (schema 4) gains it in place when opened."""
    path = tmp_path / "old.db"
    store = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: NOW)
    await store.open(lambda: generate_profiles(COUNT, now=NOW, seed=DEFAULT_SEED))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE do_not_contact")
        conn.execute("ALTER TABLE contacts DROP COLUMN direction")  # what later steps add, as at version 4
        conn.execute("ALTER TABLE outcomes DROP COLUMN direction")
        conn.execute("ALTER TABLE contacts DROP COLUMN pending_until")
        conn.execute("ALTER TABLE contacts DROP COLUMN campaign_id")
        conn.execute("DROP TABLE exposures")
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN activated_by")
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN origin")
        conn.execute("PRAGMA user_version = 4")
    reopened = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: NOW)
    assert await reopened.open() == COUNT
    try:
        await reopened.add_listing(CUSTOMER, listing())
        assert len((await reopened.get_profile(CUSTOMER)).do_not_contact) == 1
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
