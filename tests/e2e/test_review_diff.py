"""`nba rulesets diff`, run as a reviewer runs it: the bundled ruleset against a changed copy, over the bundled
sample, a population file and a running server's store.

The expected movements are computed here, independently of the command: every customer is decided by the
service's pipeline on the *reference* evaluator (the command uses durable_rules) for each version, and the
differences are tallied with plain sets. The known change adds its own checks: the removed rule's action can
only be lost, the raised rule's action can only be gained or move up.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.profile import Event, Profile
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, ServerHandle, server_env

pytestmark = pytest.mark.e2e

REMOVED_RULE = "large-deposit-term-deposit"  # the only rule offering term-deposit-rates
REMOVED_ACTION = "term-deposit-rates"
RAISED_RULE = "birthday-this-week"  # the only rule offering birthday-greeting
RAISED_ACTION = "birthday-greeting"
RAISED_PRIORITY = 995
AT = "2026-12-01T10:00:00+00:00"
LIMIT = 3
EXAMPLES = 5
KINDS = ("gained", "lost", "moved_up", "moved_down")
DEPOSIT = {"amount": 48250.0, "account_last4": "7781"}


def write_changed_copy(directory: Path) -> Path:
    """The bundled ruleset with the next patch version, one rule removed and another ranked near the top."""
    text = RULESET_PATH.read_text(encoding="utf-8")
    text, versions = re.subn(r"(?m)^(  version: \d+\.\d+\.)(\d+)$", lambda m: f"{m[1]}{int(m[2]) + 1}", text, count=1)
    text, removed = re.subn(rf"(?m)^  - id: {re.escape(REMOVED_RULE)}\n(?:    .*\n)+", "", text, count=1)
    pattern = rf"(- id: {re.escape(RAISED_RULE)}\n(?:    .*\n)*?    priority: )\d+"
    text, raised = re.subn(pattern, rf"\g<1>{RAISED_PRIORITY}", text, count=1)
    assert (versions, removed, raised) == (1, 1, 1), "the bundled ruleset no longer has what this test changes"
    path = directory / "changed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_diff(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "diff", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**server_env(), **(env or {})},
        check=False,
    )


# --------------------------------------------------------------------------------------------------
# The independent expectation


@dataclass
class Expected:
    customers: int = 0
    changed: set[str] = field(default_factory=set)
    to_none: set[str] = field(default_factory=set)
    from_none: set[str] = field(default_factory=set)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    moves: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def customers_who(self, action_id: str, kind: str) -> set[str]:
        return self.moves.get((action_id, kind), set())


def expected_moves(
    old_path: Path, new_path: Path, profiles: Iterable[Profile], at: datetime
) -> dict[Channel, Expected]:
    """Per channel, every customer's two answers on the reference evaluator, compared with plain sets."""
    old, new = reference_active(load_ruleset_file(old_path)), reference_active(load_ruleset_file(new_path))
    found = {channel: Expected() for channel in Channel}
    for profile in profiles:
        for channel, expected in found.items():
            before = [a.action_id for a in evaluate(old, profile, channel, at, LIMIT).actions]
            after = [a.action_id for a in evaluate(new, profile, channel, at, LIMIT).actions]
            expected.customers += 1
            for action_id in before:
                expected.before[action_id] = expected.before.get(action_id, 0) + 1
            for action_id in after:
                expected.after[action_id] = expected.after.get(action_id, 0) + 1
            if before == after:
                continue
            who = profile.customer_id
            expected.changed.add(who)
            if before and not after:
                expected.to_none.add(who)
            if after and not before:
                expected.from_none.add(who)
            for action_id in set(before) | set(after):
                if action_id not in before:
                    kind = "gained"
                elif action_id not in after:
                    kind = "lost"
                elif after.index(action_id) < before.index(action_id):
                    kind = "moved_up"
                elif after.index(action_id) > before.index(action_id):
                    kind = "moved_down"
                else:
                    continue
                expected.moves.setdefault((action_id, kind), set()).add(who)
    return found


def first(ids: set[str]) -> list[str]:
    return sorted(ids)[:EXAMPLES]


