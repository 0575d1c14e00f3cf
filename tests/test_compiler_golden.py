"""The compiler's output for a fixed input is reviewed once and then pinned, like ansible-rulebook's ASTs."""

from __future__ import annotations

import os
from pathlib import Path

from nba_service.domain.compiler import compile_ruleset, describe
from nba_service.domain.loader import load_ruleset_file

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_plan_matches_the_golden_file() -> None:
    """Guard, DNF expansion, value encodings and partition keys are exactly as reviewed."""
    plan = describe(compile_ruleset(load_ruleset_file(GOLDEN / "tiny.yaml")))
    expected = GOLDEN / "tiny.plan"
    if os.environ.get("NBA_REGEN_GOLDEN") == "1":
        expected.write_text(plan, "utf-8")
    assert plan == expected.read_text("utf-8"), "compiler output changed; review it, then regenerate (see tiny.yaml)"
