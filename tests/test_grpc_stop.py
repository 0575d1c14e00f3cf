"""`GrpcServer.stop(grace)` against the real server in this process: it waits for the calls it started and no
longer, and when the grace period runs out it says which calls it cut off. The slow method is a plain gRPC
handler added beside the service's own, on the same server, so no part of ours is replaced."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from nba_service.app import build_application
from nba_service.settings import Settings
from nba_service.transport.grpc_server import GrpcServer

RULESET = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"
SLOW = "/test.Slow/Sleep"


async def _serve_slow(tmp_path: Path) -> tuple[GrpcServer, object]:
    app = await build_application(Settings(db_path=tmp_path / "nba.db", rulesets=RULESET))
    server = GrpcServer(app.service, "127.0.0.1", 0)

    async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"slept"

    handler = grpc.unary_unary_rpc_method_handler(sleep)
    server.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Slow", {"Sleep": handler}),))
    await server.start()
    return server, app


async def _stop_during(server: GrpcServer, seconds: float, grace: float) -> tuple[object, float]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary(SLOW)(str(seconds).encode(), timeout=30)
        await asyncio.sleep(0.3)  # the call has started
        started = time.monotonic()
        await server.stop(grace)
        took = time.monotonic() - started
        try:
            outcome: object = await call
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code()
    return outcome, took


@pytest.mark.parametrize("grace", [2.0, 20.0])
async def test_stop_waits_for_a_started_call_and_no_longer(tmp_path: Path, grace: float) -> None:
    server, app = await _serve_slow(tmp_path)
    try:
        outcome, took = await _stop_during(server, 1.0, grace)
    finally:
        await app.close()  # type: ignore[attr-defined]
    assert outcome == b"slept"
    assert 0.5 < took < 1.9, took


async def test_past_the_grace_period_the_cut_off_calls_are_named(tmp_path: Path) -> None:
    server, app = await _serve_slow(tmp_path)
    try:
        with capture_logs() as logs:
            outcome, took = await _stop_during(server, 10.0, 1.0)
    finally:
        await app.close()  # type: ignore[attr-defined]
    assert outcome == grpc.StatusCode.UNAVAILABLE  # gRPC ends the calls it cancels at a shutdown so
    assert 0.9 < took < 3.0, took
    over = [e for e in logs if e["event"] == "grace_period_over"]
    assert over == [
        {"event": "grace_period_over", "cancelled": {SLOW: 1}, "grace_seconds": 1.0, "log_level": "warning"}
    ]
