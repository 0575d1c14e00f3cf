"""Shadow runs on the PostgreSQL store: the verdict added after the answer lands in `decisions.shadow`
(migration 0003), reads back through the export exactly as written, and replays from a spill file."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from nba_service.domain.model import Channel
from nba_service.domain.records import (
    DecidedAction,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    RulesetRef,
    ShadowRun,
    ShadowUpdate,
)
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.postgres.decision_log import PostgresRecordExport, PostgresRecordSink, replay
from nba_service.stores.postgres.profiles import create_pool

NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)
CANDIDATE = RulesetRef("retail-banking", "1.1.0", "b" * 64)


def record(*action_ids: str) -> DecisionRecord:
    return DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=Channel.AGENT_DESKTOP,
        ruleset=RulesetRef("retail-banking", "1.0.0", "a" * 64),
        engine="durable_rules",
        rules_fired=(),
        dropped=(),
        actions=tuple(
            DecidedAction(a, "Say hello.", rank, "service", "Because", f"rule-{a}", NOW)
            for rank, a in enumerate(action_ids, start=1)
        ),
        latency_ms=1.25,
    )


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(pg_dsn)
    try:
        yield made
    finally:
        await made.close()


async def _exported(pool: asyncpg.Pool) -> dict[str, DecisionRecord]:
    items = [i async for i in PostgresRecordExport(pool).export(None, None, None)]
    return {i["decision_id"]: DecisionRecord.from_json(i) for i in items if i["kind"] == "decision"}


async def test_deferred_verdicts_are_stored_and_exported(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Three records: one agreed, one disagreed with a failure text PostgreSQL could not hold raw, one never
    shadowed (SQL NULL in the column, `"shadow": null` in the export); a delivery correction of a shadowed
    record applies beside its verdict."""
    writer = GroupCommitWriter(PostgresRecordSink(pool), timeout=5, spill_dir=tmp_path)
    await writer.start()
    agreed, failed, plain = record("a", "b"), record("a"), record("c")
    for item in (agreed, failed, plain):
        await writer.record(item)
    verdicts = {
        agreed.decision_id: ShadowRun(CANDIDATE, True, ("a", "b")),
        failed.decision_id: ShadowRun(CANDIDATE, False, (), "EngineFailure: café"),
    }
    for decision_id, verdict in verdicts.items():
        writer.defer(ShadowUpdate(decision_id, verdict))
    writer.mark(DeliveryUpdate(agreed.decision_id, Delivery.CANCELLED))
    await writer.close()

    stored = await _exported(pool)
    assert stored[agreed.decision_id] == replace(
        agreed, shadow=verdicts[agreed.decision_id], delivery=Delivery.CANCELLED
    )
    assert stored[failed.decision_id] == replace(failed, shadow=verdicts[failed.decision_id])
    assert stored[plain.decision_id] == plain
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT shadow IS NULL FROM decisions WHERE decision_id = $1", uuid.UUID(plain.decision_id)
        )


async def test_replay_applies_shadow_lines(pool: asyncpg.Pool, pg_dsn: str, tmp_path: Path) -> None:
    """A spill file holding a record and its verdict loads both; a verdict for a decision never stored has
    nothing to attach to and is counted as moot, not as a problem."""
    kept = record("a")
    spill = tmp_path / "records-unsent-1.jsonl"
    lines = [
        kept.to_json(),
        ShadowUpdate(kept.decision_id, ShadowRun(CANDIDATE, False, ("b",))).to_json(),
        ShadowUpdate(str(uuid.uuid4()), ShadowRun(CANDIDATE, True, ())).to_json(),
    ]
    spill.write_text("".join(json.dumps(line) + "\n" for line in lines), "utf-8")
    conn = await asyncpg.connect(pg_dsn)
    try:
        (report,) = await replay(conn, [spill])
    finally:
        await conn.close()
    assert (report.decisions, report.inserted, report.updates, report.updated, report.moot) == (1, 1, 2, 1, 1)
    assert report.problems == []
    assert (await _exported(pool))[kept.decision_id].shadow == ShadowRun(CANDIDATE, False, ("b",))
