"""Deploy, refuse, roll back and reload without a restart: the admin RPC, SIGHUP and the folder watch,
against the real server (one process here; tests/e2e/test_workers_deploy.py does the same with workers)."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from nba_service._proto.nba.v1 import admin_pb2, admin_pb2_grpc, nba_pb2, nba_pb2_grpc
from nba_service.domain.loader import TESTS_SUFFIX
from nba_service.domain.model import Channel
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import PB_CHANNEL, RULESET_PATH, ServerHandle, start_server
from tests.e2e._worker_support import reset_in_hand_over

TESTS_PATH = RULESET_PATH.with_name(RULESET_PATH.name.removesuffix(".yaml") + TESTS_SUFFIX)
V2_MARK = " (v2)"


def variant(folder: Path, *, version: str, edit: Callable[[str], str] = lambda text: text) -> Path:
    """A copy of the bundled ruleset (with its scenario tests) under another version, optionally edited."""
    folder.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"(?m)^  version: .*$", f"  version: {version}", RULESET_PATH.read_text(encoding="utf-8"), count=1)
    path = folder / RULESET_PATH.name
    path.write_text(edit(text), encoding="utf-8")
    shutil.copy(TESTS_PATH, folder / TESTS_PATH.name)
    return path


def marked_reasons(text: str) -> str:
    """Every rule's reason ends in " (v2)": what an agent sees tells which version decided."""
    return re.sub(r'(?m)^(    reason: ")(.*)"$', rf'\1\2{V2_MARK}"', text)


def later_quiet_hours(text: str) -> str:
    """Quiet hours from 21:00: the scenario that proves 20:00 is quiet fails, so this version must be refused."""
    return text.replace('quiet_hours: {start: "20:00"', 'quiet_hours: {start: "21:00"', 1)


def admin(server: ServerHandle) -> admin_pb2_grpc.RulesetAdminStub:
    return admin_pb2_grpc.RulesetAdminStub(server.new_channel())


def activate(server: ServerHandle, path: Path) -> admin_pb2.ActivateResponse:
    tests = path.with_name(path.name.removesuffix(".yaml") + TESTS_SUFFIX)
    source = admin_pb2.RulesetSource(
        file_name=path.name,
        content=path.read_text(encoding="utf-8"),
        tests_content=tests.read_text(encoding="utf-8") if tests.exists() else "",
    )
    response: admin_pb2.ActivateResponse = admin(server).Activate(
        admin_pb2.ActivateRequest(ruleset=source), timeout=120, wait_for_ready=True
    )
    return response


def status(server: ServerHandle) -> admin_pb2.StatusResponse:
    response: admin_pb2.StatusResponse = admin(server).Status(
        admin_pb2.StatusRequest(), timeout=10, wait_for_ready=True
    )
    return response


def wait_for_version(server: ServerHandle, version: str, timeout: float = 30.0) -> admin_pb2.StatusResponse:
    deadline = time.monotonic() + timeout
    while True:
        current = status(server)
        if current.active.version == version and all(w.ruleset.version == version for w in current.workers):
            return current
        if time.monotonic() > deadline:
            pytest.fail(f"version {version} not active after {timeout}s: {current}\n{server.log_text()[-3000:]}")
        time.sleep(0.2)


def decide(server: ServerHandle, customer: str) -> nba_pb2.DecideResponse:
    """Waits for a ready connection: a connection attempt reset by a worker that is leaving the port (a rolling
    replacement) is the transport's hiccup, not the decision's."""
    request = nba_pb2.DecideRequest(customer_id=customer, channel=PB_CHANNEL[Channel.AGENT_DESKTOP])
    response: nba_pb2.DecideResponse = server.stub.Decide(request, timeout=10, wait_for_ready=True)
    return response


def connected_stubs(server: ServerHandle, count: int) -> list[nba_pb2_grpc.NextBestActionStub]:
    """Stubs on channels of their own, each with a connection already made (so, with workers, to a worker of the
    generation serving now); the server handle closes them when it stops."""
    stubs = []
    for _ in range(count):
        channel = server.new_channel()
        grpc.channel_ready_future(channel).result(timeout=10)
        stubs.append(nba_pb2_grpc.NextBestActionStub(channel))
    return stubs


def current_version() -> str:
    match = re.search(r"(?m)^  version: (.*)$", RULESET_PATH.read_text(encoding="utf-8"))
    assert match is not None
    return match.group(1).strip()


def start(tmp_path: Path, *args: str) -> ServerHandle:
    return start_server(tmp_path / "server", *args)


