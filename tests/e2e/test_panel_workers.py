"""The panel's calls under `nba serve --workers 2`: a session issued by one worker is honoured by the other (one
secret from the supervisor), profile versions agree across workers, and an event stored through any worker
reaches a long poll waiting on another within the store-polling interval."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.transport.panel import PANEL_POLL_S
from tests.e2e._browser import wait_for
from tests.e2e._support import ServerHandle, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CUSTOMER = "CUST-000058"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, str]]:
    port = _free_port()
    handle = start_server(tmp_path_factory.mktemp("nba-panel-workers"), "--workers", "2", "--http-port", str(port))
    yield handle, f"http://127.0.0.1:{port}"
    handle.stop()


def _fresh(base: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call on a connection of its own, so the kernel may hand it to either worker (SO_REUSEPORT)."""
    with httpx.Client(base_url=base, timeout=40) as client:
        return client.request(method, path, **kwargs)


def test_sessions_and_versions_agree_across_workers(workers: tuple[ServerHandle, str]) -> None:
    server, base = workers
    seen: list[dict[str, Any]] = []
    issued: dict[int, str] = {}
    for _ in range(60):
        answer = _fresh(base, "POST", "/panel/session")
        assert answer.status_code == 200, answer.text
        token = answer.json()["token"]
        event = wait_for(
            lambda: next(
                (e for e in server.log_events() if e.get("event") == "panel_session_issued" and e not in seen), None
            ),
            5,
            "the worker logs the session it issued",
        )
        seen.append(event)
        issued.setdefault(int(event["worker"]), token)
        if len(issued) == 2:
            break
    else:
        pytest.fail(f"60 new connections all reached the same worker: {sorted(issued)}")
    versions = set()
    for token in issued.values():
        for _ in range(8):
            answer = _fresh(
                base,
                "GET",
                "/panel/v1/changes",
                params={"customer_id": CUSTOMER, "wait": "false"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text
            versions.add(answer.json()["version"])
    assert len(versions) == 1, versions


def test_an_event_through_any_worker_wakes_a_waiting_poll(workers: tuple[ServerHandle, str]) -> None:
    server, base = workers
    for amount in (15000.0, 25000.0, 35000.0):
        version = _fresh(base, "GET", "/panel/v1/changes", params={"customer_id": CUSTOMER, "wait": "false"})
        since = version.json()["version"]
        answer: dict[str, Any] = {}

        def wait(since: str = since, answer: dict[str, Any] = answer) -> None:
            started = time.monotonic()
            response = _fresh(base, "GET", "/panel/v1/changes", params={"customer_id": CUSTOMER, "since": since})
            answer.update(response.json(), took=time.monotonic() - started)

        poll = threading.Thread(target=wait)
        poll.start()
        time.sleep(0.3)  # the poll is waiting (a change before it started would answer at once, proving less)
        server.close_channels()  # a new gRPC connection: either worker may take the event
        server.stub.IngestEvent(
            nba_pb2.IngestEventRequest(
                customer_id=CUSTOMER,
                type="large_deposit",
                attributes={"amount": nba_pb2.AttributeValue(number_value=amount)},
            ),
            timeout=10,
        )
        poll.join(30)
        assert not poll.is_alive()
        assert answer["version"] != since
        assert answer["took"] < PANEL_POLL_S + 3, answer
