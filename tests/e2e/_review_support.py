"""What the explain tests check on either store: the Review service and `nba explain` against a real server.

Expectations come from the reference pipeline (`pipeline.evaluate` on `reference_active`) over the profiles
the server was seeded with, only where the answer cannot depend on the exact moment of the call, and from
the ruleset read by the test itself: the rules for an action, their conditions, the caps. The store-specific
test modules say how the population was made and how to tamper with a stored record.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2, review_pb2, review_pb2_grpc
from nba_service.domain.facts import project
from nba_service.domain.loader import TESTS_SUFFIX, load_ruleset_file
from nba_service.domain.model import Channel, Condition, Ruleset
from nba_service.domain.pipeline import Evaluation, evaluate, reference_active
from nba_service.domain.profile import Contact, OutcomeKind, Profile
from nba_service.domain.reference import condition_holds
from nba_service.domain.wording import condition_text, policy_text
from nba_service.transport.grpc_errors import field_violations
from tests.e2e._support import NBA_SCRIPT, PB_CHANNEL, RULESET_PATH, ProfileEdit, ServerHandle, server_env, with_contact

LIMIT = 3  # Decide's default max_actions, which these tests use
EXIT_REPLAY_DIFFERS = 5  # documented in `nba explain --help`; a constant here, not imported from the code under test
TESTS_PATH = RULESET_PATH.with_name(RULESET_PATH.name.removesuffix(".yaml") + TESTS_SUFFIX)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Expected:
    profile: Profile
    evaluation: Evaluation

    @property
    def action_ids(self) -> list[str]:
        return [a.action_id for a in self.evaluation.actions]

    @property
    def fired(self) -> set[tuple[str, str]]:
        return {(f.rule_id, f.action_id) for f in self.evaluation.rules_fired}

    @property
    def dropped(self) -> set[tuple[str, str, str, str, str]]:
        return {(d.rule_id, d.action_id, d.stage, d.reason, d.policy) for d in self.evaluation.dropped}


def _key(evaluation: Evaluation) -> tuple[Any, ...]:
    return (
        [a.action_id for a in evaluation.actions],
        sorted((f.rule_id, f.action_id) for f in evaluation.rules_fired),
        sorted((d.rule_id, d.action_id, d.stage, d.reason, d.policy) for d in evaluation.dropped),
    )


class Expect:
    """The decision a server should make now, for a population it holds.

    `early` and `late` are the profiles as the server may hold them at the two extremes (for the embedded
    store, anchored when it started serving and just before it was spawned; for PostgreSQL, the seeded
    profiles twice): a decision is expected only when both, at now and `horizon` from now, agree.
    """

    def __init__(self, early: Mapping[str, Profile], late: Mapping[str, Profile]) -> None:
        self.ruleset = load_ruleset_file(RULESET_PATH)
        self.active = reference_active(self.ruleset)
        self.early = early
        self.late = late

    def customers(self) -> list[str]:
        return sorted(self.early)

    def stable(
        self,
        customer: str,
        channel: Channel,
        *,
        edits: Iterable[ProfileEdit] = (),
        horizon: timedelta = timedelta(seconds=120),
    ) -> Expected | None:
        now = utcnow()
        results: list[Expected] = []
        for profiles, moment in ((self.early, now), (self.late, now + horizon)):
            profile = profiles[customer]
            for edit in edits:
                profile = edit(profile, now)
            results.append(Expected(profile, evaluate(self.active, profile, channel, moment, LIMIT)))
        first, second = results
        return first if _key(first.evaluation) == _key(second.evaluation) else None

    def find(
        self, channel: Channel, wanted: Callable[[Expected], bool], *, exclude: Iterable[str] = ()
    ) -> tuple[str, Expected]:
        skip = set(exclude)
        for customer in self.customers():
            if customer in skip:
                continue
            expected = self.stable(customer, channel)
            if expected is not None and wanted(expected):
                return customer, expected
        pytest.fail(f"no customer of the population has the decision this test needs on {channel.value}")


def review(server: ServerHandle) -> review_pb2_grpc.ReviewStub:
    return review_pb2_grpc.ReviewStub(server.new_channel())


def explain(server: ServerHandle, decision_id: str) -> review_pb2.ExplainDecisionResponse:
    request = review_pb2.ExplainDecisionRequest(decision_id=decision_id)
    response: review_pb2.ExplainDecisionResponse = review(server).ExplainDecision(request, timeout=10)
    return response


def why_not(server: ServerHandle, decision_id: str, action_id: str) -> review_pb2.WhyNotResponse:
    request = review_pb2.WhyNotRequest(decision_id=decision_id, action_id=action_id)
    response: review_pb2.WhyNotResponse = review(server).WhyNot(request, timeout=10)
    return response


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def nba(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=server_env(), check=False
    )


def bumped_copy(folder: Path) -> tuple[Path, str]:
    """The bundled ruleset (and its scenario tests) under the next patch version: a new text, a new hash."""
    major, minor, patch = (int(part) for part in bundled_version().split("."))
    version = f"{major}.{minor}.{patch + 1}"
    folder.mkdir(parents=True, exist_ok=True)
    text = RULESET_PATH.read_text(encoding="utf-8")
    changed = re.sub(r"(?m)^  version: .*$", f"  version: {version}", text, count=1)
    assert changed != text
    path = folder / RULESET_PATH.name
    path.write_text(changed, encoding="utf-8")
    shutil.copy(TESTS_PATH, folder / TESTS_PATH.name)
    return path, version


def bundled_version() -> str:
    match = re.search(r"(?m)^  version: (.*)$", RULESET_PATH.read_text(encoding="utf-8"))
    assert match is not None
    return match.group(1).strip()


# --------------------------------------------------------------------------------------------------
# Checks


def _attribute_value(ruleset: Ruleset, profile: Profile, field: str) -> Any:
    """What the engine reads for a plain profile attribute: numbers as numbers, a missing one as None."""
    value = profile.attributes.get(field)
    spec = ruleset.fields[field]
    if spec.type == "number":
        return None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)
    if spec.type == "boolean":
        return value if isinstance(value, bool) else None
    return value if isinstance(value, str) else None


def check_explanation(
    response: review_pb2.ExplainDecisionResponse,
    *,
    decision_id: str,
    customer: str,
    channel: Channel,
    expected: Expected,
    ruleset: Ruleset,
) -> None:
    """The explanation says what the reference pipeline decides for the same profile, in the ruleset's words."""
    assert response.decision_id == decision_id
    assert response.customer_id == customer
    assert response.channel == PB_CHANNEL[channel]
    assert (response.ruleset.name, response.ruleset.hash) == (ruleset.meta.name, ruleset.content_hash)
    assert [a.action_id for a in response.actions] == expected.action_ids
    explanation = response.explanation
    assert not explanation.dry_run
    assert explanation.delivery == "sent"
    assert explanation.replayable
    assert explanation.engine == "durable_rules"
    assert {(r.rule_id, r.action_id) for r in explanation.fired} == expected.fired
    assert {(d.rule_id, d.action_id, d.stage, d.reason, d.policy) for d in explanation.dropped} == expected.dropped
    rules = {rule.id: rule for rule in ruleset.rules}
    for fired in explanation.fired:
        rule = rules[fired.rule_id]
        assert fired.priority == rule.priority
        assert fired.sentence.startswith("When "), fired
        assert fired.sentence.endswith(f"priority {rule.priority}."), fired
        assert [c.field for c in fired.conditions] == [c.field for c in rule.when.conditions()]
        for _, shown in zip(rule.when.all, fired.conditions, strict=False):
            assert shown.held, f"{fired.rule_id} fired, yet {shown.words!r} is shown as not holding"
        for condition, shown in zip(rule.when.conditions(), fired.conditions, strict=True):
            assert shown.words.startswith(condition_text(condition, ruleset)), shown.words
            if shown.field in ruleset.fields:  # a plain attribute: its value is in the profile as seeded
                read = json.loads(shown.value_read_json)
                assert read == _attribute_value(ruleset, expected.profile, shown.field), shown
                assert type(read) is type(_attribute_value(ruleset, expected.profile, shown.field)), shown
    for drop in explanation.dropped:
        assert drop.words, drop
        if drop.policy:
            assert policy_text(ruleset, drop.policy) in drop.words, drop
    assert explanation.summary
    if not expected.action_ids:
        assert explanation.summary.startswith("No action"), explanation.summary
    record = json.loads(response.record_json)
    assert record["decision_id"] == decision_id
    assert record["inputs"]["profile"]["customer_id"] == customer


