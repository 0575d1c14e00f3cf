"""Shadow runs in the record: the format reads back with and without them, the writer adds a verdict to a
durable record without a commit of its own while decisions keep coming, and the report counts what it finds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nba_service.app import activate
from nba_service.domain.facts import FactValue
from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.records import (
    DecidedAction,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    FiredRule,
    RulesetRef,
    ShadowRun,
    ShadowUpdate,
)
from nba_service.service import DecisionService
from nba_service.settings import BUNDLED_RULESETS
from nba_service.shadow_report import ShadowReport, render
from nba_service.stores.group_commit import DEFER_SECONDS, GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ACTIVE = RulesetRef("retail-banking", "1.0.0", "a" * 64)
CANDIDATE = RulesetRef("retail-banking", "1.1.0", "b" * 64)
RULESET = BUNDLED_RULESETS / "retail-banking.yaml"


def action(action_id: str, rank: int) -> DecidedAction:
    return DecidedAction(action_id, f"Say {action_id}.", rank, "service", "Because", f"rule-{action_id}", NOW)


def record(
    *action_ids: str, shadow: ShadowRun | None = None, channel: Channel = Channel.AGENT_DESKTOP
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=NOW,
        customer_id="CUST-000001",
        channel=channel,
        ruleset=ACTIVE,
        engine="durable_rules",
        rules_fired=(FiredRule("rule-a", "a", 5, {"amount": 48250.0, "name": "Zoë"}),),
        dropped=(),
        actions=tuple(action(a, rank) for rank, a in enumerate(action_ids, start=1)),
        latency_ms=0.25,
        shadow=shadow,
    )


def run(*action_ids: str, agreed: bool, error: str | None = None) -> ShadowRun:
    return ShadowRun(CANDIDATE, agreed, tuple(action_ids), error)


def through_json(item: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(item))
    return loaded


class TestRecordFormat:
    def test_a_record_without_a_shadow_writes_null_and_reads_back(self) -> None:
        """No candidate ran: the line says `"shadow": null`, and reads back to the same record."""
        original = record("a", "b")
        data = original.to_json()
        assert data["shadow"] is None
        assert DecisionRecord.from_json(through_json(data)) == original

    def test_a_record_with_a_shadow_reads_back_whole(self) -> None:
        """The candidate's ruleset, verdict, actions and error all survive the JSON line."""
        for shadow in (run("b", "a", agreed=False), run(agreed=False, error="EngineFailure: boom")):
            original = record("a", "b", shadow=shadow)
            data = through_json(original.to_json())
            assert data["shadow"] == {
                "ruleset": {"name": CANDIDATE.name, "version": CANDIDATE.version, "hash": CANDIDATE.hash},
                "agreed": False,
                "actions": list(shadow.action_ids),
                "error": shadow.error,
            }
            assert DecisionRecord.from_json(data) == original

    def test_lines_written_before_shadow_runs_still_read(self) -> None:
        """A line with no `shadow` key at all (every record before this field existed) reads as no shadow."""
        data = record("a").to_json()
        del data["shadow"]
        assert DecisionRecord.from_json(data).shadow is None

    def test_a_malformed_shadow_is_refused_by_name(self) -> None:
        data = {**record("a").to_json(), "shadow": {"agreed": True}}
        with pytest.raises(ValueError, match="not a decision record"):
            DecisionRecord.from_json(data)

    def test_shadow_update_round_trips_and_refuses_other_kinds(self) -> None:
        update = ShadowUpdate(str(uuid.uuid4()), run("a", agreed=True))
        assert ShadowUpdate.from_json(through_json(update.to_json())) == update
        with pytest.raises(ValueError, match="expected a 'shadow' record"):
            ShadowUpdate.from_json(DeliveryUpdate(update.decision_id, Delivery.CANCELLED).to_json())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "nba.db", event_types=(), history=timedelta(days=1), timeout=0.5)
    await opened.open()
    yield opened
    await opened.close()


async def exported(store: SqliteStore) -> dict[str, dict[str, Any]]:
    return {item["decision_id"]: item async for item in store.export(None, None, None) if item["kind"] == "decision"}


