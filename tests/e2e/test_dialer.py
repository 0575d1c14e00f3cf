"""Dialer campaigns end to end on the embedded store: DecideBatch over loopback against a real `nba serve`, and
`nba dialer export` / `nba dialer results` as a dialer integration runs them."""

from __future__ import annotations

import collections
import csv
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.contact_points import E164
from nba_service.synthetic import SAMPLE_PATH, read_sample
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import NBA_SCRIPT, ServerHandle, server_env, start_server
from tests.e2e.conftest import StartServer

SAMPLE = {p.customer_id: p for p in read_sample(SAMPLE_PATH, datetime.now(UTC))}


@pytest.fixture(scope="module")
def dialer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server of this module's own: campaigns and outcomes change its state."""
    handle = start_server(tmp_path_factory.mktemp("nba-dialer"), "--workers", "1")
    yield handle
    handle.stop()


def _campaign(campaign_id: str, **customers: object) -> nba_pb2.DecideBatchRequest:
    return nba_pb2.DecideBatchRequest(campaign_id=campaign_id, channel=nba_pb2.OUTBOUND_DIALER, **customers)  # type: ignore[arg-type]


def _nba(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=server_env(), check=False
    )


def _campaign_records(server: ServerHandle, campaign_id: str) -> list[dict[str, object]]:
    return [
        r
        for r in server.records()
        if r["kind"] == "decision" and r["context"]["attributes"].get("campaign_id") == campaign_id  # type: ignore[index]
    ]


def _dialer_dry_run(server: ServerHandle, customer_id: str) -> list[str]:
    decided = server.stub.Decide(
        nba_pb2.DecideRequest(customer_id=customer_id, channel=nba_pb2.OUTBOUND_DIALER, max_actions=1, dry_run=True),
        timeout=10,
    )
    return [a.action_id for a in decided.actions]


def test_a_campaign_streams_one_recorded_result_per_customer(start_fresh_server: StartServer) -> None:
    """Every customer of the sample gets exactly one result: a call (the action, a number of theirs with their
    consent, a window inside 09:00-20:00 local, the expiry, a key) or an exclusion with a known reason; each
    result's decision is in the decision log with the campaign; a called customer's action is the one Decide
    itself gave just before (one pipeline), and once the call is streamed Decide no longer offers a dialer call
    (the pending call counts toward `dialer-daily`). A server of its own: a campaign over every customer leaves
    each called one capped for the day."""
    dialer_server = start_fresh_server("--workers", "1")
    before = {ident: _dialer_dry_run(dialer_server, ident) for ident in sorted(SAMPLE)[:40]}
    results = list(
        dialer_server.stub.DecideBatch(_campaign("all-1", segment=nba_pb2.Segment(all_customers=True)), timeout=120)
    )
    assert sorted(r.customer_id for r in results) == sorted(SAMPLE)
    calls = [r for r in results if r.WhichOneof("result") == "call"]
    excluded = [r for r in results if r.WhichOneof("result") == "excluded"]
    assert calls
    assert excluded
    for result in calls:
        call = result.call
        phone = next(p for p in SAMPLE[result.customer_id].phones if p.number == call.phone)
        assert phone.consent
        assert E164.fullmatch(call.phone)
        earliest = datetime.fromisoformat(call.window.earliest_local)
        latest = datetime.fromisoformat(call.window.latest_local)
        assert earliest < latest
        assert (latest.hour, latest.minute) == (20, 0)
        assert earliest.hour >= 9
        assert call.window.time_zone == SAMPLE[result.customer_id].attributes["timezone"]
        assert call.expires_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
        assert call.idempotency_key.startswith("nba1-")
        assert str(phone.number) not in call.action.script
    reasons = collections.Counter(nba_pb2.ExclusionReason.Name(r.excluded.reason) for r in excluded)
    assert set(reasons) <= {
        "DO_NOT_CALL",
        "NO_CONSENT",
        "QUIET_HOURS",
        "SUPPRESSION",
        "FREQUENCY_CAP",
        "NO_ACTION",
        "NO_CALLABLE_NUMBER",
        "OUTSIDE_LEGAL_WINDOW",
    }
    assert reasons["NO_CONSENT"] > 0
    records = {r["decision_id"]: r for r in _campaign_records(dialer_server, "all-1")}
    assert set(records) == {r.decision_id for r in results}
    for result in calls[:50]:
        record = records[result.decision_id]
        assert record["delivery"] == "sent"
        assert record["context"]["attributes"]["phone"] == result.call.phone  # type: ignore[index]
        assert [a["action_id"] for a in record["actions"]] == [result.call.action.action_id]  # type: ignore[attr-defined]
    compared = [r for r in calls if r.customer_id in before]
    assert compared
    for result in compared:
        assert before[result.customer_id] == [result.call.action.action_id]
        assert _dialer_dry_run(dialer_server, result.customer_id) == []


