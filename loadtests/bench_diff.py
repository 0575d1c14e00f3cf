"""How long `nba rulesets diff` takes over a large population: the issue asks for 100,000 customers in under
60 s on 2 cores, both versions, one channel.

Run with `make bench-diff` (or `python loadtests/bench_diff.py`). Not a timed test: it prints figures and a
verdict.

What it does:
1. writes a population file of `--customers` synthetic customers (the generator `nba sample generate` uses;
   a file given with `--population` is used as it is), and a changed copy of the bundled ruleset: the next
   patch version, one rule removed (`large-deposit-term-deposit`) and one rule ranked near the top
   (`birthday-this-week` 470 -> 995), so decisions really move;
2. runs the real command line, `nba rulesets diff BUNDLED CHANGED --population FILE --channel C --json`, as
   a reviewer would, and times it from start to exit (loading both files, starting the worker processes,
   reading the file, evaluating every customer with both versions on durable_rules, the report);
3. prints the wall time, the evaluation time the command reports, customers per second, the CPU seconds
   the command and its workers used, the worker processes and the machine (with its load average: other
   work on the machine slows the run, and the CPU seconds show what the run itself costs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_common import load_average, machine_info
from nba_service import synthetic

REPO = Path(__file__).resolve().parents[1]
RULESET = REPO / "rulesets" / "retail-banking.yaml"
NBA = Path(sys.executable).parent / "nba"
LIMIT_SECONDS = 60.0
REMOVED_RULE = "large-deposit-term-deposit"
RAISED_RULE = "birthday-this-week"
RAISED_PRIORITY = 995


def write_candidate(directory: Path) -> Path:
    text = RULESET.read_text(encoding="utf-8")
    text, versions = re.subn(r"(?m)^(  version: \d+\.\d+\.)(\d+)$", lambda m: f"{m[1]}{int(m[2]) + 1}", text, count=1)
    text, removed = re.subn(rf"(?m)^  - id: {re.escape(REMOVED_RULE)}\n(?:    .*\n)+", "", text, count=1)
    pattern = rf"(- id: {re.escape(RAISED_RULE)}\n(?:    .*\n)*?    priority: )\d+"
    text, raised = re.subn(pattern, rf"\g<1>{RAISED_PRIORITY}", text, count=1)
    if (versions, removed, raised) != (1, 1, 1):
        raise SystemExit("the bundled ruleset no longer has the rules this benchmark changes")
    path = directory / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--population", type=Path, help="an existing population file (skips generating one)")
    parser.add_argument("--channel", choices=("agent_desktop", "outbound_dialer"), default="agent_desktop")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-diff-") as scratch:
        directory = Path(scratch)
        candidate = write_candidate(directory)
        population = args.population
        generated_in = None
        if population is None:
            population = directory / "population.jsonl"
            print(f"generating {args.customers:,} customers into {population} ...", file=sys.stderr)
            started = time.perf_counter()
            synthetic.write_sample(population, args.customers)
            generated_in = time.perf_counter() - started
        command = [
            str(NBA),
            "rulesets",
            "diff",
            str(RULESET),
            str(candidate),
            "--population",
            str(population),
            "--channel",
            args.channel,
            "--workers",
            str(args.workers),
            "--json",
            "--quiet",
        ]
        print(f"running {' '.join(command[1:4])} ... ({args.workers} workers)", file=sys.stderr)
        load_before = load_average()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = load_average()
    # The command and its worker processes (reaped by it, so counted here): CPU seconds are what the run costs
    # whatever else the machine is doing; on idle cores the wall time approaches cpu / workers.
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"nba rulesets diff failed ({result.returncode}):\n{result.stderr}")
    report = json.loads(result.stdout)
    customers = report["impact"]["customers"]
    [channel] = report["impact"]["channels"]
    figures = {
        "customers": customers,
        "channel": args.channel,
        "workers": report["run"]["workers"],
        "wall_seconds": round(wall, 2),
        "evaluation_seconds": report["run"]["seconds"],
        "customers_per_second": round(customers / wall),
        "cpu_seconds": round(cpu, 1),
        "evaluations_per_second": round(2 * customers / report["run"]["seconds"]),
        "changed_customers": channel["changed"]["count"],
        "population_generated_seconds": None if generated_in is None else round(generated_in, 1),
        "limit_seconds": LIMIT_SECONDS,
        "met": wall < LIMIT_SECONDS,
        "machine": machine_info(["durable-rules"]),
        "load_average": {"before": load_before, "after": load_after},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    info = figures["machine"]
    print(f"machine: {info['cpu']}, {info['usable_cores']} usable cores, {info['python']}")
    print(f"load average before {load_before}, after {load_after}")
    print(
        f"{customers:,} customers, {args.channel}, both versions, {figures['workers']} worker processes: "
        f"{wall:.1f} s from start to exit ({figures['customers_per_second']:,} customers/s), of which "
        f"{figures['evaluation_seconds']:.1f} s evaluating ({figures['evaluations_per_second']:,} decisions/s); "
        f"{figures['changed_customers']:,} customers get a different answer"
    )
    verdict = "met" if figures["met"] else f"MISSED by {wall - LIMIT_SECONDS:.1f} s"
    print(
        f"CPU: {cpu:.1f} s in the command and its workers ({cpu / figures['workers']:.1f} s per worker process if the "
        "cores were idle)"
    )
    print(f"target: under {LIMIT_SECONDS:.0f} s for 100,000 customers on 2 cores: {verdict}")


if __name__ == "__main__":
    main()
