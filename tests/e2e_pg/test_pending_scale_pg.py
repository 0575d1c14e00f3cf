"""A campaign's commit costs the same however many dialer calls are pending in the database.

Each commit of a campaign's calls supersedes the pending calls an earlier attempt of the same campaign made for
the same customers and actions. Measured: that statement read every pending call in the database (31,584 of
them: 30 ms of a 36 ms commit of a hundred calls), so commits slowed with every call streamed, and a daytime
campaign ran past the 1 s record budget and failed. These tests hold the statement to the rows of its own
customers, with the plan PostgreSQL picks for a fresh statement and the generic one it may settle on, and with
statistics taken before the pending calls were written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from nba_service.stores.postgres.decision_log import _PENDING
from nba_service.stores.postgres.seed import seed

CUSTOMERS = 2_000
PENDING_PER_CUSTOMER = 10  # 20,000 pending calls of other campaigns
CALLS = 100
NOW = datetime(2031, 5, 14, 13, 0, tzinfo=UTC)


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await seed(connection, CUSTOMERS, now=NOW)
        # Statistics from before the pending calls, as autovacuum leaves them while a campaign streams: the
        # statement must not need fresh ones to find its customers' calls.
        await connection.execute("ANALYZE contacts")
        await connection.execute(
            """
            INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, note, reached,
                                  pending_until, campaign_id)
            SELECT customer_id, gen_random_uuid(), 'action-' || n, 'outbound_dialer', $1::timestamptz, 'not_offered',
                   '', false, $1::timestamptz + interval '6 hours', 'campaign-' || n
              FROM customers, generate_series(1, $2::int) AS n
            """,
            NOW,
            PENDING_PER_CUSTOMER,
        )
        yield connection
    finally:
        await connection.close()


def _contacts_rows_read(plan: Any) -> int:
    """Rows every scan of `contacts` produced or filtered out, over all its loops."""
    total = 0
    if plan.get("Relation Name") == "contacts" and "Scan" in plan.get("Node Type", ""):
        loops = plan.get("Actual Loops", 1)
        total += (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    for child in plan.get("Plans", []):
        total += _contacts_rows_read(child)
    return total


async def _explain(conn: asyncpg.Connection, customers: list[str], campaign: str) -> int:
    """Runs the statement for CALLS calls (rolled back) and returns how many `contacts` rows it read."""
    at = [NOW] * len(customers)
    async with conn.transaction():
        text = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + _PENDING,
            customers,
            [uuid.uuid4() for _ in customers],
            ["action-1"] * len(customers),
            at,
            [t + timedelta(hours=6) for t in at],
            [campaign] * len(customers),
        )
        inserted = await conn.fetchval(
            "SELECT count(*) FROM contacts WHERE campaign_id = $1 AND customer_id = ANY($2::text[])",
            campaign,
            customers,
        )
        assert inserted >= len(customers)  # the statement did its work: one pending call per customer (and a retry's)
        raise _Rollback(text)


class _Rollback(Exception):
    def __init__(self, plan: str) -> None:
        self.plan = plan


async def _rows_read(conn: asyncpg.Connection, customers: list[str], campaign: str) -> int:
    try:
        await _explain(conn, customers, campaign)
    except _Rollback as done:
        return _contacts_rows_read(json.loads(done.plan)[0]["Plan"])
    raise AssertionError("unreachable")


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_superseding_reads_only_the_calls_of_its_own_customers(conn: asyncpg.Connection, plan_mode: str) -> None:
    await conn.execute(f"SET plan_cache_mode = {plan_mode}")
    customers = [r["customer_id"] for r in await conn.fetch("SELECT customer_id FROM customers LIMIT $1", CALLS)]
    pending = await conn.fetchval("SELECT count(*) FROM contacts WHERE pending_until IS NOT NULL")
    assert pending >= CUSTOMERS * PENDING_PER_CUSTOMER
    # A retry of an existing campaign (each customer has one pending call to supersede) and a new campaign.
    for campaign in ("campaign-1", "campaign-new"):
        read = await _rows_read(conn, customers, campaign)
        assert read <= 2 * CALLS, f"{campaign}: read {read:,} contacts rows of {pending:,} pending for {CALLS} calls"
