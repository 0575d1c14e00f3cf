"""Fixtures that run the real `nba serve` console script as a subprocess and talk to it over gRPC."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e._support import Oracle, ServerHandle, ruleset_document, start_server

StartServer = Callable[..., ServerHandle]


def _shutdown(handle: ServerHandle) -> None:
    try:
        handle.stop(signal.SIGTERM, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"nba serve ignored SIGTERM for 20 s; log:\n{handle.log_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server shared by the read-only tests (Decide, bad inputs, health): nothing here changes its state."""
    handle = start_server(tmp_path_factory.mktemp("nba-session"))
    yield handle
    _shutdown(handle)


@pytest.fixture
def start_fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Starts a server of the test's own (for state changes or shutdown); stops whatever is left at the end."""
    started: list[ServerHandle] = []

    def start(*extra_args: str) -> ServerHandle:
        handle = start_server(tmp_path_factory.mktemp("nba-fresh"), *extra_args)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            _shutdown(handle)
        else:
            handle.close_channels()


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    return Oracle()


@pytest.fixture(scope="session")
def ruleset_doc() -> dict[str, Any]:
    return ruleset_document()
