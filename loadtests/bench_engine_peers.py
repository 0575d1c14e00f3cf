"""Benchmark: the engine next to its peers at 20, 100 and 400 rules, on the same generated customers.

Not a timed test: it prints figures and met/missed against issue 12's engine targets.

    python loadtests/bench_engine_peers.py [--profiles 10000] [--sizes 20,100,400] [--seed N] [--rules-seed N]

For each size, one seeded synthetic ruleset (loadtests/synthetic_rules.py) is evaluated over the same
`--profiles` customers by:
- the engine: durable_rules driven by our compiler and adapter, as the service runs it;
- compiled pure Python: the whole ruleset generated as one Python function and `compile()`d, every match
  collected. Nothing general can be faster in CPython: the floor;
- zen-engine: GoRules' Rust engine (PyPI `zen-engine`), the same rules as one JDM decision table with
  hit policy "collect", one row per rule and one column per field.
Every evaluator must return exactly the reference evaluator's matches on every profile (exit status 1
otherwise). Targets: the engine's median within 5x of compiled Python, and zen-engine's at least 5x the
engine's, at every size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import zen
from bench_common import Stats, load_average, machine_info
from bench_engine import BENCH_SEED, Evaluate, generate_facts, time_each, timer_overhead_ns, warm_up
from synthetic_rules import BASE_RULESET, synthetic_ruleset

from nba_service.domain.compiler import compile_ruleset
from nba_service.domain.facts import Facts
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Condition, Op, Ruleset
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine import durable
from nba_service.engine.durable import DurableEngine
from nba_service.synthetic import DEFAULT_SEED

RULES_SEED = 12
# Rule constants are drawn from these customers, never from the timed ones.
SAMPLE_SEED = DEFAULT_SEED + 7
SAMPLE_PROFILES = 2_000
ENGINE_OVER_PYTHON = 5.0
ZEN_OVER_ENGINE = 5.0


def _python_test(condition: Condition, var: str) -> str:
    constants = [repr(v) for v in condition.values]
    op = condition.op
    if op is Op.EQ:
        return f"{var} == {constants[0]}"
    if op is Op.IN:
        return f"{var} in ({', '.join(constants)},)"
    if op is Op.EXISTS:
        return f"{var} is not None"
    if op is Op.MISSING:
        return f"{var} is None"
    if op is Op.NOT_IN:
        return f"({var} is not None and {var} not in ({', '.join(constants)},))"
    symbol = {Op.NE: "!=", Op.LT: "<", Op.LTE: "<=", Op.GT: ">", Op.GTE: ">="}[op]
    return f"({var} is not None and {var} {symbol} {constants[0]})"


def python_source(ruleset: Ruleset) -> str:
    """The whole ruleset as one function: each fact read once, then one `if` per rule."""
    names = sorted({c.field for rule in ruleset.rules for c in rule.when.conditions()})
    var = {name: f"v{i}" for i, name in enumerate(names)}
    lines = ["def evaluate(facts):", "    get = facts.get"]
    lines += [f"    {var[name]} = get({name!r})" for name in names]
    lines.append("    matched = []")
    for index, rule in enumerate(ruleset.rules):
        tests = [_python_test(c, var[c.field]) for c in rule.when.all]
        if rule.when.any:
            tests.append("(" + " or ".join(_python_test(c, var[c.field]) for c in rule.when.any) + ")")
        lines += [f"    if {' and '.join(tests) or 'True'}:", f"        matched.append({index})"]
    lines.append("    return matched")
    return "\n".join(lines) + "\n"


def compile_python(ruleset: Ruleset) -> Evaluate:
    namespace: dict[str, Any] = {}
    exec(compile(python_source(ruleset), f"<{ruleset.meta.name}>", "exec"), namespace)
    evaluate: Evaluate = namespace["evaluate"]
    return evaluate


def _zen_constant(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # zen reads no \\u escapes


def _zen_test(condition: Condition, ref: str) -> str:
    constants = [_zen_constant(v) for v in condition.values]
    op = condition.op
    if op is Op.EXISTS:
        return f"{ref} != null"
    if op is Op.MISSING:
        return f"{ref} == null"
    if op is Op.EQ:
        return f"{ref} == {constants[0]}"
    if op is Op.IN:
        return f"{ref} in [{', '.join(constants)}]"
    if op is Op.NOT_IN:
        return f"{ref} != null and not ({ref} in [{', '.join(constants)}])"
    symbol = {Op.NE: "!=", Op.LT: "<", Op.LTE: "<=", Op.GT: ">", Op.GTE: ">="}[op]
    return f"{ref} != null and {ref} {symbol} {constants[0]}"


def zen_table(ruleset: Ruleset) -> tuple[dict[str, Any], dict[str, str]]:
    """The ruleset as a JDM decision (input, one "collect" table, output) and its field-to-input-key map.

    Fact names hold dots (`events.salary_change.age_hours`), which zen reads as paths, so the input uses
    flat keys. A rule's conditions on one field share that field's cell; an `any` block, which spans
    fields, goes in a last column holding a whole expression. (A cell must not start with a parenthesis:
    zen's unary parser rejects it and the row silently never matches.) zen compares decimals, not
    doubles: a fact of 2.6166666666666667 failed `<= 2.6166666666666667`, which is why the synthetic
    rules' constants are rounded as an author would write them.
    """
    names = sorted({c.field for rule in ruleset.rules for c in rule.when.conditions()})
    keys = {name: f"f{i}" for i, name in enumerate(names)}
    inputs = [{"id": keys[name], "name": name, "field": keys[name]} for name in names]
    inputs.append({"id": "any", "name": "any of"})
    rows = []
    for index, rule in enumerate(ruleset.rules):
        row: dict[str, str] = {"_id": f"r{index}", "any": "", "rule": str(index)} | {keys[n]: "" for n in names}
        for condition in rule.when.all:
            cell = row[keys[condition.field]]
            row[keys[condition.field]] = (cell + " and " if cell else "") + _zen_test(condition, "$")
        if rule.when.any:
            row["any"] = " or ".join(f"({_zen_test(c, keys[c.field])})" for c in rule.when.any)
        rows.append(row)
    position = {"x": 0, "y": 0}
    content = {"hitPolicy": "collect", "inputs": inputs, "outputs": [{"id": "rule", "name": "rule", "field": "rule"}]}
    decision = {
        "nodes": [
            {"id": "request", "type": "inputNode", "name": "request", "position": position},
            {"id": "rules", "type": "decisionTableNode", "name": "rules", "position": position, "content": content},
            {"id": "response", "type": "outputNode", "name": "response", "position": position},
        ],
        "edges": [
            {"id": "in", "sourceId": "request", "targetId": "rules", "type": "edge"},
            {"id": "out", "sourceId": "rules", "targetId": "response", "type": "edge"},
        ],
    }
    content["rules"] = rows
    return decision, keys


def zen_evaluator(ruleset: Ruleset) -> Evaluate:
    document, keys = zen_table(ruleset)
    decision = zen.ZenEngine().create_decision(zen.ZenDecisionContent(json.dumps(document)))
    items = tuple(keys.items())

    def evaluate(facts: Facts) -> list[int]:
        context = {key: facts[name] for name, key in items if name in facts}
        return sorted(int(row["rule"]) for row in decision.evaluate(context)["result"])

    return evaluate


class _TimedEngine:
    """Stands in for the `durable_rules_engine` module inside our adapter and adds up the time spent in its
    calls (assert, drain, retract): the part of an evaluation that no adapter of ours can make cheaper."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real
        self.error = real.error
        self.ns = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self._real, name)
        clock = time.perf_counter_ns

        def timed(*args: Any) -> Any:
            start = clock()
            try:
                return call(*args)
            finally:
                self.ns += clock() - start
                self.calls += 1

        return timed


