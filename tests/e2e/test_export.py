"""`nba decisions export`: auditors get every decision and outcome as versioned JSON lines, with no SQL."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.domain.records import DecisionRecord, outcome_from_json
from tests.e2e._support import NBA_SCRIPT, server_env, utcnow

pytestmark = pytest.mark.e2e


def _export(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "decisions", "export", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=server_env(),
        check=False,
    )


def test_export_prints_every_record_and_filters(start_fresh_server: Any, tmp_path: Path) -> None:
    """After a stopped server: all decisions and the outcome, oldest first, each line a record of format
    nba.record/1 that reads back; --customer, --since and --until narrow it; the database stays as it was."""
    server = start_fresh_server()
    started = utcnow()
    first = server.decide("CUST-000058", Channel.AGENT_DESKTOP, max_actions=20)
    second = server.decide("CUST-000059", Channel.OUTBOUND_DIALER)
    action = first.actions[0].action_id
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=first.decision_id, action_id=action, outcome=nba_pb2.ACCEPTED),
        timeout=10,
    )
    assert server.stop(signal.SIGTERM) == 0
    workdir = server.database.parent.parent

    everything = _export(workdir)
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [(r["kind"], r["decision_id"]) for r in lines] == [
        ("decision", first.decision_id),
        ("decision", second.decision_id),
        ("outcome", first.decision_id),
    ]
    assert all(r["format"] == "nba.record/1" for r in lines)
    record = DecisionRecord.from_json(lines[0])
    assert [a.action_id for a in record.actions] == [a.action_id for a in first.actions]
    assert outcome_from_json(lines[2]).action_id == action
    assert "3 records exported" in everything.stderr

    one = _export(workdir, "--customer", "CUST-000059", "--db-path", str(server.database))
    assert [json.loads(line)["decision_id"] for line in one.stdout.splitlines()] == [second.decision_id]

    later = (utcnow() + timedelta(minutes=1)).isoformat()
    assert _export(workdir, "--since", later).stdout == ""
    before = _export(workdir, "--until", started.isoformat())
    assert before.returncode == 0
    assert before.stdout == ""
    window = _export(workdir, "--since", started.isoformat(), "--until", later, "-o", str(tmp_path / "out.jsonl"))
    assert window.returncode == 0
    assert len((tmp_path / "out.jsonl").read_text("utf-8").splitlines()) == 3
    assert datetime.fromisoformat(lines[0]["decided_at"]) >= started


def test_export_errors_are_plain(tmp_path: Path) -> None:
    """No database here, a bad time, or --until before --since: a clear message and exit 2, no traceback."""
    missing = _export(tmp_path)
    assert missing.returncode == 2
    assert "no embedded database at var/nba.db" in missing.stderr
    bad = _export(tmp_path, "--since", "yesterday")
    assert bad.returncode == 2
    assert "not an ISO 8601 time" in bad.stderr
    backwards = _export(tmp_path, "--since", "2026-12-02", "--until", "2026-12-01")
    assert backwards.returncode == 2
    assert "must be after --since" in backwards.stderr
    for result in (missing, bad, backwards):
        assert "Traceback" not in result.stderr
