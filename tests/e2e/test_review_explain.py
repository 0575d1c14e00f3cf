"""Explaining past decisions on the embedded store: `nba.v1.Review`, dry runs and `nba explain`, against the
real server over gRPC (the checks themselves are in `_review_support`, shared with the PostgreSQL tests)."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nba_service._proto.nba.v1 import review_pb2
from nba_service.domain.model import Channel
from tests.e2e import _review_support as support
from tests.e2e._support import Oracle, ServerHandle, start_server

pytestmark = pytest.mark.e2e
REVIEW = "nba.v1.Review"


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server of this module's own, with two workers, so that every test here also shows that each worker
    serves Review: the dry-run test records an outcome, which the shared server must not see."""
    handle = start_server(tmp_path_factory.mktemp("nba-review"), "--workers", "2")
    yield handle
    handle.stop(signal.SIGTERM, timeout=20)


def _expect(server: ServerHandle, oracle: Oracle) -> support.Expect:
    return support.Expect(oracle.profiles(server.ready_at), oracle.profiles(server.spawned_at - timedelta(seconds=1)))


@pytest.fixture(scope="module")
def expect(review_server: ServerHandle) -> support.Expect:
    return _expect(review_server, Oracle())


def _stored_ids(server: ServerHandle) -> set[str]:
    return {r["decision_id"] for r in server.decision_lines()}


def test_explain_and_why_not_on_both_channels(review_server: ServerHandle, expect: support.Expect) -> None:
    """ExplainDecision for a desktop decision, a dialer decision and a decision with no action says what the
    reference pipeline decides for the same profiles: the rules that fired with the values they read, every
    dropped candidate with its stage, policy and reason in words; WhyNot answers an offered action, a dropped
    one with its policy in words, and one kept out by the first condition that failed."""
    support.explain_both_channels_and_no_action(review_server, expect)


def test_dry_run_records_nothing_and_counts_toward_no_cap(review_server: ServerHandle, expect: support.Expect) -> None:
    """Decide with dry_run answers with an explanation and leaves nothing behind: no record in the export,
    NOT_FOUND from ExplainDecision, RecordOutcome refused, and no cap reached through it."""
    support.dry_run_records_nothing_and_counts_toward_no_cap(review_server, expect, lambda: _stored_ids(review_server))


def test_bad_requests_are_refused_naming_the_field(review_server: ServerHandle) -> None:
    """Unknown decision: NOT_FOUND; malformed ids and requests: INVALID_ARGUMENT with the field named."""
    support.bad_requests_are_refused_naming_the_field(review_server)


def test_every_worker_serves_review(review_server: ServerHandle, expect: support.Expect) -> None:
    """On a new connection each time (the kernel spreads them over the two workers), ExplainDecision and
    ListRulesets answer the same."""
    customer, _ = expect.find(Channel.AGENT_DESKTOP, lambda e: bool(e.action_ids))
    decision = review_server.decide(customer, Channel.AGENT_DESKTOP)
    assert decision.actions
    for _ in range(8):
        response = support.explain(review_server, decision.decision_id)
        assert response.actions == decision.actions
        listed = support.review(review_server).ListRulesets(review_pb2.ListRulesetsRequest(), timeout=10).rulesets
        assert [(r.hash, r.active) for r in listed] == [(expect.ruleset.content_hash, True)]
        review_server.close_channels()


def test_reflection_lists_the_review_service(review_server: ServerHandle) -> None:
    """Server reflection lists nba.v1.Review and serves its file, whose service has the four read-only RPCs."""
    stub = reflection_pb2_grpc.ServerReflectionStub(review_server.new_channel())
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=REVIEW),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert REVIEW in {s.name for s in responses[0].list_services_response.service}
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    review_file = next(f for f in files if any(s.name == "Review" for s in f.service))
    service = next(s for s in review_file.service if s.name == "Review")
    assert {m.name for m in service.method} == {"ListRulesets", "GetRuleset", "ExplainDecision", "WhyNot"}


def _tamper_sqlite(database: Path) -> Any:
    def tamper(decision_id: str) -> None:
        """Withdraws the stored consent as if someone had edited the record's inputs in the database file."""
        with sqlite3.connect(database, timeout=10) as conn:
            changed = conn.execute(
                "UPDATE decisions SET record = json_set(record, '$.inputs.profile.attributes.consent_agent_offers',"
                " json('false')) WHERE decision_id = ?",
                (decision_id,),
            ).rowcount
        assert changed == 1

    return tamper


def test_replay_of_a_version_no_longer_active(start_fresh_server: Any, oracle: Oracle, tmp_path: Path) -> None:
    """`nba explain ID --replay` replays a decision of the start-up version after another was activated, and
    exits 5 listing the differences for a record whose inputs were edited in the database."""
    server: ServerHandle = start_fresh_server()
    support.replay_after_activate(server, _expect(server, oracle), tmp_path, _tamper_sqlite(server.database))
