"""The published benchmark's tool keeps working: its generator sends the whole mix on schedule to a real echo
server and the real embedded server, times calls from their intended send time, and writes the table, the JSON
report and the plot. Not a timed test: no figure is compared with a target here."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))

import bench_published as bench
from bench_common import serve_command, start_server, stop_server

pytestmark = pytest.mark.e2e

DELAY_S = 0.05


def _args(tmp_path: Path):
    return bench.parse_args(
        [
            "--rates",
            "40",
            "--step-seconds",
            "1.5",
            "--warmup",
            "0.5",
            "--pause",
            "0",
            "--generators",
            "2",
            "--connections",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )


def _every_kind_answered_ok(row: dict) -> None:
    assert set(row["calls_by_kind"]) == set(bench.KINDS)
    for kind, codes in row["calls_by_kind"].items():
        assert set(codes) == {"OK"}, (kind, codes)
    assert row["ok"] == row["calls"] == 60


def test_the_mixed_schedule_runs_against_echo_and_the_embedded_server_and_writes_its_report(tmp_path):
    args = _args(tmp_path)
    echo = bench.start_echo(1, delay_s=DELAY_S)
    try:
        echo_result = bench.sweep(bench.Endpoint("echo", echo.address, echo.pids, 1_000, False, 1), args)
    finally:
        echo.stop()
    [echo_row] = echo_result["rows"]
    _every_kind_answered_ok(echo_row)
    # The echo handler sleeps before it answers: every latency, taken from the call's intended send time,
    # holds that sleep and any lateness of the generator.
    for kind, latency in echo_row["latency_by_kind_ms"].items():
        assert latency["p50"] >= DELAY_S * 1000, kind

    workdir = tmp_path / "server"
    workdir.mkdir()
    command = serve_command(workdir, bench.RULESET, "sqlite", ["--workers", "1"])
    process, serving = start_server(command, workdir / "server.log", workdir)
    try:
        endpoint = bench.Endpoint("embedded", str(serving["address"]), [process.pid], 1_000, True, 1)
        service = bench.sweep(endpoint, args)
    finally:
        code, _ = stop_server(process, 60)
    assert code == 0
    [row] = service["rows"]
    _every_kind_answered_ok(row)
    assert service["peak_rate"] > 0

    report = bench.build_report(args, {"echo": echo_result, "embedded": service}, datetime.now(UTC), None)
    paths = bench.write_outputs(report, tmp_path)
    table = paths["markdown"].read_text(encoding="utf-8")
    assert "| grpc.aio echo | 40 |" in table
    assert "| service, embedded store | 40 |" in table
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["servers"]["embedded"]["rows"][0]["calls"] == 60
    assert paths["plot"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