def first_failing_condition(ruleset: Ruleset, expected: Expected, rule_id: str, now: datetime) -> Condition | None:
    rule = next(r for r in ruleset.rules if r.id == rule_id)
    facts = project(ruleset, expected.profile, now).facts
    return next((c for c in rule.when.all if not condition_holds(c, facts)), None)


def condition_why_not(expect: Expect, expected: Expected, channel: Channel) -> tuple[str, str, Condition] | None:
    """(action, its top rule, the condition that fails first) for an action no rule offered in this decision,
    the same at both ends of the horizon; None when this decision has none such."""
    ruleset = expect.ruleset
    fired = {a for _, a in expected.fired}
    for action_id, action in sorted(ruleset.actions.items()):
        if action_id in fired or channel not in action.scripts:
            continue
        rules = sorted(
            (r for r in ruleset.rules if r.action == action_id), key=lambda r: (-r.priority, ruleset.rules.index(r))
        )
        if not rules or rules[0].when.any:
            continue
        now = utcnow()
        early = first_failing_condition(ruleset, expected, rules[0].id, now)
        late = first_failing_condition(ruleset, expected, rules[0].id, now + timedelta(seconds=120))
        if early is not None and early == late:
            return action_id, rules[0].id, early
    return None


# --------------------------------------------------------------------------------------------------
# Scenarios, run against a server of either store


