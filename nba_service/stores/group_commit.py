"""Answered means recorded: a group-commit writer shared by every store.

A decision's answer waits until the transaction holding its record has committed. Decisions that
arrive while a commit is under way form the next batch, so under load one commit (one fsync) serves
many answers and the cost per decision stays small; idle, a record commits alone at once.

No record can block the others: when the store refuses a batch's content (a value it cannot hold),
the batch is split until the refused record stands alone; that one is set aside with its error
(`RecordSink.dead_letter`), counted and logged, and the rest commit. When the store cannot be reached
or written (database away, disk full, read-only file) the batch is kept and retried with backoff, the
writer reports itself unhealthy, and waiting answers fail with `Unavailable` at their time limit:
a record that gave up waiting is withdrawn, or corrected to `failed` if its commit raced the limit,
so no record claims an answer nobody received.

Additions nobody waits for (a shadow run's verdict, `defer`) do not wake the writer: they ride with the
next batch of records, or go on their own after `DEFER_SECONDS` when no decision comes, so under load they
cost no commit, and no fsync, of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from nba_service.domain.ports import RecordSink
from nba_service.domain.records import (
    DecisionRecord,
    DecisionSummary,
    Delivery,
    DeliveryUpdate,
    RecordUpdate,
    ShadowUpdate,
)
from nba_service.errors import Unavailable

log = structlog.get_logger(__name__)

BATCH_SIZE = 500
QUEUE_LIMIT = 10_000
DEFER_SECONDS = 0.25


@dataclass(slots=True)
class _Entry:
    record: DecisionRecord
    done: asyncio.Future[None]
    abandoned: bool = False
    written: bool = False
    why: Delivery = Delivery.FAILED


@dataclass(slots=True)
class WriterStats:
    written: int = 0
    batches: int = 0
    dead_letters: int = 0
    failures: int = 0
    unwritten: list[str] = field(default_factory=list)


class GroupCommitWriter:
    def __init__(
        self,
        sink: RecordSink,
        *,
        timeout: float,
        spill_dir: Path,
        drain_timeout: float = 30.0,
        batch_size: int = BATCH_SIZE,
        queue_limit: int = QUEUE_LIMIT,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._sink = sink
        self._on_commit = on_commit  # seconds one group commit took (metrics), once per batch, not per record
        self._timeout = timeout
        self._spill_dir = spill_dir
        self._drain_timeout = drain_timeout
        self._batch_size = batch_size
        self._queue_limit = queue_limit
        self._entries: deque[_Entry] = deque()
        self._updates: list[RecordUpdate] = []
        self._deferred: list[ShadowUpdate] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._closing = False
        self.stats = WriterStats()

    @property
    def queued(self) -> int:
        return len(self._entries) + len(self._updates) + len(self._deferred)

    def healthy(self) -> bool:
        return self._healthy and not self._closing

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def record(self, record: DecisionRecord) -> None:
        if self._closing:
            raise Unavailable("the service is shutting down; the decision was not recorded")
        if not self._healthy and len(self._entries) >= self._queue_limit:
            raise Unavailable("decision records cannot be made durable now (the store is failing)")
        entry = _Entry(record, asyncio.get_running_loop().create_future())
        self._entries.append(entry)
        self._wake.set()
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(entry.done)
        except BaseException as exc:  # a time limit or a cancelled call: the answer will not be given
            if isinstance(exc, TimeoutError) and entry.done.done() and entry.done.exception() is None:
                return  # the commit won the race with the time limit: the record is durable, answer
            if not entry.done.done():
                self._abandon(entry, Delivery.FAILED if isinstance(exc, TimeoutError) else Delivery.CANCELLED)
            if isinstance(exc, TimeoutError):
                raise Unavailable(f"the decision record could not be made durable within {self._timeout:g} s") from exc
            raise

    def _abandon(self, entry: _Entry, why: Delivery) -> None:
        entry.abandoned = True
        entry.why = why

    async def find(self, decision_id: str) -> DecisionSummary | None:
        return await self._sink.find(decision_id)

    def mark(self, update: RecordUpdate) -> None:
        self._updates.append(update)
        self._wake.set()

    def defer(self, update: ShadowUpdate) -> None:
        if self._closing:  # the drain is the last commit: it must carry this, or the spill must
            self.mark(update)
            return
        self._deferred.append(update)
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(DEFER_SECONDS, self._flush_deferred)

    def _flush_deferred(self) -> None:
        """No decision came to carry the deferred additions: they go in a commit of their own."""
        self._flush_timer = None
        if self._deferred:
            self._updates.extend(self._deferred)
            self._deferred.clear()
            self._wake.set()

    async def _run(self) -> None:
        delay = 0.02
        while True:
            if not self._entries and not self._updates:
                if self._closing:
                    return
                self._wake.clear()
                if self._healthy:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    if not self._entries and not self._updates and not self._closing:
                        delay = await self._probe(delay)
                continue
            batch = self._take()
            updates: list[RecordUpdate] = [*self._updates, *self._deferred]
            self._updates, self._deferred = [], []
            if not batch and not updates:  # every waiting record was withdrawn: nothing to prove
                continue
            try:
                await self._write(batch, updates)
            except asyncio.CancelledError:  # shutdown past the drain time: keep everything for the spill
                self._entries.extendleft(reversed(batch))
                self._updates[:0] = updates
                raise
            except Exception as exc:  # the store is failing: keep everything, report, back off, retry
                self._entries.extendleft(reversed([e for e in batch if not e.abandoned]))
                # The failure may have come after the commit: a withdrawn record must not stand as sent.
                withdrawn = [DeliveryUpdate(e.record.decision_id, e.why) for e in batch if e.abandoned]
                self._updates[:0] = [*updates, *withdrawn]
                self.stats.failures += 1
                if self._healthy:
                    log.error("decision_record_store_failing", error=_describe(exc), queued=self.queued)
                self._healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if not self._healthy:
                log.warning("decision_record_store_recovered", queued=self.queued)
            self._healthy = True
            delay = 0.02
            for entry in batch:
                entry.written = True
                if entry.abandoned:  # its commit raced the caller's limit: correct the record
                    self.mark(DeliveryUpdate(entry.record.decision_id, entry.why))
                elif not entry.done.done():
                    entry.done.set_result(None)

    async def _probe(self, delay: float) -> float:
        """While failing and idle, a real write now and then: health recovers without waiting for traffic."""
        try:
            await asyncio.wait_for(self._sink.probe(), self._timeout)
        except Exception:  # still failing: keep waiting, a little longer each time
            return min(delay * 2, 1.0)
        log.warning("decision_record_store_recovered", queued=self.queued)
        self._healthy = True
        return 0.02

    def _take(self) -> list[_Entry]:
        batch: list[_Entry] = []
        while self._entries and len(batch) < self._batch_size:
            entry = self._entries.popleft()
            if not entry.abandoned:  # withdrawn before it was written: no answer, no record
                batch.append(entry)
        return batch

    async def _write(self, batch: list[_Entry], updates: Sequence[RecordUpdate]) -> None:
        started = time.perf_counter()
        try:
            await self._sink.write([e.record for e in batch], updates)
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started)
        except Exception as exc:
            if not self._sink.is_refusal(exc):
                raise
            if updates:
                await self._sink.write([], updates)
            await self._split(batch, exc)
        self.stats.written += len(batch)
        self.stats.batches += 1

    async def _split(self, batch: list[_Entry], error: BaseException) -> None:
        """Finds the refused records by halving, so one bad record costs O(log n) extra commits."""
        if len(batch) == 1:
            entry = batch[0]
            self.stats.dead_letters += 1
            log.error(
                "decision_record_refused",
                decision_id=entry.record.decision_id,
                error=_describe(error),
                hint="set aside as a dead letter; the writer goes on",
            )
            await self._sink.dead_letter(entry.record, _describe(error))
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            try:
                await self._sink.write([e.record for e in half], ())
            except Exception as exc:
                if not self._sink.is_refusal(exc):
                    raise
                await self._split(half, exc)

    async def close(self) -> None:
        """Drains within the drain time; past it, spills what is left to a file, or names it in the log."""
        if self._task is None:
            return
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self._flush_deferred()
        self._wake.set()
        try:
            async with asyncio.timeout(self._drain_timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self._spill()
        self._task = None

    async def _spill(self) -> None:
        # Their callers get Unavailable, never an answer: kept for the audit trail, as not delivered.
        records = [replace(e.record, delivery=Delivery.FAILED) for e in self._entries if not e.abandoned]
        updates = list(self._updates)
        for entry in self._entries:
            if not entry.done.done():
                entry.done.set_exception(Unavailable("the service shut down before the record was durable"))
                # A caller whose deadline already passed no longer awaits it: marking the exception seen keeps
                # asyncio from logging it as lost; a caller still waiting gets it all the same.
                entry.done.exception()
        self._entries.clear()
        self._updates.clear()
        if not records and not updates:
            return
        lines = [json.dumps(r.to_json(), ensure_ascii=True, default=str) for r in records]
        lines += [json.dumps(u.to_json()) for u in updates]
        path = self._spill_dir / f"records-unsent-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}.jsonl"
        try:
            await asyncio.to_thread(write_file_atomically, path, "".join(line + "\n" for line in lines))
        except OSError as exc:
            self.stats.unwritten = [r.decision_id for r in records] + [u.decision_id for u in updates]
            log.error(
                "decision_records_not_written",
                records=len(records),
                delivery_updates=len(updates),
                decision_ids=self.stats.unwritten,
                spill_error=_describe(exc),
                hint="neither the store nor the spill directory could take them; none of them was answered as sent",
            )
            return
        log.error(
            "decision_records_spilled",
            path=str(path),
            records=len(records),
            delivery_updates=len(updates),
            hint="the store stayed unavailable during shutdown; load this file with `nba db replay`",
        )


def write_file_atomically(path: Path, text: str) -> None:
    """A whole file or none: written beside its name, synced, then renamed, so no reader sees a torn line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
