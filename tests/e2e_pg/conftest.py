"""Fixtures that run the real `nba serve --store postgres` as a subprocess against a test database.

`pg_dsn`, `pg_empty_dsn` and `pg_cluster` come from tests/conftest.py (tests/pg.py does the work).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.e2e._support import ServerHandle
from tests.e2e_pg._pg_support import start_pg_server

StartPgServer = Callable[..., ServerHandle]


@pytest.fixture
def start_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartPgServer]:
    """`start_pg(dsn, *extra_args)` starts a server of the test's own; whatever still runs is stopped at the end."""
    started: list[ServerHandle] = []

    def start(dsn: str, *extra: str) -> ServerHandle:
        handle = start_pg_server(tmp_path_factory.mktemp("nba-pg"), dsn, *extra)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            try:
                handle.stop(signal.SIGTERM, timeout=40)
            except subprocess.TimeoutExpired:
                pytest.fail(f"nba serve ignored SIGTERM for 40 s; log:\n{handle.log_text()}")
        else:
            handle.close_channels()
