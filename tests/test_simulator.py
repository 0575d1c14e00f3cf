"""`nba simulate` on the embedded store: a deterministic world, holdouts that hold and are balanced, a summary
that matches what the store received, and bad input refused with the problem named."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from scipy import stats

from nba_service.cli import main
from nba_service.domain.holdout import period_index
from nba_service.domain.loader import load_ruleset_file
from nba_service.errors import TruthInvalid
from nba_service.settings import BUNDLED_RULESETS
from nba_service.simulator.truth import DEFAULT_TRUTH, load_truth_text

BUNDLED = BUNDLED_RULESETS / "retail-banking.yaml"
HOLDOUTS = "holdouts:\n  seed: simulation-test\n  period: 30d\n  shares:\n    - {purpose: marketing, share: 0.5}\n"
# A busier world than the bundled one, so a short run exposes enough units to compare groups.
BUSY_WORLD = """\
world:
  inbound_calls: 0.08
  dialer_calls: 0.05
  dialer_hours: [1, 14]
  events: 0.1
  no_answer: 0.3
  converted_recorded: 0.6
"""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def holdout_ruleset(directory: Path) -> Path:
    """The bundled ruleset with half of every marketing action held out instead of its own 10% of a few offers: a
    short run then has held-out customers enough to compare the groups."""
    text = re.sub(r"(?m)^holdouts:\n(?:[ #].*\n|\n)*", "", BUNDLED.read_text("utf-8"))
    path = directory / "retail-banking.yaml"
    path.write_text(text.rstrip("\n") + "\n\n" + HOLDOUTS, "utf-8")
    return path


def busy_truth(directory: Path) -> Path:
    text = DEFAULT_TRUTH.read_text("utf-8")
    start = text.index("world:")
    end = text.index("responses:")
    path = directory / "truth.yaml"
    path.write_text(text[:start] + BUSY_WORLD + "\n" + text[end:], "utf-8")
    return path


def simulate(directory: Path, *args: str, ruleset: Path | None = None) -> Result:
    return CliRunner().invoke(
        main,
        [
            "simulate",
            "--db-path",
            str(directory / "sim.db"),
            "--rulesets",
            str(ruleset or holdout_ruleset(directory)),
            *args,
        ],
        catch_exceptions=False,
    )


def rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def records(db: Path) -> list[dict[str, Any]]:
    found = rows(db, "SELECT record FROM decisions WHERE customer_id LIKE 'SIM-%' ORDER BY decided_at, customer_id")
    return [json.loads(r[0]) for r in found]


class Run:
    def __init__(self, directory: Path, summary: dict[str, Any], truth: dict[str, Any]) -> None:
        self.directory = directory
        self.db = directory / "sim.db"
        self.summary = summary
        self.truth = truth


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One busy run shared by the tests that only read what it wrote."""
    directory = tmp_path_factory.mktemp("simulate")
    truth = busy_truth(directory)
    out = directory / "truth-out.json"
    result = simulate(
        directory,
        *("--customers", "1000", "--days", "30", "--seed", "7", "--truth", str(truth)),
        *("--truth-out", str(out), "--format", "json"),
    )
    assert result.exit_code == 0, result.output
    return Run(directory, json.loads(result.stdout), json.loads(out.read_text("utf-8")))


def canonical(found: list[dict[str, Any]]) -> list[str]:
    """Records as comparable text: decision ids (random) by their position, timing and trace left out."""
    ids = {r["decision_id"]: f"decision-{n}" for n, r in enumerate(found)}
    out = []
    for record in found:
        kept = {k: v for k, v in record.items() if k not in ("latency_ms", "trace_id")}
        text = json.dumps(kept, sort_keys=True)
        out.append(_UUID.sub(lambda m: ids.get(m.group(), "unknown-id"), text))
    return out


