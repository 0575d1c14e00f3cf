"""The engine-peers benchmark's instrument: timing durable_rules' own calls must not change what the engine
answers, must count every call, and must put the real module back. Not a timed test: no figure is compared."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtests"))

import bench_engine_peers as bench
import durable_rules_engine
from bench_engine import BENCH_SEED, generate_facts
from synthetic_rules import BASE_RULESET

from nba_service.domain.loader import load_ruleset_file
from nba_service.engine import durable

PROFILES = 60


def test_a_size_measured_with_its_calls_timed_agrees_with_the_reference() -> None:
    _, sample, _ = generate_facts(load_ruleset_file(BASE_RULESET), 300, bench.SAMPLE_SEED)
    args = bench.parse_args(["--profiles", str(PROFILES), "--sizes", "20", "--warmup", "10"])
    result = bench.measure(20, args, sample, lambda _text: None, 0.0)
    assert result.disagreements == {"engine": 0, "python": 0, "zen": 0}
    calls = result.stats["durable_rules calls"]
    assert calls.count == PROFILES
    assert calls.median > 0
    assert result.calls_over_python > 0
    assert durable._engine is durable_rules_engine


def test_the_timed_engine_answers_as_the_engine_does_and_counts_each_call() -> None:
    _, sample, _ = generate_facts(load_ruleset_file(BASE_RULESET), 300, bench.SAMPLE_SEED)
    ruleset = bench.synthetic_ruleset(100, bench.RULES_SEED, sample)
    _, facts, _ = generate_facts(ruleset, PROFILES, BENCH_SEED)
    loaded = durable.DurableEngine().load(bench.compile_ruleset(ruleset))
    try:
        expected = [loaded.evaluate(f) for f in facts]
        with bench._timed_engine() as timed:
            got = [loaded.evaluate(f) for f in facts]
            # one assertion per engine ruleset at least, and a drain call per match
            assert timed.calls >= len(facts) * len(loaded.compiled.partitions) + sum(len(m) for m in expected)
            assert timed.ns > 0
        assert got == expected
        assert durable._engine is durable_rules_engine
        samples = bench.engine_calls_ns(loaded.evaluate, facts, 0.0)
        assert len(samples) == len(facts)
        assert all(s > 0 for s in samples)
    finally:
        loaded.close()
