"""`nba simulate --store postgres`: the same world goes into PostgreSQL, counted as the summary says, and decides
as it does on the embedded store."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from nba_service.cli import main
from tests.test_simulator import holdout_ruleset, records

ARGS = ("--customers", "200", "--days", "6", "--seed", "11", "--format", "json")


async def _counts(dsn: str, start: str) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "customers": await conn.fetchval("SELECT count(*) FROM customers WHERE customer_id LIKE 'SIM-%'"),
            "decisions": await conn.fetchval("SELECT count(*) FROM decisions WHERE customer_id LIKE 'SIM-%'"),
            "dialer": await conn.fetchval(
                "SELECT count(*) FROM decisions WHERE customer_id LIKE 'SIM-%' AND channel = 'outbound_dialer'"
            ),
            "outcomes": dict(await conn.fetch("SELECT outcome, count(*) FROM outcomes GROUP BY outcome")),
            "conversion_events": await conn.fetchval(
                "SELECT count(*) FROM events WHERE customer_id LIKE 'SIM-%' AND time >= $1"
                " AND type IN ('product_opened', 'referral_made')",
                datetime.fromisoformat(start),
            ),
            "held_out": await conn.fetchval(
                "SELECT count(*) FROM decisions, jsonb_array_elements(dropped) AS d"
                " WHERE customer_id LIKE 'SIM-%' AND d->>'reason' = 'held_out'"
            ),
        }
    finally:
        await conn.close()


def test_a_run_into_postgres_is_stored_as_summarised_and_matches_the_embedded_store(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ruleset = holdout_ruleset(tmp_path)
    monkeypatch.setenv("NBA_DSN", pg_dsn)
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--store", "postgres", "--rulesets", str(ruleset), *ARGS])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    counts = asyncio.run(_counts(pg_dsn, summary["start"]))
    assert counts == {
        "customers": 200,
        "decisions": summary["decisions"]["total"],
        "dialer": summary["decisions"]["dialer"],
        "outcomes": summary["outcomes"],
        "conversion_events": summary["events"]["conversion"],
        "held_out": summary["held_out"],
    }
    assert summary["decisions"]["total"] > 20
    assert summary["held_out"] > 0

    embedded = runner.invoke(
        main, ["simulate", "--db-path", str(tmp_path / "sim.db"), "--rulesets", str(ruleset), *ARGS]
    )
    assert embedded.exit_code == 0, embedded.output
    assert json.loads(embedded.stdout) == summary
    assert len(records(tmp_path / "sim.db")) == counts["decisions"]
    # And `nba report` reads the same world the same way from both stores, end to end.
    window = ("--since", summary["start"], "--until", summary["end"], "--rulesets", str(ruleset), "--format", "json")
    from_postgres = runner.invoke(main, ["report", "--store", "postgres", *window])
    assert from_postgres.exit_code == 0, from_postgres.output
    from_sqlite = runner.invoke(main, ["report", "--db-path", str(tmp_path / "sim.db"), *window])
    assert from_sqlite.exit_code == 0, from_sqlite.output
    postgres_report, sqlite_report = json.loads(from_postgres.stdout), json.loads(from_sqlite.stdout)
    for report in (postgres_report, sqlite_report):
        report.pop("generated_at")
    assert postgres_report == sqlite_report
    assert postgres_report["exposures_read"] == summary["offers_shown"] + summary["held_out"]