@contextlib.contextmanager
def _timed_engine() -> Iterator[_TimedEngine]:
    real = durable._engine
    timed = _TimedEngine(real)
    durable._engine = timed  # type: ignore[assignment]
    try:
        yield timed
    finally:
        durable._engine = real


def engine_calls_ns(evaluate: Evaluate, facts: Sequence[Facts], overhead: float) -> list[float]:
    """Per evaluation, the nanoseconds spent inside durable_rules' own calls (less the timer's cost per call)."""
    samples: list[float] = []
    with _timed_engine() as timed:
        for item in facts:
            timed.ns = timed.calls = 0
            evaluate(item)
            samples.append(max(0.0, timed.ns - timed.calls * overhead))
    return samples


@dataclass(frozen=True, slots=True)
class SizeResult:
    rules: int
    engine_rulesets: int
    engine_rules: int
    matches: float
    stats: dict[str, Stats]
    disagreements: dict[str, int]
    examples: list[str]

    @property
    def engine_over_python(self) -> float:
        return self.stats["engine"].median / self.stats["python"].median

    @property
    def calls_over_python(self) -> float:
        return self.stats["durable_rules calls"].median / self.stats["python"].median

    @property
    def zen_over_engine(self) -> float:
        return self.stats["zen"].median / self.stats["engine"].median


