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


def test_postgres_rows_built_directly_equal_rows_from_the_json_form() -> None:
    """The writer's fast row builder and the replay path (from JSON lines) produce the same row."""
    from datetime import timedelta

    from nba_service.domain.records import DecidedAction, DroppedCandidate, FiredRule
    from nba_service.stores.postgres.decision_log import _row, _row_from_json

    full = DecisionRecord(
        decision_id="6f1c1f8e-3f5c-4d55-9b1a-0e6f8d2a9c11",
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=Channel.OUTBOUND_DIALER,
        ruleset=RulesetRef("r", "1.0.0", "h"),
        engine="durable_rules",
        rules_fired=(FiredRule("rule", "act", 5, {"amount": 48250.0, "name": "Zoë", "gone": None}),),
        dropped=(DroppedCandidate("rule2", "act2", "frequency_cap", "cap: at most 1"),),
        actions=(DecidedAction("act", "Say hello.", 1, "service", "Because", "rule", NOW + timedelta(hours=1)),),
        latency_ms=0.25,
        context_reason="card lost",
        context={"queue": "cards"},
        profile_problems=("x: str value is not a valid number; treated as missing",),
    )
    direct, via_json = _row(full), _row_from_json(json.loads(json.dumps(full.to_json(), default=str)))
    assert direct[:8] == via_json[:8]
    assert [json.loads(a) for a in direct[8:11]] == [json.loads(b) for b in via_json[8:11]]
    assert direct[11:] == via_json[11:]
