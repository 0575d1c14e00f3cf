"""`nba rulesets starved`, run as a contact-centre manager runs it: the bundled ruleset over the bundled sample.

The expected figures are computed here, independently of the command's tallies: every customer is decided by
the service's pipeline on the *reference* evaluator (the command uses durable_rules), and who was starved and
by what is counted with plain sets.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, Direction
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.profile import Profile
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e._browser import chromium
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, server_env
from tests.e2e.test_review_diff import ingest, store_profiles

pytestmark = pytest.mark.e2e

AT = "2026-12-01T10:00:00+00:00"
LIMIT = 3


def run_starved(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "rulesets", "starved", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**server_env(), **(env or {})},
        check=False,
    )


@dataclass
class Expected:
    customers: int = 0
    offered: int = 0
    no_rule: set[str] = field(default_factory=set)
    held: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    alone: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def expected_starvation(
    at: datetime, profiles: Iterable[Profile] | None = None, desk: Direction = Direction.INBOUND
) -> dict[str, Expected]:
    """The tally over the bundled sample, or over the given profiles (a store's, read as the service reads), with
    the agent desktop deciding in `desk`'s direction."""
    active = reference_active(load_ruleset_file(RULESET_PATH))
    found = {channel.value: Expected() for channel in Channel}
    for profile in read_sample(SAMPLE_PATH, at) if profiles is None else profiles:
        for channel in Channel:
            got = found[channel.value]
            way = desk if channel is Channel.AGENT_DESKTOP else None
            result = evaluate(active, profile, channel, at, LIMIT, direction=way)
            got.customers += 1
            if result.actions:
                got.offered += 1
            elif not result.rules_fired:
                got.no_rule.add(profile.customer_id)
            else:
                blockers = {d.policy or d.reason for d in result.dropped}
                for blocker in blockers:
                    got.held[blocker].add(profile.customer_id)
                    if len(blockers) == 1:
                        got.alone[blocker].add(profile.customer_id)
    return found


def assert_report_matches(report: dict[str, Any], expected: dict[str, Expected], customers: int) -> None:
    """Every count of the JSON report equals the independent tally, on both channels."""
    assert [c["channel"] for c in report["channels"]] == ["agent_desktop", "outbound_dialer"]
    for channel in report["channels"]:
        want = expected[channel["channel"]]
        assert channel["customers"] == want.customers == customers
        assert channel["offered"] == want.offered
        assert channel["starved"] == want.customers - want.offered
        assert channel["no_rule"]["customers"] == len(want.no_rule)
        assert set(channel["no_rule"]["examples"]) <= want.no_rule
        got = {b["id"]: b for b in channel["blockers"]}
        assert set(got) == set(want.held), channel["channel"]
        for blocker, held in want.held.items():
            assert got[blocker]["customers"] == len(held), blocker
            assert got[blocker]["alone"] == len(want.alone.get(blocker, set())), blocker
            assert set(got[blocker]["examples"]) <= held
        counts = [b["customers"] for b in channel["blockers"]]
        assert counts == sorted(counts, reverse=True)


def test_starved_over_the_bundled_sample_counts_what_the_reference_gives(tmp_path: Path) -> None:
    """Every count of the JSON report equals the independent tally, on both channels; the examples are customers
    the tally has for that blocker; the same run with one process and with two gives the same report."""
    html = tmp_path / "starved.html"
    result = run_starved(str(RULESET_PATH), "--at", AT, "--json", "--html", str(html), "--workers", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "nba.rulesets-starved/1"
    assert report["customers"] == 1000
    assert report["at"] == AT
    expected = expected_starvation(datetime.fromisoformat(AT))
    assert_report_matches(report, expected, 1000)
    dialer = expected["outbound_dialer"]
    assert dialer.held["consent:marketing:outbound_dialer"], (
        "the sample must starve someone for the test to mean anything"
    )

    single = run_starved(str(RULESET_PATH), "--at", AT, "--json", "--workers", "1")
    assert single.returncode == 0, single.stderr
    one = json.loads(single.stdout)
    for varying in ("seconds", "workers"):
        one.pop(varying), report.pop(varying)
    assert one == report

    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|<iframe|src=|href=|@import|url\(", page, re.IGNORECASE)
    assert page.count("<svg") == 2


def test_text_report_names_the_blockers_in_the_rulesets_words() -> None:
    """One channel, as text: the headline counts, and the consent line with the consent field and its count."""
    result = run_starved(str(RULESET_PATH), "--at", AT, "--channel", "outbound_dialer", "--workers", "1")
    assert result.returncode == 0, result.stderr
    want = expected_starvation(datetime.fromisoformat(AT))["outbound_dialer"]
    starved = want.customers - want.offered
    assert f"outbound_dialer: 1,000 customers, {want.offered:,} offered something, {starved:,} starved" in result.stdout
    assert "agent_desktop" not in result.stdout
    consent = len(want.held["consent:marketing:outbound_dialer"])
    alone = len(want.alone.get("consent:marketing:outbound_dialer", set()))
    line = re.compile(
        rf"(?m)^    consent:marketing:outbound_dialer +{consent:,} +alone +{alone:,} "
        r"+consent_marketing_calls is not true"
    )
    assert line.search(result.stdout), result.stdout
    assert f"no rule matched: {len(want.no_rule):,} customers" in result.stdout


def test_invalid_ruleset_and_population_are_refused(tmp_path: Path) -> None:
    """A broken ruleset prints its problem with the line and exits 2; so does a population that is not a file."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULESET_PATH.read_text(encoding="utf-8").replace("priority: ", "priority: x", 1))
    result = run_starved(str(broken), "--quiet")
    assert result.returncode == 2
    assert re.search(r"broken\.yaml:\d+", result.stdout), result.stdout
    assert "nothing was evaluated" in result.stdout
    missing = run_starved(str(RULESET_PATH), "--population", str(tmp_path / "nobody.jsonl"))
    assert missing.returncode == 2
    assert "is not a file" in missing.stderr


def test_html_chart_in_a_real_browser(tmp_path: Path) -> None:
    """Opened in headless Chromium, each channel's chart has one bar per blocker in the table, and bar lengths
    follow the counts (the longest bar is the blocker with most customers)."""
    html = tmp_path / "starved.html"
    result = run_starved(str(RULESET_PATH), "--at", AT, "--html", str(html), "--json", "--workers", "1")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    with chromium(tmp_path / "profile", 1200, 900) as driver:
        driver.get(html.as_uri())
        charts = driver.find_elements("css selector", "svg")
        assert len(charts) == len(report["channels"])
        for chart, channel in zip(charts, report["channels"], strict=True):
            bars = chart.find_elements("css selector", "rect.any")
            assert len(bars) == len(channel["blockers"])
            widths = [float(bar.get_attribute("width") or 0) for bar in bars]
            rendered = [bar.rect["width"] for bar in bars]
            assert rendered[0] == max(rendered) > 0
            top = channel["blockers"][0]["customers"]
            for width, blocker in zip(widths, channel["blockers"], strict=True):
                assert width == pytest.approx(widths[0] * blocker["customers"] / top, abs=0.2)


def test_starved_over_the_embedded_store_of_a_running_server(start_fresh_server: Any) -> None:
    """`--population store` against a running `nba serve`'s embedded database, after some customers had a card
    declined abroad reported through the gRPC API: the report counts what the reference evaluator gives for the
    profiles the store holds (read by the store's own get_profile at the same moment), and those customers are
    no longer starved on the agent desktop by the lack of a rule."""
    server = start_fresh_server()
    ruleset = load_ruleset_file(RULESET_PATH)

    async def read(at: datetime) -> list[Profile]:
        store = SqliteStore(
            server.database,
            event_types=sorted(ruleset.events),
            history=contact_history_window(ruleset),
            clock=lambda: at,
        )
        await store.open()
        try:
            return await store_profiles(store)
        finally:
            await store.close()

    before = expected_starvation(datetime.now(UTC), asyncio.run(read(datetime.now(UTC))))
    helped = sorted(before["agent_desktop"].no_rule)[:3]
    assert len(helped) == 3, "the sample must leave someone without a matching rule"
    for customer_id in helped:
        ingest(server, customer_id, "card_declined_abroad", {"country": "ES", "amount": 80.0, "merchant": "Hotel"})
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    result = run_starved(
        str(RULESET_PATH), "--population", "store", "--db-path", str(server.database), "--at", at.isoformat(), "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = expected_starvation(at, asyncio.run(read(at)))
    assert_report_matches(report, expected, 1000)
    assert not set(helped) & expected["agent_desktop"].no_rule


def test_an_agent_calling_out_is_counted_with_the_outbound_policies() -> None:
    """`--direction outbound`: the agent desktop decides as an agent calling out, so consent to marketing calls,
    the do-not-call register and quiet hours hold it back; every count equals the reference tally made in that
    direction, and differs from the inbound one."""
    result = run_starved(
        str(RULESET_PATH),
        "--at",
        AT,
        "--channel",
        "agent_desktop",
        "--direction",
        "outbound",
        "--json",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["desk_direction"] == "outbound"
    outbound = expected_starvation(datetime.fromisoformat(AT), desk=Direction.OUTBOUND)
    [channel] = report["channels"]
    want = outbound["agent_desktop"]
    assert channel["offered"] == want.offered
    got = {b["id"]: (b["customers"], b["alone"]) for b in channel["blockers"]}
    assert got == {k: (len(v), len(want.alone.get(k, set()))) for k, v in want.held.items()}
    assert "consent:marketing:agent_desktop:outbound" in got
    assert "quiet_hours" in got
    inbound = expected_starvation(datetime.fromisoformat(AT))["agent_desktop"]
    assert want.offered < inbound.offered
