"""Shadow runs on the real server: a candidate ruleset beside the active one changes no answer, every decision
records the candidate's verdict, and `nba rulesets shadow-report` counts them and names example decisions."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from tests.e2e._support import (
    NBA_SCRIPT,
    RULESET_PATH,
    Oracle,
    ServerHandle,
    ids,
    ruleset_sha256,
    server_env,
)

pytestmark = pytest.mark.e2e

# Ranked above the loyalty and referral band (400-649) instead of with the other card offers (340): the
# candidate then disagrees, in actions or in order, for the customers this rule fires for, and only for them.
CHANGED_RULE = "credit-card-established-customer"
CHANGED_PRIORITY = 480
PER_KIND = 6


def write_candidate(directory: Path) -> Path:
    """A copy of the bundled ruleset with the next patch version and one rule ranked differently."""
    text = RULESET_PATH.read_text(encoding="utf-8")
    text, versions = re.subn(r"(?m)^(  version: \d+\.\d+\.)(\d+)$", lambda m: f"{m[1]}{int(m[2]) + 1}", text, count=1)
    pattern = rf"(- id: {re.escape(CHANGED_RULE)}\n(?:    .*\n)*?    priority: )\d+"
    text, rules = re.subn(pattern, rf"\g<1>{CHANGED_PRIORITY}", text, count=1)
    assert (versions, rules) == (1, 1), "the bundled ruleset no longer has what this test changes"
    path = directory / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def answer(response: nba_pb2.DecideResponse) -> list[tuple[str, str, int, str, str, str]]:
    """What the caller is told, without the parts that depend on the moment (id, time, valid_until)."""
    return [(a.action_id, a.script, a.priority, a.category, a.reason, a.rule_id) for a in response.actions]


def pick(
    oracle: Oracle, candidate: Oracle, servers: list[ServerHandle]
) -> dict[str, list[tuple[str, Channel, list[str], list[str]]]]:
    """Customers whose expected answer is sure on every server, split by whether the candidate agrees."""
    chosen: dict[str, list[tuple[str, Channel, list[str], list[str]]]] = {"agree": [], "disagree": []}
    for profile in oracle.customers(servers[0].ready_at):
        for channel in (Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER):
            active = [oracle.stable(s, profile.customer_id, channel, limit=3) for s in servers]
            shadow = [candidate.stable(s, profile.customer_id, channel, limit=3) for s in servers]
            if any(a is None for a in active) or any(c is None for c in shadow):
                continue
            expected, candidate_ids = ids(active[0] or []), ids(shadow[0] or [])
            if any(ids(a or []) != expected for a in active) or any(ids(c or []) != candidate_ids for c in shadow):
                continue
            kind = "agree" if expected == candidate_ids else "disagree"
            if len(chosen[kind]) < PER_KIND:
                chosen[kind].append((profile.customer_id, channel, expected, candidate_ids))
        if all(len(c) == PER_KIND for c in chosen.values()):
            break
    return chosen


def shadowed_records(server: ServerHandle, decision_ids: set[str], timeout: float = 10.0) -> dict[str, Any]:
    """The records, once each carries its shadow run (added shortly after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = server.wait_for_decisions(decision_ids)
        if all(r["shadow"] is not None for r in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def shadow_report(server: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "shadow-report", "--db-path", str(server.database), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=server.database.parent,
        env=server_env(),
        check=False,
    )


def test_shadow_changes_no_answer_and_records_every_verdict(
    start_fresh_server: Any, oracle: Oracle, tmp_path: Path
) -> None:
    """Customers where the candidate agrees and where it does not, on both channels: the shadowed server
    answers exactly what a server without a shadow answers (and the oracle expects); each record names the
    active ruleset and the candidate (name, version, hash), the candidate's actions and whether it agreed;
    a server without a shadow records none; and the report counts them and names the disagreeing ids."""
    candidate_path = write_candidate(tmp_path)
    candidate = Oracle(candidate_path)
    meta, candidate_meta = oracle.ruleset.meta, candidate.ruleset.meta
    plain = start_fresh_server()
    shadowed = start_fresh_server("--shadow", str(candidate_path))
    chosen = pick(oracle, candidate, [plain, shadowed])
    assert len(chosen["agree"]) == PER_KIND, "the sample should have customers the candidate agrees on"
    assert len(chosen["disagree"]) == PER_KIND, "the changed rule should make the candidate disagree sometimes"

    expected_agreed: dict[str, bool] = {}
    expected_actions: dict[str, list[str]] = {}
    plain_ids: set[str] = set()
    for kind, cases in chosen.items():
        for customer_id, channel, active_ids, candidate_ids in cases:
            with_shadow = shadowed.decide(customer_id, channel)
            without = plain.decide(customer_id, channel)
            assert answer(with_shadow) == answer(without), (customer_id, channel)
            assert [a.action_id for a in with_shadow.actions] == active_ids
            assert with_shadow.ruleset.hash == ruleset_sha256()
            expected_agreed[with_shadow.decision_id] = kind == "agree"
            expected_actions[with_shadow.decision_id] = candidate_ids
            plain_ids.add(without.decision_id)

    candidate_hash = hashlib.sha256(candidate_path.read_bytes()).hexdigest()
    records = shadowed_records(shadowed, set(expected_agreed))
    for decision_id, item in records.items():
        assert item["ruleset"] == {"name": meta.name, "version": meta.version, "hash": ruleset_sha256()}
        assert item["shadow"] == {
            "ruleset": {"name": meta.name, "version": candidate_meta.version, "hash": candidate_hash},
            "agreed": expected_agreed[decision_id],
            "actions": expected_actions[decision_id],
            "error": None,
        }
    assert all(r["shadow"] is None for r in plain.wait_for_decisions(plain_ids).values())

    result = shadow_report(shadowed, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["decisions"], report["shadowed"], report["agreed"], report["disagreed"], report["failed"]) == (
        2 * PER_KIND,
        2 * PER_KIND,
        PER_KIND,
        PER_KIND,
        0,
    )
    assert [(c["version"], c["hash"], c["shadowed"]) for c in report["candidates"]] == [
        (candidate_meta.version, candidate_hash, 2 * PER_KIND)
    ]
    disagreeing = {d for d, agreed in expected_agreed.items() if not agreed}
    examples = {
        decision_id
        for action in report["actions"]
        for kind in ("active_only", "candidate_only", "other_rank")
        for decision_id in action[kind]["examples"]
    }
    assert examples
    assert examples <= disagreeing
    by_action = {a["action_id"]: a for a in report["actions"]}
    card = by_action["credit-card-offer"]
    assert card["candidate_only"]["count"] + card["other_rank"]["count"] > 0
    assert card["active_only"]["count"] == 0  # the candidate only ranks it higher: it never loses it

    text = shadow_report(shadowed)
    assert text.returncode == 0, text.stderr
    assert re.search(rf"^  disagreed +{PER_KIND} +50\.0%$", text.stdout, re.MULTILINE), text.stdout
    assert f"{2 * PER_KIND} of them shadowed" in text.stdout
    assert f"Candidate: {meta.name} {candidate_meta.version} ({candidate_hash[:12]})" in text.stdout
    assert any(decision_id in text.stdout for decision_id in examples)

    plain_report = json.loads(shadow_report(plain, "--json").stdout)
    assert (plain_report["decisions"], plain_report["shadowed"]) == (2 * PER_KIND, 0)


def test_a_shadow_identical_to_the_active_ruleset_is_refused(tmp_path: Path, oracle: Oracle) -> None:
    """A candidate with the active ruleset's content hash would agree on everything and prove nothing: start-up
    stops with exit code 2 and says why."""
    copy = tmp_path / "same.yaml"
    copy.write_bytes(RULESET_PATH.read_bytes())
    result = subprocess.run(
        [str(NBA_SCRIPT), "serve", "--port", "0", "--rulesets", str(RULESET_PATH), "--shadow", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=server_env(),
        check=False,
    )
    assert result.returncode == 2
    assert "cannot start: --shadow / NBA_SHADOW:" in result.stderr
    meta = oracle.ruleset.meta
    assert f"is the active ruleset itself ({meta.name} {meta.version}, sha256 {ruleset_sha256()[:12]})" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_shadow_path_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(NBA_SCRIPT), "serve", "--port", "0", "--shadow", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=server_env(),
        check=False,
    )
    assert result.returncode == 2
    assert "--shadow / NBA_SHADOW: Value error" not in result.stderr
    assert "--shadow / NBA_SHADOW: shadow ruleset path" in result.stderr
    assert "does not exist" in result.stderr
