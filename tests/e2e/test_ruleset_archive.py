"""Every version that serves is in the ruleset archive before its first decision: at start-up, on Activate and
on Rollback, in one process and with workers, with who asked for it and how; and every decision record keeps the
inputs that replay it.
Against the real server, reading what it stored through the embedded store's own archive API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from nba_service._proto.nba.v1 import admin_pb2
from nba_service.domain.archive import ArchivedVersion
from nba_service.domain.loader import load_ruleset_text
from nba_service.domain.pipeline import reference_active
from nba_service.domain.records import DecisionRecord
from nba_service.review.explain import replay
from nba_service.stores.sqlite import SqliteStore
from tests.e2e._review_support import nba
from tests.e2e._support import RULESET_PATH, ServerHandle, start_server
from tests.e2e.test_deploy import activate, admin, decide, marked_reasons, some_customers, start, status, variant


def archived(server: ServerHandle) -> tuple[list[ArchivedVersion], dict[str, str]]:
    """The versions the server's database holds, and each one's archived text by hash."""

    async def read() -> tuple[list[ArchivedVersion], dict[str, str]]:
        store = SqliteStore(server.database, event_types=(), history=timedelta(days=1), timeout=5.0)
        await store.open()
        try:
            versions = await store.versions()
            texts = {}
            for version in versions:
                source = await store.source(version.hash)
                assert source is not None
                texts[version.hash] = source.source
            return versions, texts
        finally:
            await store.close()

    return asyncio.run(read())


ANONYMOUS = "anonymous"  # the caller's principal on a server with no access policy


def who(version: ArchivedVersion) -> tuple[str, str]:
    return version.last_activated_by, version.last_activation_origin


def stored_record(server: ServerHandle, decision_id: str) -> DecisionRecord:
    server.wait_for_decisions([decision_id])

    async def read() -> DecisionRecord | None:
        store = SqliteStore(server.database, event_types=(), history=timedelta(days=1), timeout=5.0)
        await store.open()
        try:
            return await store.get_record(decision_id)
        finally:
            await store.close()

    record = asyncio.run(read())
    assert record is not None
    return record


def test_start_up_activate_rollback_and_restart_archive_the_version_first(tmp_path: Path) -> None:
    """In one process: each version is in the archive once it serves, with its exact text; a decision made
    by a version no longer serving replays through its archived text; a restart notes no new activation."""
    server = start(tmp_path)
    workdir = server.server_log.parent
    try:
        original = status(server).active
        versions, texts = archived(server)
        assert [(v.hash, v.activations) for v in versions] == [(original.hash, 1)]
        assert [who(v) for v in versions] == [("", "start-up")]
        assert texts[original.hash] == RULESET_PATH.read_text(encoding="utf-8")

        candidate = variant(tmp_path / "v2", version="9.0.0", edit=marked_reasons)
        switched = activate(server, candidate)
        customer = some_customers(server, 1)[0]
        answer = decide(server, customer)
        assert answer.ruleset.version == "9.0.0"
        versions, texts = archived(server)
        assert [(v.version, v.activations) for v in versions] == [("9.0.0", 1), (original.version, 1)]
        assert [who(v) for v in versions] == [(ANONYMOUS, "activate"), ("", "start-up")]
        assert texts[switched.active.hash] == candidate.read_text(encoding="utf-8")
        record = stored_record(server, answer.decision_id)
        assert record.inputs is not None
        assert record.inputs.profile.customer_id == customer

        back = admin(server).Rollback(admin_pb2.RollbackRequest(), timeout=120, wait_for_ready=True)
        assert back.active.hash == original.hash
        assert decide(server, customer).ruleset.hash == original.hash
        versions, _ = archived(server)
        assert [(v.version, v.activations) for v in versions] == [(original.version, 2), ("9.0.0", 1)]
        assert [who(v) for v in versions] == [(ANONYMOUS, "rollback"), (ANONYMOUS, "activate")]
        listed = nba("rulesets", "list", "--target", server.address)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert [line.split("  ")[0] for line in lines] == [
            f"{original.name} {original.version}",
            f"{original.name} 9.0.0",
        ]
        assert lines[0].endswith(f" (rollback by {ANONYMOUS}) (active)"), lines
        assert lines[1].endswith(f" (activate by {ANONYMOUS}) (previous)"), lines
        # The version that made the decision no longer serves; its archived text still replays it exactly.
        assert replay(record, reference_active(load_ruleset_text(texts[record.ruleset.hash]))).same
    finally:
        server.stop()
    restarted = start_server(workdir)
    try:
        versions, _ = archived(restarted)
        assert [(v.hash, v.activations) for v in versions] == [(original.hash, 2), (switched.active.hash, 1)]
        assert [who(v) for v in versions] == [(ANONYMOUS, "rollback"), (ANONYMOUS, "activate")]
    finally:
        restarted.stop()


@pytest.mark.slow
def test_workers_archive_the_version_they_start_on(tmp_path: Path) -> None:
    """With workers, each generation keeps the version it starts on; two workers keeping it at once note one
    activation."""
    server = start(tmp_path, "--workers", "2")
    try:
        original = status(server).active
        versions, _ = archived(server)
        assert [(v.hash, v.activations) for v in versions] == [(original.hash, 1)]
        candidate = variant(tmp_path / "v2", version="9.0.0", edit=marked_reasons)
        switched = activate(server, candidate)
        assert [w.ruleset.version for w in switched.workers] == ["9.0.0", "9.0.0"]
        versions, texts = archived(server)
        assert [(v.version, v.activations) for v in versions] == [("9.0.0", 1), (original.version, 1)]
        # The supervisor deploys, the new workers archive: who asked reaches them with the version.
        assert [who(v) for v in versions] == [(ANONYMOUS, "activate"), ("", "start-up")]
        assert texts[switched.active.hash] == candidate.read_text(encoding="utf-8")
        back = admin(server).Rollback(admin_pb2.RollbackRequest(), timeout=120, wait_for_ready=True)
        assert back.active.hash == original.hash
        versions, _ = archived(server)
        assert [(v.version, v.activations, *who(v)) for v in versions] == [
            (original.version, 2, ANONYMOUS, "rollback"),
            ("9.0.0", 1, ANONYMOUS, "activate"),
        ]
    finally:
        server.stop()
