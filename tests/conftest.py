"""PostgreSQL fixtures (see tests/pg.py): a server per session, a fresh database per test, private clusters.

Sync fixtures (they run their own private event loops), so they serve sync and async tests alike.
Without PostgreSQL the tests that need it skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest
from hypothesis import settings

from nba_service.log_setup import configure_logging
from tests.pg import (
    NBA_DB,
    DatabaseFactory,
    PostgresUnavailable,
    ThrowawayCluster,
    create_migrated_database,
    find_server,
    run_sync,
    sweep_databases,
    sweep_stale_clusters,
)

# CI explores the same examples on every run, so a submission cannot fail on a new random draw; local runs
# keep exploring fresh examples (and Hypothesis replays any failure they find from its database).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (a stable sort: the rest keep their order). `make test` runs the suite on every core
    (pytest-xdist), handing out two tests at a time; a test of tens of seconds started last would leave the other
    processes idle while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _log_like_the_service() -> None:
    """In-process tests log the way `nba serve` does (to the stderr pytest captures for the test). Left to
    structlog's defaults, an exception logged on the event loop is rendered by rich (a dev dependency pulls it
    in) with every local variable, which takes seconds and starves the loop."""
    configure_logging("console", "info")


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and no PostgreSQL for the tests: {message}", pytrace=False)
    pytest.skip(f"no PostgreSQL for the tests: {message}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a server's maintenance database: $NBA_TEST_PG_DSN, 127.0.0.1:5432, else a throwaway cluster."""
    tried: list[str] = []
    dsn = find_server(tried)
    if dsn is not None:
        try:
            yield dsn
        finally:
            run_sync(sweep_databases(dsn))  # whatever a test made directly and left (this run's or a dead run's)
        return
    sweep_stale_clusters()
    try:
        cluster = ThrowawayCluster()
    except PostgresUnavailable as exc:
        tried.append(f"throwaway cluster: {exc}")
        _unavailable("; ".join(tried))
    with cluster:
        yield cluster.dsn()


@pytest.fixture(scope="session")
def pg_databases(pg_server: str) -> Iterator[DatabaseFactory]:
    """Makes the per-test databases; at session end drops them and the template (then pg_server sweeps)."""
    factory = DatabaseFactory(pg_server)
    try:
        yield factory
    finally:
        run_sync(factory.close())


@pytest.fixture
def pg_dsn(pg_databases: DatabaseFactory) -> Iterator[str]:
    """DSN of a fresh, migrated database of this test's own (cloned from a migrated template), dropped after."""
    dsn = run_sync(pg_databases.create())
    try:
        yield dsn
    finally:
        run_sync(pg_databases.drop(dsn))


@pytest.fixture
def pg_empty_dsn(pg_databases: DatabaseFactory) -> Iterator[str]:
    """DSN of a fresh database with no schema at all (for migration tests), dropped after."""
    dsn = run_sync(pg_databases.create(migrated=False))
    try:
        yield dsn
    finally:
        run_sync(pg_databases.drop(dsn))


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[..., ThrowawayCluster]]:
    """`make(settings=None, start=True)`: private clusters for this test (free to stop, restart or kill; never
    the shared server), all removed after the test, whatever happened."""
    made: list[ThrowawayCluster] = []

    def make(settings: dict[str, str] | None = None, *, start: bool = True) -> ThrowawayCluster:
        sweep_stale_clusters()
        try:
            cluster = ThrowawayCluster(settings=settings)
        except PostgresUnavailable as exc:
            _unavailable(f"throwaway cluster: {exc}")
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.cleanup()


@pytest.fixture
def pg_cluster(pg_cluster_factory: Callable[..., ThrowawayCluster]) -> ThrowawayCluster:
    """A started private cluster with a migrated `nba` database (`cluster.nba_dsn`); see pg_cluster_factory."""
    cluster = pg_cluster_factory()
    run_sync(create_migrated_database(cluster.dsn(), NBA_DB))
    return cluster
