"""A decision record says whether its answer was delivered: offers nobody saw are never counted as given."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from tests.e2e._support import ServerHandle

pytestmark = pytest.mark.e2e


def _load(server: ServerHandle, deadline_s: float, calls_per_thread: int, threads: int) -> dict[str, list[str]]:
    """Concurrent Decides with a short deadline; returns decision ids answered OK and the count of each error."""
    answered: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        stub = server.stub
        for number in range(calls_per_thread):
            customer = f"CUST-{(offset * calls_per_thread + number) % 1000 + 1:06d}"
            request = nba_pb2.DecideRequest(customer_id=customer, channel=nba_pb2.AGENT_DESKTOP, max_actions=20)
            try:
                response = stub.Decide(request, timeout=deadline_s)
            except grpc.RpcError as exc:
                with lock:
                    failed.append(exc.code().name)
                continue
            with lock:
                answered.append(response.decision_id)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"answered": answered, "failed": failed}


def test_calls_that_miss_their_deadline_are_not_recorded_as_delivered(start_fresh_server: Any) -> None:
    """Measured before: 87 of 143 calls with a 10 ms deadline under load got DEADLINE_EXCEEDED, yet their
    decisions were logged as if an agent saw them. Now every answered call has its record marked `sent`, and
    the calls that ended before their answer went out are recorded as deadline_exceeded, cancelled or failed.
    The one case no server can see, an answer it finished sending just as the caller's own timer fired, stays
    a small share of the failed calls (documented in the README)."""
    server = start_fresh_server()
    warm = server.decide("CUST-000001", Channel.AGENT_DESKTOP).decision_id
    answered: set[str] = {warm}
    failed: list[str] = []
    for deadline in (0.03, 0.015, 0.008):
        result = _load(server, deadline_s=deadline, calls_per_thread=40, threads=16)
        answered |= set(result["answered"])
        failed += result["failed"]
        if len(result["failed"]) >= 20:
            break
    assert len(failed) >= 20, "too few calls missed their deadline to test anything"
    assert set(failed) <= {"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"}
    time.sleep(1.0)  # late corrections are queued behind the answers
    records = server.decision_lines()
    sent = {r["decision_id"] for r in records if r["delivery"] == "sent"}
    assert answered <= sent, "an answered decision has no record marked sent"
    assert {r["delivery"] for r in records} <= {"sent", "deadline_exceeded", "cancelled", "failed"}
    assert any(r["delivery"] != "sent" for r in records), "no late call was recorded as undelivered"
    unseen = sent - answered
    assert len(unseen) <= max(3, len(failed) // 5), (len(unseen), len(failed))
