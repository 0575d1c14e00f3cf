"""What explaining a past decision needs from the stores, on both of them: the ruleset archive (every version
that served, fetched by hash or a unique prefix), whole records read back with their inputs exactly as written,
decisions whose stored inputs replay to the same answer, dry runs that leave nothing behind, and an embedded
database made by the previous schema that upgrades in place without losing anything."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from nba_service.app import contact_history_window
from nba_service.domain.archive import ArchivedSource
from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.ports import ProfileStore, RecordExport, RecordReader, RecordSink, RulesetArchive
from nba_service.domain.profile import OutcomeKind, Profile
from nba_service.domain.records import DecidedAction, DecisionInputs, DecisionRecord, FiredRule, RulesetRef
from nba_service.errors import FailedPrecondition, InvalidArgument, NotFound
from nba_service.review.explain import replay
from nba_service.service import DecisionService
from nba_service.stores import sqlite as sqlite_module
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.postgres.archive import PostgresRulesetArchive
from nba_service.stores.postgres.decision_log import PostgresRecordExport, PostgresRecordSink
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from nba_service.stores.postgres.seed import seed
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import RULESET_PATH

NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)
COUNT = 20


@dataclass
class Stores:
    kind: str
    profiles: ProfileStore
    sink: RecordSink
    export: RecordExport
    records: RecordReader
    archive: RulesetArchive
    sql: Callable[[str, tuple[Any, ...]], Awaitable[None]]
    """Runs one statement directly (`?` placeholders for SQLite, `$n` for PostgreSQL)."""


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET_PATH)


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path, ruleset: Ruleset) -> AsyncIterator[Stores]:
    if request.param == "sqlite":
        path = tmp_path / "nba.db"
        store = SqliteStore(
            path,
            event_types=tuple(ruleset.events),
            history=contact_history_window(ruleset),
            clock=lambda: NOW,
        )
        await store.open(lambda: generate_profiles(COUNT, now=NOW, seed=DEFAULT_SEED))

        async def sqlite_sql(statement: str, args: tuple[Any, ...]) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(statement, args)

        try:
            yield Stores("sqlite", store, store, store, store, store, sqlite_sql)
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
        pool, history=contact_history_window(ruleset), event_types=tuple(ruleset.events), clock=lambda: NOW
    )
    sink = PostgresRecordSink(pool, timeout=5.0)

    async def pg_sql(statement: str, args: tuple[Any, ...]) -> None:
        async with pool.acquire() as connection:
            await connection.execute(statement, *args)

    try:
        yield Stores(
            "postgres",
            profiles,
            sink,
            PostgresRecordExport(pool),
            sink,
            PostgresRulesetArchive(pool, timeout=5.0),
            pg_sql,
        )
    finally:
        await profiles.close()


def version_of(ruleset: Ruleset, version: str) -> Ruleset:
    text = ruleset.text.replace(f"version: {ruleset.meta.version}", f"version: {version}", 1)
    changed = load_ruleset_text(text, f"{version}.yaml")
    assert changed.meta.version == version
    return changed


# --------------------------------------------------------------------------------------------------
# The ruleset archive


class TestArchive:
    async def test_keeping_is_idempotent_and_versions_list_every_activation(
        self, stores: Stores, ruleset: Ruleset
    ) -> None:
        """Keeping the active version again (a restart, a second worker) notes no new activation; a switch and
        a rollback do. Newest activation first, with first and last activation and how many there were."""
        archive = stores.archive
        newer = version_of(ruleset, "9.9.9")
        t = [NOW + timedelta(minutes=m) for m in range(5)]
        await archive.keep(ruleset, t[0])
        await archive.keep(ruleset, t[1])
        assert [
            (v.hash, v.activations, v.first_activated_at, v.last_activated_at) for v in await archive.versions()
        ] == [(ruleset.content_hash, 1, t[0], t[0])]
        await archive.keep(newer, t[2])
        await archive.keep(newer, t[2])
        await archive.keep(ruleset, t[3])  # rollback
        versions = await archive.versions()
        assert [(v.version, v.activations, v.first_activated_at, v.last_activated_at) for v in versions] == [
            (ruleset.meta.version, 2, t[0], t[3]),
            ("9.9.9", 1, t[2], t[2]),
        ]
        assert all(v.name == ruleset.meta.name for v in versions)
        assert await archive.versions(ruleset.meta.name) == versions
        assert await archive.versions("no-such-ruleset") == []

    async def test_each_version_names_who_asked_for_its_latest_activation_and_how(
        self, stores: Stores, ruleset: Ruleset
    ) -> None:
        """The archive every replica shares answers "who put this live": a keep that notes no new activation (a
        restart, another worker) changes neither who nor how, and a rollback names its own caller."""
        archive = stores.archive
        newer = version_of(ruleset, "9.9.9")
        t = [NOW + timedelta(minutes=m) for m in range(5)]
        await archive.keep(ruleset, t[0], origin="start-up")
        await archive.keep(newer, t[1], by="cert:CN=alice,O=Bank", origin="activate")
        await archive.keep(newer, t[2], by="cert:CN=mallory", origin="activate")  # already the latest: not noted
        await archive.keep(ruleset, t[3], by="jwt:bob@bank.example ✓", origin="rollback")
        await archive.keep(ruleset, t[4])  # a restart
        versions = await archive.versions()
        assert [(v.version, v.activations, v.last_activated_by, v.last_activation_origin) for v in versions] == [
            (ruleset.meta.version, 2, "jwt:bob@bank.example ✓", "rollback"),
            ("9.9.9", 1, "cert:CN=alice,O=Bank", "activate"),
        ]
        assert await archive.versions(ruleset.meta.name) == versions

    async def test_source_by_hash_or_unique_prefix_is_the_exact_text(self, stores: Stores, ruleset: Ruleset) -> None:
        archive = stores.archive
        await archive.keep(ruleset, NOW)
        expected = ArchivedSource(ruleset.meta.name, ruleset.meta.version, ruleset.content_hash, ruleset.text)
        for key in (ruleset.content_hash, ruleset.content_hash[:12], ruleset.content_hash.upper()[:20]):
            found = await archive.source(key)
            assert found == expected
        assert found is not None
        assert hashlib.sha256(found.source.encode("utf-8")).hexdigest() == ruleset.content_hash
        assert load_ruleset_text(found.source).content_hash == ruleset.content_hash
        assert await archive.source("0" * 64) is None

    @pytest.mark.parametrize(
        ("key", "problem"),
        [
            ("abc", "too short"),
            ("", "is required"),
            ("xyz123456789012", "not a hexadecimal hash"),
            ("a" * 65, "65 hex digits"),
        ],
    )
    async def test_a_bad_hash_is_named(self, stores: Stores, key: str, problem: str) -> None:
        with pytest.raises(InvalidArgument) as refused:
            await stores.archive.source(key)
        assert problem in str(refused.value.problems[0].problem)
        assert refused.value.problems[0].field == "ruleset_hash"

    async def test_an_ambiguous_prefix_is_refused_naming_the_matches(self, stores: Stores, ruleset: Ruleset) -> None:
        await stores.archive.keep(ruleset, NOW)
        twin = ruleset.content_hash[:14] + ("0" if ruleset.content_hash[14] != "0" else "1") + "f" * 49
        placeholder = "?" if stores.kind == "sqlite" else "$"
        values = ", ".join(f"{placeholder}{n}" if placeholder == "$" else "?" for n in range(1, 6))
        await stores.sql(
            f"INSERT INTO ruleset_sources (hash, name, version, source, kept_at) VALUES ({values})",
            (twin, "other", "1", "text", NOW if stores.kind == "postgres" else NOW.isoformat()),
        )
        with pytest.raises(InvalidArgument, match="matches 2 archived versions"):
            await stores.archive.source(ruleset.content_hash[:12])
        found = await stores.archive.source(ruleset.content_hash[:15])
        assert found is not None
        assert found.hash == ruleset.content_hash

    async def test_a_version_without_its_text_is_refused(self, stores: Stores, ruleset: Ruleset) -> None:
        """Keeping a hash nobody could fetch back would make its decisions unexplainable."""
        with pytest.raises(FailedPrecondition, match="no source text"):
            await stores.archive.keep(replace(ruleset, text=""), NOW)
        with pytest.raises(FailedPrecondition, match="does not hash to"):
            await stores.archive.keep(replace(ruleset, text=ruleset.text + "\n"), NOW)
        assert await stores.archive.versions() == []


# --------------------------------------------------------------------------------------------------
# Whole records


TRICKY: dict[str, Any] = {
    "big": 10**40,
    "negative": -(2**63) - 1,
    "huge": 1.7976931348623157e308,
    "tiny": 5e-324,
    "exponent": 1e16,
    "minus_zero": -0.0,
    "plain": 0.1,
    "yes": True,
    "none": None,
    "text": "Zoë 😀 \u202e日本",
    "nan": math.nan,
    "infinite": -math.inf,
}


def _record(inputs: DecisionInputs | None, decision_id: str | None = None) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id or str(uuid.uuid4()),
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=Channel.AGENT_DESKTOP,
        ruleset=RulesetRef("retail-banking", "1.2.0", "c0ffee"),
        engine="reference",
        rules_fired=(FiredRule("r", "a", 1, {"amount": 48250.5}),),
        dropped=(),
        actions=(DecidedAction("a", "Say hello.", 1, "service", "why", "r", NOW + timedelta(hours=4)),),
        latency_ms=1.5,
        inputs=inputs,
    )


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


class TestRecords:
    async def test_a_record_reads_back_with_its_inputs_exact(self, stores: Stores) -> None:
        """Every value type comes back with its exact type, even through jsonb, which keeps numbers as
        decimals; a record from before inputs were kept reads back with none; the export carries them too."""
        inputs = DecisionInputs(Profile("CUST-000001", TRICKY), 3)
        with_inputs, without = _record(inputs), _record(None)
        await stores.sink.write([with_inputs, without], [])
        back = await stores.records.get_record(with_inputs.decision_id)
        assert back is not None
        assert back.inputs is not None
        assert back.decided_at == NOW
        assert back.inputs.limit == 3
        attributes = back.inputs.profile.attributes
        assert list(attributes) == list(TRICKY) or set(attributes) == set(TRICKY)  # jsonb orders keys its own way
        assert all(_same_value(attributes[k], v) for k, v in TRICKY.items()), attributes
        assert replace(back, inputs=None) == replace(with_inputs, inputs=None)
        old = await stores.records.get_record(without.decision_id)
        assert old == without
        exported = [item async for item in stores.export.export(None, None, None)]
        by_id = {item["decision_id"]: item for item in exported}
        assert by_id[without.decision_id]["inputs"] is None
        assert by_id[with_inputs.decision_id]["inputs"]["profile"]["attributes"]["exponent"] == {"$float": "1e+16"}
        assert await stores.records.get_record(str(uuid.uuid4())) is None
        assert await stores.records.get_record("not-a-uuid") is None

    async def test_a_nul_in_an_attribute_does_not_block_the_log(self, stores: Stores, tmp_path: Path) -> None:
        """SQLite stores it; PostgreSQL refuses it (no NUL in jsonb), and the refused record is set aside in
        dead_letters, readable exactly, while the records around it are stored. A dead letter is not a
        decision: reading it back gives None."""
        writer = GroupCommitWriter(stores.sink, timeout=10, spill_dir=tmp_path)
        await writer.start()
        poison = _record(DecisionInputs(Profile("CUST-000001", {"name": "Zo\x00ë"}), 3))
        good = _record(DecisionInputs(Profile("CUST-000001", {"name": "Zoë"}), 3))
        await writer.record(poison)
        await writer.record(good)
        assert writer.healthy()
        await writer.close()
        assert await stores.records.get_record(good.decision_id) == good
        stored = await stores.records.get_record(poison.decision_id)
        if stores.kind == "sqlite":
            assert stored == poison
            return
        assert stored is None
        assert writer.stats.dead_letters == 1
        pg = stores.records
        assert isinstance(pg, PostgresRecordSink)
        async with pg.pool.acquire() as conn:
            text = await conn.fetchval("SELECT record FROM dead_letters WHERE decision_id = $1", poison.decision_id)
        assert DecisionRecord.from_json(json.loads(text)) == poison


# --------------------------------------------------------------------------------------------------
# Through the decision service


class TestService:
    async def test_a_decision_keeps_what_replays_it(self, stores: Stores, ruleset: Ruleset, tmp_path: Path) -> None:
        """The record's decided_at is the moment the pipeline ran at, to the microsecond, after both stores;
        its inputs are the profile exactly as the store gave it; replaying them gives the same answer. The
        version is in the archive before the first decision."""
        writer = GroupCommitWriter(stores.sink, timeout=10, spill_dir=tmp_path)
        await writer.start()
        active = reference_active(ruleset)
        moments = iter([NOW + timedelta(microseconds=n * 7919) for n in range(1, 100)])
        service = DecisionService(stores.profiles, writer, active, clock=lambda: next(moments), archive=stores.archive)
        try:
            decisions = [
                await service.decide(f"CUST-{n:06d}", channel, max_actions=limit)
                for n, channel, limit in [
                    (1, Channel.AGENT_DESKTOP, 3),
                    (2, Channel.OUTBOUND_DIALER, 1),
                    (3, Channel.AGENT_DESKTOP, 5),
                ]
            ]
        finally:
            await writer.close()
        assert [v.hash for v in await stores.archive.versions()] == [ruleset.content_hash]
        for decision in decisions:
            record = await stores.records.get_record(decision.decision_id)
            assert record is not None
            assert record.decided_at == decision.decided_at
            assert record.decided_at.microsecond == decision.decided_at.microsecond != 0
            assert record.inputs is not None
            assert record.inputs.profile == await stores.profiles.get_profile(decision.customer_id)
            expected = evaluate(active, record.inputs.profile, record.channel, decision.decided_at, record.inputs.limit)
            assert record.actions == expected.actions == decision.actions
            assert replay(record, active).same

    async def test_a_dry_run_records_nothing(self, stores: Stores, ruleset: Ruleset, tmp_path: Path) -> None:
        """Same answer as a real decision at the same moment, with the explanation attached; no record, and an
        outcome for it is refused by name, so it can count toward no cap."""
        writer = GroupCommitWriter(stores.sink, timeout=10, spill_dir=tmp_path)
        await writer.start()
        active = reference_active(ruleset)
        service = DecisionService(stores.profiles, writer, active, clock=lambda: NOW, archive=stores.archive)
        try:
            dry = await service.decide("CUST-000001", Channel.AGENT_DESKTOP, dry_run=True)
            real = await service.decide("CUST-000001", Channel.AGENT_DESKTOP)
            assert dry.decision_id.startswith("dry-")
            assert dry.explanation is not None
            assert dry.explanation.dry_run
            assert dry.explanation.summary.startswith("Dry run:")
            assert dry.actions == real.actions
            assert real.explanation is None
            assert dry.actions, "the sample customer should be offered something"
            with pytest.raises(InvalidArgument, match="dry run"):
                await service.record_outcome(dry.decision_id, dry.actions[0].action_id, OutcomeKind.ACCEPTED, None)
        finally:
            await writer.close()
        assert await stores.records.get_record(dry.decision_id) is None
        exported = [
            item["decision_id"] async for item in stores.export.export(None, None, None) if item["kind"] == "decision"
        ]
        assert exported == [real.decision_id]
        with pytest.raises(NotFound):
            await service.record_outcome(str(uuid.uuid4()), "x", OutcomeKind.ACCEPTED, None)


# --------------------------------------------------------------------------------------------------
# Directions


class TestDirections:
    async def test_directions_round_trip_through_records_outcomes_and_contact_history(
        self, stores: Stores, ruleset: Ruleset, tmp_path: Path
    ) -> None:
        """A desktop decision made outbound and one made with no direction (the desktop's usual inbound) keep
        their directions in the record and in what `find` gives RecordOutcome; a NOT_NOW outcome takes its
        decision's direction into the audit row (the export) and the contact history a profile read returns, where
        it counts toward caps. History from before directions were kept reads as unknown (None)."""
        writer = GroupCommitWriter(stores.sink, timeout=10, spill_dir=tmp_path)
        await writer.start()
        active = reference_active(ruleset)
        moments = iter([NOW + timedelta(seconds=n) for n in range(100)])
        service = DecisionService(stores.profiles, writer, active, clock=lambda: next(moments), archive=stores.archive)
        try:
            customer, outbound = "", None
            for number in range(1, COUNT + 1):
                customer = f"CUST-{number:06d}"
                outbound = await service.decide(customer, Channel.AGENT_DESKTOP, direction=Direction.OUTBOUND)
                if outbound.actions:
                    break
            assert outbound is not None
            assert outbound.actions, "a sample customer should be offered something"
            inbound = await service.decide(customer, Channel.AGENT_DESKTOP)
            dialer = await service.decide(customer, Channel.OUTBOUND_DIALER)
            offer = outbound.actions[0].action_id
            receipt = await service.record_outcome(outbound.decision_id, offer, OutcomeKind.NOT_NOW, None)
            with pytest.raises(InvalidArgument) as refused:
                await service.decide(customer, Channel.OUTBOUND_DIALER, direction=Direction.INBOUND)
        finally:
            await writer.close()
        assert (outbound.direction, inbound.direction, dialer.direction) == (
            Direction.OUTBOUND,
            Direction.INBOUND,
            Direction.OUTBOUND,
        )
        assert [p.field for p in refused.value.problems] == ["direction"]
        for decision in (outbound, inbound, dialer):
            summary = await stores.sink.find(decision.decision_id)
            record = await stores.records.get_record(decision.decision_id)
            assert summary is not None
            assert record is not None
            assert summary.direction is record.direction is decision.direction
        assert receipt.stored
        assert receipt.outcome.direction is Direction.OUTBOUND
        profile = await stores.profiles.get_profile(customer)
        answered = [c for c in profile.contacts if c.decision_id == outbound.decision_id]
        assert [(c.action_id, c.outcome, c.direction, c.counts) for c in answered] == [
            (offer, OutcomeKind.NOT_NOW, Direction.OUTBOUND, True)
        ]
        assert {c.direction for c in profile.contacts if not c.decision_id} <= {None}
        exported = [
            (item["outcome"], item["direction"])
            async for item in stores.export.export(None, None, customer)
            if item["kind"] == "outcome"
        ]
        assert exported == [("not_now", "outbound")]

    async def test_a_record_without_a_direction_reads_as_unknown(self, stores: Stores, ruleset: Ruleset) -> None:
        """A record that names no direction, as those written before directions were kept (a NULL column), is
        found with direction None, reads back the same, and counts as the channel's usual direction."""
        record = _record(None)
        assert record.direction is None
        await stores.sink.write([record], [])
        summary = await stores.sink.find(record.decision_id)
        assert summary is not None
        assert summary.direction is None
        read = await stores.records.get_record(record.decision_id)
        assert read is not None
        assert read.direction is None
        assert read.contact_direction is Direction.INBOUND  # the desktop's usual direction


# --------------------------------------------------------------------------------------------------
# The embedded database's schema upgrade


async def test_a_version_1_database_upgrades_in_place_and_loses_nothing(tmp_path: Path, ruleset: Ruleset) -> None:
    """A file made by the version-1 schema (the tables, the seed and a decision record, written as version 1
    wrote them) opens under version 2: same customers, same record, and the archive works."""
    path = tmp_path / "v1.db"
    record = _record(None)
    with sqlite3.connect(path) as conn:
        for statement in sqlite_module._SCHEMA:
            conn.execute(statement)
        # Files from before schema 4 have no phone numbers.
        sqlite_module._load(
            conn, (replace(p, phones=()) for p in generate_profiles(COUNT, now=NOW, seed=DEFAULT_SEED)), NOW
        )
        conn.execute(
            "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.decision_id,
                NOW.isoformat(),
                record.customer_id,
                "sent",
                json.dumps({k: v for k, v in record.to_json().items() if k != "inputs"}),
                NOW.isoformat(),
            ),
        )
        conn.execute("PRAGMA user_version = 1")
    with sqlite3.connect(path) as conn:
        before = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("customers", "consents", "do_not_call", "events", "contacts", "decisions")
        }
    assert len(before["customers"]) == COUNT

    store = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: NOW)
    assert await store.open() == COUNT
    try:
        assert await store.get_record(record.decision_id) == record
        await store.keep(ruleset, NOW)
        assert [v.hash for v in await store.versions()] == [ruleset.content_hash]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
        after = {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in before}
    # Version 3 adds `recorded_by` to events: NULL for every event from before.
    assert {row[-1] for row in after["events"]} <= {None}
    after["events"] = [row[:-1] for row in after["events"]]
    # Version 6 adds `direction` to contacts, version 7 `pending_until` and `campaign_id`: NULL (the channel's
    # usual direction; no pending call) for every contact from before.
    assert {row[-3:] for row in after["contacts"]} <= {(None, None, None)}
    after["contacts"] = [row[:-3] for row in after["contacts"]]
    assert after == before
    again = SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: NOW)
    assert await again.open() == COUNT  # a second open finds nothing to do
    await again.close()


