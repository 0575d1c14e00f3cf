"""The dialer benchmark's CPU accounting finds the PostgreSQL backends of its own database by their process
titles, and only those. Not a timed test: no figure is compared with a target here."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))

import bench_dialer


def test_the_backends_of_the_benchmark_s_database_are_found_and_no_others(pg_dsn: str, pg_server: str) -> None:
    database = urlsplit(pg_dsn).path.lstrip("/")

    async def backend_pids() -> tuple[int, int, dict[int, float]]:
        ours = await asyncpg.connect(pg_dsn)
        other = await asyncpg.connect(pg_server)
        try:
            await ours.fetchval("SELECT count(*) FROM pg_class")  # some CPU of its own
            found = await asyncio.to_thread(bench_dialer._backends, database)
            return (
                await ours.fetchval("SELECT pg_backend_pid()"),
                await other.fetchval("SELECT pg_backend_pid()"),
                found,
            )
        finally:
            await ours.close()
            await other.close()

    ours, other, found = asyncio.run(backend_pids())
    assert ours in found
    assert other not in found
    assert all(seconds >= 0.0 for seconds in found.values())


def test_the_campaign_is_decided_for_the_next_afternoon_whatever_the_hour_the_run_starts() -> None:
    def at(hour: int, minute: int) -> datetime:
        return datetime(2026, 12, 6, hour, minute, tzinfo=UTC)

    assert bench_dialer.next_afternoon(at(4, 50)) == at(15, 0)
    assert bench_dialer.next_afternoon(at(14, 50)) == at(15, 0)
    assert bench_dialer.next_afternoon(at(14, 51)) == at(15, 0) + timedelta(days=1)
    assert bench_dialer.next_afternoon(at(23, 59)) == at(15, 0) + timedelta(days=1)
    other_zone = datetime(2026, 12, 6, 9, 0, tzinfo=timezone(timedelta(hours=-5)))  # 14:00 UTC
    assert bench_dialer.next_afternoon(other_zone) == at(15, 0)