def assert_matches(report: dict[str, Any], expected: dict[Channel, Expected]) -> None:
    """Every count and every example of the report's impact equals the independent expectation."""
    channels = {c["channel"]: c for c in report["impact"]["channels"]}
    assert set(channels) == {c.value for c in expected}
    for channel, want in expected.items():
        got = channels[channel.value]
        assert got["customers"] == want.customers
        assert got["changed"] == {"count": len(want.changed), "examples": first(want.changed)}
        assert got["unchanged"] == want.customers - len(want.changed)
        assert got["to_none"] == {"count": len(want.to_none), "examples": first(want.to_none)}
        assert got["from_none"] == {"count": len(want.from_none), "examples": first(want.from_none)}
        assert got["engine_fallbacks"] == {"old": 0, "new": 0}
        actions = {a["action_id"]: a for a in got["actions"]}
        assert set(actions) == set(want.before) | set(want.after), channel
        for action_id, entry in actions.items():
            assert entry["before"] == want.before.get(action_id, 0), (channel, action_id)
            assert entry["after"] == want.after.get(action_id, 0), (channel, action_id)
            for kind in KINDS:
                who = want.customers_who(action_id, kind)
                assert entry[kind] == {"count": len(who), "examples": first(who)}, (channel, action_id, kind)


def assert_known_change(report: dict[str, Any]) -> None:
    """What follows from the change itself: the removed rule's action is only ever lost (by everyone who had
    it), and the raised rule's action is only ever gained or moved up."""
    for channel in report["impact"]["channels"]:
        actions = {a["action_id"]: a for a in channel["actions"]}
        removed = actions.get(REMOVED_ACTION)
        if removed is not None:
            assert removed["after"] == 0
            assert removed["lost"]["count"] == removed["before"]
            assert removed["gained"]["count"] == removed["moved_up"]["count"] == removed["moved_down"]["count"] == 0
        raised = actions.get(RAISED_ACTION)
        if raised is not None:
            assert raised["lost"]["count"] == raised["moved_down"]["count"] == 0


def assert_structure(report: dict[str, Any], old_version: str) -> None:
    structure = report["structure"]
    assert {(r["id"], r["status"]) for r in structure["rules"]} == {(REMOVED_RULE, "removed"), (RAISED_RULE, "changed")}
    raised = next(r for r in structure["rules"] if r["id"] == RAISED_RULE)
    assert [p["part"] for p in raised["parts"]] == ["priority"]
    assert raised["parts"][0]["new"] == str(RAISED_PRIORITY)
    assert structure["actions"] == structure["policies"] == structure["fields"] == structure["events"] == []
    parts = {p["part"]: p for p in structure["metadata"]}
    assert set(parts) == {"version", "content hash"}
    assert parts["version"]["old"] == old_version
    assert report["old"]["version"] == old_version


# --------------------------------------------------------------------------------------------------
# Over the bundled sample