# One process swaps the engine in place; workers deploy by starting a new generation on the new version.
WORKERS = pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "two-workers"])


def some_customers(server: ServerHandle, count: int = 20) -> list[str]:
    """Sample customers who get at least one action on the desktop: their answers show the version."""
    found = []
    for number in range(1, 400):
        customer = f"CUST-{number:06d}"
        if decide(server, customer).actions:
            found.append(customer)
        if len(found) == count:
            return found
    pytest.fail("too few sample customers get an action")


@pytest.mark.slow
@WORKERS
def test_activate_serves_the_new_version_and_records_it(tmp_path: Path, workers: str) -> None:
    server = start(tmp_path, "--workers", workers)
    try:
        before = status(server)
        assert len(before.workers) == int(workers)
        assert before.active.version == current_version()
        assert before.active.source == "start-up"
        assert before.active.scenarios_passed >= 40, "the bundled scenarios gate the start-up version"
        candidate = variant(tmp_path / "v2", version="9.0.0", edit=marked_reasons)
        customer = some_customers(server, 1)[0]
        # Connections made before the deploy: with workers, each one is to a worker that the deploy retires.
        stubs = connected_stubs(server, 6)
        request = nba_pb2.DecideRequest(customer_id=customer, channel=PB_CHANNEL[Channel.AGENT_DESKTOP])
        assert {stub.Decide(request, timeout=10).ruleset.version for stub in stubs} == {before.active.version}
        response = activate(server, candidate)
        assert response.active.version == "9.0.0"
        assert not response.unchanged
        assert [w.ruleset.version for w in response.workers] == ["9.0.0"] * int(workers)
        assert response.previous.hash == before.active.hash
        # Once Activate has answered, every call is answered by the new version, on old connections too.
        answers = [stub.Decide(request, timeout=10, wait_for_ready=True) for stub in stubs]
        assert [a.ruleset.version for a in answers] == ["9.0.0"] * len(stubs)
        answer = answers[0]
        assert all(a.reason.endswith(V2_MARK) for a in answer.actions)
        record = server.wait_for_decisions([answer.decision_id])[answer.decision_id]
        assert record["ruleset"]["hash"] == response.active.hash
        again = activate(server, candidate)
        assert again.unchanged, "activating the active version again switches nothing"
    finally:
        server.stop()


@WORKERS
def test_a_candidate_failing_its_scenarios_is_refused_and_the_old_version_serves(tmp_path: Path, workers: str) -> None:
    server = start(tmp_path, "--workers", workers)
    try:
        before = status(server)
        candidate = variant(tmp_path / "bad", version="9.9.9", edit=later_quiet_hours)
        with pytest.raises(grpc.RpcError) as refused:
            activate(server, candidate)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "scenario" in (refused.value.details() or "")
        problems = field_violations(refused.value)
        assert any(field.startswith("scenarios[") for field in problems), problems
        after = status(server)
        assert after.active.hash == before.active.hash
        assert [w.pid for w in after.workers] == [w.pid for w in before.workers], "the serving workers stay"
        assert after.last_refusal.candidate.version == "9.9.9"
        assert after.last_refusal.problems, "the refusal names the failing scenarios"
        assert (after.last_refusal.origin, after.last_refusal.requested_by) == ("activate", "anonymous")
        customer = some_customers(server, 1)[0]
        assert decide(server, customer).ruleset.hash == before.active.hash
        assert any(e.get("event") == "ruleset_refused" for e in server.log_events())
    finally:
        server.stop()


