"""Benchmark: `nba report` over a year of decisions (10 million) in PostgreSQL.

Not a timed test: it prints figures (and PASS/MISS against the issue's target: a year of decisions, ten million,
aggregated in under a minute) for a human or a CI log.

    python loadtests/bench_report.py [--dsn SERVER_DSN] [--decisions 10000000] [--customers 500000] [--keep]
                                     [--reuse NAME] [--json]
    python loadtests/bench_report.py --write-cost [--dsn SERVER_DSN]

What it does, in order:
1. creates a fresh database `nba_report_bench_<pid>` on the server named by `--dsn` (env NBA_BENCH_DSN) and
   migrates it (or, with `--reuse NAME`, uses a database an earlier `--keep` run left filled);
2. fills it in the database itself, in chunks of a million: `--customers` customers; `--decisions` decision rows
   spread over the year before now, each showing one to three actions of the bundled ruleset (one in ten also
   holding one out), about 5% of them undelivered, inserted through the `decisions` table so the real trigger
   writes their exposures; trigger events (large deposits, salary changes, surveys) and conversion events
   (products opened, referrals) for a share of customers; outcomes for a third of the offers;
3. runs VACUUM ANALYZE, then the real client, `nba report --store postgres --format json`, as a subprocess over
   the whole year, and prints how long it took and how many rows it read.

The database is dropped at the end unless `--keep`.

`--write-cost` measures instead what the report's tables cost every decision's commit: it writes the same decision
records, one commit each as the group-commit writer does when traffic is light, into a database migrated up to 0011
and one migrated fully, 20,000 records first and then 2,000 timed ones, and prints the median and p99 per commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import load_average, machine_info
from bench_postgres import DEFAULT_DSN, create_database, drop_database, note, with_database

from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, Direction
from nba_service.domain.records import DecidedAction, DecisionRecord, DroppedCandidate, RulesetRef
from nba_service.stores.postgres import migrate as migrate_module
from nba_service.stores.postgres.decision_log import PostgresRecordSink
from nba_service.stores.postgres.migrate import Migration, migrate, migrations
from nba_service.stores.postgres.profiles import create_pool

TARGET_SECONDS = 60.0
CHUNK = 1_000_000
RULESET = Path(__file__).resolve().parent.parent / "rulesets" / "retail-banking.yaml"
NBA = Path(sys.executable).parent / "nba"

_CUSTOMERS = """
INSERT INTO customers (customer_id, attributes)
SELECT 'CUST-' || lpad(g::text, 7, '0'),
       jsonb_build_object('stage', (ARRAY['welcome', 'maintenance', 'rescue', 'lost', 'welcome_back'])[1 + g % 5])
  FROM generate_series(1, $1) g
"""
# One to three actions shown; one decision in ten also holds one out; one in twenty was not delivered.
_DECISIONS = """
WITH picks AS (
    SELECT g, $2::timestamptz + random() * interval '365 days' AS at,
           1 + (random() * ($3 - 1))::int AS customer,
           $4::text[] AS actions, 1 + (random() * (cardinality($4::text[]) - 1))::int AS first,
           1 + (random() * 2)::int AS shown, random() < 0.1 AS holds, random() < 0.05 AS undelivered
      FROM generate_series(1, $1) g
)
INSERT INTO decisions (decision_id, decided_at, customer_id, channel, ruleset_name, ruleset_version, ruleset_hash,
                       engine, rules_fired, dropped, actions, latency_ms, delivery, direction, journey_stage)
SELECT gen_random_uuid(), at, 'CUST-' || lpad(customer::text, 7, '0'),
       CASE WHEN g % 3 = 0 THEN 'outbound_dialer' ELSE 'agent_desktop' END, 'retail-banking', $5, repeat('a', 64),
       'durable_rules', '[]'::jsonb,
       CASE WHEN holds THEN jsonb_build_array(jsonb_build_object(
           'rule_id', actions[1 + (first + 3) % cardinality(actions)] || '-rule',
           'action_id', actions[1 + (first + 3) % cardinality(actions)], 'stage', 'arbitration',
           'reason', 'held_out', 'policy', '', 'detail', 'in the holdout')) ELSE '[]'::jsonb END,
       (SELECT jsonb_agg(jsonb_build_object(
            'action_id', actions[1 + (first + k) % cardinality(actions)],
            'rule_id', actions[1 + (first + k) % cardinality(actions)] || '-rule',
            'script', 'Tell the client about it.', 'priority', k + 1, 'category', 'offer', 'reason', 'why',
            'valid_until', at + interval '4 hours', 'mandatory', false))
          FROM generate_series(0, shown - 1) k),
       1.0, CASE WHEN undelivered THEN 'deadline_exceeded' ELSE 'sent' END,
       CASE WHEN g % 3 = 0 THEN 'outbound' ELSE 'inbound' END,
       (ARRAY['welcome', 'maintenance', 'rescue', 'lost', 'welcome_back'])[1 + customer % 5]
  FROM picks
