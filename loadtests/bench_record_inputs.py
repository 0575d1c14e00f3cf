"""What keeping the decision inputs (the profile and the limit, issue 9) costs a decision record.

Run with `python loadtests/bench_record_inputs.py [--store postgres --dsn DSN]`. Records are made by the real
pipeline from real profile reads of the bundled 1,000 customers, then committed through the group-commit
writer twice, interleaved in rounds so both see the same machine: once as written before inputs were kept
(`inputs=None`) and once with them. It prints, per variant, the record's JSON size, the CPU time of its JSON
form, and the commit wait alone and with 50 in flight. Medians and tails in microseconds; no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_common import Stats, load_average, machine_info
from nba_service.domain.loader import load_ruleset_dir
from nba_service.domain.model import Channel
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.ports import ProfileStore, RecordSink
from nba_service.domain.records import DecisionInputs, DecisionRecord
from nba_service.settings import BUNDLED_RULESETS
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample


def _fmt(stats: Stats) -> str:
    return f"median {stats.median:8.1f}  p90 {stats.p90:8.1f}  p99 {stats.p99:8.1f}"


async def _records(store: ProfileStore, ids: list[str], count: int, rng: random.Random) -> list[DecisionRecord]:
    ruleset = load_ruleset_dir(BUNDLED_RULESETS)[0]
    active = reference_active(ruleset)
    made = []
    for _ in range(count):
        profile = await store.get_profile(rng.choice(ids))
        now = datetime.now(UTC)
        channel = rng.choice(list(Channel))
        result = evaluate(active, profile, channel, now, 3)
        made.append(
            DecisionRecord(
                str(uuid.uuid4()),
                now,
                profile.customer_id,
                channel,
                active.ref,
                result.engine,
                result.rules_fired,
                result.dropped,
                result.actions,
                0.8,
                profile_problems=result.profile_problems,
                inputs=DecisionInputs(profile, 3),
            )
        )
    return made


async def _commit(writer: GroupCommitWriter, records: list[DecisionRecord], in_flight: int) -> list[int]:
    samples: list[int] = []

    async def one(record: DecisionRecord) -> None:
        begin = time.perf_counter_ns()
        await writer.record(record)
        samples.append(time.perf_counter_ns() - begin)

    for start in range(0, len(records), in_flight):
        await asyncio.gather(*(one(r) for r in records[start : start + in_flight]))
    return samples


async def run(store_kind: str, dsn: str, count: int, rounds: int) -> None:
    ruleset = load_ruleset_dir(BUNDLED_RULESETS)[0]
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="nba-bench-") as workdir:
        store: ProfileStore
        sink: RecordSink
        if store_kind == "sqlite":
            sqlite_store = SqliteStore(
                Path(workdir) / "nba.db", event_types=tuple(ruleset.events), history=timedelta(days=90), timeout=5
            )
            customers = await sqlite_store.open(lambda: read_sample(SAMPLE_PATH, datetime.now(UTC)))
            store = sink = sqlite_store
        else:
            from nba_service.stores.postgres.decision_log import PostgresRecordSink
            from nba_service.stores.postgres.profiles import PostgresProfileStore, create_pool

            pool = await create_pool(dsn)
            store = PostgresProfileStore(pool, history=timedelta(days=90), event_types=tuple(ruleset.events), timeout=5)
            sink = PostgresRecordSink(pool, timeout=5)
            customers = 1000
        ids = [f"CUST-{i:06d}" for i in range(1, customers + 1)]
        writer = GroupCommitWriter(sink, timeout=10, spill_dir=Path(workdir))
        await writer.start()
        results: dict[str, dict[str, list[int]]] = {
            name: {"json": [], "alone": [], "group": [], "bytes": []} for name in ("without inputs", "with inputs")
        }
        for _ in range(rounds):
            records = await _records(store, ids, count, rng)
            for name in results if rng.random() < 0.5 else reversed(list(results)):
                batch = [
                    replace(r, decision_id=str(uuid.uuid4()), inputs=r.inputs if name == "with inputs" else None)
                    for r in records
                ]
                for record in batch:
                    begin = time.perf_counter_ns()
                    text = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
                    results[name]["json"].append(time.perf_counter_ns() - begin)
                    results[name]["bytes"].append(len(text.encode()))
                half = len(batch) // 2
                for record in batch[:half]:
                    begin = time.perf_counter_ns()
                    await writer.record(record)
                    results[name]["alone"].append(time.perf_counter_ns() - begin)
                results[name]["group"].extend(await _commit(writer, batch[half:], 50))
        await writer.close()
        await store.close()

    info = machine_info(["durable-rules"])
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, {info['python']}, load {load_average()}")
    print(f"store {store_kind}, {rounds} rounds of {count} records made by the pipeline from real profile reads")
    for name, figures in results.items():
        sizes = sorted(figures["bytes"])
        print(f"{name}:")
        print(f"  record JSON bytes: median {sizes[len(sizes) // 2]:,}  max {sizes[-1]:,}")
        print(f"  to_json + dumps (us):           {_fmt(Stats.of(figures['json'], 1e3))}")
        print(f"  commit wait alone (us):         {_fmt(Stats.of(figures['alone'], 1e3))}")
        print(f"  commit wait, 50 in flight (us): {_fmt(Stats.of(figures['group'], 1e3))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dsn", default="postgresql://127.0.0.1:5432/nba")
    parser.add_argument("--count", type=int, default=1000, help="records per round and variant")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.store, args.dsn, args.count, args.rounds))


if __name__ == "__main__":
    main()
