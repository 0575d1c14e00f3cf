"""Decision records in PostgreSQL, through the group-commit writer: no record blocks the others, a database
that is away is waited for (never mistaken for bad content), the export gives back exactly what was written,
and spilled files replay once, reporting every line they could not load."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from nba_service.domain.model import Channel
from nba_service.domain.profile import Event, Outcome, OutcomeKind, Profile
from nba_service.domain.records import (
    DecidedAction,
    DecisionInputs,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    DroppedCandidate,
    FiredRule,
    RulesetRef,
    outcome_to_json,
)
from nba_service.errors import Unavailable
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.postgres.decision_log import (
    PostgresRecordExport,
    PostgresRecordSink,
    is_refusal,
    replay,
)
from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool
from tests.pg import FlakyPool, ThrowawayCluster

NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)


def record(number: int = 0, **changes: Any) -> DecisionRecord:
    action = DecidedAction("welcome-call", "Say hello.", 1, "service", "new customer", "r-welcome", NOW)
    base = DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=NOW + timedelta(milliseconds=number),
        customer_id=f"CUST-{number % 50 + 1:06d}",
        channel=(Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER)[number % 2],
        ruleset=RulesetRef("retail-banking", "1.2.3", "c0ffee"),
        engine="durable_rules",
        rules_fired=(FiredRule("r-welcome", "welcome-call", 50, {"tenure_days": 3.0, "name": "Zoë", "gone": None}),),
        dropped=(DroppedCandidate("r-card", "credit-card-offer", "frequency_cap", "credit-card-quarterly"),),
        actions=(action,),
        latency_ms=1.25,
        context_reason="inbound call",
        context={"queue": "retail"},
        profile_problems=("income: str value is not a valid number; treated as missing",),
    )
    return replace(base, **changes)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(pg_dsn)
    try:
        yield made
    finally:
        await made.close()


async def _stored(pool: asyncpg.Pool) -> dict[str, str]:
    """decision id -> delivery, for every row of `decisions`."""
    async with pool.acquire() as conn:
        return {
            str(r["decision_id"]): r["delivery"]
            for r in await conn.fetch("SELECT decision_id, delivery FROM decisions")
        }


async def _dead_letters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT decision_id, error, record FROM dead_letters ORDER BY id"))


async def _record_all(writer: GroupCommitWriter, records: list[DecisionRecord]) -> list[BaseException | None]:
    """Records them all in one batch: queued before the writer starts, as calls arriving during a commit are."""
    calls = [asyncio.create_task(writer.record(r)) for r in records]
    await asyncio.sleep(0)
    await writer.start()
    return list(await asyncio.gather(*calls, return_exceptions=True))


# --------------------------------------------------------------------------------------------------
# Refused content


POISONS: dict[str, dict[str, Any]] = {
    # The reported defect: PostgreSQL refused the whole batch ("\u0000 cannot be converted to text").
    "NUL in the context reason (jsonb)": {"context_reason": "card lost\x00abroad"},
    "NUL in a text column": {"customer_id": "CUST-\x00"},
    "NUL in a value a rule read": {"rules_fired": (FiredRule("r", "a", 1, {"name": "Zo\x00ë"}),)},
    "an infinite number jsonb cannot hold": {"rules_fired": (FiredRule("r", "a", 1, {"amount": float("inf")}),)},
    "a decision id that is not a UUID": {"decision_id": "not-a-uuid"},
    # Inputs tag a float they hold, not one inside an object value: these go as they are (and jsonb has no NaN).
    "NaN inside an object attribute of the profile": {
        "inputs": DecisionInputs(Profile("CUST-000001", {"limits": {"daily": [1.5, float("nan")]}}), 3)  # type: ignore[dict-item]
    },
    "an infinity inside an event's object attribute": {
        "inputs": DecisionInputs(
            Profile("CUST-000001", {}, (Event("card", NOW, {"where": {"lat": float("-inf")}}),)),  # type: ignore[dict-item]
            3,
        )
    },
}


@pytest.mark.parametrize("poison", list(POISONS))
async def test_a_record_postgres_refuses_is_set_aside_and_the_others_are_stored(
    pool: asyncpg.Pool, tmp_path: Path, poison: str
) -> None:
    """A record PostgreSQL can never store, in one batch with 39 good ones: the 39 are stored, the refused one
    is set aside in dead_letters with its error and its content (NUL escaped, so it reads back exactly), every
    call returns, the writer stays healthy and goes on storing what comes next."""
    writer = GroupCommitWriter(PostgresRecordSink(pool, timeout=2.0), timeout=10, spill_dir=tmp_path)
    bad = record(99, **POISONS[poison])
    good = [record(n) for n in range(39)]
    results = await _record_all(writer, [*good[:17], bad, *good[17:]])
    assert results == [None] * 40
    later = record(100)
    await writer.record(later)
    assert writer.healthy()
    assert writer.stats.dead_letters == 1
    await writer.close()

    assert await _stored(pool) == {r.decision_id: "sent" for r in [*good, later]}
    letters = await _dead_letters(pool)
    assert len(letters) == 1
    assert letters[0]["decision_id"] == bad.decision_id.replace("\x00", "\\u0000")
    assert letters[0]["error"]
    assert "\x00" not in letters[0]["record"]
    if "\x00" in json.dumps(bad.to_json(), ensure_ascii=False):
        assert "\\u0000" in letters[0]["record"]
        assert "\\u0000" in letters[0]["error"] or "0x00" in letters[0]["error"]
    back = DecisionRecord.from_json(json.loads(letters[0]["record"]))
    assert back.to_json() == json.loads(json.dumps(bad.to_json(), default=str))


async def test_refusals_are_told_from_a_database_that_is_away(pool: asyncpg.Pool) -> None:
    """Content errors (SQLSTATE classes 22, 23, 54, and the driver's own encoding errors) are refusals; a lost
    connection, a timeout, a missing table or a query cancelled by an operator are not."""
    sink = PostgresRecordSink(pool)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError) as nul:
            await conn.execute("SELECT $1::text", "a\x00b")
        with pytest.raises(asyncpg.PostgresError) as check:
            await conn.execute("INSERT INTO customers (customer_id) VALUES ('')")
        with pytest.raises(asyncpg.PostgresError) as missing:
            await conn.execute("SELECT * FROM no_such_table")
        with pytest.raises(asyncpg.PostgresError) as cancelled:
            await conn.execute("SET statement_timeout = 10; SELECT pg_sleep(1)")
        await conn.execute("RESET statement_timeout")
        with pytest.raises(asyncpg.PostgresError) as encoding:
            await conn.execute("SELECT $1::int", "seven")
    assert sink.is_refusal(nul.value)
    assert sink.is_refusal(check.value)
    assert sink.is_refusal(encoding.value)
    assert not sink.is_refusal(missing.value)
    assert not sink.is_refusal(cancelled.value)
    assert not is_refusal(asyncpg.ConnectionDoesNotExistError("gone"))
    assert not is_refusal(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not is_refusal(TimeoutError())
    assert not is_refusal(OSError("connection refused"))


async def test_a_dead_letter_that_cannot_be_written_is_a_store_failure(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """When even the dead_letters table cannot take the refused record, nothing is dropped: the writer reports
    itself unhealthy and retries, the calls wait, and once the table is back the record is set aside and every
    call returns."""
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE dead_letters RENAME TO dead_letters_away")
    writer = GroupCommitWriter(PostgresRecordSink(pool, timeout=2.0), timeout=20, spill_dir=tmp_path)
    bad, good = record(1, context_reason="\x00"), record(2)
    calls = [asyncio.create_task(writer.record(r)) for r in (good, bad)]
    await asyncio.sleep(0)
    await writer.start()
    await asyncio.sleep(1.0)
    assert not writer.healthy()
    assert not any(call.done() for call in calls)
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE dead_letters_away RENAME TO dead_letters")
    await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
    assert writer.healthy()
    await writer.close()
    assert await _stored(pool) == {good.decision_id: "sent"}
    assert [r["decision_id"] for r in await _dead_letters(pool)] == [bad.decision_id]


# --------------------------------------------------------------------------------------------------
# A database that goes away


async def test_a_database_that_is_away_makes_calls_unavailable_and_nothing_is_refused(
    pg_cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    """With PostgreSQL stopped, a call fails with Unavailable at its time limit (not later), the writer reports
    unhealthy, and nothing is set aside as refused; once PostgreSQL is back the writer recovers by itself. Every
    call that returned is stored as sent; a withdrawn record is either absent or marked failed, never sent."""
    pool = await create_pool(pg_cluster.nba_dsn)
    try:
        writer = GroupCommitWriter(PostgresRecordSink(pool, timeout=0.5), timeout=0.8, spill_dir=tmp_path)
        await writer.start()
        first = record(1)
        await writer.record(first)
        await asyncio.to_thread(pg_cluster.stop, "fast")
        withdrawn = [record(n) for n in range(2, 6)]
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(writer.record(r) for r in withdrawn), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results
        assert asyncio.get_running_loop().time() - started < 1.5
        assert not writer.healthy()
        await asyncio.to_thread(pg_cluster.start)
        after = record(7)
        await asyncio.wait_for(writer.record(after), timeout=10)
        assert writer.healthy()
        await writer.close()
        stored = await _stored(pool)
        assert stored[first.decision_id] == stored[after.decision_id] == "sent"
        assert all(stored.get(r.decision_id, "failed") == "failed" for r in withdrawn), stored
        assert await _dead_letters(pool) == []
        assert writer.stats.dead_letters == 0
        assert not await asyncio.to_thread(lambda: list(tmp_path.glob("records-unsent-*")))
    finally:
        pool.terminate()


async def test_a_driver_error_after_a_commit_is_retried_and_stores_each_record_once(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """When the driver fails as the writer releases its connection (its batch committed), the error is a store
    failure, not a refusal: the batch is retried, ON CONFLICT keeps one row per record, every call returns and
    nothing is set aside."""
    writer = GroupCommitWriter(PostgresRecordSink(FlakyPool(pool, failures=1)), timeout=5, spill_dir=tmp_path)
    records = [record(n) for n in range(6)]
    assert await _record_all(writer, records) == [None] * 6
    await writer.close()
    assert await _stored(pool) == {r.decision_id: "sent" for r in records}
    assert writer.stats.failures == 1
    assert await _dead_letters(pool) == []


async def test_the_probe_fails_where_a_write_would_and_the_writer_recovers_without_traffic(
    pool: asyncpg.Pool, pg_dsn: str, tmp_path: Path
) -> None:
    """The probe stores nothing, yet fails where a batch would: behind a lock that blocks inserts into
    `decisions` (at its time limit) and on a read-only database. A writer that went unhealthy behind such a
    lock turns healthy again once it is released, with no decision waiting."""
    sink = PostgresRecordSink(pool, timeout=0.5)
    await sink.probe()
    writer = GroupCommitWriter(sink, timeout=0.5, spill_dir=tmp_path)
    await writer.start()
    async with pool.acquire() as locker:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE decisions IN SHARE ROW EXCLUSIVE MODE")
        with pytest.raises(TimeoutError):
            await sink.probe()
        with pytest.raises(Unavailable):
            await writer.record(record(1))
        for _ in range(40):  # the write gives up at its own time limit, which began a moment later
            if not writer.healthy():
                break
            await asyncio.sleep(0.05)
        assert not writer.healthy()
        await transaction.rollback()
    for _ in range(100):
        if writer.healthy():
            break
        await asyncio.sleep(0.05)
    assert writer.healthy(), "the writer did not notice the store recover"
    await writer.close()
    assert "sent" not in (await _stored(pool)).values()  # the refused call's record is withdrawn, or failed

    database = pg_dsn.rsplit("/", 1)[1]
    async with pool.acquire() as conn:
        await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    read_only = await create_pool(pg_dsn)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as refused:
            await PostgresRecordSink(read_only, timeout=0.5).probe()
        assert not is_refusal(refused.value)
    finally:
        await read_only.close()


# --------------------------------------------------------------------------------------------------
# Delivery, find and export


async def _customers(pool: asyncpg.Pool, *ids: str) -> None:
    async with pool.acquire() as conn:
        await conn.executemany("INSERT INTO customers (customer_id) VALUES ($1)", [(i,) for i in ids])


async def test_delivery_corrections_find_and_export_give_back_what_was_written(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Records written through the writer, two corrected (cancelled, then a later failed wins for one), and
    outcomes stored by the profile store: find() answers for a stored decision only; the export yields every
    decision and outcome oldest first in the record format, each decision equal to `to_json()` of the record
    as written (with its corrected delivery); and the since/until/customer filters select exactly."""
    writer = GroupCommitWriter(PostgresRecordSink(pool), timeout=5, spill_dir=tmp_path)
    await writer.start()
    records = [
        record(
            n,
            context_reason="Café – ☎",
            context={"queue": "retail", "lang": "pt"},
            decided_at=NOW + timedelta(minutes=n),
            trace_id=f"{n + 1:032x}" if n % 2 else "",  # traced and untraced (a NULL column) alike
        )
        for n in range(6)
    ]
    for item in records:
        await writer.record(item)
    writer.mark(DeliveryUpdate(records[1].decision_id, Delivery.CANCELLED))
    writer.mark(DeliveryUpdate(records[2].decision_id, Delivery.DEADLINE_EXCEEDED))
    writer.mark(DeliveryUpdate(records[2].decision_id, Delivery.FAILED))
    writer.mark(DeliveryUpdate("not-a-uuid", Delivery.FAILED))
    await writer.close()
    assert writer.healthy() or writer.stats.failures == 0
    expected = [
        replace(r, delivery={1: Delivery.CANCELLED, 2: Delivery.FAILED}.get(n, Delivery.SENT))
        for n, r in enumerate(records)
    ]

    sink = PostgresRecordSink(pool)
    summary = await sink.find(records[3].decision_id)
    assert summary == records[3].summary()
    assert await sink.find(str(uuid.uuid4())) is None
    assert await sink.find("not-a-uuid") is None

    await _customers(pool, *{r.customer_id for r in records})
    store = PostgresProfileStore(pool, history=timedelta(days=30), event_types=())
    outcomes = [
        Outcome(
            records[0].decision_id,
            records[0].customer_id,
            "welcome-call",
            records[0].channel,
            OutcomeKind.ACCEPTED,
            NOW + timedelta(minutes=2, seconds=30),
            "keen",
        ),
        Outcome(
            records[0].decision_id,
            records[0].customer_id,
            "welcome-call",
            records[0].channel,
            OutcomeKind.CONVERTED,
            NOW + timedelta(minutes=4, seconds=30),
        ),
    ]
    for outcome in outcomes:
        await store.add_outcome(outcome)

    export = PostgresRecordExport(pool)
    everything = [item async for item in export.export(None, None, None)]
    want = [r.to_json() for r in expected]
    want[3:3] = [outcome_to_json(outcomes[0])]
    want[6:6] = [outcome_to_json(outcomes[1])]
    assert everything == want
    assert [DecisionRecord.from_json(i) for i in everything if i["kind"] == "decision"] == expected

    window = [i async for i in export.export(NOW + timedelta(minutes=2), NOW + timedelta(minutes=4, seconds=30), None)]
    assert window == [want[2], want[3], want[4], want[5]]
    customer = records[0].customer_id
    mine = [i async for i in export.export(None, None, customer)]
    assert mine == [w for w in want if w["customer_id"] == customer]
    assert [i async for i in export.export(None, None, "CUST-999999")] == []


# --------------------------------------------------------------------------------------------------
# Spilled files


def _line(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=True)


async def test_replay_loads_what_it_can_reports_every_other_line_and_is_idempotent(
    pool: asyncpg.Pool, pg_dsn: str, tmp_path: Path
) -> None:
    """A spill file with good records, corrections, and every kind of bad line: the good records are stored,
    the corrections applied (one in an earlier file finds its record in a later one), and each bad line is
    reported by file and line: not JSON, an unknown format, an outcome, a record PostgreSQL refuses (set aside
    in dead_letters), a correction for a decision stored nowhere, a torn last line. A second replay inserts
    nothing and sets nothing aside twice."""
    good = [record(n) for n in range(4)]
    poison = record(9, context_reason="nul \x00 here")
    unknown = str(uuid.uuid4())
    first = tmp_path / "records-unsent-1.jsonl"
    second = tmp_path / "records-unsent-2.jsonl"
    first.write_text(
        "\n".join(
            [
                _line(good[0].to_json()),
                "{this is not json",
                _line({**good[1].to_json(), "format": None}),
                "",
                _line(poison.to_json()),
                _line(good[1].to_json()),
                _line(
                    outcome_to_json(
                        Outcome(
                            good[0].decision_id, "CUST-000001", "a", Channel.AGENT_DESKTOP, OutcomeKind.ACCEPTED, NOW
                        )
                    )
                ),
                _line(DeliveryUpdate(good[3].decision_id, Delivery.CANCELLED).to_json()),
                _line(DeliveryUpdate(unknown, Delivery.SENT).to_json()),
                _line(DeliveryUpdate(str(uuid.uuid4()), Delivery.FAILED).to_json()),
            ]
        )
        + "\n",
        "utf-8",
    )
    second.write_text(
        _line(good[2].to_json()) + "\n" + _line(good[3].to_json()) + "\n" + _line(good[2].to_json())[:40], "utf-8"
    )

    conn = await asyncpg.connect(pg_dsn)
    try:
        one, two = await replay(conn, [first, second])
        again = await replay(conn, [first, second])
    finally:
        await conn.close()

    assert (one.lines, one.decisions, one.inserted, one.already_stored) == (9, 3, 2, 0)
    assert (one.updates, one.updated, one.moot) == (3, 1, 1)
    assert [(p.line, p.dead_lettered) for p in one.problems] == [
        (2, False),
        (3, False),
        (5, True),
        (7, False),
        (9, False),
    ]
    assert "unknown record format None" in one.problems[1].error
    assert "'outcome' record is not replayed" in one.problems[3].error
    assert "not stored" in one.problems[4].error
    assert str(one.problems[2]).startswith(f"{first}:5: refused by PostgreSQL: UntranslatableCharacterError")
    assert (two.lines, two.decisions, two.inserted) == (3, 2, 2)
    assert [p.line for p in two.problems] == [3]
    assert two.problems[0].error.startswith("torn last line")

    assert [(r.inserted, r.already_stored, r.updated) for r in again] == [(0, 2, 1), (0, 2, 0)]
    assert await _stored(pool) == {
        good[0].decision_id: "sent",
        good[1].decision_id: "sent",
        good[2].decision_id: "sent",
        good[3].decision_id: "cancelled",
    }
    letters = await _dead_letters(pool)
    assert [r["decision_id"] for r in letters] == [poison.decision_id]
    assert DecisionRecord.from_json(json.loads(letters[0]["record"])) == poison


async def test_records_waiting_at_shutdown_with_the_database_away_are_spilled_and_replayed_once(
    pg_cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    """PostgreSQL stops while 25 calls wait for their records; close() with a 1 s drain time returns within a
    few seconds, every call fails with Unavailable (none was answered), and the records plus a correction
    queued for an earlier record are in one records-unsent-*.jsonl file. Replayed once PostgreSQL is back, the
    file stores them and applies the correction; a second replay adds nothing."""
    pool = await create_pool(pg_cluster.nba_dsn)
    spill = tmp_path / "spill"
    try:
        writer = GroupCommitWriter(
            PostgresRecordSink(pool, timeout=0.5), timeout=30, spill_dir=spill, drain_timeout=1.0
        )
        await writer.start()
        earlier = record(0)
        await writer.record(earlier)
        await asyncio.to_thread(pg_cluster.stop, "fast")
        writer.mark(DeliveryUpdate(earlier.decision_id, Delivery.CANCELLED))
        waiting = [record(n) for n in range(1, 26)]
        calls = [asyncio.create_task(writer.record(r)) for r in waiting]
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(writer.close(), timeout=10)
        assert asyncio.get_running_loop().time() - started < 5.0
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results
    finally:
        pool.terminate()

    files = list(spill.glob("records-unsent-*.jsonl"))
    assert len(files) == 1, files
    lines = [json.loads(line) for line in files[0].read_text("utf-8").splitlines()]
    assert {i["decision_id"] for i in lines if i["kind"] == "decision"} == {r.decision_id for r in waiting}
    assert [i for i in lines if i["kind"] == "delivery"] == [
        DeliveryUpdate(earlier.decision_id, Delivery.CANCELLED).to_json()
    ]

    await asyncio.to_thread(pg_cluster.start)
    conn = await asyncpg.connect(pg_cluster.nba_dsn)
    try:
        (report,) = await replay(conn, files)
        assert (report.decisions, report.inserted, report.updated, report.problems) == (25, 25, 1, [])
        (report,) = await replay(conn, files)
        assert (report.inserted, report.already_stored) == (0, 25)
        rows = {
            str(r["decision_id"]): r["delivery"]
            for r in await conn.fetch("SELECT decision_id, delivery FROM decisions")
        }
    finally:
        await conn.close()
    assert set(rows) == {earlier.decision_id, *(r.decision_id for r in waiting)}
    assert rows[earlier.decision_id] == "cancelled"