def explain_both_channels_and_no_action(server: ServerHandle, expect: Expect) -> None:
    """A desktop decision with an action, a dialer decision where a rule fired, and a decision with no action
    at all: each explained as the reference pipeline decides, with a why-not for an offered action, one for a
    dropped one (its policy in words) and one answered by a failing condition."""
    ruleset = expect.ruleset
    desktop, desktop_expected = expect.find(Channel.AGENT_DESKTOP, lambda e: bool(e.action_ids) and bool(e.dropped))
    dialer, dialer_expected = expect.find(
        Channel.OUTBOUND_DIALER, lambda e: bool(e.fired) and any(p for *_, p in e.dropped), exclude={desktop}
    )
    nothing, nothing_expected = expect.find(
        Channel.AGENT_DESKTOP, lambda e: not e.action_ids and bool(e.fired), exclude={desktop, dialer}
    )
    for customer, channel, expected in (
        (desktop, Channel.AGENT_DESKTOP, desktop_expected),
        (dialer, Channel.OUTBOUND_DIALER, dialer_expected),
        (nothing, Channel.AGENT_DESKTOP, nothing_expected),
    ):
        decision = server.decide(customer, channel)
        assert [a.action_id for a in decision.actions] == expected.action_ids
        response = explain(server, decision.decision_id)
        check_explanation(
            response,
            decision_id=decision.decision_id,
            customer=customer,
            channel=channel,
            expected=expected,
            ruleset=ruleset,
        )
        for offered in expected.action_ids[:1]:
            answer = why_not(server, decision.decision_id, offered)
            assert (answer.offered, answer.stage) == (True, "offered")
        # The action of a dropped candidate that was offered through no other rule and has a script for the
        # channel: the drop is the answer (an action with no script is answered by that).
        dropped = [
            d
            for d in expected.evaluation.dropped
            if d.action_id not in expected.action_ids and channel in ruleset.actions[d.action_id].scripts
        ]
        dropped.sort(key=lambda d: not d.policy)
        for drop in dropped[:1]:
            answer = why_not(server, decision.decision_id, drop.action_id)
            assert not answer.offered
            top = max(
                (d for d in expected.evaluation.dropped if d.action_id == drop.action_id),
                key=lambda d: next(r.priority for r in ruleset.rules if r.id == d.rule_id),
            )
            assert (answer.stage, answer.rule_id, answer.policy) == (top.stage, top.rule_id, top.policy)
            if top.policy:
                assert policy_text(ruleset, top.policy) in answer.words
        found = condition_why_not(expect, expected, channel)
        assert found is not None, f"no action of {customer}'s decision is kept out by a condition"
        action_id, rule_id, condition = found
        answer = why_not(server, decision.decision_id, action_id)
        assert (answer.offered, answer.stage, answer.rule_id) == (False, "conditions", rule_id)
        assert condition_text(condition, ruleset) in answer.words, answer.words


