"""Rate and concurrency limits on the real server: RESOURCE_EXHAUSTED with the limit named and a retry hint,
nothing else failing, health always answering, and the defaults leaving a normal burst alone."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.service import MAX_CONTEXT_RECORDED, MAX_EVENT_RECORDED
from nba_service.transport.grpc_errors import field_violations, retry_delay
from tests.e2e._support import ruleset_document
from tests.e2e.conftest import StartServer
from tests.security_pki import Pki, make_pki

pytestmark = pytest.mark.e2e

RATE_REFUSAL = re.compile(r"rate limit of 5 calls/s for (?P<who>.+) exceeded; retry after (?P<hint>[0-9.]+) s")
CONCURRENCY_REFUSAL = re.compile(r"limit of 2 concurrent calls per process reached; retry after (?P<hint>[0-9.]+) s")


def _request(number: int) -> nba_pb2.DecideRequest:
    return nba_pb2.DecideRequest(customer_id=f"CUST-{number % 1000 + 1:06d}", channel=nba_pb2.AGENT_DESKTOP)


def _outcome(call: grpc.RpcError | None) -> str:
    return "OK" if call is None else call.code().name


def _decide(stub: nba_pb2_grpc.NextBestActionStub, number: int) -> grpc.RpcError | None:
    try:
        stub.Decide(_request(number), timeout=10)
    except grpc.RpcError as exc:
        return exc
    return None


async def _burst(target: str, calls: int, connections: int) -> list[grpc.aio.AioRpcError | None]:
    """`calls` Decide calls at once, spread over `connections` channels; the error of each, None for OK."""
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stubs = [nba_pb2_grpc.NextBestActionStub(channel) for channel in channels]

        async def one(number: int) -> grpc.aio.AioRpcError | None:
            try:
                await stubs[number % connections].Decide(_request(number), timeout=20)
            except grpc.aio.AioRpcError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(n) for n in range(calls))))
    finally:
        for channel in channels:
            await channel.close()


def _counts(results: Sequence[grpc.RpcError | None]) -> Counter[str]:
    return Counter(_outcome(r) for r in results)


POLICY = """\
callers:
  - name: desks
    match: {certificate_cn: desk-01}
    roles: [desktop]
  - name: other desks
    match: {certificate_cn: desk-02}
    roles: [desktop]
"""


def _tls_channel(pki: Pki, address: str, cert: str) -> grpc.Channel:
    pair = pki.client(cert)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pair.key.read_bytes(),
        certificate_chain=pair.cert.read_bytes(),
    )
    return grpc.secure_channel(address, credentials)


def test_a_burst_from_one_caller_is_refused_with_a_hint_while_another_caller_goes_on(
    start_fresh_server: StartServer, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", clients=("desk-01", "desk-02"))
    policy = tmp_path / "access.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    server = start_fresh_server(
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca_cert)),
        *("--access-policy", str(policy), "--rate-limit", "5", "--rate-burst", "5"),
    )
    with (
        _tls_channel(pki, server.address, "desk-01") as first,
        _tls_channel(pki, server.address, "desk-02") as second,
    ):
        desk_01 = nba_pb2_grpc.NextBestActionStub(first)
        results = [_decide(desk_01, n) for n in range(12)]
        counts = _counts(results)
        assert set(counts) == {"OK", "RESOURCE_EXHAUSTED"}, counts
        assert 5 <= counts["OK"] <= 6, counts  # the burst, and at most one token back while the calls ran
        refusal = next(r for r in results if r is not None)
        found = RATE_REFUSAL.fullmatch(refusal.details() or "")
        assert found is not None, refusal.details()
        assert found["who"] == f"cert:{pki.client('desk-01').subject}"
        hint = float(found["hint"])
        assert 0 < hint <= 0.2  # one token comes back in 1/5 s
        assert retry_delay(refusal) == pytest.approx(hint)

        assert _decide(nba_pb2_grpc.NextBestActionStub(second), 1) is None  # another caller has its own bucket

        time.sleep(hint)
        assert _decide(desk_01, 2) is None  # waiting the hinted time is enough

        health = health_pb2_grpc.HealthStub(first)
        for _ in range(20):  # health is never limited
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    logged = [e for e in server.log_events() if e.get("event") == "calls_refused_by_limits"]
    assert logged, "refusals are logged"
    assert RATE_REFUSAL.fullmatch(logged[0]["last_reason"])


def test_calls_beyond_the_process_cap_are_refused_and_nothing_else_fails(start_fresh_server: StartServer) -> None:
    server = start_fresh_server("--max-concurrent-calls", "2")
    health = server.health()
    refused: list[grpc.aio.AioRpcError] = []
    totals: Counter[str] = Counter()
    for _ in range(5):  # a few rounds at most: 2 slots and 200 calls at once overlap on the first in practice
        results = asyncio.run(_burst(server.address, calls=200, connections=4))
        totals += _counts(results)
        refused += [r for r in results if r is not None]
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        if refused:
            break
    assert set(totals) == {"OK", "RESOURCE_EXHAUSTED"}, totals
    for error in refused:
        found = CONCURRENCY_REFUSAL.fullmatch(error.details() or "")
        assert found is not None, error.details()
        assert retry_delay(error) == pytest.approx(float(found["hint"]))
    assert _decide(server.stub, 7) is None  # and once the burst is over, calls go through


def test_a_connection_waits_for_its_streams_rather_than_failing(start_fresh_server: StartServer) -> None:
    """One stream per connection: the client queues its calls, so one connection never holds two of the
    process's calls at once, and a process cap of one call refuses none of them."""
    server = start_fresh_server("--max-streams-per-connection", "1", "--max-concurrent-calls", "1")
    results = asyncio.run(_burst(server.address, calls=40, connections=1))
    assert _counts(results) == Counter({"OK": 40})


