"""The PostgreSQL benchmark's repeated runs: the p99 target is judged on the median of the runs' p99s. Not a timed
test: the figures here are made up, and no benchmark runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))

import bench_postgres as bench


def _report(p50: float, p99: float) -> dict[str, Any]:
    cpu = {"server_cpu_ms_per_call": 1.4, "postgres_cpu_ms_per_call": 0.6, "machine_pct": 130.0}
    return {"decide": {"steady": {"latency_ms": {"median": p50, "p99": p99}}, "cpu": cpu}}


def test_the_target_is_judged_on_the_median_of_the_runs_p99s(capsys: pytest.CaptureFixture[str]) -> None:
    summary = bench.repeated([_report(3.0, 45.0), _report(2.9, 8.0), _report(3.1, 9.5)], 500.0)
    target = summary["target"]
    assert target.measured == 9.5
    assert target.passed
    assert [run["p99_ms"] for run in summary["runs"]] == [45.0, 8.0, 9.5]
    bench.print_repeated(summary)
    printed = capsys.readouterr().out
    assert "3 runs" in printed
    assert "median of 3 runs" in printed
    assert "PASS" in printed

    missed = bench.repeated([_report(3.0, 45.0), _report(2.9, 12.0)], 500.0)["target"]
    assert missed.measured == 28.5
    assert not missed.passed


def test_repeat_is_bounded() -> None:
    assert bench.parse_args(["--repeat", "3"]).repeat == 3
    for bad in ("0", "21"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--repeat", bad])
