"""Benchmark: durable_rules evaluation time per decision next to the reference evaluator's, and RSS growth.

Not a timed test: it prints figures (and PASS/MISS against the issue's targets) for a human or a CI log.

    python loadtests/bench_engine.py [--profiles 10000] [--evaluations 1000000] [--seed N] [--json]

What it does, in order:
1. generates `--profiles` synthetic customers (seed `--seed`, not the bundled sample's) and projects
   each onto the bundled ruleset's facts once, timing each projection;
2. warms both evaluators up, then times every evaluation on its own with `time.perf_counter_ns()`,
   first the durable_rules engine over all the facts, then the reference evaluator (all matches are
   collected: `evaluate` returns every matching rule);
3. checks the two evaluators agree on every profile (exit status 1 if they do not);
4. times "project + evaluate" per profile, the engine's share of a decision end to end;
5. measures RSS (after `gc.collect()`) before and after `--evaluations` engine evaluations cycling
   over the facts.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from bench_common import Stats, Target, load_average, machine_info

from nba_service.domain.compiler import CompiledRuleset, compile_ruleset
from nba_service.domain.facts import Facts, project
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Ruleset
from nba_service.domain.profile import Profile
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.engine.durable import DurableEngine
from nba_service.synthetic import DEFAULT_SEED, generate_profiles

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RULESET = REPO / "rulesets" / "retail-banking.yaml"
# The bundled sample is the first 1,000 customers of DEFAULT_SEED; a different seed gives other customers.
BENCH_SEED = DEFAULT_SEED + 1
# Fixed so runs are comparable: the synthetic times are offsets before `now`.
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024

TARGET_MEDIAN_US = 40.0
TARGET_P99_US = 150.0
TARGET_RSS_GROWTH_MIB = 10.0

Evaluate = Callable[[Facts], list[int]]


def timer_overhead_ns(rounds: int = 100_000) -> float:
    """Median cost of one back-to-back `perf_counter_ns()` pair: included in every sample below."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        start = clock()
        samples.append(clock() - start)
    return statistics.median(samples)


def generate_facts(ruleset: Ruleset, count: int, seed: int) -> tuple[list[Profile], list[Facts], list[int]]:
    """The profiles, their facts, and the time each projection took (as the service calls it)."""
    fact_fields = ruleset.fact_fields()
    clock = time.perf_counter_ns
    profiles = list(generate_profiles(count, seed=seed, now=NOW))
    # The service never holds 10,000 profiles: keep them out of the collector's full passes, so GC
    # pauses in the figures come from what projection and evaluation allocate, not from this data.
    gc.collect()
    gc.freeze()
    facts: list[Facts] = []
    times: list[int] = []
    for profile in profiles:
        start = clock()
        projection = project(ruleset, profile, NOW, fact_fields)
        times.append(clock() - start)
        facts.append(projection.facts)
    return profiles, facts, times


def time_each(evaluate: Evaluate, facts: Sequence[Facts]) -> tuple[list[int], list[list[int]], int]:
    """Per-evaluation wall times in nanoseconds, the results in the order of `facts`, and the pass's CPU time.

    The CPU time (this thread's, clock included) is immune to preemption: next to the wall-clock mean it
    shows how much another process on the same core inflated the figures.
    """
    clock = time.perf_counter_ns
    times: list[int] = []
    results: list[list[int]] = []
    gc.collect()
    cpu = time.thread_time_ns()
    for item in facts:
        start = clock()
        matched = evaluate(item)
        times.append(clock() - start)
        results.append(matched)
    cpu = time.thread_time_ns() - cpu
    return times, results, cpu


def time_decisions(ruleset: Ruleset, evaluate: Evaluate, profiles: Sequence[Profile]) -> list[int]:
    """Per-profile time of projection plus engine evaluation, the rules part of a decision."""
    fact_fields = ruleset.fact_fields()
    clock = time.perf_counter_ns
    times: list[int] = []
    gc.collect()
    for profile in profiles:
        start = clock()
        evaluate(project(ruleset, profile, NOW, fact_fields).facts)
        times.append(clock() - start)
    return times


def warm_up(evaluate: Evaluate, facts: Sequence[Facts], count: int) -> None:
    for index in range(count):
        evaluate(facts[index % len(facts)])


def disagreements(
    ruleset: Ruleset, profiles: Sequence[Profile], engine: Sequence[list[int]], reference: Sequence[list[int]]
) -> list[str]:
    rule_ids = [rule.id for rule in ruleset.rules]
    problems = []
    for profile, got, want in zip(profiles, engine, reference, strict=True):
        if got != want:
            extra = [rule_ids[i] for i in sorted(set(got) - set(want))]
            lost = [rule_ids[i] for i in sorted(set(want) - set(got))]
            problems.append(
                f"{profile.customer_id}: engine only {extra}, reference only {lost} (indices {got} vs {want})"
            )
    return problems