def test_the_default_limits_leave_a_normal_burst_alone(start_fresh_server: StartServer) -> None:
    """The attack of the issue (300 calls in 0.4 s) as a legitimate burst: with the defaults, every call is
    answered."""
    server = start_fresh_server()
    results = asyncio.run(_burst(server.address, calls=300, connections=3))
    assert _counts(results) == Counter({"OK": 300})


WIDE = "\U0001f600"  # 4 bytes of UTF-8, 12 bytes (\ud83d\ude00) in the records' ASCII-only JSON
RECORD_BUDGET = 64 * 1024


def _fill(make: Callable[[int], object], cap: int) -> int:
    """The largest n for which make(n) still fits the cap, measured as the records store it."""
    n = 0
    while len(json.dumps(make(n + 1), ensure_ascii=True, separators=(",", ":"))) <= cap:
        n += 1
    return n


def _event(customer: str, event_type: str, numbers: Sequence[str], strings: Sequence[str], n: int) -> Any:
    values = {k: nba_pb2.AttributeValue(number_value=1e300) for k in numbers}
    values |= {k: nba_pb2.AttributeValue(string_value=WIDE * n) for k in strings}
    return nba_pb2.IngestEventRequest(customer_id=customer, type=event_type, attributes=values)


def _recorded_event(numbers: Sequence[str], strings: Sequence[str], n: int) -> dict[str, object]:
    return {**dict.fromkeys(numbers, 1e300), **dict.fromkeys(strings, WIDE * n)}


def _context(keys: Sequence[str], n: int) -> nba_pb2.InteractionContext:
    return nba_pb2.InteractionContext(reason=WIDE * min(n, 500), attributes=dict.fromkeys(keys, WIDE * n))


def _recorded_context(keys: Sequence[str], n: int) -> dict[str, object]:
    return {"reason": WIDE * min(n, 500), "attributes": dict.fromkeys(keys, WIDE * n)}


def _with(request: nba_pb2.DecideRequest, context: nba_pb2.InteractionContext) -> nba_pb2.DecideRequest:
    made = nba_pb2.DecideRequest()
    made.CopyFrom(request)
    made.context.CopyFrom(context)
    return made


def test_the_largest_legal_call_writes_a_bounded_record_and_one_more_byte_is_refused(
    start_fresh_server: StartServer,
) -> None:
    """Every event type at its size cap and a context at its cap, with max_actions 20: the worst a caller can
    make one decision record (430 KB before the caps) stays within the budget; past a cap the call is refused
    with INVALID_ARGUMENT naming the field."""
    server = start_fresh_server()
    customer = "CUST-000692"  # the sample customer with the largest record (docs/operators/limits-and-secrets.md)
    stub = server.stub
    for declared in ruleset_document()["events"]:
        attributes = declared.get("attributes", [])
        strings = [a["name"] for a in attributes if a["type"] == "string"]
        numbers = [a["name"] for a in attributes if a["type"] == "number"]
        n = 0
        if strings:
            n = _fill(functools.partial(_recorded_event, numbers, strings), MAX_EVENT_RECORDED)
            with pytest.raises(grpc.RpcError) as over:
                stub.IngestEvent(_event(customer, declared["type"], numbers, strings, n + 1), timeout=10)
            assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(over.value).keys() == {"attributes"}
        stub.IngestEvent(_event(customer, declared["type"], numbers, strings, n), timeout=10)

    keys = [f"k{i:02d}" + "x" * 61 for i in range(50)]
    n = _fill(functools.partial(_recorded_context, keys), MAX_CONTEXT_RECORDED)
    request = nba_pb2.DecideRequest(customer_id=customer, channel=nba_pb2.OUTBOUND_DIALER, max_actions=20)
    with pytest.raises(grpc.RpcError) as over:
        stub.Decide(_with(request, _context(keys, n + 1)), timeout=10)
    assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(over.value).keys() == {"context"}
    assert "at most 16,384 are allowed" in (over.value.details() or "")

    answer = stub.Decide(_with(request, _context(keys, n)), timeout=10)
    record = server.wait_for_decisions([answer.decision_id])[answer.decision_id]
    size = len(json.dumps(record, ensure_ascii=True))
    assert MAX_CONTEXT_RECORDED < size <= RECORD_BUDGET, size