def dry_run_records_nothing_and_counts_toward_no_cap(
    server: ServerHandle, expect: Expect, stored_ids: Callable[[], set[str]], *, exclude: Iterable[str] = ()
) -> None:
    """A dry run answers as a real decision would, with the explanation attached; its id is refused by
    RecordOutcome and unknown to ExplainDecision, and no record of it is stored. Its offer counts toward no
    cap (the next real decision still offers the action); a real offer accepted does (the one after that
    drops it, and WhyNot names the cap in words)."""
    ruleset = expect.ruleset
    channel = Channel.AGENT_DESKTOP
    capped = {c.action for c in ruleset.policies.frequency_caps if c.action is not None and c.max == 1}
    customer = action_id = cap = ""
    for candidate in expect.customers():
        if candidate in set(exclude):
            continue
        before = expect.stable(candidate, channel)
        if before is None:
            continue
        for offered in [a for a in before.action_ids if a in capped]:
            contact = with_contact(lambda now, a=offered: Contact(a, channel, now, OutcomeKind.ACCEPTED))
            after = expect.stable(candidate, channel, edits=(contact,))
            if after is None or offered in after.action_ids:
                continue
            drops = [d for d in after.evaluation.dropped if d.action_id == offered]
            if len(drops) == 1 and drops[0].reason == "frequency_cap":
                customer, action_id, cap = candidate, offered, drops[0].policy
                break
        if customer:
            break
    assert customer, f"no customer is offered one of {sorted(capped)} on {channel.value}"

    stored_before = stored_ids()
    dry = server.decide(customer, channel, dry_run=True)
    assert dry.decision_id.startswith("dry-")
    assert action_id in [a.action_id for a in dry.actions]
    assert dry.HasField("explanation")
    assert dry.explanation.dry_run
    assert dry.explanation.summary.startswith("Dry run")
    assert action_id in {r.action_id for r in dry.explanation.fired}
    outcome = nba_pb2.RecordOutcomeRequest(decision_id=dry.decision_id, action_id=action_id, outcome=nba_pb2.ACCEPTED)
    error = refused(lambda: server.stub.RecordOutcome(outcome, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dry run" in field_violations(error)["decision_id"]
    error = refused(lambda: explain(server, dry.decision_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert stored_ids() == stored_before, "the dry run left a record"

    real = server.decide(customer, channel)
    assert not real.HasField("explanation")
    assert action_id in [a.action_id for a in real.actions], "the dry run counted toward a cap"
    assert [a.action_id for a in real.actions] == [a.action_id for a in dry.actions]
    server.stub.RecordOutcome(
        nba_pb2.RecordOutcomeRequest(decision_id=real.decision_id, action_id=action_id, outcome=nba_pb2.ACCEPTED),
        timeout=10,
    )
    capped_now = server.decide(customer, channel)
    assert action_id not in [a.action_id for a in capped_now.actions]
    answer = why_not(server, capped_now.decision_id, action_id)
    assert (answer.offered, answer.policy) == (False, cap)
    assert policy_text(ruleset, cap) in answer.words, answer.words

    assert stored_ids() == {*stored_before, real.decision_id, capped_now.decision_id}


def replay_after_activate(server: ServerHandle, expect: Expect, tmp_path: Path, tamper: Callable[[str], None]) -> None:
    """A decision made by the version that started the server replays (`nba explain --replay`, on the real
    engine, client-side) after another version was activated, naming the old version; ListRulesets lists both
    (the new one active, the old one previous); GetRuleset by a hash prefix gives the old text back. A record
    whose stored inputs were changed afterwards replays to another answer: exit 5, differences listed."""
    old_version = bundled_version()
    old_hash = expect.ruleset.content_hash
    customer, _ = expect.find(Channel.AGENT_DESKTOP, lambda e: bool(e.action_ids))
    old_decision = server.decide(customer, Channel.AGENT_DESKTOP)
    tampered = server.decide(customer, Channel.AGENT_DESKTOP)
    assert old_decision.ruleset.version == old_version

    path, new_version = bumped_copy(tmp_path / "v2")
    activated = nba("rulesets", "activate", str(path), "--target", server.address)
    assert activated.returncode == 0, activated.stderr
    assert server.decide(customer, Channel.AGENT_DESKTOP).ruleset.version == new_version

    replayed = nba("explain", old_decision.decision_id, "--replay", "--target", server.address)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.startswith("replayed: same answer")
    assert f"{old_version} ({old_hash[:12]})" in replayed.stdout

    listed = review(server).ListRulesets(review_pb2.ListRulesetsRequest(), timeout=10).rulesets
    assert [(r.version, r.active, r.previous) for r in listed] == [
        (new_version, True, False),
        (old_version, False, True),
    ]
    assert listed[1].hash == old_hash
    assert listed[0].first_activated_at.ToDatetime() >= listed[1].first_activated_at.ToDatetime()
    fetched = review(server).GetRuleset(review_pb2.GetRulesetRequest(hash=old_hash[:12]), timeout=10)
    assert fetched.source == RULESET_PATH.read_text(encoding="utf-8")
    assert (fetched.ruleset.version, fetched.ruleset.hash) == (old_version, old_hash)
    assert f"version {old_version}" in fetched.markdown
    shown = nba("rulesets", "show", old_hash[:12], "--source", "--target", server.address)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == fetched.source

    tamper(tampered.decision_id)
    differs = nba("explain", tampered.decision_id, "--replay", "--target", server.address)
    assert differs.returncode == EXIT_REPLAY_DIFFERS, differs.stdout + differs.stderr
    assert "REPLAY DIFFERS" in differs.stderr
    assert "actions: recorded [" in differs.stderr, differs.stderr


def bad_requests_are_refused_naming_the_field(server: ServerHandle) -> None:
    """An unknown decision is NOT_FOUND; a malformed id or a request missing what it needs is INVALID_ARGUMENT
    naming the field; `nba explain` exits 2 for both."""
    unknown = "00000000-0000-4000-8000-000000000000"
    assert refused(lambda: explain(server, unknown)).code() == grpc.StatusCode.NOT_FOUND
    for bad in ("", "not a decision id!", "x" * 65):
        error = refused(lambda bad=bad: explain(server, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "decision_id" in field_violations(error)
    error = refused(lambda: why_not(server, unknown, ""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"action_id"}
    error = refused(lambda: review(server).GetRuleset(review_pb2.GetRulesetRequest(hash="zz"), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hash" in field_violations(error)
    result = nba("explain", unknown, "--target", server.address)
    assert result.returncode == 2
    assert "NOT_FOUND" in result.stderr