"""
_EVENTS = """
INSERT INTO events (event_id, customer_id, type, time, attributes)
SELECT gen_random_uuid(), 'CUST-' || lpad((1 + (random() * ($3 - 1))::int)::text, 7, '0'), $4::text,
       $2::timestamptz + random() * interval '395 days', $5::jsonb
  FROM generate_series(1, $1) g
"""
_OUTCOMES = """
INSERT INTO outcomes (decision_id, customer_id, action_id, channel, outcome, time)
SELECT decision_id, customer_id, action_id, channel,
       (ARRAY['accepted', 'declined', 'not_now', 'converted', 'no_answer'])[1 + (random() * 4)::int],
       decided_at + random() * interval '2 days'
  FROM exposures
 WHERE NOT held_out AND random() < 0.33
"""


async def fill(dsn: str, decisions: int, customers: int, since: datetime) -> dict[str, float]:
    ruleset = load_ruleset_file(RULESET)
    actions = [a.id for a in ruleset.actions.values() if a.category not in ("service", "compliance")]
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await migrate(conn)
        started = time.perf_counter()
        await conn.execute(_CUSTOMERS, customers)
        timings["customers_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for done in range(0, decisions, CHUNK):
            await conn.execute(
                _DECISIONS, min(CHUNK, decisions - done), since, customers, actions, ruleset.meta.version
            )
            note(f"  {min(done + CHUNK, decisions):,} decisions ({time.perf_counter() - started:.0f} s)")
        timings["decisions_s"] = time.perf_counter() - started
        started = time.perf_counter()
        per_year = decisions // 10
        for kind, share, attributes in (
            ("large_deposit", 0.3, {"amount": 48250.0}),
            ("salary_change", 0.2, {"change_percent": 12.0}),
            ("survey_completed", 0.2, {"score": 9.0}),
            ("product_opened", 0.1, {"product": "term_deposit"}),
            ("product_opened", 0.1, {"product": "savings"}),
            ("product_opened", 0.05, {"product": "credit_card"}),
            ("referral_made", 0.05, {"referred_product": "savings"}),
        ):
            await conn.execute(_EVENTS, int(per_year * share), since, customers, kind, json.dumps(attributes))
        timings["events_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(_OUTCOMES)
        timings["outcomes_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        timings["vacuum_s"] = time.perf_counter() - started
    finally:
        await conn.close()
    return timings


async def sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        found = {}
        for table in ("decisions", "exposures", "events", "outcomes", "customers"):
            found[f"{table}_rows"] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            found[f"{table}_bytes"] = int(await conn.fetchval("SELECT pg_total_relation_size($1)", table))
        return found
    finally:
        await conn.close()


def run_report(dsn: str, since: datetime, until: datetime) -> tuple[float, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    env |= {"NBA_STORE": "postgres", "NBA_DSN": dsn}
    started = time.perf_counter()
    result = subprocess.run(
        [str(NBA), "report", "--since", since.isoformat(), "--until", until.isoformat(), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"nba report failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds, json.loads(result.stdout)


def _records(count: int, start: datetime) -> list[DecisionRecord]:
    ruleset = load_ruleset_file(RULESET)
    actions = [a.id for a in ruleset.actions.values() if a.category not in ("service", "compliance")]
    ref = RulesetRef(ruleset.meta.name, ruleset.meta.version, "a" * 64)
    rng = random.Random(7)
    found = []
    for n in range(count):
        at = start + timedelta(seconds=n)
        shown = rng.sample(actions, rng.randint(1, 3))
        found.append(
            DecisionRecord(
                decision_id=str(uuid.UUID(int=rng.getrandbits(128))),
                decided_at=at,
                customer_id=f"CUST-{rng.randrange(1, 5000):07d}",
                channel=Channel.AGENT_DESKTOP,
                ruleset=ref,
                engine="durable_rules",
                rules_fired=(),
                dropped=(
                    (DroppedCandidate(f"{shown[0]}-rule", shown[0], "held_out", "in the holdout", "arbitration"),)
                    if rng.random() < 0.1
                    else ()
                ),
                actions=tuple(
                    DecidedAction(a, "Tell the client about it.", 10 - i, "offer", "why", f"{a}-rule", at)
                    for i, a in enumerate(shown)
                ),
                latency_ms=1.0,
                direction=Direction.INBOUND,
            )
        )
    return found


def _up_to(version: int) -> Callable[[], list[Migration]]:
    chosen = [m for m in migrations() if m.version <= version]
    return lambda: chosen


async def write_cost(admin_dsn: str) -> dict[str, dict[str, float]]:
    records = _records(22_000, datetime.now(UTC) - timedelta(days=1))
    figures: dict[str, dict[str, float]] = {}
    for label, upto in (("up to 0011", 11), ("all migrations", None)):
        name = f"nba_write_cost_{os.getpid()}_{upto or 'all'}"
        await create_database(admin_dsn, name)
        dsn = with_database(admin_dsn, name)
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                if upto is not None:
                    migrate_module.migrations = _up_to(upto)
                await migrate(conn)
            finally:
                migrate_module.migrations = migrations
                await conn.close()
            pool = await create_pool(dsn)
            try:
                sink = PostgresRecordSink(pool)
                for start in range(0, 20_000, 500):
                    await sink.write(records[start : start + 500], [])
                timings = []
                for record in records[20_000:]:
                    started = time.perf_counter()
                    await sink.write([record], [])
                    timings.append((time.perf_counter() - started) * 1e6)
            finally:
                await pool.close()
        finally:
            await drop_database(admin_dsn, name)
        timings.sort()
        figures[label] = {
            "median_us": round(statistics.median(timings)),
            "p99_us": round(timings[int(len(timings) * 0.99)]),
        }
        note(f"  {label}: median {figures[label]['median_us']} us, p99 {figures[label]['p99_us']} us per commit")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("NBA_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--keep", action="store_true", help="Keep the database (its name is printed).")
    parser.add_argument("--reuse", help="Report on a database an earlier --keep run filled, instead of a new one.")
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
    parser.add_argument(
        "--write-cost", action="store_true", help="Measure what the report's tables add to each decision's commit."
    )
    args = parser.parse_args()
    if args.write_cost:
        cost = asyncio.run(write_cost(args.dsn))
        print(json.dumps({"machine": machine_info(["asyncpg"]), "load_average": load_average(), "commit": cost}))
        return
    until = datetime.now(UTC).replace(microsecond=0)
    since = until - timedelta(days=365)
    name = args.reuse or f"nba_report_bench_{os.getpid()}"
    dsn = with_database(args.dsn, name)
    figures: dict[str, Any] = {"machine": machine_info(["asyncpg", "statsmodels"]), "database": name}
    try:
        if args.reuse is None:
            asyncio.run(create_database(args.dsn, name))
            note(f"filling {name}: {args.decisions:,} decisions over {args.customers:,} customers")
            figures["fill"] = asyncio.run(fill(dsn, args.decisions, args.customers, since))
        figures["sizes"] = asyncio.run(sizes(dsn))
        figures["load_average_before"] = load_average()
        note("running nba report over the year")
        seconds, report = run_report(dsn, since, until)
        figures["report_s"] = round(seconds, 1)
        figures["exposures_read"] = report["exposures_read"]
        figures["actions_reported"] = len(report["by_action"])
        figures["target_s"] = TARGET_SECONDS
        figures["verdict"] = "PASS" if seconds < TARGET_SECONDS else "MISS"
    finally:
        if not args.keep and args.reuse is None:
            asyncio.run(drop_database(args.dsn, name))
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return
    s = figures["sizes"]
    print(
        f"decisions {s['decisions_rows']:,} ({s['decisions_bytes'] / 2**30:.1f} GiB), "
        f"exposures {s['exposures_rows']:,} ({s['exposures_bytes'] / 2**30:.1f} GiB), "
        f"events {s['events_rows']:,}, outcomes {s['outcomes_rows']:,}"
    )
    if "fill" in figures:
        print("fill: " + ", ".join(f"{k} {v:.0f}" for k, v in figures["fill"].items()))
    print(
        f"nba report over a year: {figures['report_s']} s for {figures['exposures_read']:,} exposures "
        f"(target < {TARGET_SECONDS:.0f} s): {figures['verdict']}"
    )


if __name__ == "__main__":
    main()
