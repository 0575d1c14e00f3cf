"""Pending dialer calls on both stores: the peers' failure ("a cap must apply to every send path, batches and
retries included") as checks run against a real `nba serve`, the embedded store's (tests/e2e/test_pending_calls.py)
and PostgreSQL's (tests/e2e_pg/test_pending_calls_pg.py).

The customers are the bundled sample (or the generated population on PostgreSQL), moved to a time zone where it is
early afternoon now, so every check can call them whatever the hour the suite runs at. A small ruleset gives every
customer one action on both channels under two caps: the bundled `dialer-daily` and one cap on that action
whatever the channel, so every send path counts against the same cap.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.dialer import choose_number
from nba_service.domain.profile import Profile
from nba_service.synthetic import SAMPLE_PATH
from tests.e2e._support import NBA_SCRIPT, ServerHandle, server_env

PENDING_RULESET = """\
ruleset:
  name: pending-calls
  version: 1.0.0
  owner: tests
  description: One action on both channels, under the dialer's daily cap and a cap on the action on any channel.
  valid_for: 4h
fields:
  - {name: stage, type: string}
  - {name: timezone, type: string}
actions:
  - id: check-in
    category: service
    scripts: {agent_desktop: "Check in with the customer.", outbound_dialer: "Call to check in with the customer."}
rules:
  - {id: r-check-in, description: Everyone, reason: A regular check-in, priority: 50, action: check-in,
     when: {all: [{field: stage, op: exists}]}}
policies:
  frequency_caps:
    - {id: dialer-daily, channel: outbound_dialer, max: 1, within: 1d, description: "At most one outbound call a day"}
    - {id: check-in-daily, action: check-in, max: 1, within: 1d, description: "One check-in a day on any channel"}
  quiet_hours: {start: "20:00", end: "09:00", timezone_field: timezone, default_timezone: Europe/London}
"""
ACTION = "check-in"
LOCAL_HOUR = 13  # early afternoon: hours of call window on either side, whenever the suite runs


def afternoon_zone(now: datetime) -> str:
    """A fixed-offset IANA zone (Etc/GMT-N is UTC+N) where it is LOCAL_HOUR o'clock now."""
    offset = LOCAL_HOUR - now.astimezone(UTC).hour
    if offset > 14:
        offset -= 24
    if offset < -12:
        offset += 24
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def write_ruleset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pending-calls.yaml"
    path.write_text(PENDING_RULESET, encoding="utf-8")
    return path


def write_afternoon_sample(folder: Path, zone: str) -> Path:
    """The bundled sample with every customer in `zone`."""
    lines = []
    for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            record["attributes"]["timezone"] = zone
            lines.append(json.dumps(record, sort_keys=True))
    path = folder / "afternoon-sample.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def nba(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=server_env(), check=False
    )


def campaign(
    server: ServerHandle,
    campaign_id: str,
    customers: Sequence[str],
    *,
    at: datetime | None = None,
    legal_window: str = "",
) -> dict[str, nba_pb2.BatchResult]:
    request = nba_pb2.DecideBatchRequest(
        campaign_id=campaign_id,
        channel=nba_pb2.OUTBOUND_DIALER,
        customer_ids=nba_pb2.CustomerList(ids=list(customers)),
        legal_window=legal_window,
    )
    if at is not None:
        request.time.FromDatetime(at)
    return {r.customer_id: r for r in server.stub.DecideBatch(request, timeout=60)}


def called(results: dict[str, nba_pb2.BatchResult]) -> dict[str, nba_pb2.BatchResult]:
    return {ident: r for ident, r in results.items() if r.WhichOneof("result") == "call"}


def exclusions(results: dict[str, nba_pb2.BatchResult]) -> dict[str, tuple[str, str]]:
    return {
        ident: (nba_pb2.ExclusionReason.Name(r.excluded.reason), r.excluded.detail)
        for ident, r in results.items()
        if r.WhichOneof("result") == "excluded"
    }


def desktop(server: ServerHandle, customer_id: str) -> nba_pb2.DecideResponse:
    return server.stub.Decide(nba_pb2.DecideRequest(customer_id=customer_id, channel=nba_pb2.AGENT_DESKTOP), timeout=10)