def test_an_invalid_file_is_refused_with_its_line(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        broken = variant(
            tmp_path / "broken", version="1.0.0", edit=lambda t: t.replace("    priority: ", "    priority: high", 1)
        )
        with pytest.raises(grpc.RpcError) as refused:
            activate(server, broken)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        problems = field_violations(refused.value)
        assert any(re.search(r"retail-banking\.yaml:\d+", p) for p in problems.values()), problems
        with pytest.raises(grpc.RpcError) as empty:
            admin(server).Activate(admin_pb2.ActivateRequest(), timeout=10)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ruleset.content" in field_violations(empty.value)
    finally:
        server.stop()


@pytest.mark.slow
@WORKERS
def test_rollback_and_a_restart_keep_the_deployed_version(tmp_path: Path, workers: str) -> None:
    server = start(tmp_path, "--workers", workers)
    workdir = server.server_log.parent
    try:
        with pytest.raises(grpc.RpcError) as nothing:
            admin(server).Rollback(admin_pb2.RollbackRequest(), timeout=10)
        assert nothing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        original = status(server).active
        activate(server, variant(tmp_path / "v2", version="9.0.0", edit=marked_reasons))
        back = admin(server).Rollback(admin_pb2.RollbackRequest(), timeout=120, wait_for_ready=True)
        assert back.active.hash == original.hash
        assert back.active.source == "rollback"
        assert back.previous.version == "9.0.0"
        forward = admin(server).Rollback(admin_pb2.RollbackRequest(), timeout=120, wait_for_ready=True)
        assert forward.active.version == "9.0.0", "a second rollback undoes the first"
    finally:
        server.stop()
    restarted = start_server(workdir, "--workers", workers)
    try:
        assert status(restarted).active.version == "9.0.0", "a restart must not undo a deploy"
    finally:
        restarted.stop()


@pytest.mark.slow
@WORKERS
def test_sighup_and_a_changed_folder_deploy_the_configured_files(tmp_path: Path, workers: str) -> None:
    folder = tmp_path / "rulesets"
    configured = variant(folder, version=current_version())
    server = start(tmp_path, "--rulesets", str(configured), "--watch-seconds", "0.5", "--workers", workers)
    try:
        variant(folder, version="9.1.0", edit=marked_reasons)
        watched = wait_for_version(server, "9.1.0")
        assert watched.active.source == "folder"
        server.process.send_signal(signal.SIGHUP)  # unchanged files: nothing to do, nothing breaks
        variant(folder, version="9.2.0", edit=later_quiet_hours)
        deadline = time.monotonic() + 30
        while status(server).last_refusal.candidate.version != "9.2.0":
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)
        assert status(server).active.version == "9.1.0", "a refused folder change leaves the running version"
        assert status(server).last_refusal.origin in ("folder", "sighup")  # the signal may find the new files
    finally:
        server.stop()


@pytest.mark.slow
@WORKERS
def test_twenty_reloads_under_load_fail_no_call_and_mix_no_versions(tmp_path: Path, workers: str) -> None:
    server = start(tmp_path, "--workers", workers)
    try:
        customers = some_customers(server)
        v1 = status(server).active
        v2_path = variant(tmp_path / "v2", version="9.0.0", edit=marked_reasons)
        v1_path = variant(tmp_path / "v1", version=v1.version)
        assert v1_path.read_bytes() == RULESET_PATH.read_bytes()
        answers: list[tuple[str, str, bool, bool]] = []
        failures: list[str] = []
        resets: list[str] = []  # see reset_in_hand_over: at most one per caller and roll
        stop = threading.Event()

        def load(offset: int) -> None:
            channel = grpc.insecure_channel(server.address)
            stub = server.stub.__class__(channel)
            index = offset
            while not stop.is_set():
                customer = customers[index % len(customers)]
                index += 1
                try:
                    answer = stub.Decide(
                        nba_pb2.DecideRequest(customer_id=customer, channel=PB_CHANNEL[Channel.AGENT_DESKTOP]),
                        timeout=10,
                    )
                except grpc.RpcError as exc:
                    if workers == "1" or not reset_in_hand_over(exc.code().name, exc.details() or ""):
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    else:
                        resets.append(exc.code().name)
                    continue
                marks = [a.reason.endswith(V2_MARK) for a in answer.actions]
                answers.append((answer.decision_id, answer.ruleset.hash, all(marks), any(marks)))
            channel.close()

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        hashes = set()
        reloads = 20 if workers == "1" else 6
        try:
            # Twenty in one process; six with workers, where each deploy starts two processes (nine seconds each
            # on 2 cores with the bundled ruleset's scenario gate: the suite's time).
            for reload in range(reloads):
                response = activate(server, v2_path if reload % 2 == 0 else v1_path)
                assert not response.unchanged
                hashes.add(response.active.hash)
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert failures == [], failures[:5]
        assert len(resets) <= len(threads) * reloads, resets
        assert len(hashes) == 2
        assert v1.hash in hashes
        v2_hash = (hashes - {v1.hash}).pop()
        assert len(answers) > 200
        mixed = [a for a in answers if (a[1] == v2_hash) != a[2] or (a[1] == v1.hash) == a[3]]
        assert mixed == [], f"{len(mixed)} answers mix versions, e.g. {mixed[:3]}"
        assert {a[1] for a in answers} == hashes, "both versions answered during the reloads"
        sample = {a[0]: a[1] for a in answers[:: max(1, len(answers) // 50)]}
        records = server.wait_for_decisions(sample)
        assert all(records[i]["ruleset"]["hash"] == h for i, h in sample.items())
    finally:
        server.stop()
