"""The group-commit writer over a real SQLite file: answered means recorded, and no record blocks the others."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nba_service.domain.model import Channel
from nba_service.domain.records import (
    DecidedAction,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    DroppedCandidate,
    FiredRule,
    RulesetRef,
)
from nba_service.errors import Unavailable
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def record(reason: str = "card lost", **changes: object) -> DecisionRecord:
    base = DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=Channel.OUTBOUND_DIALER,
        ruleset=RulesetRef("r", "1.0.0", "h"),
        engine="durable_rules",
        rules_fired=(FiredRule("rule", "act", 5, {"amount": 48250.0, "name": "Zoë", "gone": None}),),
        dropped=(DroppedCandidate("rule2", "act2", "frequency_cap", "cap: at most 1"),),
        actions=(DecidedAction("act", "Say hello.", 1, "service", "Because", "rule", NOW + timedelta(hours=1)),),
        latency_ms=0.25,
        context_reason=reason,
        context={"queue": "cards"},
        profile_problems=("x: not a number; treated as missing",),
    )
    return DecisionRecord(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **changes})  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "nba.db", event_types=(), history=timedelta(days=1), timeout=0.5)
    await opened.open()
    yield opened
    await opened.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_record_format_round_trips_through_json() -> None:
    """The export format reads back to the same record, and a record of another format is refused by name."""
    original = record(delivery=Delivery.CANCELLED)
    again = DecisionRecord.from_json(json.loads(json.dumps(original.to_json())))
    assert again == original
    with pytest.raises(ValueError, match="unknown record format"):
        DecisionRecord.from_json({**original.to_json(), "format": "nba.record/99"})


async def test_concurrent_records_share_commits_and_all_are_durable(store: SqliteStore, tmp_path: Path) -> None:
    """200 decisions at once: each call returns only once its row is committed, and commits are shared."""
    writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
    await writer.start()
    batch = [record() for _ in range(200)]
    await asyncio.gather(*(writer.record(r) for r in batch))
    stored = {r[0] for r in rows(store.path, "SELECT decision_id FROM decisions")}
    assert stored == {r.decision_id for r in batch}
    assert writer.stats.batches < 100, "every record took a commit of its own"
    await writer.close()


async def test_a_record_the_store_refuses_is_set_aside_and_the_others_commit(
    store: SqliteStore, tmp_path: Path
) -> None:
    """A lone surrogate cannot be stored as UTF-8: that one record becomes a dead letter with its error,
    the 49 sharing its batch commit, later records commit too, and the writer stays healthy."""
    writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
    await writer.start()
    poison = record(reason="bad \udc80 text")
    good = [record() for _ in range(49)]
    await asyncio.gather(*(writer.record(r) for r in [*good[:20], poison, *good[20:]]))
    later = record()
    await writer.record(later)
    stored = {r[0] for r in rows(store.path, "SELECT decision_id FROM decisions")}
    assert stored == {r.decision_id for r in [*good, later]}
    letters = rows(store.path, "SELECT decision_id, error, record FROM dead_letters")
    assert len(letters) == 1
    assert letters[0][0] == poison.decision_id
    assert "UnicodeEncodeError" in str(letters[0][1])
    assert json.loads(str(letters[0][2]))["context"]["reason"] == "bad \udc80 text"
    assert writer.stats.dead_letters == 1
    assert writer.healthy()
    await writer.close()


async def test_a_locked_database_makes_calls_unavailable_then_recovers(store: SqliteStore, tmp_path: Path) -> None:
    """Another process holding the write lock: the call fails with Unavailable at its time limit, the writer
    reports unhealthy, the withdrawn record is never stored as sent, and everything recovers by itself."""
    writer = GroupCommitWriter(store, timeout=0.8, spill_dir=tmp_path)
    await writer.start()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    withdrawn = record()
    started = asyncio.get_running_loop().time()
    with pytest.raises(Unavailable, match="durable"):
        await writer.record(withdrawn)
    assert asyncio.get_running_loop().time() - started < 1.5
    assert not writer.healthy()
    blocker.execute("ROLLBACK")
    blocker.close()
    after = record()
    await writer.record(after)
    assert writer.healthy()
    await writer.close()
    stored = dict(rows(store.path, "SELECT decision_id, delivery FROM decisions"))
    assert stored[after.decision_id] == "sent"
    assert stored.get(withdrawn.decision_id, "failed") == "failed"


async def test_delivery_updates_correct_durable_records(store: SqliteStore, tmp_path: Path) -> None:
    """A record whose answer never reached the caller is corrected, and the export shows it."""
    writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
    await writer.start()
    first, second = record(), record()
    await writer.record(first)
    await writer.record(second)
    writer.mark(DeliveryUpdate(first.decision_id, Delivery.CANCELLED))
    await writer.close()
    exported = {item["decision_id"]: item async for item in store.export(None, None, None)}
    assert exported[first.decision_id]["delivery"] == "cancelled"
    assert exported[second.decision_id]["delivery"] == "sent"
    assert DecisionRecord.from_json(exported[second.decision_id]) == second


async def test_shutdown_with_the_store_failing_spills_within_the_drain_time(store: SqliteStore, tmp_path: Path) -> None:
    """Close never outlasts its drain time: what the store could not take is left in a spill file, named."""
    spill = tmp_path / "spill"
    writer = GroupCommitWriter(store, timeout=5, spill_dir=spill, drain_timeout=0.5)
    await writer.start()
    kept = record()
    await writer.record(kept)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        writer.mark(DeliveryUpdate(kept.decision_id, Delivery.CANCELLED))
        started = asyncio.get_running_loop().time()
        await writer.close()
        assert asyncio.get_running_loop().time() - started < 2.5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    files = list(spill.glob("records-unsent-*.jsonl"))
    assert len(files) == 1
    lines = [json.loads(line) for line in files[0].read_text("utf-8").splitlines()]
    assert lines == [DeliveryUpdate(kept.decision_id, Delivery.CANCELLED).to_json()]
    assert not list(spill.glob("*.partial"))


async def test_an_outcome_proves_delivery_of_a_decision_recorded_as_undelivered(tmp_path: Path) -> None:
    """A decision corrected to `cancelled` whose outcome arrives later was seen after all: the record says sent."""
    from nba_service.app import activate
    from nba_service.domain.loader import load_ruleset_dir
    from nba_service.domain.profile import OutcomeKind
    from nba_service.service import DecisionService
    from nba_service.settings import BUNDLED_RULESETS
    from nba_service.synthetic import SAMPLE_PATH, read_sample

    ruleset = load_ruleset_dir(BUNDLED_RULESETS)[0]
    store = SqliteStore(tmp_path / "nba.db", event_types=tuple(ruleset.events), history=timedelta(days=90))
    await store.open(lambda: read_sample(SAMPLE_PATH, datetime.now(UTC)))
    writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
    await writer.start()
    active = activate(ruleset)
    service = DecisionService(store, writer, active)
    decision = await service.decide("CUST-000058", Channel.AGENT_DESKTOP)
    assert decision.actions
    service.undelivered(decision.decision_id, Delivery.CANCELLED)
    await asyncio.sleep(0.1)
    assert (await store.find(decision.decision_id)).delivery is Delivery.CANCELLED  # type: ignore[union-attr]
    await service.record_outcome(decision.decision_id, decision.actions[0].action_id, OutcomeKind.ACCEPTED, None)
    await writer.close()
    exported = [item async for item in store.export(None, None, None)]
    await store.close()
    active.engine.close()
    assert [r["delivery"] for r in exported if r["kind"] == "decision"] == ["sent"]
    assert [r["outcome"] for r in exported if r["kind"] == "outcome"] == ["accepted"]