def test_diff_over_the_bundled_sample_reports_the_expected_movements(tmp_path: Path) -> None:
    """Bundled ruleset against a copy with one rule removed and another raised, over the bundled sample on both
    channels: the JSON report names exactly the two rule changes and the version, and every per-action count
    and example equals what the reference evaluator gives for the same customers at the same moment; the HTML
    file is self-contained and holds a bar chart of the same gains and losses."""
    changed = write_changed_copy(tmp_path)
    html = tmp_path / "diff.html"
    result = run_diff(str(RULESET_PATH), str(changed), "--at", AT, "--json", "--html", str(html))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    at = datetime.fromisoformat(AT)
    expected = expected_moves(RULESET_PATH, changed, read_sample(SAMPLE_PATH, at), at)
    assert report["impact"]["customers"] == 1000
    assert report["impact"]["at"] == AT
    assert report["impact"]["limit"] == LIMIT
    assert_structure(report, load_ruleset_file(RULESET_PATH).meta.version)
    assert_matches(report, expected)
    assert_known_change(report)
    desk = expected[Channel.AGENT_DESKTOP]
    assert desk.customers_who(REMOVED_ACTION, "lost"), "the change must move someone for the test to mean anything"
    assert desk.customers_who(RAISED_ACTION, "moved_up") | desk.customers_who(RAISED_ACTION, "gained")

    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|<iframe|src=|href=|@import|url\(", page, re.IGNORECASE)
    assert page.count("<svg") == 2
    lost = len(desk.customers_who(REMOVED_ACTION, "lost"))
    assert f"<title>{REMOVED_ACTION}: {lost:,} customers lose it</title>" in page


def test_text_report_and_a_population_file(tmp_path: Path) -> None:
    """The text form over a population file made by `nba sample generate`, one channel: the structural
    changes, then a table row per moved action with the expected counts, and exit 0."""
    population = tmp_path / "people.jsonl.gz"
    made = subprocess.run(
        [str(NBA_SCRIPT), "sample", "generate", "--out", str(population), "--count", "300", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    changed = write_changed_copy(tmp_path)
    result = run_diff(
        str(RULESET_PATH), str(changed), "--population", str(population), "--channel", "agent_desktop", "--at", AT
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout

    at = datetime.fromisoformat(AT)
    want = expected_moves(RULESET_PATH, changed, read_sample(population, at), at)[Channel.AGENT_DESKTOP]
    assert f"- {REMOVED_RULE} (removed)" in text
    assert f"~ {RAISED_RULE} (changed)" in text
    assert f"300 customers from {population}" in text
    assert "outbound_dialer" not in text
    assert f"agent_desktop: {len(want.changed):,} of 300 customers get a different answer" in text
    counts = [
        want.before.get(REMOVED_ACTION, 0),
        want.after.get(REMOVED_ACTION, 0),
        *(len(want.customers_who(REMOVED_ACTION, kind)) for kind in KINDS),
    ]
    assert re.search(rf"(?m)^  {REMOVED_ACTION} +{' +'.join(str(c) for c in counts)}$", text), text


# --------------------------------------------------------------------------------------------------
# Refusals


def test_bad_moment_is_a_usage_error(tmp_path: Path) -> None:
    """--at must be an ISO 8601 time with a zone: anything else is refused before any file is read."""
    for value, message in (("yesterday", "is not an ISO 8601 time"), ("2026-12-01T10:00:00", "has no time zone")):
        result = run_diff(str(RULESET_PATH), str(RULESET_PATH), "--at", value)
        assert result.returncode == 2, result.stderr
        assert "--at" in result.stderr
        assert message in result.stderr
        assert result.stdout == ""


def test_bad_population_file_names_the_line(tmp_path: Path) -> None:
    """A population file whose third line is not a customer: exit 2, the file and line named, no report."""
    good = SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:2]
    population = tmp_path / "bad.jsonl"
    population.write_text("\n".join([*good, '{"customer_id": "CUST-X", "attributes": [1, 2]}', good[0]]) + "\n")
    result = run_diff(str(RULESET_PATH), str(RULESET_PATH), "--population", str(population), "--quiet")
    assert result.returncode == 2, result.stderr
    assert f"{population}:3:" in result.stderr
    assert result.stdout == ""

    missing = run_diff(str(RULESET_PATH), str(RULESET_PATH), "--population", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert "--population" in missing.stderr
    assert "nope.jsonl is not a file" in missing.stderr


def test_invalid_ruleset_prints_every_problem_with_its_line(tmp_path: Path) -> None:
    """An invalid NEW file: exit 2 and the loader's problems with file:line, as `nba rulesets test` prints them."""
    text = RULESET_PATH.read_text(encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("priority: 1000", "priority: x", 1), encoding="utf-8")
    result = run_diff(str(RULESET_PATH), str(broken))
    assert result.returncode == 2
    line = next(n for n, row in enumerate(broken.read_text().splitlines(), start=1) if "priority: x" in row)
    assert f"{broken}:{line}:" in result.stdout
    assert "nothing was compared" in result.stdout


# --------------------------------------------------------------------------------------------------
# Over a running server's store


def ingest(server: ServerHandle, customer_id: str, event_type: str, attributes: dict[str, float | str]) -> None:
    values = {
        key: nba_pb2.AttributeValue(number_value=v) if isinstance(v, float) else nba_pb2.AttributeValue(string_value=v)
        for key, v in attributes.items()
    }
    request = nba_pb2.IngestEventRequest(customer_id=customer_id, type=event_type, attributes=values)
    server.stub.IngestEvent(request, timeout=10)


def change_some_customers(server: ServerHandle, profiles: Sequence[Profile], count: int = 3) -> list[str]:
    """Gives a large deposit, through the real API, to the first customers whom it would get term deposit rates
    under the old version (and who do not get them now), and records an accepted outcome for another customer's
    decision; returns the customers given a deposit."""
    old = reference_active(load_ruleset_file(RULESET_PATH))
    now = datetime.now(UTC)
    chosen: list[str] = []
    for profile in profiles:
        before = evaluate(old, profile, Channel.AGENT_DESKTOP, now, LIMIT).action_ids
        deposit = Profile(
            profile.customer_id,
            profile.attributes,
            (*profile.events, Event("large_deposit", now, DEPOSIT)),
            profile.contacts,
        )
        after = evaluate(old, deposit, Channel.AGENT_DESKTOP, now, LIMIT).action_ids
        if REMOVED_ACTION not in before and REMOVED_ACTION in after:
            chosen.append(profile.customer_id)
            if len(chosen) == count:
                break
    assert len(chosen) == count, "not enough customers for whom a deposit brings term deposit rates"
    for customer_id in chosen:
        ingest(server, customer_id, "large_deposit", DEPOSIT)
    others = (p.customer_id for p in profiles if p.customer_id not in chosen)
    answered = next(a for a in (server.decide(c, Channel.AGENT_DESKTOP) for c in others) if a.actions)
    outcome = nba_pb2.RecordOutcomeRequest(
        decision_id=answered.decision_id, action_id=answered.actions[0].action_id, outcome=nba_pb2.ACCEPTED
    )
    server.stub.RecordOutcome(outcome, timeout=10)
    return chosen


async def store_profiles(store: Any) -> list[Profile]:
    """Every customer as the service reads it (the store's own get_profile), in id order."""
    ids: list[str] = []
    while page := await store.customer_ids(ids[-1] if ids else "", 10_000):
        ids.extend(page)
    return [await store.get_profile(customer_id) for customer_id in ids]


@pytest.mark.slow
def test_diff_over_the_embedded_store_of_a_running_server(start_fresh_server: Any, tmp_path: Path) -> None:
    """`--population store` against a running `nba serve`'s embedded database, after a few customers were given
    a large deposit and one an accepted outcome through the gRPC API: the report counts what the reference
    evaluator gives for the profiles the store holds (read by the store's own get_profile at the same moment),
    and the deposits show up as term deposit rates lost by those very customers."""
    server = start_fresh_server()
    changed = write_changed_copy(tmp_path)
    versions = [load_ruleset_file(RULESET_PATH), load_ruleset_file(changed)]
    event_types = sorted({event for ruleset in versions for event in ruleset.events})
    history = max(contact_history_window(ruleset) for ruleset in versions)

    async def read(at: datetime) -> list[Profile]:
        store = SqliteStore(server.database, event_types=event_types, history=history, clock=lambda: at)
        await store.open()
        try:
            return await store_profiles(store)
        finally:
            await store.close()

    chosen = change_some_customers(server, asyncio.run(read(datetime.now(UTC)))[:200])
    time.sleep(0.01)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    result = run_diff(
        str(RULESET_PATH),
        str(changed),
        "--population",
        "store",
        "--db-path",
        str(server.database),
        "--at",
        at.isoformat(),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["impact"]["population"] == f"the store {server.database}"

    profiles = asyncio.run(read(at))
    expected = expected_moves(RULESET_PATH, changed, profiles, at)
    assert_matches(report, expected)
    assert_known_change(report)
    assert set(chosen) <= expected[Channel.AGENT_DESKTOP].customers_who(REMOVED_ACTION, "lost")
    sample = expected_moves(RULESET_PATH, changed, read_sample(SAMPLE_PATH, at), at)[Channel.AGENT_DESKTOP]
    assert not set(chosen) & sample.customers_who(REMOVED_ACTION, "lost"), "the store must differ from the sample"


def test_the_desk_direction_decides_which_policies_a_change_reaches(tmp_path: Path) -> None:
    """Dropping the consent an agent's outbound marketing call needs moves nobody when the desk answers calls
    (`--direction inbound`, the default) and gives marketing back to customers without that consent when agents
    call out (`--direction outbound`)."""
    entry = (
        "    - {field: consent_marketing_calls, channel: agent_desktop, purposes: [marketing], directions: [outbound],"
    )
    text = RULESET_PATH.read_text(encoding="utf-8")
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(entry)]
    assert len(kept) == len(text.splitlines()) - 1, "the bundled ruleset no longer has the outbound consent entry"
    dropped = tmp_path / "no-outbound-consent.yaml"
    version = load_ruleset_file(RULESET_PATH).meta.version
    major_minor, _, patch = version.rpartition(".")
    bumped = "".join(kept).replace(f"  version: {version}", f"  version: {major_minor}.{int(patch) + 1}", 1)
    assert bumped != "".join(kept), f"version {version} not found in the bundled ruleset"
    dropped.write_text(bumped, encoding="utf-8")
    at = "2026-12-01T10:00:00+00:00"
    runs = {}
    for desk in ("inbound", "outbound"):
        result = run_diff(
            str(RULESET_PATH), str(dropped), "--at", at, "--channel", "agent_desktop", "--direction", desk, "--json"
        )
        assert result.returncode == 0, result.stderr
        runs[desk] = json.loads(result.stdout)["impact"]
        assert runs[desk]["desk_direction"] == desk
    [inbound] = runs["inbound"]["channels"]
    [outbound] = runs["outbound"]["channels"]
    assert inbound["changed"]["count"] == 0
    assert outbound["from_none"]["count"] > 0
    gained = {a["action_id"] for a in outbound["actions"] if a["gained"]["count"]}
    assert gained, "customers without consent to marketing calls gain marketing actions"
    ruleset = load_ruleset_file(RULESET_PATH)
    assert {ruleset.actions[a].purpose for a in gained} == {"marketing"}
