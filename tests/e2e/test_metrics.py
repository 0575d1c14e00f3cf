"""The metrics as operators meet them: one scrape of `nba serve --workers 2`, the older RPC convention on request,
and OTLP export to a collector, each against the real server over loopback."""

from __future__ import annotations

import collections
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from tests.e2e._support import ServerHandle, start_server
from tests.e2e._worker_support import channels_by_worker, serving_event
from tests.e2e.test_shadow import shadowed_records, write_candidate
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

DECIDE = "nba.v1.NextBestAction/Decide"


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def _scrape_counting(address: str, decisions: int) -> str:
    """The exposition once it counts `decisions` (a worker adds its counts to the counters every second), read
    again a moment later: a scrape reads the workers' files while a worker adds to them, decisions first, and
    once saw every decision but not yet every rule firing (CI, two test processes on two cores)."""
    deadline = time.monotonic() + 10
    while True:
        text = _scrape(address)
        counted = _total(_samples(text).get("counter:nba_decisions", []), "nba_decisions_total")
        if counted >= decisions or time.monotonic() > deadline:
            time.sleep(0.5)
            return _scrape(address)
        time.sleep(0.2)


def _samples(text: str) -> dict[str, list[Sample]]:
    families: dict[str, list[Sample]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        families[f"{family.type}:{family.name}"].extend(family.samples)
    return families


def _total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _decide_all(channel: grpc.Channel, customers: list[str]) -> list[nba_pb2.DecideResponse]:
    stub = nba_pb2_grpc.NextBestActionStub(channel)
    return [
        stub.Decide(nba_pb2.DecideRequest(customer_id=c, channel=nba_pb2.AGENT_DESKTOP), timeout=10) for c in customers
    ]


def test_one_scrape_covers_every_worker(start_fresh_server: Any) -> None:
    server: ServerHandle = start_fresh_server("--workers", "2", "--metrics-port", "0")
    serving = serving_event(server)
    pids = serving["worker_pids"]
    by_worker = channels_by_worker(server, pids)
    customers = [f"CUST-{n:06d}" for n in range(1, 31)]
    decision_ids = []
    for i, channel in enumerate(by_worker.values()):
        decision_ids += [r.decision_id for r in _decide_all(channel, customers[i * 15 : (i + 1) * 15])]
    stub = nba_pb2_grpc.NextBestActionStub(next(iter(by_worker.values())))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Decide(nba_pb2.DecideRequest(customer_id="NO-SUCH-CUSTOMER", channel=nba_pb2.AGENT_DESKTOP), timeout=10)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    records = server.wait_for_decisions(decision_ids)

    text = _scrape_counting(serving["metrics_address"], len(decision_ids))
    families = _samples(text)

    decisions = families["counter:nba_decisions"]
    assert _total(decisions, "nba_decisions_total") == len(decision_ids) == 30
    firsts = [r["actions"][0]["action_id"] if r["actions"] else "none" for r in records.values()]
    by_action = collections.Counter(firsts)
    for action, count in by_action.items():
        assert _total(decisions, "nba_decisions_total", action=action, channel="agent_desktop") == count
    firings = collections.Counter(f["rule_id"] for r in records.values() for f in r["rules_fired"])
    for rule_id, count in firings.items():
        assert _total(families["counter:nba_rule_firings"], "nba_rule_firings_total", rule_id=rule_id) == count
    drops = collections.Counter((d["stage"], d["reason"]) for r in records.values() for d in r["dropped"])
    for (stage, reason), count in drops.items():
        dropped = families["counter:nba_candidates_dropped"]
        assert _total(dropped, "nba_candidates_dropped_total", stage=stage, reason=reason) == count

    rpc = families["histogram:rpc_server_call_duration_seconds"]
    ok = {"rpc_method": DECIDE, "rpc_response_status_code": "OK", "rpc_system_name": "grpc"}
    assert _total(rpc, "rpc_server_call_duration_seconds_count", **ok) == 30
    not_found = {"rpc_method": DECIDE, "rpc_response_status_code": "NOT_FOUND", "error_type": "NOT_FOUND"}
    assert _total(rpc, "rpc_server_call_duration_seconds_count", **not_found) == 1
    assert _total(rpc, "rpc_server_call_duration_seconds_count", rpc_method="grpc.health.v1.Health/Check") >= 2
    assert 0 < _total(rpc, "rpc_server_call_duration_seconds_sum", **ok) < 30 * 10  # seconds, not milliseconds
    assert not any(name.endswith("rpc_server_duration_milliseconds") for name in families)

    reads = families["histogram:nba_store_operation_duration_seconds"]
    assert _total(reads, "nba_store_operation_duration_seconds_count", operation="read_profile", store="sqlite") >= 31
    assert _total(reads, "nba_store_operation_duration_seconds_count", operation="commit_records") >= 1
    assert "gauge:nba_decision_log_queued" in families
    assert "gauge:nba_store_pool_connections" not in families  # the embedded store has no pool

    for customer in [*customers, "NO-SUCH-CUSTOMER"]:
        assert customer not in text
    for decision_id in decision_ids:
        assert decision_id not in text


def test_health_watch_works_with_metrics_on(start_fresh_server: Any) -> None:
    """The metrics interceptor leaves the health Watch stream alone: it writes instead of yielding, and the
    interceptor's wrapper failed it with UNKNOWN, so gRPC's client-side health checking saw every server with
    metrics on as unhealthy. The Watch is not measured (a stream as long as its connection)."""
    server: ServerHandle = start_fresh_server("--metrics-port", "0")
    call = health_pb2_grpc.HealthStub(server.new_channel()).Watch(health_pb2.HealthCheckRequest(service=""), timeout=1)
    seen = []
    with pytest.raises(grpc.RpcError) as ended:
        seen.extend(response.status for response in call)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended.value.details()
    assert seen == [health_pb2.HealthCheckResponse.SERVING]
    assert "grpc.health.v1.Health/Watch" not in _scrape(serving_event(server)["metrics_address"])


def test_the_older_rpc_convention_and_the_http_api(start_fresh_server: Any) -> None:
    """`--rpc-duration-metric legacy` gives the histogram many dashboards still read; the HTTP/JSON API has its
    own, labelled by route template, never by the ids in the path."""
    server: ServerHandle = start_fresh_server(
        "--metrics-port", "0", "--rpc-duration-metric", "legacy", "--http-port", "0"
    )
    responses = _decide_all(server.new_channel(), ["CUST-000001", "CUST-000002"])
    with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as http:
        decided = http.post("/v1/decide", json={"customer_id": "CUST-000003", "channel": "AGENT_DESKTOP"})
        assert decided.status_code == 200, decided.text
        explained = http.get(f"/v1/review/decisions/{responses[0].decision_id}/explanation")
        assert explained.status_code == 200, explained.text
        assert http.get("/no/such/page").status_code == 404
    families = _samples(_scrape_counting(serving_event(server)["metrics_address"], 3))

    legacy = families["histogram:rpc_server_duration_milliseconds"]
    labels = {"rpc_system": "grpc", "rpc_service": "nba.v1.NextBestAction", "rpc_method": "Decide"}
    assert _total(legacy, "rpc_server_duration_milliseconds_count", rpc_grpc_status_code="0", **labels) == 2
    # Milliseconds: two local Decide calls take well over a tenth of a millisecond together.
    assert _total(legacy, "rpc_server_duration_milliseconds_sum", **labels) > 0.1
    assert "histogram:rpc_server_call_duration_seconds" not in families

    http_calls = families["histogram:http_server_request_duration_seconds"]
    count = "http_server_request_duration_seconds_count"
    assert _total(http_calls, count, http_request_method="POST", http_route="/v1/decide") == 1
    route = "/v1/review/decisions/{decision_id}/explanation"
    assert _total(http_calls, count, http_route=route, http_response_status_code="200") == 1
    assert _total(http_calls, count, http_route="", http_response_status_code="404") == 1
    assert _total(families["counter:nba_decisions"], "nba_decisions_total") == 3
    text = _scrape(serving_event(server)["metrics_address"])
    assert responses[0].decision_id not in text
    assert "/no/such/page" not in text


def test_shadow_runs_are_counted_by_agreement(start_fresh_server: Any, tmp_path: Path) -> None:
    server: ServerHandle = start_fresh_server("--metrics-port", "0", "--shadow", str(write_candidate(tmp_path)))
    responses = _decide_all(server.new_channel(), [f"CUST-{n:06d}" for n in range(1, 41)])
    records = shadowed_records(server, {r.decision_id for r in responses})
    agreed = sum(1 for r in records.values() if r["shadow"]["agreed"])
    assert 0 < agreed < len(records), "the candidate should agree on some customers and not on others"
    families = _samples(_scrape_counting(serving_event(server)["metrics_address"], len(records)))
    runs = families["counter:nba_shadow_runs"]
    assert _total(runs, "nba_shadow_runs_total", result="agreed") == agreed
    assert _total(runs, "nba_shadow_runs_total", result="disagreed") == len(records) - agreed
    assert _total(runs, "nba_shadow_runs_total", result="failed") == 0


def _latest_by_process(receiver: OtlpReceiver, name: str) -> dict[str, Any]:
    """The last export of metric `name` from each process (service.instance.id): each exports cumulative values."""
    latest: dict[str, Any] = {}
    for resource in receiver.resource_metrics:
        attributes = {a.key: a.value for a in resource.resource.attributes}
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    latest[attributes["service.instance.id"].string_value] = (metric, attributes)
    return latest


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_reach_an_otlp_collector(tmp_path: Path, workers: int) -> None:
    """Each process exports its own: with workers, their decisions add up to the calls made."""
    receiver = OtlpReceiver().start()
    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_SERVICE_NAME": "nba-under-test",
    }
    server = start_server(tmp_path, "--workers", str(workers), env=env)
    customers = [f"CUST-{n:06d}" for n in range(1, 7)]
    try:
        if workers == 1:
            _decide_all(server.new_channel(), customers)
        else:
            by_worker = channels_by_worker(server, serving_event(server)["worker_pids"])
            for i, channel in enumerate(by_worker.values()):
                _decide_all(channel, customers[i * 3 : (i + 1) * 3])
        deadline = time.monotonic() + 20
        while True:
            exported = _latest_by_process(receiver, "nba.decisions")
            counted = sum(p.as_int or p.as_double for m, _ in exported.values() for p in m.sum.data_points)
            if counted == len(customers) and len(exported) == workers:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no exports counting {len(customers)} decisions within 20 s: {counted} from {exported}")
            time.sleep(0.1)
        for metric, attributes in exported.values():
            assert metric.unit == "{decision}"
            assert metric.sum.is_monotonic
            assert attributes["service.name"].string_value == "nba-under-test"
            if workers > 1:
                assert attributes["nba.worker"].int_value in range(workers)
        decide = [
            point
            for metric, _ in _latest_by_process(receiver, "rpc.server.call.duration").values()
            if metric.unit == "s"
            for point in metric.histogram.data_points
            if {a.key: a.value.string_value for a in point.attributes}.get("rpc.method") == DECIDE
        ]
        assert sum(p.count for p in decide) == len(customers)
        assert all(len(p.bucket_counts) == len(p.explicit_bounds) + 1 for p in decide)
        assert all(sum(p.bucket_counts) == p.count for p in decide)
    finally:
        server.stop()
        receiver.stop()