def measure_rss(evaluate: Evaluate, facts: Sequence[Facts], evaluations: int) -> dict[str, float]:
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    step = max(1, min(100_000, evaluations // 10))
    started = last = time.perf_counter()
    last_done = 0
    size = len(facts)
    for done in range(1, evaluations + 1):
        evaluate(facts[done % size])
        if done % step == 0 or done == evaluations:
            now = time.perf_counter()
            rate = (done - last_done) / (now - last) if now > last else 0.0
            last, last_done = now, done
            rss = process.memory_info().rss
            print(
                f"  {done:>9,} evaluations  {rate:>9,.0f}/s  RSS {rss / MIB:7.1f} MiB  (+{(rss - before) / MIB:.2f})",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    gc.collect()
    after = process.memory_info().rss
    return {
        "evaluations": evaluations,
        "seconds": elapsed,
        "rate_per_second": evaluations / elapsed if elapsed else 0.0,
        "rss_before_mib": before / MIB,
        "rss_after_mib": after / MIB,
        "rss_growth_mib": (after - before) / MIB,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    ruleset = load_ruleset_file(args.ruleset)
    compiled: CompiledRuleset = compile_ruleset(ruleset)
    reference = ReferenceEvaluator(ruleset)
    loaded = DurableEngine().load(compiled)
    try:
        note(f"generating and projecting {args.profiles:,} profiles (seed {args.seed}) ...")
        profiles, facts, projection_ns = generate_facts(ruleset, args.profiles, args.seed)
        gc.collect()
        gc.freeze()
        overhead = timer_overhead_ns()
        warmups = min(args.warmup, 10 * len(facts))
        note(f"warming up ({warmups:,} evaluations each) ...")
        warm_up(loaded.evaluate, facts, warmups)
        warm_up(reference.evaluate, facts, warmups)
        note("timing each evaluation: engine, then reference ...")
        engine_ns, engine_results, engine_cpu = time_each(loaded.evaluate, facts)
        reference_ns, reference_results, reference_cpu = time_each(reference.evaluate, facts)
        problems = disagreements(ruleset, profiles, engine_results, reference_results)
        note("timing project + evaluate ...")
        decision_ns = time_decisions(ruleset, loaded.evaluate, profiles)
        note(f"RSS over {args.evaluations:,} engine evaluations ...")
        memory = measure_rss(loaded.evaluate, facts, args.evaluations)
    finally:
        loaded.close()

    engine = Stats.of(engine_ns, 1e3)
    targets = [
        Target("engine median per evaluation", engine.median, TARGET_MEDIAN_US, "us", decimals=1),
        Target("engine p99 per evaluation", engine.p99, TARGET_P99_US, "us", decimals=1),
        Target(
            f"RSS growth, {args.evaluations:,} evaluations",
            memory["rss_growth_mib"],
            TARGET_RSS_GROWTH_MIB,
            "MiB",
            decimals=1,
        ),
    ]
    return {
        "machine": {**machine_info(["durable-rules"]), "load_average": load_average()},
        "ruleset": {
            "name": ruleset.meta.name,
            "version": ruleset.meta.version,
            "rules": len(ruleset.rules),
            "engine_rules": sum(len(p.rule_of) for p in compiled.partitions),
            "engine_rulesets": len(compiled.partitions),
            "partition_costs": [p.cost for p in compiled.partitions],
            "partition_stack_bounds": [getattr(p, "stack_bound", None) for p in compiled.partitions],
            "partition_keys": [len(p.keys) for p in compiled.partitions],
            "fact_keys": len(compiled.field_keys),
        },
        "workload": {
            "profiles": len(profiles),
            "seed": args.seed,
            "now": NOW.isoformat(),
            "warmup_evaluations": warmups,
            "mean_facts_per_profile": statistics.fmean(len(f) for f in facts),
            "mean_matches_per_evaluation": statistics.fmean(len(r) for r in reference_results),
            "profiles_with_no_match": sum(1 for r in reference_results if not r),
            "timer_overhead_ns": overhead,
            "engine_cpu_mean_us": engine_cpu / len(facts) / 1000.0,
            "reference_cpu_mean_us": reference_cpu / len(facts) / 1000.0,
            "gc_enabled": gc.isenabled(),
            "gc_frozen_objects": gc.get_freeze_count(),
        },
        "latency_us": {
            "engine": asdict(engine),
            "reference": asdict(Stats.of(reference_ns, 1e3)),
            "projection": asdict(Stats.of(projection_ns, 1e3)),
            "project_and_engine": asdict(Stats.of(decision_ns, 1e3)),
        },
        "agreement": {"disagreements": len(problems), "examples": problems[:10]},
        "memory": memory,
        "targets": [
            {"name": t.name, "measured": t.measured, "limit": t.limit, "unit": t.unit, "passed": t.passed}
            for t in targets
        ],
        "all_targets_met": all(t.passed for t in targets),
        "_targets": targets,
    }


def print_report(report: dict[str, Any]) -> None:
    machine, ruleset, workload = report["machine"], report["ruleset"], report["workload"]
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['python']}, durable_rules {machine['durable_rules']}, {machine['platform']}"
    )
    if machine["load_average"] is not None:
        load = ", ".join(f"{x:.2f}" for x in machine["load_average"])
        print(f"load average at the end: {load} (other processes on these cores skew the figures)")
    print(
        f"ruleset: {ruleset['name']} {ruleset['version']}: {ruleset['rules']} rules -> "
        f"{ruleset['engine_rules']} engine rules in {ruleset['engine_rulesets']} engine rulesets (partitions), "
        f"{ruleset['fact_keys']} fact keys"
    )
    print(
        f"  partition alpha-test costs {ruleset['partition_costs']}, proven stack bounds "
        f"{ruleset['partition_stack_bounds']} (limit 64), keys per partition {ruleset['partition_keys']}"
    )
    print(
        f"workload: {workload['profiles']:,} profiles, seed {workload['seed']}, now {workload['now']}; "
        f"{workload['mean_facts_per_profile']:.1f} facts/profile, "
        f"{workload['mean_matches_per_evaluation']:.2f} matches/evaluation "
        f"({workload['profiles_with_no_match']:,} profiles match nothing); "
        f"warm-up {workload['warmup_evaluations']:,}; timer overhead {workload['timer_overhead_ns']:.0f} ns "
        f"(included); gc {'on' if workload['gc_enabled'] else 'off'}, "
        f"{workload['gc_frozen_objects']:,} setup objects frozen"
    )
    print()
    header = f"{'per evaluation (us)':<28}{'median':>9}{'p90':>9}{'p99':>9}{'max':>10}{'mean':>9}"
    print(header)
    print("-" * len(header))
    labels = {
        "engine": "durable_rules engine",
        "reference": "reference evaluator",
        "projection": "projection only",
        "project_and_engine": "project + engine evaluate",
    }
    for key, label in labels.items():
        s = report["latency_us"][key]
        print(f"{label:<28}{s['median']:>9.1f}{s['p90']:>9.1f}{s['p99']:>9.1f}{s['max']:>10.1f}{s['mean']:>9.1f}")
    engine, ref = report["latency_us"]["engine"], report["latency_us"]["reference"]
    print(f"engine / reference: median x{engine['median'] / ref['median']:.2f}, p99 x{engine['p99'] / ref['p99']:.2f}")
    print(
        f"CPU time per evaluation (mean, immune to preemption): engine {workload['engine_cpu_mean_us']:.1f} us, "
        f"reference {workload['reference_cpu_mean_us']:.1f} us"
    )
    print()
    agreement = report["agreement"]
    print(f"agreement: {agreement['disagreements']:,} disagreements over {workload['profiles']:,} profiles")
    for example in agreement["examples"]:
        print(f"  {example}")
    memory = report["memory"]
    print(
        f"memory: RSS {memory['rss_before_mib']:.1f} MiB before, {memory['rss_after_mib']:.1f} MiB after "
        f"{memory['evaluations']:,} engine evaluations ({memory['rss_growth_mib']:+.2f} MiB) "
        f"in {memory['seconds']:.1f} s, {memory['rate_per_second']:,.0f}/s"
    )
    print()
    for target in report["_targets"]:
        limit = f"< {target.limit:g} {target.unit}"
        print(f"target: {target.name:<38} {target.measured:>8.2f} {target.unit:<3} {limit:<10} {target.verdict()}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=10_000, help="generated profiles to time (default 10000)")
    parser.add_argument("--evaluations", type=int, default=1_000_000, help="engine evaluations for RSS growth")
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help=f"synthetic seed (default {BENCH_SEED})")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed evaluations per evaluator first")
    parser.add_argument("--ruleset", type=Path, default=DEFAULT_RULESET, help="ruleset file (default: bundled)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary instead of the table")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit with status 2 when a target is missed")
    args = parser.parse_args(argv)
    if args.profiles < 1 or args.evaluations < 1 or args.warmup < 0:
        parser.error("--profiles and --evaluations must be positive, --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2))
    else:
        print_report(report)
    if report["agreement"]["disagreements"]:
        return 1
    if args.fail_on_miss and not report["all_targets_met"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