def test_bad_campaigns_are_refused_whole_and_record_nothing(dialer_server: ServerHandle) -> None:
    """Unknown customers, too many ids, a million ids, a misspelt segment, the wrong channel, a bad legal window:
    each is refused before anything is decided, naming the problem, and no decision is recorded."""
    stub = dialer_server.stub
    before = len(dialer_server.records())

    def refused(request: nba_pb2.DecideBatchRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.DecideBatch(request, timeout=30))
        return caught.value

    known = sorted(SAMPLE)[:3]
    error = refused(_campaign("bad", customer_ids=nba_pb2.CustomerList(ids=[*known, "CUST-999999", "NOBODY"])))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "2 of 5 listed customers not found" in (error.details() or "")
    assert field_violations(error) == {
        "customer_ids[3]": "customer 'CUST-999999' not found",
        "customer_ids[4]": "customer 'NOBODY' not found",
    }

    error = refused(_campaign("bad", customer_ids=nba_pb2.CustomerList(ids=[f"C{i}" for i in range(10_001)])))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "10,001 ids; one request takes at most 10,000" in (error.details() or "")

    # A million ids is 8.9 MB: the transport refuses it before any handler runs, naming both sizes.
    error = refused(_campaign("bad", customer_ids=nba_pb2.CustomerList(ids=[f"C{i}" for i in range(1_000_000)])))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")

    error = refused(_campaign("bad", segment=nba_pb2.Segment(equals={"segmnet": "premier", "age": "old"})))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"segment.equals[segmnet]", "segment.equals[age]"}

    request = _campaign("", segment=nba_pb2.Segment(all_customers=True), legal_window="21:00-08:00")
    request.channel = nba_pb2.AGENT_DESKTOP
    request.time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    error = refused(request)
    assert set(field_violations(error)) == {"campaign_id", "channel", "time", "legal_window"}

    error = refused(_campaign("bad", customer_ids=nba_pb2.CustomerList(ids=[known[0], known[0]])))
    assert field_violations(error) == {"customer_ids[1]": f"'{known[0]}' is listed twice (first at customer_ids[0])"}
    assert len(dialer_server.records()) == before


def test_cancelling_a_campaign_stops_it(dialer_server: ServerHandle) -> None:
    """A dialer that hangs up after the first result stops the campaign: the server stays healthy, and no
    decision of it claims to have been sent beyond what the stream could have carried."""
    stream = dialer_server.stub.DecideBatch(_campaign("cancel-1", segment=nba_pb2.Segment(all_customers=True)))
    first = next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        list(stream)
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    assert first.customer_id in SAMPLE
    assert dialer_server.health_status() == 1  # SERVING
    records = _campaign_records(dialer_server, "cancel-1")
    assert {r["delivery"] for r in records} <= {"sent", "cancelled"}
    assert len(records) <= len(SAMPLE)


