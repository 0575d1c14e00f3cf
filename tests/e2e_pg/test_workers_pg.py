"""`nba serve --store postgres --workers 2`: the workers share PostgreSQL, so either one takes any decision's
outcome; a worker that cannot start stops the supervisor with the single process's message."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, read_json_lines, server_env
from tests.e2e._worker_support import channels_by_worker, decide_with_actions, serving_event, worker_processes
from tests.e2e_pg._pg_support import fetch, pg_args, pg_env, seed_sync
from tests.e2e_pg.conftest import StartPgServer

pytestmark = pytest.mark.e2e

COUNT = 150


def test_a_decision_of_one_worker_takes_its_outcome_through_the_other(
    pg_dsn: str, start_pg: StartPgServer, tmp_path: Path
) -> None:
    """Two workers on one seeded database: a decision made through one worker's connection takes its outcome
    through the other's (OK), both ways; PostgreSQL holds both decisions and both outcomes, and
    `nba decisions export --store postgres` prints them."""
    seed_sync(pg_dsn, COUNT, datetime.now(UTC))
    server = start_pg(pg_dsn, "--workers", "2")
    serving = serving_event(server)
    pids = serving["worker_pids"]
    assert (serving["workers"], serving["store"], len(set(pids))) == (2, "postgres", 2)
    channels = channels_by_worker(server, pids)
    recorded: list[tuple[str, str]] = []
    try:
        for decider, recorder in (pids, pids[::-1]):
            decision = decide_with_actions(channels[decider], range(1, COUNT + 1))
            action = decision.actions[0].action_id
            nba_pb2_grpc.NextBestActionStub(channels[recorder]).RecordOutcome(
                nba_pb2.RecordOutcomeRequest(
                    decision_id=decision.decision_id, action_id=action, outcome=nba_pb2.ACCEPTED
                ),
                timeout=10,
            )
            recorded.append((decision.decision_id, action))
    finally:
        for channel in channels.values():
            channel.close()

    rows = fetch(pg_dsn, "SELECT decision_id::text, action_id, outcome FROM outcomes")
    assert {(r["decision_id"], r["action_id"], r["outcome"]) for r in rows} == {(d, a, "accepted") for d, a in recorded}
    out = tmp_path / "export.jsonl"
    subprocess.run(
        [str(NBA_SCRIPT), "decisions", "export", "--store", "postgres", "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
        env={**server_env(), **pg_env(pg_dsn)},
    )
    lines = read_json_lines(out)
    assert {d for d, _ in recorded} <= {r["decision_id"] for r in lines if r["kind"] == "decision"}
    assert {(r["decision_id"], r["action_id"]) for r in lines if r["kind"] == "outcome"} == set(recorded)


def test_a_worker_that_cannot_start_stops_the_supervisor_with_one_message(pg_empty_dsn: str, tmp_path: Path) -> None:
    """On a database without the schema each worker refuses to start; the supervisor stops and exits 2 with the
    single process's one line (`cannot start: ... run `nba db migrate``), said once, not once per worker."""
    command = [
        str(NBA_SCRIPT),
        "serve",
        "--port",
        "0",
        "--workers",
        "2",
        "--rulesets",
        str(RULESET_PATH),
        *pg_args(),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**server_env(), **pg_env(pg_empty_dsn)},
    )
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cannot start:")]
    assert len(lines) == 1, stderr
    assert "run `nba db migrate`" in lines[0]
    assert "Traceback" not in stderr
    assert stdout == ""
    assert worker_processes(process.pid) == []
