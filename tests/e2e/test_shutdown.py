"""Graceful shutdown on SIGTERM and SIGINT: in-flight calls finish, new ones are refused, nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.domain.model import Channel
from tests.e2e._support import ServerHandle, server_command, server_env

pytestmark = pytest.mark.e2e

GRACE_S = 5.0
WORKERS = 16


@dataclass
class CallResult:
    started: float
    ended: float
    code: grpc.StatusCode
    decision_id: str = ""


def _worker(
    server: ServerHandle, number: int, channel: grpc.Channel, stop: threading.Event, out: list[CallResult]
) -> None:
    """Calls Decide back to back until a call fails or the test says stop."""
    stub = nba_pb2_grpc.NextBestActionStub(channel)
    count = 0
    while not stop.is_set():
        customer = f"CUST-{(number * 61 + count) % 1000 + 1:06d}"
        request = nba_pb2.DecideRequest(
            customer_id=customer,
            channel=nba_pb2.AGENT_DESKTOP if count % 2 else nba_pb2.OUTBOUND_DIALER,
            max_actions=20,
            context=nba_pb2.InteractionContext(
                # Large records (about 12 KB of context each), within the 16 KiB a call may have recorded.
                reason="shutdown test",
                attributes={f"k{i}": "v" * 300 for i in range(40)},
            ),
        )
        started = time.monotonic()
        try:
            response = stub.Decide(request, timeout=GRACE_S * 3)
            out.append(CallResult(started, time.monotonic(), grpc.StatusCode.OK, response.decision_id))
        except grpc.RpcError as exc:
            out.append(CallResult(started, time.monotonic(), exc.code()))
            return
        count += 1


def _watch_health(server: ServerHandle, seen: list[int], ready: threading.Event) -> None:
    stub = health_pb2_grpc.HealthStub(server.new_channel())
    call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=GRACE_S * 3)
    try:
        for response in call:
            seen.append(response.status)
            ready.set()
            if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                call.cancel()
                return
    except grpc.RpcError:
        return
    finally:
        ready.set()


def _decision_ids_in_log(server: ServerHandle) -> list[str]:
    return [r["decision_id"] for r in server.decision_lines() if r["delivery"] == "sent"]


@dataclass
class LoadRun:
    code: int
    took: float
    signalled: float
    warm_decision: str
    calls: list[CallResult]
    health_seen: list[int]

    def with_code(self, *codes: grpc.StatusCode) -> list[CallResult]:
        return [c for c in self.calls if c.code in codes]


def _sigterm_under_load(server: ServerHandle, workers: int) -> LoadRun:
    """Sends SIGTERM while `workers` threads call Decide back to back and a health Watch is open."""
    warm = server.decide("CUST-000001", Channel.AGENT_DESKTOP)  # also proves the signal handlers are in place

    health_seen: list[int] = []
    watching = threading.Event()
    watcher = threading.Thread(target=_watch_health, args=(server, health_seen, watching), daemon=True)
    watcher.start()
    assert watching.wait(10)

    stop = threading.Event()
    results: list[list[CallResult]] = [[] for _ in range(workers)]
    channels = [server.new_channel() for _ in range(4)]
    threads = [
        threading.Thread(target=_worker, args=(server, n, channels[n % 4], stop, results[n]), daemon=True)
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while sum(len(r) for r in results) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(GRACE_S + 10)
    finally:
        stop.set()
    took = time.monotonic() - signalled
    for thread in threads:
        thread.join(10)
    watcher.join(10)
    return LoadRun(code, took, signalled, warm.decision_id, [c for r in results for c in r], health_seen)


def test_sigterm_under_load_exits_cleanly_and_keeps_every_decision(start_fresh_server: Any) -> None:
    """SIGTERM under load: the process exits 0 well within the grace period; a health Watch sees NOT_SERVING;
    calls end OK, or fail UNAVAILABLE once the server stopped taking calls (or CANCELLED: see the xfail below),
    never with another error; the decision log holds exactly one whole decision line per successful Decide
    (so no refused call was decided behind the caller's back) and the `stopped` event counts them."""
    server = start_fresh_server("--grace-seconds", str(GRACE_S))
    run = _sigterm_under_load(server, WORKERS)

    assert run.code == 0, server.log_text()
    assert run.took < GRACE_S, f"took {run.took:.2f}s to stop"
    ok = run.with_code(grpc.StatusCode.OK)
    assert len(ok) >= 300
    refused = run.with_code(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert refused, "no call was refused after the signal: the workers stopped too early"
    expected_codes = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    other = [c for c in run.calls if c.code not in expected_codes]
    assert not other, [(c.code, c.started - run.signalled) for c in other]
    assert all(c.ended >= run.signalled for c in refused), "a call failed before the signal was sent"
    assert any(c.started < run.signalled < c.ended for c in run.calls), "no call was in flight at the signal"

    assert run.health_seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in run.health_seen

    logged = _decision_ids_in_log(server)
    assert len(logged) == len(set(logged)), "a decision was logged twice"
    assert sorted(logged) == sorted([run.warm_decision, *(c.decision_id for c in ok)])
    events = server.log_events()
    assert [e["event"] for e in events][-2:] == ["shutting_down", "stopped"]
    assert events[-1]["decisions_recorded"] == len(server.decision_lines())
    assert events[-1]["not_written"] == 0


@pytest.mark.xfail(
    strict=False,  # a race: it loses in practically every loaded run, but a lucky run must not fail CI
    reason="calls the transport accepted but the event loop had not yet picked up when SIGTERM arrived are "
    "CANCELLED by grpc.aio Server.stop (grpc/grpc#41785), not completed within the grace period nor refused "
    "with UNAVAILABLE; GrpcServer.stop has no drain phase (see report)",
)
def test_sigterm_under_load_refuses_only_with_unavailable(start_fresh_server: Any) -> None:
    """Under heavy load, every Decide around a SIGTERM either completes OK or is refused with UNAVAILABLE (the
    status clients may safely retry elsewhere) - none is CANCELLED."""
    server = start_fresh_server("--grace-seconds", str(GRACE_S))
    run = _sigterm_under_load(server, WORKERS * 2)
    assert run.code == 0
    assert len(run.with_code(grpc.StatusCode.OK)) >= 300
    not_ok = [c for c in run.calls if c.code != grpc.StatusCode.OK]
    assert [c.code for c in not_ok] == [grpc.StatusCode.UNAVAILABLE] * len(not_ok)


@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "two-workers"])
def test_health_watchers_get_not_serving_and_an_end_and_do_not_hold_up_sigterm(
    start_fresh_server: Any, workers: str
) -> None:
    """Clients that watch health (gRPC's client-side health checking) hold the stream open for the life of the
    connection and never hang up themselves: SIGTERM still ends within moments, not the whole grace period,
    and each watcher sees NOT_SERVING and then a clean end of the stream."""
    grace = 20.0
    server = start_fresh_server("--grace-seconds", str(grace), "--workers", workers)
    server.decide("CUST-000001", Channel.AGENT_DESKTOP)
    seen: list[list[Any]] = [[] for _ in range(4)]

    def watch(out: list[Any]) -> None:
        call = health_pb2_grpc.HealthStub(server.new_channel()).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=grace * 2
        )
        try:
            out.extend(response.status for response in call)
            out.append(call.code())
        except grpc.RpcError as exc:
            out.append(exc.code())

    watchers = [threading.Thread(target=watch, args=(out,), daemon=True) for out in seen]
    for watcher in watchers:
        watcher.start()
    deadline = time.monotonic() + 10
    while not all(seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(seen), "every watcher gets the current status first"
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(grace + 10) == 0, server.log_text()[-3000:]
    took = time.monotonic() - signalled
    for watcher in watchers:
        watcher.join(10)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert seen == [[serving, not_serving, grpc.StatusCode.OK]] * 4
    assert took < grace / 2, f"took {took:.2f}s to stop with {len(seen)} health watchers open"


def test_sigint_stops_cleanly(start_fresh_server: Any) -> None:
    """SIGINT (Ctrl-C) shuts down like SIGTERM: exit code 0, no traceback, every decision in the log."""
    server = start_fresh_server()
    decided = [server.decide(f"CUST-{n:06d}", Channel.AGENT_DESKTOP).decision_id for n in range(1, 21)]
    assert server.stop(signal.SIGINT, timeout=15) == 0
    assert sorted(_decision_ids_in_log(server)) == sorted(decided)
    log = server.log_text()
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log
    assert [e["event"] for e in server.log_events()][-1] == "stopped"


def test_sigterm_right_after_serving_is_graceful(tmp_path: Any) -> None:
    """A SIGTERM sent the moment the server logs `serving` (it is ready, so it may be stopped) still shuts it
    down gracefully with exit code 0 (tried three times)."""
    codes = []
    for attempt in range(3):
        workdir = tmp_path / f"attempt{attempt}"
        workdir.mkdir()
        process = subprocess.Popen(
            server_command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, env=server_env()
        )
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if b'"serving"' in line:
                    process.send_signal(signal.SIGTERM)
                    break
            process.stderr.read()
            codes.append(process.wait(15))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    assert codes == [0, 0, 0]
