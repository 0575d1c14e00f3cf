"""Health, reflection, deadlines and load: what operators and load balancers rely on."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from tests.e2e._support import SERVICE_NAME, ServerHandle

pytestmark = pytest.mark.e2e

GOOD = nba_pb2.DecideRequest(customer_id="CUST-000001", channel=nba_pb2.AGENT_DESKTOP)


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
def test_health_reports_serving(server: ServerHandle, service: str) -> None:
    """grpc.health.v1.Health/Check answers SERVING for the whole server and for nba.v1.NextBestAction."""
    assert server.health_status(service) == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(server: ServerHandle) -> None:
    """Health/Check for a service the server does not have is NOT_FOUND (the standard health contract)."""
    with pytest.raises(grpc.RpcError) as info:
        server.health_status("no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: ServerHandle) -> None:
    """Server reflection lists nba.v1.NextBestAction (plus health and reflection) and serves its proto file,
    whose descriptor has the four RPCs of the contract."""
    stub = reflection_pb2_grpc.ServerReflectionStub(server.new_channel())
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert len(responses) == 2
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert any(name.startswith("grpc.reflection.") for name in names)

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    nba_file = next(f for f in files if f.package == "nba.v1")
    service = next(s for s in nba_file.service if s.name == "NextBestAction")
    assert {m.name for m in service.method} == {"Decide", "RecordOutcome", "IngestEvent", "DecideBatch"}


def test_expired_and_tiny_deadlines(server: ServerHandle) -> None:
    """A Decide whose deadline has already passed fails with DEADLINE_EXCEEDED; one-microsecond and other
    tiny deadlines end OK or DEADLINE_EXCEEDED, never anything else (gRPC core keeps deadlines in whole
    milliseconds, so a fast server may beat a 1 us deadline); the server then answers normally."""
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Decide(GOOD, timeout=-0.001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    codes: Counter[grpc.StatusCode] = Counter()
    for timeout in [0.000001, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01] * 6:
        try:
            server.stub.Decide(GOOD, timeout=timeout)
            codes[grpc.StatusCode.OK] += 1
        except grpc.RpcError as exc:
            codes[exc.code()] += 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    assert len(server.stub.Decide(GOOD, timeout=10).decision_id) == 36
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING


def test_deadline_passing_while_server_is_stalled(start_fresh_server: Any) -> None:
    """While the server process is frozen (SIGSTOP), Decide calls with a 0.3 s deadline fail with
    DEADLINE_EXCEEDED after about 0.3 s; once it resumes it answers at once, and it never decides (or logs) the
    calls whose deadline had passed."""
    fresh = start_fresh_server()
    warm = fresh.stub.Decide(GOOD, timeout=10)
    fresh.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        futures = [fresh.stub.Decide.future(GOOD, timeout=0.3) for _ in range(5)]
        codes = []
        for future in futures:
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            codes.append(info.value.code())
        waited = time.monotonic() - started
    finally:
        fresh.process.send_signal(signal.SIGCONT)
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 5
    assert 0.25 <= waited < 3
    after = fresh.stub.Decide(GOOD, timeout=10)
    logged = fresh.wait_for_decisions([warm.decision_id, after.decision_id])
    assert set(logged) == {warm.decision_id, after.decision_id}
    time.sleep(0.3)
    sent = [r for r in fresh.decision_lines() if r["delivery"] == "sent"]
    assert len(sent) == 2, "a call whose deadline had passed was recorded as answered"
    late = [r for r in fresh.decision_lines() if r["delivery"] != "sent"]
    assert all(r["delivery"] in ("deadline_exceeded", "cancelled") for r in late)


def test_200_concurrent_mixed_calls_all_answered(server: ServerHandle) -> None:
    """200 concurrent Decide calls mixing good requests, invalid ones and unknown customers all get their
    proper answer (OK / INVALID_ARGUMENT / NOT_FOUND), every successful decision id is distinct, and the
    server is still SERVING afterwards."""
    rng = random.Random(20261122)
    requests: list[tuple[nba_pb2.DecideRequest, grpc.StatusCode]] = []
    for number in range(200):
        kind = number % 5
        customer = f"CUST-{rng.randint(1, 1000):06d}"
        channel = rng.choice([nba_pb2.AGENT_DESKTOP, nba_pb2.OUTBOUND_DIALER])
        if kind == 0:
            requests.append(
                (nba_pb2.DecideRequest(customer_id="bad id!", channel=channel), grpc.StatusCode.INVALID_ARGUMENT)
            )
        elif kind == 1:
            requests.append((nba_pb2.DecideRequest(customer_id=customer, channel=0), grpc.StatusCode.INVALID_ARGUMENT))
        elif kind == 2:
            requests.append(
                (nba_pb2.DecideRequest(customer_id="CUST-999999", channel=channel), grpc.StatusCode.NOT_FOUND)
            )
        else:
            requests.append(
                (
                    nba_pb2.DecideRequest(customer_id=customer, channel=channel, max_actions=rng.randint(0, 20)),
                    grpc.StatusCode.OK,
                )
            )
    rng.shuffle(requests)

    channels = [server.new_channel() for _ in range(4)]

    def call(index: int) -> tuple[grpc.StatusCode, str]:
        request, _ = requests[index]
        stub = nba_pb2_grpc.NextBestActionStub(channels[index % len(channels)])
        try:
            return grpc.StatusCode.OK, stub.Decide(request, timeout=30).decision_id
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(call, range(len(requests))))

    wrong = [(r.customer_id, want, got) for (r, want), got in zip(requests, results, strict=True) if got[0] != want]
    assert not wrong, wrong[:10]
    decision_ids = [value for code, value in results if code == grpc.StatusCode.OK]
    assert len(set(decision_ids)) == len(decision_ids) == 80
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert server.health_status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    assert server.process.poll() is None
