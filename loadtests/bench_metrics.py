"""What recording metrics costs a decision: DecisionService.decide in process, metrics on versus off.

Run with `python loadtests/bench_metrics.py [--calls 10000]`. One embedded SQLite store with the bundled 1,000
customers, the real durable_rules engine and group-commit writer; the same customers are decided in rounds that
alternate between a service without metrics and one with them, so both see the same machine. It prints the CPU
time per decide (process time, which is what the server pays) for each, the difference, and the cost of the gRPC
interceptor's part (wrapping the handler and recording the RPC duration histogram), which in-process calls do
not pass. Run once in prometheus_client's default mode (`--workers 1`) and once in multiprocess mode (what each
worker of `--workers N` runs), in a child process, since the mode is chosen when prometheus_client is imported.
No pass/fail: the figures go in docs/operators/metrics.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUNDS = 10


async def _measure(calls: int) -> dict[str, float]:
    import grpc
    from prometheus_client import CollectorRegistry

    from nba_service.app import activate, open_sqlite
    from nba_service.domain.loader import load_ruleset_dir
    from nba_service.domain.model import Channel
    from nba_service.domain.pipeline import evaluate
    from nba_service.service import DecisionService
    from nba_service.settings import BUNDLED_RULESETS, Settings
    from nba_service.stores.group_commit import GroupCommitWriter
    from nba_service.telemetry.metrics import ServiceMetrics
    from nba_service.transport.grpc_metrics import MetricsInterceptor

    ruleset = next(r for r in load_ruleset_dir(BUNDLED_RULESETS) if r.meta.name == "retail-banking")
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(db_path=Path(folder) / "nba.db", spill_dir=Path(folder), workers=1)
        store = await open_sqlite(settings, ruleset)
        metrics = ServiceMetrics(CollectorRegistry(), "current", "sqlite")
        writers = []
        services = {}
        for name, recorder in (("off", None), ("on", metrics)):
            commits = None if recorder is None else (lambda s, m=recorder: m.store_call("commit_records", s))
            writer = GroupCommitWriter(store, timeout=5.0, spill_dir=Path(folder), on_commit=commits)
            await writer.start()
            writers.append(writer)
            services[name] = DecisionService(store, writer, activate(ruleset), metrics=recorder)
        customers = [f"CUST-{n:06d}" for n in range(1, 1001)]
        cpu = {"off": 0.0, "on": 0.0}
        per_round = calls // ROUNDS
        for service in services.values():  # warm-up: caches, children, the engine's first evaluation
            for customer in customers[:200]:
                await service.decide(customer, Channel.AGENT_DESKTOP)
        for round_ in range(ROUNDS):
            for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                service = services[name]
                began = time.process_time()
                for i in range(per_round):
                    await service.decide(customers[i % len(customers)], Channel.AGENT_DESKTOP)
                cpu[name] += time.process_time() - began
        # The hooks alone, on the evaluations real decisions made: what a decision adds, without the noise of a
        # whole decide (~1 ms) around it. The commit histogram is recorded once per group commit; counted here
        # once per decision, as if every commit held one record.
        active = services["on"].active
        now = datetime.now(UTC)
        made = [evaluate(active, await store.get_profile(c), Channel.AGENT_DESKTOP, now, 3) for c in customers[:1000]]
        began = time.thread_time()
        for i in range(calls):
            metrics.store_call("read_profile", 0.0003)
            metrics.decided(Channel.AGENT_DESKTOP, active, made[i % len(made)])
            metrics.store_call("commit_records", 0.0008)
            if i % 1000 == 999:  # the runner's once-a-second flush, at ~1,000 decisions a second
                metrics.sample()
        hooks = time.thread_time() - began
        interceptor = MetricsInterceptor(metrics)

        async def behaviour(request: Any, context: Any) -> Any:
            return request

        handler = grpc.unary_unary_rpc_method_handler(behaviour)

        async def continuation(_details: Any) -> Any:
            return handler

        class Details:
            method = "/nba.v1.NextBestAction/Decide"

        class Context:  # what grpc.aio gives a handler, as far as the interceptor reads it
            def code(self) -> None:
                return None

        details, context = Details(), Context()
        began = time.thread_time()
        for _ in range(calls):
            wrapped = await interceptor.intercept_service(continuation, details)
            await wrapped.unary_unary(None, context)
        intercepted = time.thread_time() - began
        began = time.thread_time()
        for _ in range(calls):
            await behaviour(None, context)
        bare = time.thread_time() - began
        for writer in writers:
            await writer.close()
        await store.close()
    done = per_round * ROUNDS
    return {
        "decide_off_us": cpu["off"] / done * 1e6,
        "decide_on_us": cpu["on"] / done * 1e6,
        "hooks_us": hooks / calls * 1e6,
        "interceptor_us": (intercepted - bare) / calls * 1e6,
    }


def _child(calls: int, multiprocess: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory() as folder:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = folder
        out = subprocess.run(
            [sys.executable, __file__, "--calls", str(calls), "--child"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="decisions per variant (default 10000)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import structlog

        structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines in the figures
        print(json.dumps(asyncio.run(_measure(args.calls))))
        return 0
    from loadtests.bench_common import load_average, machine_info

    print(json.dumps(machine_info(["prometheus-client", "grpcio"])))
    print(f"load average before: {load_average()}")
    print(f"{args.calls:,} decisions per variant; microseconds per call (whole decide: process time, both variants")
    print("interleaved in rounds; recording alone: the hooks and the interceptor timed by themselves, thread CPU time)")
    for label, multiprocess in (("single process (--workers 1)", False), ("multiprocess (each of --workers N)", True)):
        figures = _child(args.calls, multiprocess)
        added = figures["decide_on_us"] - figures["decide_off_us"]
        hooks, interceptor = figures["hooks_us"], figures["interceptor_us"]
        print(f"{label}")
        off, on = figures["decide_off_us"], figures["decide_on_us"]
        print(f"  whole decide: off {off:7.1f}  on {on:7.1f}  on - off {added:6.1f}")
        total = hooks + interceptor
        print(f"  recording alone: decision hooks {hooks:5.2f} + gRPC interceptor {interceptor:5.2f} = {total:5.2f}")
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
