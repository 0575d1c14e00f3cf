"""The deploy gate runs `nba rulesets check`: a version with an error in it never serves, and the running version
stays. Against the real server, through the real `nba rulesets activate`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nba_service._proto.nba.v1 import admin_pb2, admin_pb2_grpc, nba_pb2
from nba_service.domain.loader import TESTS_SUFFIX
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, ServerHandle, start_server

TESTS_PATH = RULESET_PATH.with_name(RULESET_PATH.name.removesuffix(".yaml") + TESTS_SUFFIX)
EXIT_REFUSED = 2  # FAILED_PRECONDITION, see `nba --help`


def with_contradiction(folder: Path) -> Path:
    """The bundled ruleset as 9.9.9 plus one rule that can never fire: its scenario tests all still pass, so only
    the check can stop it."""
    rule = (
        "  - id: teen-retiree\n"
        "    description: Nobody is both.\n"
        '    reason: "Young and retired"\n'
        "    priority: 255\n"
        "    action: wealth-review-invite\n"
        "    when: {all: [{field: age, op: lt, value: 18}, {field: age, op: gt, value: 65}]}\n"
    )
    text = RULESET_PATH.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^  version: .*$", "  version: 9.9.9", text, count=1)
    folder.mkdir(parents=True)
    path = folder / RULESET_PATH.name
    path.write_text(text.replace("\nrules:\n", "\nrules:\n" + rule, 1), encoding="utf-8")
    shutil.copy(TESTS_PATH, folder / TESTS_PATH.name)
    return path


def status(server: ServerHandle) -> admin_pb2.StatusResponse:
    stub = admin_pb2_grpc.RulesetAdminStub(server.new_channel())
    response: admin_pb2.StatusResponse = stub.Status(admin_pb2.StatusRequest(), timeout=10, wait_for_ready=True)
    return response


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "two-workers"])
def test_activate_refuses_a_contradiction_and_the_old_version_keeps_serving(tmp_path: Path, workers: str) -> None:
    candidate = with_contradiction(tmp_path / "candidate")
    check = subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "check", str(candidate)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 1
    assert "error contradiction: rule 'teen-retiree'" in check.stdout
    server = start_server(tmp_path / "server", "--workers", workers)
    try:
        before = status(server)
        result = subprocess.run(
            [str(NBA_SCRIPT), "rulesets", "activate", str(candidate), "--target", server.address],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
        assert "FAILED_PRECONDITION" in result.stderr
        assert "nba rulesets check" in result.stderr
        assert "contradiction: rule 'teen-retiree'" in result.stderr
        after = status(server)
        assert after.active.hash == before.active.hash
        assert [w.pid for w in after.workers] == [w.pid for w in before.workers], "the serving workers stay"
        assert after.last_refusal.candidate.version == "9.9.9"
        assert any("teen-retiree" in problem for problem in after.last_refusal.problems)
        request = nba_pb2.DecideRequest(customer_id="CUST-000001", channel=nba_pb2.AGENT_DESKTOP)
        answer = server.stub.Decide(request, timeout=10, wait_for_ready=True)
        assert answer.ruleset.hash == before.active.hash
    finally:
        server.stop()