def write_dispositions(path: Path, rows: Sequence[tuple[nba_pb2.BatchResult, str, str]]) -> None:
    """A generic disposition file: (result, disposition, outcome) per row, reported now."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["decision_id", "action_id", "phone", "disposition", "outcome", "time", "note"])
        for result, disposition, outcome in rows:
            writer.writerow(
                [result.decision_id, result.call.action.action_id, result.call.phone, disposition, outcome, now, ""]
            )


@dataclass
class Pool:
    """Customers the first campaign calls, handed out a few at a time so that each check starts from customers no
    other check has touched (checks share one server)."""

    ids: list[str]

    def take(self, count: int) -> list[str]:
        assert len(self.ids) >= count, f"only {len(self.ids)} callable customers left, {count} needed"
        taken, self.ids = self.ids[:count], self.ids[count:]
        return taken


def callable_pool(server: ServerHandle, population: Sequence[Profile], size: int = 40) -> Pool:
    """Customers with a number they agreed to be called on, whom a dry run of the dialer would call now (no dialer
    call today): a dry run records nothing, so finding them makes no contact."""
    ids: list[str] = []
    for profile in population:
        if choose_number(profile) is None:
            continue
        answer = server.stub.Decide(
            nba_pb2.DecideRequest(customer_id=profile.customer_id, channel=nba_pb2.OUTBOUND_DIALER, dry_run=True),
            timeout=10,
        )
        if [a.action_id for a in answer.actions] == [ACTION]:
            ids.append(profile.customer_id)
            if len(ids) == size:
                break
    return Pool(ids)


# ------------------------------------------------------------------ the checks, one per failure


def check_a_second_campaign_skips_the_first_ones_calls(server: ServerHandle, pool: Pool) -> None:
    customers = pool.take(3)
    first = campaign(server, "pending-a1", customers)
    assert set(called(first)) == set(customers)
    second = campaign(server, "pending-a2", customers)
    assert called(second) == {}
    for reason, detail in exclusions(second).values():
        assert reason == "FREQUENCY_CAP"
        assert detail.startswith("dialer-daily: at most 1 within 1 day")


def check_a_retry_lists_the_same_calls(server: ServerHandle, pool: Pool) -> None:
    customers = pool.take(3)
    first = campaign(server, "pending-b1", customers)
    retry = campaign(server, "pending-b1", customers)
    assert set(called(retry)) == set(called(first)) == set(customers)
    assert {i: r.call.idempotency_key for i, r in called(retry).items()} == {
        i: r.call.idempotency_key for i, r in called(first).items()
    }
    assert {r.decision_id for r in retry.values()}.isdisjoint(r.decision_id for r in first.values())
    # The retry's calls are still pending for everyone else.
    other = campaign(server, "pending-b2", customers)
    assert {reason for reason, _ in exclusions(other).values()} == {"FREQUENCY_CAP"}
    assert called(other) == {}


def check_a_no_answer_releases_the_cap(server: ServerHandle, pool: Pool, workdir: Path) -> None:
    unanswered, connected = pool.take(2)
    first = campaign(server, "pending-c1", [unanswered, connected])
    write_dispositions(
        workdir / "dispositions.csv",
        [(first[unanswered], "no_answer", ""), (first[connected], "connected", "declined")],
    )
    run = nba("dialer", "results", "dispositions.csv", "--target", server.address, cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert "2 rows read: 2 outcomes recorded" in run.stdout
    after = campaign(server, "pending-c2", [unanswered, connected])
    # No answer: the customer was not reached, so the call no longer counts. A declined offer was heard: it does.
    assert set(called(after)) == {unanswered}
    assert exclusions(after)[connected][0] == "FREQUENCY_CAP"


def check_a_call_never_made_stops_counting(server: ServerHandle, pool: Pool) -> None:
    customers = pool.take(2)
    now = datetime.now(UTC)
    local = now.astimezone(ZoneInfo(afternoon_zone(now)))
    closes = (local + timedelta(minutes=3)).replace(second=0, microsecond=0)
    first = campaign(server, "pending-d1", customers, legal_window=f"08:00-{closes:%H:%M}")
    assert set(called(first)) == set(customers)
    for result in first.values():
        assert datetime.fromisoformat(result.call.window.latest_local) == closes
    # While the window is open the call may still be placed: it counts.
    assert called(campaign(server, "pending-d2", customers)) == {}
    # Once the window has closed with no disposition, the call was never made: the customer can be listed again.
    later = campaign(server, "pending-d3", customers, at=closes.astimezone(UTC) + timedelta(minutes=1))
    assert set(called(later)) == set(customers)


def check_every_send_path_counts_against_one_cap(server: ServerHandle, pool: Pool, workdir: Path) -> None:
    via_desktop, via_batch, via_export, via_retry = pool.take(4)

    # Agent desktop: the offer the agent reports counts, on every channel.
    offered = desktop(server, via_desktop)
    assert [a.action_id for a in offered.actions] == [ACTION]
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=offered.decision_id, action_id=ACTION, outcome=nba_pb2.ACCEPTED),
        timeout=10,
    )
    assert exclusions(campaign(server, "pending-e1", [via_desktop]))[via_desktop][0] == "FREQUENCY_CAP"

    # DecideBatch: the streamed call is pending, and the desktop no longer offers the action today.
    batch = campaign(server, "pending-e2", [via_batch])
    assert set(called(batch)) == {via_batch}
    assert [a.action_id for a in desktop(server, via_batch).actions] == []

    # The dialer export (`nba dialer export`): the file's call counts for the next campaign, not for its own retry.
    target = ("--target", server.address)
    (workdir / "ids.txt").write_text(via_export + "\n", encoding="utf-8")
    export = nba("dialer", "export", "--campaign", "pending-e3", "--customers", "ids.txt",
                 "--out", "calls.csv", "--excluded", "excluded.csv", *target, cwd=workdir)  # fmt: skip
    assert export.returncode == 0, export.stderr
    [row] = list(csv.DictReader((workdir / "calls.csv").open(encoding="utf-8")))
    assert row["customer_id"] == via_export
    assert exclusions(campaign(server, "pending-e4", [via_export]))[via_export][0] == "FREQUENCY_CAP"
    again = nba("dialer", "export", "--campaign", "pending-e3", "--customers", "ids.txt",
                "--out", "calls2.csv", "--excluded", "excluded2.csv", *target, cwd=workdir)  # fmt: skip
    assert again.returncode == 0, again.stderr
    [row2] = list(csv.DictReader((workdir / "calls2.csv").open(encoding="utf-8")))
    assert row2["idempotency_key"] == row["idempotency_key"]

    # A retried Decide (the same request twice, the first answer lost): nothing reached the customer until an
    # outcome says so, so the retry offers the same action; once it is reported, every path is capped.
    first, retry = desktop(server, via_retry), desktop(server, via_retry)
    assert [a.action_id for a in first.actions] == [a.action_id for a in retry.actions] == [ACTION]
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=retry.decision_id, action_id=ACTION, outcome=nba_pb2.DECLINED),
        timeout=10,
    )
    assert [a.action_id for a in desktop(server, via_retry).actions] == []
    assert exclusions(campaign(server, "pending-e5", [via_retry]))[via_retry][0] == "FREQUENCY_CAP"


def check_an_outcome_for_the_first_attempt_clears_its_retry(server: ServerHandle, pool: Pool, workdir: Path) -> None:
    """The dialer kept the first attempt's row (same key as the retry's) and reported on it: that one call ends
    the retry's pending contact too, so a no-answer leaves nothing counting."""
    [customer] = pool.take(1)
    first = campaign(server, "pending-f1", [customer])
    retry = campaign(server, "pending-f1", [customer])
    assert retry[customer].call.idempotency_key == first[customer].call.idempotency_key
    write_dispositions(workdir / "first.csv", [(first[customer], "no_answer", "")])
    run = nba("dialer", "results", "first.csv", "--target", server.address, cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert set(called(campaign(server, "pending-f2", [customer]))) == {customer}