class TestDeterminism:
    def test_the_same_seed_into_fresh_stores_gives_the_same_decisions_outcomes_and_events(self, tmp_path: Path) -> None:
        """Decisions run concurrently within an hour; the draws must not depend on which finishes first."""
        ruleset = holdout_ruleset(tmp_path)
        texts = []
        for name in ("one", "two"):
            directory = tmp_path / name
            directory.mkdir()
            result = simulate(directory, "--customers", "300", "--days", "8", "--seed", "3", ruleset=ruleset)
            assert result.exit_code == 0, result.output
            found = records(directory / "sim.db")
            outcomes = rows(
                directory / "sim.db",
                "SELECT customer_id, action_id, channel, outcome, time FROM outcomes"
                " ORDER BY time, customer_id, action_id",
            )
            events = rows(
                directory / "sim.db",
                "SELECT customer_id, type, time, attributes, expires_at FROM events WHERE customer_id LIKE 'SIM-%'"
                " ORDER BY customer_id, time, type",
            )
            texts.append((result.output, canonical(found), outcomes, events))
        (summary_one, records_one, outcomes_one, events_one), (summary_two, *rest) = texts
        assert len(records_one) > 50
        assert outcomes_one
        assert [summary_one, records_one, outcomes_one, events_one] == [summary_two, *rest]

    def test_another_seed_gives_another_world(self, tmp_path: Path) -> None:
        ruleset = holdout_ruleset(tmp_path)
        outputs = []
        for seed in ("3", "4"):
            directory = tmp_path / seed
            directory.mkdir()
            result = simulate(directory, "--customers", "100", "--days", "3", "--seed", seed, ruleset=ruleset)
            assert result.exit_code == 0, result.output
            outputs.append(canonical(records(directory / "sim.db")))
        assert outputs[0] != outputs[1]


