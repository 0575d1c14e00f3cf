"""`nba report` as a user runs it, on an embedded database holding a known history.

The JSON's counts must be the stored records' counts (as the reference definitions count them), the text must
say the same numbers, and bad input must get a clear error and exit code, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from nba_service.app import contact_history_window
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.measurement import Cell, Measurements
from nba_service.domain.model import Ruleset
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import generate_profiles
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, server_env
from tests.measurement_data import SINCE, UNTIL, History, make_history
from tests.pg import run_sync

CUSTOMERS = 40


def nba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, env=server_env(), check=False
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, History]:
    ruleset = load_ruleset_file(RULESET_PATH)
    path = tmp_path_factory.mktemp("report") / "nba.db"
    history = make_history(ruleset, [f"CUST-{i:06d}" for i in range(1, CUSTOMERS + 1)], 11, decisions=600)

    async def fill() -> None:
        at = SINCE - timedelta(days=30)
        store = SqliteStore(
            path, event_types=tuple(ruleset.events), history=contact_history_window(ruleset), clock=lambda: at
        )
        await store.open(seed=lambda: generate_profiles(CUSTOMERS, now=at))
        try:
            await history.load(store, store)
        finally:
            await store.close()

    run_sync(fill())
    return path, history


def _totals(measurements: Measurements, ruleset: Ruleset, action: str) -> tuple[Cell, Cell]:
    shown, held = Cell(), Cell()
    for key, cell in measurements.cells.items():
        if key[0] == action:
            (held if key[5] else shown).add(cell)
    return shown, held


def test_the_json_report_counts_the_stored_records(stored: tuple[Path, History]) -> None:
    path, history = stored
    result = nba(
        "report", "--db-path", str(path), "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = history.expected(history.query())
    assert report["exposures_read"] == expected.exposures
    lines = {line["action_id"]: line for line in report["by_action"]}
    assert set(lines) == {key[0] for key in expected.cells}
    for action, line in lines.items():
        shown, held = _totals(expected, history.ruleset, action)
        assert line["offers"]["delivered"] == shown.offers
        assert line["offers"]["accepted"] == shown.accepted
        assert line["offers"]["declined"] == shown.declined
        assert (line["shown"], line["shown_converted"]) == (shown.mature, shown.converted)
        assert (line["held_out"], line["held_out_converted"]) == (held.mature, held.converted)
        assert line["open_units"] == shown.units - shown.mature + held.units - held.mature
        declared = history.ruleset.actions[action].conversion is not None
        assert line["conversion_declared"] is declared
        if shown.mature and held.mature and declared:
            assert line["uplift_low"] <= line["uplift"] <= line["uplift_high"]
            value = history.ruleset.actions[action].value
            if value is not None:
                assert line["worth"]["incremental"] == pytest.approx(line["uplift"] * shown.mature * value)
        else:
            assert line["uplift"] is None
    cycles = {c["event"]: c for c in report["cycle_times"]}
    for cycle in expected.cycles:
        assert cycles[cycle.event_type]["triggers"] == cycle.triggers
        assert cycles[cycle.event_type]["expired_unoffered"] == cycle.expired
    stages = {line["label"] for line in report["breakdowns"]["journey_stage"]}
    assert {"welcome", "maintenance", "rescue", "(not recorded)"} <= stages
    referral = {line["label"] for line in report["referrals"]["by_journey_stage"]}
    assert referral
    assert referral <= stages


def test_the_text_report_says_the_same_numbers(stored: tuple[Path, History]) -> None:
    path, _ = stored
    as_json = json.loads(
        nba(
            "report",
            "--db-path",
            str(path),
            "--since",
            SINCE.isoformat(),
            "--until",
            UNTIL.isoformat(),
            "--format",
            "json",
        ).stdout
    )
    out = path.parent / "report.txt"
    result = nba(
        "report", "--db-path", str(path), "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert f"{as_json['exposures_read']:,} exposures read" in text
    for line in as_json["by_action"]:
        row = next(r for r in text.splitlines() if r.strip().startswith(line["action_id"] + " "))
        assert f"{line['offers']['delivered']:,}" in row.split()
        assert f"{line['shown']:,}" in row.split()
    for heading in (
        "By rule",
        "By channel",
        "By ruleset version",
        "By journey stage",
        "Referral asks by journey stage",
        "Trigger to first delivered offer",
    ):
        assert heading in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "2031-03-01", "--until", "2031-02-01"), "must be after --since"),
        (("--since", "yesterday"), "is not an ISO 8601 time"),
        (("--ruleset", "no-such-programme"), "no ruleset named 'no-such-programme'"),
        (("--format", "pdf"), "'pdf' is not one of"),
    ],
)
def test_bad_input_gets_a_clear_error(stored: tuple[Path, History], args: tuple[str, ...], message: str) -> None:
    path, _ = stored
    result = nba("report", "--db-path", str(path), *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_database_is_named(tmp_path: Path) -> None:
    result = nba("report", "--db-path", str(tmp_path / "none.db"))
    assert result.returncode == 2
    assert f"no embedded database at {tmp_path / 'none.db'}" in result.stderr