def measure(
    rule_count: int, args: argparse.Namespace, sample: Sequence[Facts], note: Callable[[str], None], overhead: float
) -> SizeResult:
    ruleset = synthetic_ruleset(rule_count, args.rules_seed, sample)
    _, facts, _ = generate_facts(ruleset, args.profiles, args.seed)
    compiled = compile_ruleset(ruleset)
    reference = ReferenceEvaluator(ruleset)
    loaded = DurableEngine().load(compiled)
    evaluators: dict[str, Evaluate] = {
        "engine": loaded.evaluate,
        "python": compile_python(ruleset),
        "zen": zen_evaluator(ruleset),
    }
    stats: dict[str, Stats] = {}
    results: dict[str, list[list[int]]] = {}
    try:
        expected = [reference.evaluate(f) for f in facts]
        for name, evaluate in evaluators.items():
            note(f"{rule_count} rules: {name} ...")
            warm_up(evaluate, facts, min(args.warmup, 10 * len(facts)))
            times, results[name], _ = time_each(evaluate, facts)
            stats[name] = Stats.of(times, 1e3)
        note(f"{rule_count} rules: the engine's time inside durable_rules' own calls ...")
        stats["durable_rules calls"] = Stats.of(engine_calls_ns(loaded.evaluate, facts, overhead), 1e3)
    finally:
        loaded.close()
    disagreements = {
        name: sum(1 for got, want in zip(r, expected, strict=True) if got != want) for name, r in results.items()
    }
    examples = [
        f"{name} on profile {i}: got {got}, reference {want}"
        for name, r in results.items()
        for i, (got, want) in enumerate(zip(r, expected, strict=True))
        if got != want
    ][:5]
    return SizeResult(
        rules=rule_count,
        engine_rulesets=len(compiled.partitions),
        engine_rules=sum(len(p.rule_of) for p in compiled.partitions),
        matches=statistics.fmean(len(m) for m in expected),
        stats=stats,
        disagreements=disagreements,
        examples=examples,
    )


def print_report(results: Sequence[SizeResult], args: argparse.Namespace, overhead: float) -> None:
    machine = machine_info(["durable-rules", "zen-engine"])
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), {machine['python']}, "
        f"durable_rules {machine['durable_rules']}, zen-engine {machine['zen_engine']}"
    )
    load = load_average()
    if load is not None:
        print(f"load average at the end: {', '.join(f'{x:.2f}' for x in load)} (other processes skew the figures)")
    print(
        f"workload: {args.profiles:,} generated profiles (seed {args.seed}); synthetic rulesets (rules seed "
        f"{args.rules_seed}); timer overhead {overhead:.0f} ns included; all matches collected"
    )
    print()
    header = (
        f"{'rules':>5} {'engine rulesets':>15} {'matches':>8}  "
        f"{'engine med/p99 us':>18}  {'python med/p99':>15}  {'zen med/p99':>15}  {'eng/py':>7}  {'zen/eng':>7}  "
        f"{'durable_rules calls med':>23}  {'calls/py':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        e, p, z = r.stats["engine"], r.stats["python"], r.stats["zen"]
        print(
            f"{r.rules:>5} {r.engine_rulesets:>15} {r.matches:>8.1f}  "
            f"{e.median:>8.1f} / {e.p99:>7.1f}  {p.median:>6.1f} / {p.p99:>6.1f}  {z.median:>6.1f} / {z.p99:>6.1f}  "
            f"{r.engine_over_python:>6.1f}x  {r.zen_over_engine:>6.1f}x  "
            f"{r.stats['durable_rules calls'].median:>23.1f}  {r.calls_over_python:>7.1f}x"
        )
    print(
        "durable_rules calls: the part of the engine's evaluation spent inside durable_rules' own C calls "
        "(assert, drain, retract; timed in a separate pass), which no adapter can make cheaper"
    )
    print()
    for r in results:
        counts = ", ".join(f"{name} {n:,}" for name, n in r.disagreements.items())
        print(f"agreement with the reference evaluator at {r.rules} rules: disagreements {counts}")
        for example in r.examples:
            print(f"  {example}")
    print()
    for r in results:
        met = r.engine_over_python <= ENGINE_OVER_PYTHON
        floor = "" if met else f" (durable_rules' own calls alone: {r.calls_over_python:.1f}x)"
        print(
            f"target: {r.rules:>3} rules, engine <= {ENGINE_OVER_PYTHON:g}x compiled Python: "
            f"{r.engine_over_python:.1f}x {'met' if met else 'MISSED'}{floor}"
        )
        met = r.zen_over_engine >= ZEN_OVER_ENGINE
        print(
            f"target: {r.rules:>3} rules, zen-engine >= {ZEN_OVER_ENGINE:g}x the engine:  "
            f"{r.zen_over_engine:.1f}x {'met' if met else 'MISSED'}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=10_000, help="generated profiles (default 10000)")
    parser.add_argument("--sizes", default="20,100,400", help="rule counts, comma-separated (default 20,100,400)")
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help=f"profile seed (default {BENCH_SEED})")
    parser.add_argument("--rules-seed", type=int, default=RULES_SEED, help=f"ruleset seed (default {RULES_SEED})")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed evaluations per evaluator first")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.profiles < 1 or args.warmup < 0 or min(args.sizes) < 1:
        parser.error("--profiles and --sizes must be positive, --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    note(f"drawing rule constants from {SAMPLE_PROFILES:,} other customers (seed {SAMPLE_SEED}) ...")
    _, sample, _ = generate_facts(load_ruleset_file(BASE_RULESET), SAMPLE_PROFILES, SAMPLE_SEED)
    overhead = timer_overhead_ns()
    results = [measure(size, args, sample, note, overhead) for size in args.sizes]
    print_report(results, args, overhead)
    return 1 if any(any(r.disagreements.values()) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