class TestHoldouts:
    def test_a_held_out_customer_never_sees_the_action_in_the_same_period(self, run: Run) -> None:
        holdouts = load_ruleset_file(run.directory / "retail-banking.yaml").holdouts
        found = records(run.db)
        held: set[tuple[str, str, int]] = set()
        for record in found:
            period = period_index(holdouts, datetime.fromisoformat(record["decided_at"]))
            for dropped in record["dropped"]:
                if dropped["reason"] == "held_out":
                    held.add((record["customer_id"], dropped["action_id"], period))
        assert len(held) > 100
        shown_to_held = [
            (record["decision_id"], action["action_id"])
            for record in found
            for action in record["actions"]
            if (
                record["customer_id"],
                action["action_id"],
                period_index(holdouts, datetime.fromisoformat(record["decided_at"])),
            )
            in held
        ]
        assert shown_to_held == []

    @pytest.mark.parametrize("field", ["tenure_days", "balance_total", "age", "churn_score"])
    def test_shown_and_held_out_units_are_alike_on_profile_fields(self, run: Run, field: str) -> None:
        """Units at their first exposure, pooled over the actions: a Kolmogorov-Smirnov test finds no difference
        between the customers shown an action and those held out of it (alpha 0.001, fixed seed)."""
        groups: dict[bool, list[float]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for record in records(run.db):
            value = record["inputs"]["profile"]["attributes"][field]
            exposures = [(a["action_id"], True) for a in record["actions"]]
            exposures += [(d["action_id"], False) for d in record["dropped"] if d["reason"] == "held_out"]
            for action_id, shown in exposures:
                if action_id in run.truth["actions"] and (record["customer_id"], action_id) not in seen:
                    seen.add((record["customer_id"], action_id))
                    groups[shown].append(float(value))
        assert len(groups[False]) >= 200, len(groups[False])
        assert len(groups[False]) == sum(a["units_held_out"] for a in run.truth["actions"].values())
        assert len(groups[True]) == sum(a["units_shown"] for a in run.truth["actions"].values())
        result = stats.ks_2samp(groups[True], groups[False])
        assert result.pvalue > 0.001, (field, result)

    @pytest.mark.parametrize("field", ["segment", "stage"])
    def test_shown_and_held_out_units_are_alike_on_categories(self, run: Run, field: str) -> None:
        """The same for a category: a chi-square test of the contingency table finds no dependence on the group."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        seen: set[tuple[str, str]] = set()
        for record in records(run.db):
            value = str(record["inputs"]["profile"]["attributes"][field])
            exposures = [(a["action_id"], 0) for a in record["actions"]]
            exposures += [(d["action_id"], 1) for d in record["dropped"] if d["reason"] == "held_out"]
            for action_id, group in exposures:
                if action_id in run.truth["actions"] and (record["customer_id"], action_id) not in seen:
                    seen.add((record["customer_id"], action_id))
                    counts[value][group] += 1
        table = [row for row in counts.values() if sum(row) >= 20]
        assert len(table) >= 2, counts
        result = stats.chi2_contingency(table)
        assert result.pvalue > 0.001, (field, dict(counts), result)


class TestWhatTheStoreReceived:
    def test_counts_in_the_summary_are_rows_in_the_store(self, run: Run) -> None:
        summary = run.summary
        assert summary["customers"] == 1000
        assert rows(run.db, "SELECT count(*) FROM customers WHERE customer_id LIKE 'SIM-%'") == [(1000,)]
        found = records(run.db)
        assert len(found) == summary["decisions"]["total"] > 1000
        dialer = [r for r in found if r["channel"] == "outbound_dialer"]
        assert len(dialer) == summary["decisions"]["dialer"]
        assert sum(len(r["actions"]) for r in found) == summary["offers_shown"]
        held = sum(1 for r in found for d in r["dropped"] if d["reason"] == "held_out")
        assert held == summary["held_out"] > 0
        outcomes = dict(rows(run.db, "SELECT outcome, count(*) FROM outcomes GROUP BY outcome"))
        assert outcomes == summary["outcomes"]
        start = summary["start"]
        conversions = rows(
            run.db,
            "SELECT count(*) FROM events WHERE customer_id LIKE 'SIM-%' AND time >= ?"
            " AND type IN ('product_opened', 'referral_made')",
            start,
        )
        assert conversions == [(summary["events"]["conversion"],)]
        assert summary["events"]["conversion"] == sum(summary["conversions"].values()) > 0
        background = rows(
            run.db,
            "SELECT count(*) FROM events WHERE customer_id LIKE 'SIM-%' AND time >= ?"
            " AND type NOT IN ('product_opened', 'referral_made')",
            start,
        )
        assert background == [(summary["events"]["background"],)]

    def test_nothing_is_written_after_the_simulated_end_and_the_end_is_before_now(self, run: Run) -> None:
        end = run.summary["end"]
        assert rows(run.db, "SELECT count(*) FROM events WHERE customer_id LIKE 'SIM-%' AND time > ?", end) == [(0,)]
        assert rows(run.db, "SELECT count(*) FROM outcomes WHERE time > ?", end) == [(0,)]
        assert datetime.fromisoformat(end) < datetime.now().astimezone() - timedelta(hours=1)

    def test_conversions_follow_their_first_exposure_within_the_window(self, run: Run) -> None:
        first: dict[tuple[str, str], datetime] = {}
        for record in records(run.db):
            for action in record["actions"]:
                first.setdefault(
                    (record["customer_id"], action["action_id"]), datetime.fromisoformat(record["decided_at"])
                )
        converted = rows(
            run.db,
            "SELECT customer_id, action_id, time FROM outcomes WHERE outcome = 'converted' ORDER BY time",
        )
        assert converted
        for customer, action_id, at in converted:
            window = timedelta(days=run.truth["actions"][action_id]["conversion"]["within_days"])
            assert first[(customer, action_id)] <= datetime.fromisoformat(at) <= first[(customer, action_id)] + window

    @pytest.mark.parametrize("group", ["shown", "held_out"])
    def test_units_convert_at_the_configured_rates(self, run: Run, group: str) -> None:
        """Conversions of each group against the truth's probabilities, summed over actions: within four
        standard deviations of what the truth file says (a fixed seed, so this never flickers)."""
        expected = variance = 0.0
        observed = 0
        for action in run.truth["actions"].values():
            p = action["base"] + (action["uplift"] if group == "shown" else 0.0)
            n = action[f"units_{group}"]
            expected += n * p
            variance += n * p * (1 - p)
            observed += action[f"converted_{group}"]
        assert expected > 10
        assert abs(observed - expected) < 4 * variance**0.5, (observed, expected)
        assert observed == run.summary["conversions"][group]

    def test_truth_out_names_the_actions_that_share_a_conversion(self, run: Run) -> None:
        actions = run.truth["actions"]
        assert sorted(actions["savings-account-offer"]["shared_conversion_with"]) == [
            "salary-rise-savings-plan",
            "savings-from-deposit",
        ]
        assert actions["credit-card-offer"]["shared_conversion_with"] == ["card-offer-analytics"]
        assert actions["term-deposit-rates"]["shared_conversion_with"] == []
        assert actions["term-deposit-rates"]["base"] == 0.05
        assert actions["term-deposit-rates"]["uplift"] == 0.1
        units = sum(a["units_shown"] + a["units_held_out"] for a in actions.values())
        assert units == run.summary["units"]["shown"] + run.summary["units"]["held_out"]


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "named"),
        [
            (("--customers", "0", "--days", "5"), "--customers"),
            (("--customers", "10", "--days", "-1"), "--days"),
            (("--customers", "10", "--days", "0"), "--days"),
            (("--days", "5"), "--customers"),
        ],
    )
    def test_bad_sizes_are_refused_naming_the_option(self, tmp_path: Path, args: tuple[str, ...], named: str) -> None:
        result = simulate(tmp_path, *args)
        assert result.exit_code == 2
        assert named in result.output
        assert not (tmp_path / "sim.db").exists()

    def test_an_unknown_action_in_the_truth_file_is_named_with_its_line(self, tmp_path: Path) -> None:
        truth = tmp_path / "truth.yaml"
        text = DEFAULT_TRUTH.read_text("utf-8") + "  term-deposit-ratez: {base: 0.1, uplift: 0.1}\n"
        truth.write_text(text, "utf-8")
        line = text.count("\n")
        result = simulate(tmp_path, "--customers", "10", "--days", "1", "--truth", str(truth))
        assert result.exit_code == 2
        assert f"{truth}:{line}: actions.term-deposit-ratez: unknown action 'term-deposit-ratez'" in result.output
        assert not (tmp_path / "sim.db").exists()

    def test_an_uplift_that_makes_a_probability_above_one_is_refused(self, tmp_path: Path) -> None:
        truth = tmp_path / "truth.yaml"
        text = DEFAULT_TRUTH.read_text("utf-8").replace(
            "term-deposit-rates:      {base: 0.05, uplift: 0.10}", "term-deposit-rates:      {base: 0.5, uplift: 0.6}"
        )
        truth.write_text(text, "utf-8")
        result = simulate(tmp_path, "--customers", "10", "--days", "1", "--truth", str(truth))
        assert result.exit_code == 2
        assert "actions.term-deposit-rates.uplift: base + uplift = 0.5 + 0.6 = 1.1" in result.output

    def test_an_action_without_a_conversion_and_a_misspelt_key_are_refused(self) -> None:
        ruleset = load_ruleset_file(BUNDLED)
        text = DEFAULT_TRUTH.read_text("utf-8").replace("  no_answer:", "  no_anwser:")
        text += "  loyalty-thanks: {base: 0.1, uplift: 0.1}\n"
        with pytest.raises(TruthInvalid) as caught:
            load_truth_text(text, ruleset, "t.yaml")
        assert "unknown key 'no_anwser'" in caught.value.message
        with pytest.raises(TruthInvalid, match="loyalty-thanks' declares no conversion"):
            load_truth_text(text.replace("  no_anwser:", "  no_answer:"), ruleset, "t.yaml")

    def test_postgres_without_a_dsn_is_refused_naming_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("NBA_DSN", raising=False)
        result = simulate(tmp_path, "--customers", "10", "--days", "1", "--store", "postgres")
        assert result.exit_code == 2
        assert "store 'postgres' needs a DSN: set NBA_DSN" in result.output

    def test_a_store_that_already_holds_simulated_customers_is_refused(self, tmp_path: Path) -> None:
        ruleset = holdout_ruleset(tmp_path)
        assert simulate(tmp_path, "--customers", "20", "--days", "1", ruleset=ruleset).exit_code == 0
        again = simulate(tmp_path, "--customers", "20", "--days", "1", ruleset=ruleset)
        assert again.exit_code == 2
        assert "already holds simulated customers (SIM-000001 among them)" in again.output


def test_the_bundled_truth_covers_every_bundled_action_with_a_conversion() -> None:
    ruleset = load_ruleset_file(BUNDLED)
    truth = load_truth_text(DEFAULT_TRUTH.read_text("utf-8"), ruleset)
    assert set(truth.actions) == {a.id for a in ruleset.actions.values() if a.conversion is not None}
