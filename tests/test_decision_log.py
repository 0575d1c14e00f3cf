"""The embedded decision log writes every record, waits rather than drops, and drains on close."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from nba_service.domain.model import Channel
from nba_service.domain.profile import Outcome, OutcomeKind
from nba_service.domain.records import DecisionRecord, RulesetRef
from nba_service.stores.jsonl_log import JsonlDecisionLog

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def record(number: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d-{number}",
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=Channel.AGENT_DESKTOP,
        ruleset=RulesetRef("r", "1.0.0", "h"),
        engine="durable_rules",
        rules_fired=(),
        dropped=(),
        actions=(),
        latency_ms=0.1,
    )


def test_every_record_is_written_even_when_the_queue_is_tiny(tmp_path: Path) -> None:
    """With room for 4 records and 2,000 appended, appends wait for the writer; none is dropped."""

    async def scenario() -> JsonlDecisionLog:
        log = JsonlDecisionLog(tmp_path / "log" / "decisions.jsonl", queue_size=4)
        await log.start()
        await asyncio.gather(*(log.append(record(i)) for i in range(2000)))
        await log.append_outcome(Outcome("d-7", "CUST-000001", "a", Channel.AGENT_DESKTOP, OutcomeKind.ACCEPTED, NOW))
        assert await log.find("d-7") is not None
        assert await log.find("nope") is None
        await log.close()
        return log

    log = asyncio.run(scenario())
    lines = [json.loads(line) for line in log.path.read_text("utf-8").splitlines()]
    decisions = [line["decision_id"] for line in lines if line["kind"] == "decision"]
    assert sorted(decisions) == sorted(f"d-{i}" for i in range(2000))
    assert [line["outcome"] for line in lines if line["kind"] == "outcome"] == ["accepted"]
    assert log.written == 2001


def test_a_failing_disk_is_retried_not_dropped(tmp_path: Path) -> None:
    """While the file cannot be written the records wait; once it can, they are all there."""
    target = tmp_path / "blocked"
    target.mkdir()
    path = target / "decisions.jsonl"

    async def scenario() -> None:
        log = JsonlDecisionLog(path)
        await log.start()
        path.unlink()
        path.mkdir()  # a directory where the file should be: every append fails
        for i in range(3):
            await log.append(record(i))
        await asyncio.sleep(0.3)
        path.rmdir()
        await log.close()

    asyncio.run(scenario())
    assert len(path.read_text("utf-8").splitlines()) == 3
