"""`nba db migrate`, `nba db seed` and `nba db replay`, run as a person runs them, against real databases."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from nba_service.domain.model import Channel
from nba_service.domain.records import (
    DecidedAction,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    FiredRule,
    RulesetRef,
)
from nba_service.stores.postgres.migrate import migrations
from nba_service.stores.postgres.seed import profile_rows
from nba_service.synthetic import DEFAULT_SEED, generate_profiles
from tests.e2e._support import NBA_SCRIPT, server_env
from tests.e2e_pg._pg_support import fetch, fetchval

CUSTOMERS = 300
TABLES = ("customers", "consents", "do_not_call", "events", "contacts", "decisions")
NEW_IN_0002 = ("outcomes", "dead_letters")


def _nba(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args], capture_output=True, text=True, timeout=120, env=server_env(), check=False
    )


def _counts(dsn: str) -> dict[str, int]:
    return {table: fetchval(dsn, f"SELECT count(*) FROM {table}") for table in TABLES}


def test_migrate_applies_the_schema_once(pg_empty_dsn: str) -> None:
    """On a database without the schema, `nba db migrate` applies every migration in order, says so and records
    them; run again it applies nothing and says the schema is up to date."""
    names = [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert names[0] == "0001_initial"

    first = _nba("db", "migrate", "--dsn", pg_empty_dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in names]
    tables = {
        r["tablename"] for r in fetch(pg_empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {*TABLES, *NEW_IN_0002, "schema_migrations"} <= tables
    recorded = fetch(pg_empty_dsn, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [(m.version, m.name) for m in migrations()]

    second = _nba("db", "migrate", "--dsn", pg_empty_dsn)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema is up to date; nothing applied"
    assert fetchval(pg_empty_dsn, "SELECT count(*) FROM schema_migrations") == len(names)


def test_migrate_without_the_right_to_create_tables_says_so(pg_empty_dsn: str) -> None:
    """A role that may connect but not create tables gets one clear line naming the refusal and the fix, exit 1,
    no traceback; nothing is half applied, and the schema's owner then migrates as usual."""
    role = f"nba_limited_{uuid.uuid4().hex[:8]}"
    fetch(pg_empty_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        fetch(pg_empty_dsn, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        parts = urlsplit(pg_empty_dsn)
        limited = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        refused = _nba("db", "migrate", "--dsn", limited)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
        assert "permission denied for schema public" in refused.stderr
        assert f"{role} needs CREATE on the schema" in refused.stderr
        assert fetchval(pg_empty_dsn, "SELECT to_regclass('schema_migrations') IS NULL")
        owner = _nba("db", "migrate", "--dsn", pg_empty_dsn)
        assert owner.returncode == 0, owner.stderr
    finally:
        fetch(pg_empty_dsn, f"DROP ROLE {role}")


def test_seed_loads_the_population_then_refuses_a_second_time(pg_dsn: str) -> None:
    """`nba db seed --customers 300` on a fresh migrated database loads 300 customers with exactly the consents,
    do-not-call entries, events and contacts the generator implies, and reports those counts. A second run
    without --force exits non-zero, names what the database holds (300 customers, its events and contacts) and
    points at --force, leaving every table as it was."""
    expected = profile_rows(list(generate_profiles(CUSTOMERS, seed=DEFAULT_SEED, now=datetime.now(UTC))))
    want = {
        "customers": len(expected.customers),
        "consents": len(expected.consents),
        "do_not_call": len(expected.do_not_call),
        "events": len(expected.events),
        "contacts": len(expected.contacts),
        "decisions": 0,
    }
    assert want["customers"] == CUSTOMERS

    first = _nba("db", "seed", "--customers", str(CUSTOMERS), "--dsn", pg_dsn)
    assert first.returncode == 0, first.stderr
    counts = _counts(pg_dsn)
    assert counts == want
    assert (
        f"seeded {CUSTOMERS} customers, {want['events']} events, {want['contacts']} contacts, "
        f"{want['consents']} consents, {want['do_not_call']} do-not-call, {len(expected.phones)} phone numbers in"
        in first.stdout
    )
    ids = [r["customer_id"] for r in fetch(pg_dsn, "SELECT customer_id FROM customers ORDER BY customer_id")]
    assert ids == [f"CUST-{n:06d}" for n in range(1, CUSTOMERS + 1)]

    second = _nba("db", "seed", "--customers", str(CUSTOMERS), "--dsn", pg_dsn)
    assert second.returncode != 0
    message = " ".join(second.stderr.split())
    assert f"{CUSTOMERS} customers" in message, second.stderr
    assert f"{want['events']} events" in message, second.stderr
    assert f"{want['contacts']} contacts" in message, second.stderr
    assert "--force" in message
    assert "Traceback" not in second.stderr
    assert _counts(pg_dsn) == want


def test_seed_on_an_unmigrated_database_says_to_migrate(pg_empty_dsn: str) -> None:
    """`nba db seed` against a database without the schema exits non-zero telling to run `nba db migrate`,
    and creates nothing."""
    result = _nba("db", "seed", "--customers", "5", "--dsn", pg_empty_dsn)
    assert result.returncode != 0
    assert "nba db migrate" in result.stderr
    assert "Traceback" not in result.stderr
    tables = fetch(pg_empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert not [r for r in tables if re.fullmatch(r"customers|events|contacts", r["tablename"])]


# --------------------------------------------------------------------------------------------------
# nba db replay

NOW = datetime(2031, 5, 14, 13, 37, 21, 123_456, tzinfo=UTC)


def _record(number: int, reason: str = "inbound call") -> DecisionRecord:
    return DecisionRecord(
        decision_id=str(uuid.uuid4()),
        decided_at=NOW + timedelta(seconds=number),
        customer_id=f"CUST-{number:06d}",
        channel=Channel.AGENT_DESKTOP,
        ruleset=RulesetRef("retail-banking", "1.0.0", "c0ffee"),
        engine="durable_rules",
        rules_fired=(FiredRule("r-welcome", "welcome-call", 50, {"tenure_days": 3.0}),),
        dropped=(),
        actions=(DecidedAction("welcome-call", "Say hello.", 1, "service", "new", "r-welcome", NOW),),
        latency_ms=1.25,
        context_reason=reason,
    )


def _spill(path: Path, lines: list[str], *, torn: str = "") -> Path:
    path.write_text("".join(line + "\n" for line in lines) + torn, "utf-8")
    return path


def _json(item: object) -> str:
    return json.dumps(item, ensure_ascii=True)


def test_replay_loads_a_spill_file_once(pg_dsn: str, tmp_path: Path) -> None:
    """A clean spill file (records and a correction): exit 0, every record inserted and the correction applied;
    run again, exit 0, nothing inserted and all reported as already stored."""
    records = [_record(n) for n in range(1, 6)]
    path = _spill(
        tmp_path / "records-unsent-20311114T000000000000-1.jsonl",
        [
            *(_json(r.to_json()) for r in records),
            _json(DeliveryUpdate(records[0].decision_id, Delivery.FAILED).to_json()),
        ],
    )
    first = _nba("db", "replay", "--dsn", pg_dsn, str(path))
    assert first.returncode == 0, (first.stdout, first.stderr)
    summary = f"{path}: 5 decisions read, 5 inserted (0 were already stored); 1 delivery updates, 1 applied"
    assert summary in first.stdout
    assert "0 lines not loaded (0 set aside in dead_letters)" in first.stdout
    assert first.stderr == ""
    second = _nba("db", "replay", "--dsn", pg_dsn, str(path))
    assert second.returncode == 0, second.stderr
    assert "5 decisions read, 0 inserted (5 were already stored)" in second.stdout
    rows = {str(r["decision_id"]): r["delivery"] for r in fetch(pg_dsn, "SELECT decision_id, delivery FROM decisions")}
    assert rows == {r.decision_id: "failed" if n == 0 else "sent" for n, r in enumerate(records)}


def test_replay_reports_every_line_it_cannot_load_and_loads_the_rest(pg_dsn: str, tmp_path: Path) -> None:
    """The reported defect: replaying a file PostgreSQL refuses part of failed with a traceback. Now a file with
    a line that is not JSON, a record of an unknown format, a record holding NUL (refused by PostgreSQL) and a
    torn last line, between good records: exit 1, each bad line named as FILE:LINE with its error on stderr,
    no traceback, a summary on stdout, the good records stored and the refused one set aside in dead_letters.
    A second run stores nothing twice and sets nothing aside twice."""
    good = [_record(n) for n in range(1, 4)]
    poison = _record(9, reason="card lost \x00 abroad")
    path = _spill(
        tmp_path / "records-unsent-20311114T000000000000-2.jsonl",
        [
            _json(good[0].to_json()),
            "not json at all",
            _json({**good[1].to_json(), "format": "nba.record/99"}),
            _json(poison.to_json()),
            _json(good[1].to_json()),
            _json(good[2].to_json()),
        ],
        torn=_json(_record(10).to_json())[:50],
    )
    for inserted in (3, 0):
        result = _nba("db", "replay", "--dsn", pg_dsn, str(path))
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        problems = result.stderr.splitlines()
        assert [line.split(": ", 1)[0] for line in problems] == [f"{path}:{n}" for n in (2, 3, 4, 7)], problems
        assert "unknown record format 'nba.record/99'" in problems[1]
        assert "refused by PostgreSQL" in problems[2]
        assert "set aside in dead_letters" in problems[2]
        assert "torn last line" in problems[3]
        assert f"{path}: 4 decisions read, {inserted} inserted" in result.stdout
        assert "4 lines not loaded (1 set aside in dead_letters)" in result.stdout
    stored = sorted(str(r["decision_id"]) for r in fetch(pg_dsn, "SELECT decision_id FROM decisions"))
    assert stored == sorted(r.decision_id for r in good)
    letters = fetch(pg_dsn, "SELECT decision_id, record FROM dead_letters")
    assert [r["decision_id"] for r in letters] == [poison.decision_id]
    assert DecisionRecord.from_json(json.loads(letters[0]["record"])) == poison


def test_replay_on_a_database_behind_says_to_migrate(pg_empty_dsn: str, tmp_path: Path) -> None:
    """Against a database without the schema, `nba db replay` exits non-zero telling to run `nba db migrate`,
    without a traceback and without loading anything."""
    path = _spill(tmp_path / "records-unsent-x.jsonl", [_json(_record(1).to_json())])
    result = _nba("db", "replay", "--dsn", pg_empty_dsn, str(path))
    assert result.returncode != 0
    assert "nba db migrate" in result.stderr
    assert "Traceback" not in result.stderr
