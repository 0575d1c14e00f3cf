"""Purposes and constraint pauses on the embedded store (checks in tests/e2e/_constraint_support.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e import _constraint_support as checks
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e


def test_consent_per_purpose_declines_and_not_now(tmp_path: Path) -> None:
    ruleset = checks.write_ruleset(tmp_path / "rulesets")
    server = start_server(tmp_path, "--rulesets", str(ruleset))
    try:
        ids = [p.customer_id for p in read_sample(SAMPLE_PATH, datetime.now(UTC))][:60]
        both, service_only = checks.customers(server, ids)
        assert len(both) >= 2, "the sample must have customers who consent to offers"
        assert service_only, "the sample must have customers who do not consent to offers"
        checks.check_consent_is_asked_for_marketing_only(server, service_only[0])
        checks.check_two_declines_pause_the_offer(server, both[0])
        checks.check_not_now_defers_without_counting_as_a_decline(server, both[1])
    finally:
        server.stop()
