"""The report against a known truth: `nba simulate` draws conversions from a configured true uplift per action,
and `nba report`'s 95% interval for each action's uplift must cover it.

Actions that share a conversion definition count each other's conversions, so their measured uplift is not their
configured truth; the truth file here gives one action of each such group a real effect and its siblings none
(no conversions of their own to lend), and only actions whose siblings convert nothing are checked. One seeded
world is checked action by action; a slower test runs many seeds and reports the measured coverage, which should
be near 95%.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from nba_service.settings import BUNDLED_RULESETS
from tests.e2e._support import NBA_SCRIPT, server_env

BUNDLED = BUNDLED_RULESETS / "retail-banking.yaml"
# Half of every marketing action held out, redrawn every 30 days: wide enough to measure a short run.
HOLDOUTS = "holdouts:\n  seed: coverage-test\n  period: 30d\n  shares:\n    - {purpose: marketing, share: 0.5}\n"
TRUTH = """\
world:
  inbound_calls: 0.08
  dialer_calls: 0.05
  dialer_hours: [1, 14]
  events: 0.1
  no_answer: 0.3
  converted_recorded: 0.6

responses:
  accepted: 0.25
  declined: 0.35
  not_now: 0.15

actions:
  term-deposit-rates:       {base: 0.05, uplift: 0.15}
  premier-upgrade:          {base: 0.04, uplift: 0.06}
  mortgage-consultation:    {base: 0.03, uplift: 0.0}
  credit-card-offer:        {base: 0.06, uplift: 0.12}
  card-offer-analytics:     {base: 0.0, uplift: 0.0}
  savings-account-offer:    {base: 0.05, uplift: 0.10}
  savings-from-deposit:     {base: 0.0, uplift: 0.0}
  salary-rise-savings-plan: {base: 0.0, uplift: 0.0}
  referral-after-survey:    {base: 0.05, uplift: 0.10}
  referral-ask:             {base: 0.0, uplift: 0.0}
"""


def with_holdouts(text: str) -> str:
    """The ruleset text with its `holdouts:` section (if any) replaced by this test's."""
    kept = re.sub(r"(?m)^holdouts:\n(?:[ #].*\n|\n)*", "", text)
    return kept.rstrip("\n") + "\n\n" + HOLDOUTS


def nba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=600, env=server_env(), check=False
    )


def simulate_and_report(directory: Path, seed: int, customers: int, days: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The truth the world ran on (`--truth-out`) and the JSON report over the whole run."""
    directory.mkdir(parents=True, exist_ok=True)
    rulesets = directory / "rulesets"
    rulesets.mkdir(exist_ok=True)
    (rulesets / "retail-banking.yaml").write_text(with_holdouts(BUNDLED.read_text("utf-8")), "utf-8")
    truth_file = directory / "truth.yaml"
    truth_file.write_text(TRUTH, "utf-8")
    db = directory / "sim.db"
    truth_out = directory / "truth-out.json"
    ran = nba(
        "simulate",
        *("--customers", str(customers), "--days", str(days), "--seed", str(seed)),
        *("--truth", str(truth_file), "--truth-out", str(truth_out), "--format", "json"),
        *("--rulesets", str(rulesets), "--db-path", str(db)),
    )
    assert ran.returncode == 0, ran.stderr
    truth = json.loads(truth_out.read_text("utf-8"))
    reported = nba(
        "report",
        *("--since", truth["start"], "--until", truth["end"]),
        *("--rulesets", str(rulesets), "--db-path", str(db), "--format", "json"),
    )
    assert reported.returncode == 0, reported.stderr
    return truth, json.loads(reported.stdout)


def checked(truth: dict[str, Any]) -> list[str]:
    """The actions whose measured uplift is their truth: every action sharing their conversion converts nothing."""
    actions = truth["actions"]
    return sorted(
        action
        for action, spec in actions.items()
        if all(
            actions[other]["base"] == 0 and actions[other]["uplift"] == 0 for other in spec["shared_conversion_with"]
        )
        and not (spec["base"] == 0 and spec["uplift"] == 0)
    )


def covered(truth: dict[str, Any], report: dict[str, Any]) -> dict[str, bool]:
    lines = {line["action_id"]: line for line in report["by_action"]}
    found: dict[str, bool] = {}
    for action in checked(truth):
        line = lines[action]
        if line["uplift"] is None:
            continue
        found[action] = line["uplift_low"] <= truth["actions"][action]["uplift"] <= line["uplift_high"]
    return found


def test_each_action_s_interval_covers_its_true_uplift(tmp_path: Path) -> None:
    truth, report = simulate_and_report(tmp_path, seed=3, customers=1000, days=30)
    lines = {line["action_id"]: line for line in report["by_action"]}
    assert set(checked(truth)) == {
        "term-deposit-rates",
        "premier-upgrade",
        "mortgage-consultation",
        "credit-card-offer",
        "savings-account-offer",
        "referral-after-survey",
    }
    for action, spec in truth["actions"].items():
        line = lines.get(action)
        units = spec["units_shown"] + spec["units_held_out"]
        # The report's units are the simulator's: every one of them, measured or still open.
        assert (line["shown"] + line["held_out"] + line["open_units"] if line else 0) == units, action
    results = covered(truth, report)
    assert len(results) >= 5, f"too few actions had both groups: {sorted(results)}"
    assert all(results.values()), {
        a: (lines[a]["uplift_low"], truth["actions"][a]["uplift"], lines[a]["uplift_high"])
        for a, ok in results.items()
        if not ok
    }
    no_conversion = [line for line in report["by_action"] if line["action_id"] not in truth["actions"]]
    assert no_conversion, "the world shows actions that declare no conversion too"
    assert all(line["uplift"] is None for line in no_conversion), "no declared conversion, no uplift"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_intervals_cover_the_truth_about_95_percent_of_the_time(tmp_path: Path) -> None:
    seeds = range(101, 111)

    def one(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return simulate_and_report(tmp_path / f"seed-{seed}", seed=seed, customers=400, days=30)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(one, seeds))
    trials = [ok for truth, report in runs for ok in covered(truth, report).values()]
    coverage = sum(trials) / len(trials)
    print(
        f"\nmeasured coverage of the 95% uplift intervals: {coverage:.1%} of {len(trials)} intervals"
        f" ({len(seeds)} seeds, at {datetime.now():%Y-%m-%d})",
        file=sys.stderr,
    )
    assert len(trials) >= 50
    # At a true 95%, 50-70 intervals miss 2.5-3.5 on average; 85% would be a clear sign of a broken interval.
    assert coverage >= 0.85, f"coverage {coverage:.1%} of {len(trials)} intervals"
    # And the estimates centre on the truth: their mean over the seeds is within 3 standard errors of it.
    for action in checked(runs[0][0]):
        estimates = [
            line["uplift"]
            for _, report in runs
            for line in report["by_action"]
            if line["action_id"] == action and line["uplift"] is not None
        ]
        if len(estimates) < 5:
            continue
        mean = statistics.fmean(estimates)
        error = statistics.stdev(estimates) / len(estimates) ** 0.5
        truth_uplift = runs[0][0]["actions"][action]["uplift"]
        assert abs(mean - truth_uplift) <= 3 * error + 1e-9, (action, mean, truth_uplift, error)
