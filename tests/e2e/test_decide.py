"""Decide over gRPC against the real server: the answer's shape, and agreement with the local reference."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.model import Channel
from nba_service.domain.policy import Candidate
from nba_service.domain.profile import Profile
from nba_service.domain.scripts import render
from nba_service.synthetic import generate_profiles, record_line
from tests.e2e._support import PB_CHANNEL, Oracle, ServerHandle, ids, response_ids, ruleset_sha256, utcnow

pytestmark = pytest.mark.e2e

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    assert match, f"unexpected duration {text!r} in the ruleset"
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _pick(
    server: ServerHandle, oracle: Oracle, channel: Channel, at_least: int, want_placeholder: bool
) -> tuple[Profile, list[Candidate]] | None:
    """A customer with plain names and at least `at_least` stable actions on `channel`."""
    fallback = None
    for profile in oracle.customers(server.ready_at):
        attributes = profile.attributes
        if not (_plain(attributes.get("first_name")) and _plain(attributes.get("product_name"))):
            continue
        expected = oracle.stable(server, profile.customer_id, channel)
        if expected is None or len(expected) < at_least:
            continue
        if not want_placeholder or any("{" in c.action.scripts[channel] for c in expected[:3]):
            return profile, expected
        fallback = fallback or (profile, expected)
    return fallback


def _plain(value: object) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"[^\W\d_]+(?:[ '.-][^\W\d_]+)*", value))


def _check_action(
    action: nba_pb2.Action, response: nba_pb2.DecideResponse, channel: Channel, profile: Profile, doc: Any
) -> None:
    actions = {a["id"]: a for a in doc["actions"]}
    rules = {r["id"]: r for r in doc["rules"]}
    assert action.action_id in actions, f"{action.action_id} is not an action of the bundled ruleset"
    raw = actions[action.action_id]
    template = raw["scripts"][channel.value]
    expected_script = template.format(
        first_name=profile.attributes["first_name"], product_name=profile.attributes["product_name"]
    )
    assert action.script == expected_script
    assert "{" not in action.script
    assert action.category == raw["category"]
    assert action.rule_id in rules, f"{action.rule_id} is not a rule of the bundled ruleset"
    rule = rules[action.rule_id]
    assert rule["action"] == action.action_id
    assert action.reason == rule["reason"]
    decided_at = response.decided_at.ToDatetime()
    valid_until = action.valid_until.ToDatetime()
    assert valid_until > decided_at
    assert valid_until > utcnow().replace(tzinfo=None)
    assert valid_until <= decided_at + _duration(doc["ruleset"]["valid_for"])
    if "trigger" in raw:
        assert valid_until <= decided_at + _duration(raw["trigger"]["lifetime"])


def _check_response(
    response: nba_pb2.DecideResponse, channel: Channel, profile: Profile, doc: Any, expected: list[Candidate]
) -> None:
    assert response_ids(response) == ids(expected)
    assert [a.priority for a in response.actions] == list(range(1, len(response.actions) + 1))
    rule_priority = {r["id"]: r["priority"] for r in doc["rules"]}
    priorities = [rule_priority[a.rule_id] for a in response.actions]
    assert priorities == sorted(priorities, reverse=True), "actions are not ranked by rule priority"
    assert len({a.action_id for a in response.actions}) == len(response.actions), "an action appears twice"
    for action in response.actions:
        _check_action(action, response, channel, profile, doc)
    meta = doc["ruleset"]
    assert response.ruleset.name == meta["name"]
    assert response.ruleset.version == str(meta["version"])
    assert response.ruleset.hash == ruleset_sha256()


@pytest.mark.parametrize("channel", [Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER], ids=lambda c: c.name)
def test_decide_returns_ranked_rendered_actions(
    server: ServerHandle, oracle: Oracle, ruleset_doc: Any, channel: Channel
) -> None:
    """A customer with several eligible actions gets them ranked 1..n, each with its channel's script (names
    filled in), the ruleset's category/rule/reason, a future valid_until, the ruleset's name/version/sha256, a
    fresh decision id per call, at most 3 actions by default and at most max_actions when asked."""
    # 3, not 4: frequency caps count the actions chosen in the same answer, and the bundled ruleset's
    # agent-offers-daily (at most three a day on the agent desktop) caps one answer at three actions.
    at_least = 3 if channel is Channel.AGENT_DESKTOP else 1
    picked = _pick(server, oracle, channel, at_least, want_placeholder=True)
    if picked is None and channel is Channel.OUTBOUND_DIALER:
        pytest.skip("no sample customer is callable by the dialer right now (quiet hours everywhere?)")
    assert picked is not None, f"no sample customer has {at_least}+ actions on {channel.value}"
    profile, expected = picked
    customer = profile.customer_id

    before = utcnow()
    full = server.decide(customer, channel, max_actions=20)
    default = server.decide(customer, channel)
    one = server.decide(customer, channel, max_actions=1)
    after = utcnow()

    _check_response(full, channel, profile, ruleset_doc, expected)
    _check_response(default, channel, profile, ruleset_doc, expected[:3])
    _check_response(one, channel, profile, ruleset_doc, expected[:1])
    assert len(default.actions) == min(3, len(expected))
    assert len(one.actions) == 1
    decided_at = full.decided_at.ToDatetime()
    assert before.replace(tzinfo=None) - timedelta(seconds=1) <= decided_at <= after.replace(tzinfo=None)
    if any("{first_name}" in c.action.scripts[channel] for c in expected):
        assert any(profile.attributes["first_name"] in a.script for a in full.actions)

    decision_ids = [full.decision_id, default.decision_id, one.decision_id]
    decision_ids += [server.decide(customer, channel).decision_id for _ in range(10)]
    assert len(set(decision_ids)) == len(decision_ids), "decision ids repeat"
    for decision_id in decision_ids:
        uuid.UUID(decision_id)


def test_decide_renders_non_ascii_names_verbatim(server: ServerHandle, oracle: Oracle) -> None:
    """A first name in a non-Latin script (with combining marks) reaches the script exactly as stored."""
    for profile in oracle.customers(server.ready_at):
        name = profile.attributes.get("first_name")
        if not isinstance(name, str) or name.isascii() or not name.isprintable() or any(ch.isdigit() for ch in name):
            continue
        for channel in Channel:
            expected = oracle.stable(server, profile.customer_id, channel)
            if expected and any("{first_name}" in c.action.scripts[channel] for c in expected[:3]):
                response = server.decide(profile.customer_id, channel)
                scripts = [
                    a.script
                    for a in response.actions
                    if "{first_name}" in oracle.ruleset.actions[a.action_id].scripts[channel]
                ]
                assert scripts, response
                assert all(name in s for s in scripts)
                return
    pytest.skip("no customer with a non-ASCII name has a {first_name} script right now")


def test_decide_matches_reference_evaluation(server: ServerHandle, oracle: Oracle) -> None:
    """For every sample customer on both channels, the server (durable_rules engine) returns exactly the
    actions, rules, order, reasons and scripts that the reference evaluator plus the policies predict."""
    compared: dict[Channel, int] = dict.fromkeys(Channel, 0)
    non_empty: dict[Channel, int] = dict.fromkeys(Channel, 0)
    mismatches: list[str] = []
    customers = [p.customer_id for p in oracle.customers(server.ready_at)]
    for channel in Channel:
        expectations = {cid: oracle.stable(server, cid, channel, horizon=timedelta(seconds=60)) for cid in customers}
        if sum(e is None for e in expectations.values()) > 100:
            # A quiet-hours edge within the minute (09:00 in London ends them for most of the sample): the
            # answers are about to change, so compare once it has passed.
            time.sleep(65)
            expectations = {
                cid: oracle.stable(server, cid, channel, horizon=timedelta(seconds=60)) for cid in customers
            }
        futures = {
            cid: server.stub.Decide.future(
                nba_pb2.DecideRequest(customer_id=cid, channel=PB_CHANNEL[channel], max_actions=20), timeout=30
            )
            for cid, expected in expectations.items()
            if expected is not None
        }
        for cid, future in futures.items():
            try:
                response = future.result()
            except grpc.RpcError as exc:
                mismatches.append(f"{cid} {channel.value}: {exc.code().name} {exc.details()}")
                continue
            expected = expectations[cid]
            assert expected is not None
            profile = oracle.profiles(server.ready_at)[cid]
            want = [
                (
                    c.action.id,
                    c.rule.id,
                    c.action.category,
                    c.rule.reason,
                    render(c.action, channel, profile.attributes),
                )
                for c in expected
            ]
            got = [(a.action_id, a.rule_id, a.category, a.reason, a.script) for a in response.actions]
            if got != want:
                mismatches.append(f"{cid} {channel.value}: server {got} != reference {want}")
            compared[channel] += 1
            non_empty[channel] += bool(want)
    assert not mismatches, "\n".join(mismatches[:20])
    assert compared[Channel.AGENT_DESKTOP] >= 900, compared
    assert compared[Channel.OUTBOUND_DIALER] >= 900, compared
    assert non_empty[Channel.AGENT_DESKTOP] >= 50, non_empty
    assert non_empty[Channel.OUTBOUND_DIALER] >= 1, non_empty


def test_dialer_actions_expire_before_quiet_hours(start_fresh_server: Any, ruleset_doc: Any, tmp_path: Path) -> None:
    """An action for the outbound dialer is never valid into the customer's quiet hours: its valid_until is at
    or before the next quiet-hours start in the customer's time zone. The customers are put in a time zone
    where quiet hours begin about two hours from now, so the check bites whatever time the test runs."""
    quiet = ruleset_doc["policies"]["quiet_hours"]
    start_hour, start_minute = (int(part) for part in quiet["start"].split(":"))
    now = utcnow()
    offset = (start_hour - 2 - now.hour + 12) % 24 - 12  # UTC offset giving a local time ~2 h before the start
    zone = ZoneInfo(f"Etc/GMT{-offset:+d}")  # POSIX sign convention: Etc/GMT-2 is UTC+2
    callable_customers = [
        Profile(
            p.customer_id,
            {**p.attributes, "timezone": zone.key, "consent_marketing_calls": True, "do_not_call": False},
            p.events,
            p.contacts,
        )
        for p in generate_profiles(300, now=now)
    ]
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(record_line(p, now) + "\n" for p in callable_customers), "utf-8")
    server = start_fresh_server("--sample", str(sample))
    checked = capped = 0
    for profile in callable_customers:
        local_now = utcnow().astimezone(zone)
        quiet_start = local_now.replace(hour=start_hour, minute=start_minute, second=0, microsecond=0)
        if quiet_start <= local_now:
            quiet_start += timedelta(days=1)
        response = server.decide(profile.customer_id, Channel.OUTBOUND_DIALER)
        for action in response.actions:
            checked += 1
            until = action.valid_until.ToDatetime(tzinfo=UTC)
            assert until <= quiet_start, (
                f"{profile.customer_id} ({zone.key}): {action.action_id} valid until "
                f"{until.astimezone(zone):%H:%M} local, quiet hours start {quiet['start']}"
            )
            capped += until == quiet_start
    assert checked >= 20, "too few dialer actions to check"
    assert capped >= checked // 2, f"only {capped} of {checked} actions end at the quiet-hours start"
