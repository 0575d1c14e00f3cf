"""The embedded decision log: JSON lines in a local file, written off the request path.

A bounded queue sits between decisions and the file: when the disk is slow the queue fills and
decisions wait for room instead of records being dropped. Writes happen in a worker thread so the
event loop never blocks on the disk, and `close` writes out everything queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog

from nba_service.domain.profile import Outcome
from nba_service.domain.records import DecisionRecord, DecisionSummary

log = structlog.get_logger(__name__)

QUEUE_SIZE = 10_000
BATCH_SIZE = 1_000
INDEX_SIZE = 200_000


class JsonlDecisionLog:
    def __init__(self, path: Path, queue_size: int = QUEUE_SIZE, index_size: int = INDEX_SIZE) -> None:
        self.path = path
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(queue_size)
        self._index: OrderedDict[str, DecisionSummary] = OrderedDict()
        self._index_size = index_size
        self._writer: asyncio.Task[None] | None = None
        self.written = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.path.touch)
        self._writer = asyncio.create_task(self._run(), name="decision-log-writer")

    async def append(self, record: DecisionRecord) -> None:
        self._index[record.decision_id] = record.summary()
        if len(self._index) > self._index_size:
            self._index.popitem(last=False)
        await self._queue.put(record.to_json())

    async def append_outcome(self, outcome: Outcome) -> None:
        await self._queue.put(
            {
                "kind": "outcome",
                "decision_id": outcome.decision_id,
                "customer_id": outcome.customer_id,
                "action_id": outcome.action_id,
                "channel": outcome.channel.value,
                "outcome": outcome.outcome.value,
                "time": outcome.time.isoformat(),
                "note": outcome.note,
            }
        )

    async def find(self, decision_id: str) -> DecisionSummary | None:
        return self._index.get(decision_id)

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[dict[str, Any]] = []
            item = await self._queue.get()
            if item is None:
                stop = True
            else:
                batch.append(item)
            while len(batch) < BATCH_SIZE and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            if batch:
                lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in batch)
                await self._write(lines)
                self.written += len(batch)

    async def _write(self, lines: str) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(self._append_text, lines)
                return
            except OSError as exc:
                # Keep the records and retry: losing the audit trail is worse than waiting.
                log.error("decision_log_write_failed", path=str(self.path), error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _append_text(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()

    async def close(self) -> None:
        if self._writer is None:
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
