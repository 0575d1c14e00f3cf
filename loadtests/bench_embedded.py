"""The embedded SQLite store: what a profile read costs on the event loop, and what durability costs a decision.

Run with `make bench-embedded` (or `python loadtests/bench_embedded.py`). It seeds a fresh database
from the bundled 1,000 customers in a temporary directory and prints:
- the profile read (`SqliteStore.get_profile`, a short local call made on the event loop);
- the commit wait of one decision record alone (one transaction and one fsync per record);
- the commit wait per record when 50 decisions are in flight at once (group commit), and how many
  records one commit carried.
Figures are medians and tails in microseconds; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_common import Stats, load_average, machine_info
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Channel
from nba_service.domain.records import DecidedAction, DecisionRecord, FiredRule, RulesetRef
from nba_service.settings import BUNDLED_RULESETS
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample


def _record(customer: str) -> DecisionRecord:
    now = datetime.now(UTC)
    return DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=now,
        customer_id=customer,
        channel=Channel.AGENT_DESKTOP,
        ruleset=RulesetRef("retail-banking", "1.0.0", "0" * 64),
        engine="durable_rules",
        rules_fired=tuple(
            FiredRule(f"rule-{i}", f"action-{i}", 500 + i, {"balance_total": 52030.46, "segment": "affluent"})
            for i in range(3)
        ),
        dropped=(),
        actions=(
            DecidedAction(
                "loyalty-thanks",
                "Thank the client for their loyalty.",
                1,
                "loyalty",
                "Banks with us",
                "multi-product-loyalty",
                now + timedelta(hours=4),
            ),
        ),
        latency_ms=0.8,
    )


def _fmt(stats: Stats) -> str:
    return f"median {stats.median:8.1f}  p90 {stats.p90:8.1f}  p99 {stats.p99:8.1f}  max {stats.max:9.1f}"


async def run(reads: int, alone: int, concurrent: int, in_flight: int) -> None:
    ruleset = load_ruleset_dir(BUNDLED_RULESETS)[0]
    with tempfile.TemporaryDirectory(prefix="nba-bench-") as workdir:
        store = SqliteStore(
            Path(workdir) / "nba.db", event_types=tuple(ruleset.events), history=timedelta(days=90), timeout=5
        )
        started = time.perf_counter()
        customers = await store.open(lambda: read_sample(SAMPLE_PATH, datetime.now(UTC)))
        seeded = time.perf_counter() - started
        ids = [f"CUST-{i:06d}" for i in range(1, customers + 1)]
        rng = random.Random(7)

        samples: list[int] = []
        for _ in range(reads):
            customer = rng.choice(ids)
            begin = time.perf_counter_ns()
            await store.get_profile(customer)
            samples.append(time.perf_counter_ns() - begin)
        read_stats = Stats.of(samples, 1e3)

        writer = GroupCommitWriter(store, timeout=10, spill_dir=Path(workdir))
        await writer.start()
        samples = []
        for _ in range(alone):
            record = _record(rng.choice(ids))
            begin = time.perf_counter_ns()
            await writer.record(record)
            samples.append(time.perf_counter_ns() - begin)
        alone_stats = Stats.of(samples, 1e3)

        batches_before = writer.stats.batches
        samples = []

        async def one() -> None:
            record = _record(rng.choice(ids))
            begin = time.perf_counter_ns()
            await writer.record(record)
            samples.append(time.perf_counter_ns() - begin)

        begin_all = time.perf_counter()
        for start in range(0, concurrent, in_flight):
            await asyncio.gather(*(one() for _ in range(min(in_flight, concurrent - start))))
        took = time.perf_counter() - begin_all
        group_stats = Stats.of(samples, 1e3)
        commits = writer.stats.batches - batches_before
        await writer.close()
        await store.close()

    info = machine_info(["durable-rules"])
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, {info['python']}, load {load_average()}")
    print(f"seeded {customers} customers in {seeded:.2f} s")
    print(f"profile read (us), {reads} reads:        {_fmt(read_stats)}")
    print(f"one record alone, commit wait (us), {alone} records:       {_fmt(alone_stats)}")
    print(
        f"{in_flight} in flight, commit wait (us), {concurrent} records:    {_fmt(group_stats)}\n"
        f"    {commits} commits, {concurrent / max(commits, 1):.1f} records per commit, "
        f"{concurrent / took:,.0f} records/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--alone", type=int, default=2_000)
    parser.add_argument("--concurrent", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.reads, args.alone, args.concurrent, args.in_flight))


if __name__ == "__main__":
    main()