async def test_a_schema_8_file_keeps_its_activations_and_reads_them_as_not_recorded(
    tmp_path: Path, ruleset: Ruleset
) -> None:
    """Schema 9 adds who asked and how to `ruleset_activations`: the activations of an older file stay, read as not
    recorded (""), and the next one keeps both."""
    path = tmp_path / "v8.db"

    def opened() -> SqliteStore:
        return SqliteStore(path, event_types=tuple(ruleset.events), history=timedelta(days=90), clock=lambda: NOW)

    store = opened()
    await store.open()
    try:
        await store.keep(ruleset, NOW, by="cert:CN=admin", origin="activate")
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:  # the file as schema 8 left it
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN activated_by")
        conn.execute("ALTER TABLE ruleset_activations DROP COLUMN origin")
        conn.execute("PRAGMA user_version = 8")
    store = opened()
    await store.open()
    try:
        [old] = await store.versions()
        assert (old.hash, old.activations, old.last_activated_by, old.last_activation_origin) == (
            ruleset.content_hash,
            1,
            "",
            "",
        )
        await store.keep(version_of(ruleset, "9.9.9"), NOW + timedelta(minutes=1), by="jwt:idp#bob", origin="activate")
        newer, again = await store.versions()
        assert (newer.version, newer.last_activated_by, newer.last_activation_origin) == (
            "9.9.9",
            "jwt:idp#bob",
            "activate",
        )
        assert again == old
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION == 9
