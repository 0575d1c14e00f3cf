"""Schemathesis drives the HTTP/JSON API from its own /openapi.json against a real server: no request it
generates gets a server error, and every response keeps to the document (status, content type, schema)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.e2e._support import ServerHandle, start_server

pytestmark = pytest.mark.e2e
EXAMPLES = 60  # per operation: keeps the test well under a minute
# Not checked: that every schema-valid request is accepted. Which ids, event types and attribute names are valid
# depends on the data and the active ruleset, which the document does not (and cannot stably) enumerate.
EXCLUDED = [positive_data_acceptance]


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("nba-http-props"), "--http-port", "0")
    yield handle
    handle.stop()


def test_no_server_error_and_responses_match_the_document(http_server: ServerHandle) -> None:
    base = f"http://{http_server.http_address}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8  # decide, outcomes, events, healthz and the four review calls
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, excluded_checks=EXCLUDED)

        try:
            check()
        except Exception as exc:  # every operation's failure, reported together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
