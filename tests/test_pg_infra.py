"""The PostgreSQL test infrastructure itself: fresh databases, private clusters, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from nba_service.stores.postgres.migrate import migrations
from tests.pg import (
    CLUSTER_DIR_PREFIX,
    DatabaseFactory,
    PostgresUnavailable,
    ThrowawayCluster,
    cluster_parent_dir,
    create_database,
    drop_database,
    find_bindir,
    find_server,
    list_databases,
    pid_alive,
    sweep_databases,
    sweep_stale_clusters,
)

SCHEMA_TABLES = {"customers", "consents", "do_not_call", "events", "contacts", "decisions", "schema_migrations"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def _add_customer(dsn: str, customer_id: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO customers (customer_id) VALUES ($1)", customer_id)
    finally:
        await conn.close()


async def _customers(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["customer_id"] for r in await conn.fetch("SELECT customer_id FROM customers ORDER BY 1")]
    finally:
        await conn.close()


# -- databases on the shared (or session) server ------------------------------------------------------


async def test_fresh_database_has_the_schema(pg_dsn: str) -> None:
    assert await _tables(pg_dsn) >= SCHEMA_TABLES
    conn = await asyncpg.connect(pg_dsn)
    try:
        applied = [tuple(r) for r in await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")]
        assert applied == [(m.version, m.name) for m in migrations()]
        assert await conn.fetchval("SELECT count(*) FROM customers") == 0
    finally:
        await conn.close()


async def test_databases_are_distinct_and_isolated(pg_dsn: str, pg_databases: DatabaseFactory) -> None:
    await _add_customer(pg_dsn, "only-in-the-first")
    other = await pg_databases.create()  # cloned from the template after the write: the template is untouched
    try:
        assert other != pg_dsn
        assert other.rsplit("/", 1)[1].startswith(f"nba_test_{os.getpid()}_")
        assert await _customers(other) == []
        await _add_customer(other, "only-in-the-second")
        assert await _customers(pg_dsn) == ["only-in-the-first"]
        assert await _customers(other) == ["only-in-the-second"]
    finally:
        await pg_databases.drop(other)


async def test_factory_close_drops_everything_it_made(pg_server: str) -> None:
    factory = DatabaseFactory(pg_server)
    try:
        made = [await factory.create(), await factory.create(migrated=False)]
        template = factory.template
        assert template is not None
        names = {dsn.rsplit("/", 1)[1] for dsn in made} | {template}
        assert names <= set(await list_databases(pg_server))
        held = await asyncpg.connect(made[0])  # an open connection does not stop the drop
    finally:
        await factory.close()
    assert names.isdisjoint(await list_databases(pg_server))
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
        await held.fetchval("SELECT 1")
    held.terminate()


async def test_sweep_drops_this_runs_and_dead_runs_databases_only(pg_server: str, pg_dsn: str) -> None:
    run = os.getppid()  # stands in for "this run": alive, and not this pytest, whose databases are in use
    mine = f"nba_test_{run}_feedc0de"
    dead = f"nba_test_{_dead_pid()}_deadbeef"
    for name in (mine, dead):
        await create_database(pg_server, name)
    try:
        dropped = await sweep_databases(pg_server, own_pid=run)
        remaining = set(await list_databases(pg_server))
        assert mine in dropped
        assert mine not in remaining
        # another live run's databases (here: this pytest's, in use right now) are never touched
        assert pg_dsn.rsplit("/", 1)[1] in remaining
        assert not [name for name in dropped if name.startswith(f"nba_test_{os.getpid()}_")]
        if urlsplit(pg_server).hostname in ("127.0.0.1", "localhost", "::1"):
            assert dead in dropped
            assert dead not in remaining
    finally:
        for name in (mine, dead):
            await drop_database(pg_server, name)


def test_an_explicit_server_that_does_not_work_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBA_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(PostgresUnavailable, match="NBA_TEST_PG_DSN"):
        find_server()


def test_missing_binaries_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="initdb, pg_ctl, pg_isready"):
        find_bindir()


# -- private clusters ----------------------------------------------------------------------------------


async def test_cluster_stop_start_and_fast_restart_keep_data(pg_cluster: ThrowawayCluster) -> None:
    assert pg_cluster.is_running()
    assert await _tables(pg_cluster.nba_dsn) >= SCHEMA_TABLES
    await _add_customer(pg_cluster.nba_dsn, "before-restart")
    first_pid = pg_cluster.postmaster_pid()

    await asyncio.to_thread(pg_cluster.restart)
    assert pg_cluster.is_running()
    assert pg_cluster.postmaster_pid() != first_pid
    assert await _customers(pg_cluster.nba_dsn) == ["before-restart"]

    await _add_customer(pg_cluster.nba_dsn, "before-stop")
    await asyncio.to_thread(pg_cluster.stop)
    assert not pg_cluster.is_running()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg_cluster.nba_dsn, timeout=5)

    await asyncio.to_thread(pg_cluster.start)
    assert await _customers(pg_cluster.nba_dsn) == ["before-restart", "before-stop"]


async def test_cluster_recovers_acknowledged_writes_after_kill(pg_cluster: ThrowawayCluster) -> None:
    conn = await asyncpg.connect(pg_cluster.nba_dsn)
    try:
        for i in range(200):  # every commit acknowledged right up to the kill must survive it
            await conn.execute("INSERT INTO customers (customer_id) VALUES ($1)", f"c{i:03d}")
    finally:
        pg_cluster.kill()
        conn.terminate()
    assert not pg_cluster.is_running()

    pg_cluster.start()
    assert "automatic recovery in progress" in pg_cluster.log_text(200)  # it really was a crash
    assert len(await _customers(pg_cluster.nba_dsn)) == 200


def test_cluster_leaves_nothing_behind(pg_cluster_factory: Callable[..., ThrowawayCluster]) -> None:
    with pg_cluster_factory(start=False) as cluster:  # the context manager starts it, and removes it
        assert cluster.is_running()
        base_dir, pid = cluster.base_dir, cluster.postmaster_pid()
        assert pid is not None
        assert base_dir.is_dir()
    assert not base_dir.exists()
    assert not pid_alive(pid)
    cluster.cleanup()  # idempotent


def test_clusters_of_a_dead_run_are_swept(pg_cluster_factory: Callable[..., ThrowawayCluster]) -> None:
    cluster = pg_cluster_factory()
    pid = cluster.postmaster_pid()
    assert pid is not None
    (cluster.base_dir / "owner.pid").write_text(str(_dead_pid()))
    live = Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX, dir=cluster_parent_dir()))  # a live run's: kept
    (live / "owner.pid").write_text(str(os.getpid()))
    try:
        assert cluster.base_dir in sweep_stale_clusters()
        assert live.exists()
    finally:
        shutil.rmtree(live)
    assert not cluster.base_dir.exists()
    assert not pid_alive(pid)