def test_export_then_results_round_trip(dialer_server: ServerHandle, tmp_path: Path) -> None:
    """`nba dialer export` writes the documented CSV and the excluded file; `nba dialer results` records the
    dispositions (a wrong number, a no-answer, a connected sale), once: importing the file again records nothing
    new; and the next export no longer offers the wrong number, while unchanged calls keep their keys."""
    target = ("--target", dialer_server.address)
    export = _nba(
        "dialer", "export", "--campaign", "round-trip", "--segment", "segment=premier",
        "--out", "calls.csv", "--excluded", "excluded.csv", *target, cwd=tmp_path,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    calls = list(csv.DictReader((tmp_path / "calls.csv").open(encoding="utf-8")))
    left = list(csv.DictReader((tmp_path / "excluded.csv").open(encoding="utf-8")))
    premier = {i for i, p in SAMPLE.items() if p.attributes["segment"] == "premier"}
    assert {c["customer_id"] for c in calls} | {e["customer_id"] for e in left} == premier
    assert f"{len(calls)} calls written to calls.csv (generic); {len(left)} customers excluded" in export.stdout
    assert len(calls) >= 3
    assert not list(tmp_path.glob("*.partial"))

    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    wrong, unanswered, sold = calls[0], calls[1], calls[2]
    with (tmp_path / "dispositions.csv").open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["decision_id", "action_id", "phone", "disposition", "outcome", "time", "note"])
        for call, disposition, outcome in (
            (wrong, "wrong_number", ""),
            (unanswered, "no_answer", ""),
            (sold, "connected", "converted"),
        ):
            writer.writerow([call["decision_id"], call["action_id"], call["phone"], disposition, outcome, now, ""])
    first = _nba("dialer", "results", "dispositions.csv", *target, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 rows read: 3 outcomes recorded, 0 already recorded" in first.stdout
    again = _nba("dialer", "results", "dispositions.csv", *target, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "3 rows read: 0 outcomes recorded, 3 already recorded by an earlier import" in again.stdout
    outcomes = [r for r in dialer_server.records() if r["kind"] == "outcome"]
    mine = {(o["decision_id"], o["outcome"]) for o in outcomes}
    assert mine >= {
        (wrong["decision_id"], "not_offered"),
        (unanswered["decision_id"], "no_answer"),
        (sold["decision_id"], "converted"),
    }
    assert len([o for o in outcomes if o["decision_id"] in {wrong["decision_id"], sold["decision_id"]}]) == 2

    second = _nba(
        "dialer", "export", "--campaign", "round-trip", "--segment", "segment=premier",
        "--out", "calls2.csv", "--excluded", "excluded2.csv", *target, cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    again_calls = {c["customer_id"]: c for c in csv.DictReader((tmp_path / "calls2.csv").open(encoding="utf-8"))}
    assert again_calls.get(wrong["customer_id"], {}).get("phone") != wrong["phone"]
    assert again_calls[unanswered["customer_id"]]["idempotency_key"] == unanswered["idempotency_key"]


def test_a_bad_disposition_file_stores_nothing(dialer_server: ServerHandle, tmp_path: Path) -> None:
    """Rows the import itself can judge (a bad id, an unknown disposition, a time that is not a time) and rows
    only the server can (an action the decision did not return, an unknown decision) are all listed with their
    line; the good rows beside them are not stored."""
    results = list(
        dialer_server.stub.DecideBatch(
            _campaign("bad-file", segment=nba_pb2.Segment(equals={"segment": "affluent"})), timeout=60
        )
    )
    call = next(r for r in results if r.WhichOneof("result") == "call")
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    good = [call.decision_id, call.call.action.action_id, call.call.phone, "no_answer", "", now, ""]
    lines = [
        ["decision_id", "action_id", "phone", "disposition", "outcome", "time", "note"],
        good,
        ["not-an-id", "a", call.call.phone, "hung_up", "", "yesterday", ""],
        [call.decision_id, "no-such-action", call.call.phone, "busy", "", now, ""],
        ["00000000-0000-4000-8000-000000000000", "a", call.call.phone, "busy", "", now, ""],
        [call.decision_id, call.call.action.action_id, "+19999999999", "wrong_number", "", now, ""],
    ]
    with (tmp_path / "bad.csv").open("w", encoding="utf-8", newline="") as stream:
        csv.writer(stream).writerows(lines)
    before = [r for r in dialer_server.records() if r["kind"] == "outcome"]
    run = _nba("dialer", "results", "bad.csv", "--target", dialer_server.address, cwd=tmp_path)
    assert run.returncode == 2
    refused = [line for line in run.stderr.splitlines() if line.startswith("bad.csv:line")]
    assert [line.split(":")[1] for line in refused] == ["line 3", "line 4", "line 5", "line 6"]
    assert "hung_up" in refused[0]
    assert "not returned by decision" in refused[1]
    assert "not found" in refused[2]
    assert "is not a number of the decision's customer" in refused[3]
    assert "refused 4 of 5 rows; nothing was stored" in run.stderr
    assert [r for r in dialer_server.records() if r["kind"] == "outcome"] == before