async def shadowed(store: SqliteStore, decision_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The exported records once each carries its shadow run, which is written a little after the answer."""
    async with asyncio.timeout(10):
        while True:
            stored = await exported(store)
            if all(stored[d]["shadow"] is not None for d in decision_ids):
                return stored
            await asyncio.sleep(0.05)


class TestDeferredShadowUpdates:
    async def test_a_verdict_rides_with_the_next_decision_commit(self, store: SqliteStore, tmp_path: Path) -> None:
        """While decisions keep coming, a deferred verdict costs no commit of its own: it is applied in the
        same transaction as the next record, and the exported record carries it."""
        writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
        await writer.start()
        first, second = record("a"), record("b")
        await writer.record(first)
        batches = writer.stats.batches
        writer.defer(ShadowUpdate(first.decision_id, run("a", agreed=True)))
        await writer.record(second)
        assert writer.stats.batches == batches + 1
        assert writer.queued == 0
        stored = await exported(store)
        assert DecisionRecord.from_json(stored[first.decision_id]) == replace(first, shadow=run("a", agreed=True))
        assert stored[second.decision_id]["shadow"] is None
        await writer.close()

    async def test_a_verdict_alone_is_written_within_the_deferral(self, store: SqliteStore, tmp_path: Path) -> None:
        """No decision follows: the verdict still reaches the database, within DEFER_SECONDS and a commit."""
        writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
        await writer.start()
        only = record("a", "b")
        await writer.record(only)
        deferred_at = asyncio.get_running_loop().time()
        writer.defer(ShadowUpdate(only.decision_id, run("b", "a", agreed=False)))
        await asyncio.sleep(DEFER_SECONDS / 2)
        assert (await exported(store))[only.decision_id]["shadow"] is None
        stored = await shadowed(store, [only.decision_id])
        assert stored[only.decision_id]["shadow"]["actions"] == ["b", "a"]
        assert asyncio.get_running_loop().time() - deferred_at >= DEFER_SECONDS
        await writer.close()

    async def test_shutdown_writes_deferred_verdicts(self, store: SqliteStore, tmp_path: Path) -> None:
        """A verdict deferred just before SIGTERM is written by the drain, not dropped with the timer."""
        writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
        await writer.start()
        only = record("a")
        await writer.record(only)
        writer.defer(ShadowUpdate(only.decision_id, run(agreed=False, error="EngineFailure: \x00 \ud800")))
        await writer.close()
        shadow = (await exported(store))[only.decision_id]["shadow"]
        assert shadow["error"] == "EngineFailure: \x00 \ud800"
        assert writer.stats.unwritten == []

    async def test_delivery_and_shadow_updates_of_one_record_both_apply(
        self, store: SqliteStore, tmp_path: Path
    ) -> None:
        writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
        await writer.start()
        only = record("a")
        await writer.record(only)
        writer.defer(ShadowUpdate(only.decision_id, run("a", agreed=True)))
        writer.mark(DeliveryUpdate(only.decision_id, Delivery.CANCELLED))
        await writer.close()
        stored = (await exported(store))[only.decision_id]
        assert (stored["delivery"], stored["shadow"]["agreed"]) == ("cancelled", True)
        with sqlite3.connect(store.path) as conn:
            (delivery,) = conn.execute("SELECT delivery FROM decisions").fetchone()
        assert delivery == "cancelled"


class TestReport:
    def test_counts_agreement_and_sorts_differences_per_action(self) -> None:
        """Per action: offered by the active ruleset only, by the candidate only, or by both at another rank;
        unshadowed and agreeing decisions add nothing there, failures are counted apart."""
        agreed = record("a", "b", shadow=run("a", "b", agreed=True))
        reordered = record("a", "b", shadow=run("b", "a", agreed=False))
        replaced = record("a", "c", shadow=run("a", "d", agreed=False), channel=Channel.OUTBOUND_DIALER)
        failed = record("a", shadow=run(agreed=False, error="EngineFailure: boom"))
        report = ShadowReport()
        for item in (record("z"), agreed, reordered, replaced, failed):
            report.add(item)

        data = report.to_json()
        assert (data["decisions"], data["shadowed"], data["agreed"], data["disagreed"], data["failed"]) == (
            5,
            4,
            1,
            2,
            1,
        )
        assert data["disagreement_rate"] == 0.5
        assert data["candidates"] == [
            {
                "name": "retail-banking",
                "version": "1.1.0",
                "hash": "b" * 64,
                "shadowed": 4,
                "agreed": 1,
                "disagreed": 2,
                "failed": 1,
            }
        ]
        assert data["channels"]["outbound_dialer"] == {"shadowed": 1, "agreed": 0, "disagreed": 1, "failed": 0}
        by_action = {a["action_id"]: a for a in data["actions"]}
        assert set(by_action) == {"a", "b", "c", "d"}
        assert by_action["a"]["other_rank"] == {"count": 1, "examples": [reordered.decision_id]}
        assert by_action["b"]["other_rank"]["count"] == 1
        assert by_action["c"]["active_only"] == {"count": 1, "examples": [replaced.decision_id]}
        assert by_action["d"]["candidate_only"] == {"count": 1, "examples": [replaced.decision_id]}
        assert data["errors"] == [{"error": "EngineFailure: boom", "count": 1, "examples": [failed.decision_id]}]
        text = render(report)
        assert "4 of them shadowed" in text
        assert f"d, candidate only: {replaced.decision_id}" in text

    def test_keeps_three_examples(self) -> None:
        report = ShadowReport()
        items = [record("a", shadow=run("b", agreed=False)) for _ in range(5)]
        for item in items:
            report.add(item)
        by_action = {a["action_id"]: a for a in report.to_json()["actions"]}
        assert by_action["a"]["active_only"] == {"count": 5, "examples": [i.decision_id for i in items[:3]]}

    def test_no_shadowed_decisions_says_so(self) -> None:
        report = ShadowReport()
        report.add(record("a"))
        assert "No shadowed decisions" in render(report)
        assert report.to_json()["disagreement_rate"] is None


class _Exploding:
    """An evaluator that fails the way a defect would: not with the engine's own EngineFailure (which the
    pipeline answers with the reference evaluator), but with anything at all."""

    def evaluate(self, facts: Mapping[str, FactValue]) -> list[int]:
        raise RuntimeError("candidate defect \x00 here")

    def close(self) -> None:
        pass


class TestDecisionService:
    @pytest.fixture
    async def parts(self, tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, GroupCommitWriter, ActiveRuleset]]:
        ruleset = load_ruleset_file(RULESET)
        store = SqliteStore(
            tmp_path / "nba.db",
            event_types=tuple(ruleset.events),
            history=timedelta(days=180),
            timeout=2,
            clock=_midday,
        )
        await store.open(lambda: read_sample(SAMPLE_PATH, _midday()))
        writer = GroupCommitWriter(store, timeout=5, spill_dir=tmp_path)
        await writer.start()
        active = activate(ruleset)
        yield store, writer, active
        active.engine.close()
        await writer.close()
        await store.close()

    async def test_a_failing_candidate_never_fails_the_decision(
        self, parts: tuple[SqliteStore, GroupCommitWriter, ActiveRuleset]
    ) -> None:
        """The candidate raises on every evaluation: every decision is still answered, exactly as without a
        shadow, and its record says the candidate failed, with text every store can hold."""
        store, writer, active = parts
        candidate = activate(load_ruleset_text(RULESET.read_bytes() + b"\n# candidate\n", "candidate.yaml"))
        service = DecisionService(store, writer, active, shadow=replace(candidate, engine=_Exploding()), clock=_midday)
        plain = DecisionService(store, writer, active, clock=_midday)
        decisions = []
        for number in range(1, 21):
            customer = f"CUST-{number:06d}"
            decision = await service.decide(customer, Channel.AGENT_DESKTOP)
            expected = await plain.decide(customer, Channel.AGENT_DESKTOP)
            assert [a.action_id for a in decision.actions] == [a.action_id for a in expected.actions]
            decisions.append(decision.decision_id)
        stored = await shadowed(store, decisions)
        for decision_id in decisions:
            shadow = stored[decision_id]["shadow"]
            assert shadow["agreed"] is False
            assert shadow["actions"] == []
            assert shadow["error"] == "RuntimeError: candidate defect \\x00 here"
        candidate.engine.close()

    async def test_a_candidate_that_decides_alike_agrees_and_can_be_stopped(
        self, parts: tuple[SqliteStore, GroupCommitWriter, ActiveRuleset]
    ) -> None:
        """A candidate that differs only in a comment agrees on every decision; `set_shadow(None)` hands the
        candidate back for unloading, and later decisions record no shadow."""
        store, writer, active = parts
        candidate = activate(load_ruleset_text(RULESET.read_bytes() + b"\n# candidate\n", "candidate.yaml"))
        service = DecisionService(store, writer, active, shadow=candidate, clock=_midday)
        decisions = [
            (await service.decide(f"CUST-{n:06d}", channel)).decision_id
            for n in range(1, 11)
            for channel in (Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER)
        ]
        assert service.set_shadow(None) is candidate
        candidate.engine.close()
        after = (await service.decide("CUST-000001", Channel.AGENT_DESKTOP)).decision_id
        stored = await shadowed(store, decisions)
        assert all(stored[d]["shadow"]["agreed"] for d in decisions)
        assert {stored[d]["shadow"]["ruleset"]["hash"] for d in decisions} == {candidate.ruleset.content_hash}
        assert stored[after]["shadow"] is None

    async def test_a_candidate_decides_in_the_decisions_direction(
        self, parts: tuple[SqliteStore, GroupCommitWriter, ActiveRuleset]
    ) -> None:
        """The candidate differs only by holding every action back on inbound contacts: it agrees with outbound
        desktop decisions and disagrees with inbound ones that offered something, so it ran in each decision's
        own direction (the desktop's usual inbound would have disagreed with both)."""
        store, writer, active = parts
        candidate = activate(_silent_inbound())
        service = DecisionService(store, writer, active, shadow=candidate, clock=_midday)
        offered: dict[Direction, list[str]] = {Direction.INBOUND: [], Direction.OUTBOUND: []}
        for number in range(1, 21):
            for direction, ids in offered.items():
                decision = await service.decide(f"CUST-{number:06d}", Channel.AGENT_DESKTOP, direction=direction)
                if decision.actions:
                    ids.append(decision.decision_id)
        stored = await shadowed(store, [d for ids in offered.values() for d in ids])
        candidate.engine.close()
        assert offered[Direction.INBOUND], "some sample customer should be offered something"
        assert offered[Direction.OUTBOUND], "some sample customer should be offered something"
        assert {stored[d]["shadow"]["agreed"] for d in offered[Direction.OUTBOUND]} == {True}
        assert {stored[d]["shadow"]["agreed"] for d in offered[Direction.INBOUND]} == {False}
        assert {stored[d]["direction"] for d in offered[Direction.INBOUND]} == {"inbound"}

    async def test_a_dry_run_decides_in_the_direction_asked(
        self, parts: tuple[SqliteStore, GroupCommitWriter, ActiveRuleset]
    ) -> None:
        """With every action held back on inbound contacts, an inbound dry run offers nothing and an outbound one
        offers what the plain version offers outbound; each says its direction, in the answer and its explanation."""
        store, writer, active = parts
        silent = activate(_silent_inbound())
        dry_runs = DecisionService(store, writer, silent, clock=_midday)
        plain = DecisionService(store, writer, active, clock=_midday)
        offered = 0
        for number in range(1, 21):
            customer = f"CUST-{number:06d}"
            inbound = await dry_runs.decide(customer, Channel.AGENT_DESKTOP, dry_run=True)
            outbound = await dry_runs.decide(
                customer, Channel.AGENT_DESKTOP, direction=Direction.OUTBOUND, dry_run=True
            )
            expected = await plain.decide(customer, Channel.AGENT_DESKTOP, direction=Direction.OUTBOUND, dry_run=True)
            assert inbound.actions == ()
            assert [a.action_id for a in outbound.actions] == [a.action_id for a in expected.actions]
            assert inbound.explanation is not None
            assert outbound.explanation is not None
            assert (inbound.direction, inbound.explanation.direction) == (Direction.INBOUND, Direction.INBOUND)
            assert (outbound.direction, outbound.explanation.direction) == (Direction.OUTBOUND, Direction.OUTBOUND)
            offered += bool(outbound.actions)
        silent.engine.close()
        assert offered, "some sample customer should be offered something outbound"


def _midday() -> datetime:
    """Today at 11:00 UTC, a time when outbound calls are allowed in London: every sample customer's local quiet
    hours cover the real evening (20:00 to 22:00 UTC no one may be called), and these tests call out."""
    return datetime.now(UTC).replace(hour=11, minute=0, second=0, microsecond=0)


def _silent_inbound() -> Ruleset:
    """The bundled ruleset holding every action back on inbound contacts, and nothing else changed."""
    text = RULESET.read_text(encoding="utf-8").replace(
        "\n  suppressions:\n",
        "\n  suppressions:\n    - id: nothing-inbound\n      description: Nothing on inbound calls.\n"
        "      when: {all: [{field: stage, op: exists}]}\n      directions: [inbound]\n",
        1,
    )
    ruleset = load_ruleset_text(text, "candidate.yaml")
    assert any(s.id == "nothing-inbound" for s in ruleset.policies.suppressions)
    return ruleset
