"""What tracing costs a decision: in-process `DecisionService.decide` on the embedded store, tracing off and on.

Run with `make bench-tracing` (or `python loadtests/bench_tracing.py`). Not a timed test: it prints figures.

The server's CPU per Decide is budgeted (under 0.4 ms), and a span on OpenTelemetry's no-op provider alone
cost ~13 us, so tracing that is off must cost close to nothing. This builds the application as `nba serve` does
(embedded SQLite, group commit, the real engine) and makes `--calls` decisions one after another, alternating
channels over the sample's customers, in rounds that alternate the modes (ABAB...) so a drift in the machine's
load falls on both alike:
- off: no `OTEL_*` variable, as a server started without them;
- on: a real provider with a batch processor (as `configure` installs) and an exporter that drops what it is
  given, so the figure is the spans' own cost in this process, not a collector's;
- sampled: the same with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`: what
  a busy server that keeps one trace in ten pays.
Decisions that each commit a record are noisy on a shared machine, so it also times, alone, exactly what
tracing-off adds to a decision (seven stage hooks, the trace id lookup, the debug-level check) against what the
code before it ran (three spans on OpenTelemetry's no-op provider).

It reports, per call and as the median over rounds, wall time, the CPU of the event loop's thread (where a
server's decisions run: the steadiest figure on a shared machine) and process CPU (all threads: the SQLite
writer's and the batch exporter's too).
With tracing on, each decision runs under a root span of its own, as under a real call's server span (which the
interceptor or middleware makes): eight spans a decision.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from loadtests.bench_common import machine_info
from nba_service.app import build_application
from nba_service.domain.model import Channel
from nba_service.log_setup import debug_enabled
from nba_service.service import DecisionService
from nba_service.settings import Settings
from nba_service.synthetic import SAMPLE_PATH, read_sample
from nba_service.telemetry import tracing

RULESET = Path(__file__).resolve().parent.parent / "rulesets" / "retail-banking.yaml"
CHANNELS = (Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER)


class Discard(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def _run(service: DecisionService, ids: list[str], calls: int) -> tuple[float, float, float]:
    """(wall, loop thread CPU, process CPU) seconds per call over `calls` sequential decisions; with tracing on,
    each in a root span of its own, as the server span of a real call."""
    tracer = tracing.tracer()
    wall, thread, cpu = time.perf_counter(), time.thread_time(), time.process_time()
    for n in range(calls):
        if tracer is None:
            await service.decide(ids[n % len(ids)], CHANNELS[n % 2])
            continue
        with tracer.start_as_current_span("call", kind=SpanKind.SERVER):
            await service.decide(ids[n % len(ids)], CHANNELS[n % 2])
    return (
        (time.perf_counter() - wall) / calls,
        (time.thread_time() - thread) / calls,
        (time.process_time() - cpu) / calls,
    )


STAGES = ("profile.read", "pipeline", "rules", "policy", "arbitration", "rendering", "decision_record")


def _off_hooks() -> None:
    for name in STAGES:
        with tracing.stage(name):
            pass
    tracing.current_ids()
    debug_enabled()


# As service.py had it: the global provider, never set, hands out a proxy to the no-op tracer.
_BEFORE = trace.get_tracer("nba_service")


def _noop_spans() -> None:
    for name in ("profile.read", "decide", "decision_record.commit"):
        with _BEFORE.start_as_current_span(name):
            pass


def _alone(work: Callable[[], None], number: int = 100_000) -> float:
    """Microseconds per run, the best of five."""
    return min(timeit.repeat(work, number=number, repeat=5)) / number * 1e6


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000, help="decisions per mode and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    ids = [p.customer_id for p in read_sample(SAMPLE_PATH, datetime.now(UTC))]
    with tempfile.TemporaryDirectory() as workdir:
        # A generous commit timeout: a shared machine can stall a commit past the default second.
        app = await build_application(Settings(db_path=Path(workdir) / "nba.db", rulesets=RULESET, db_timeout=30))
        results: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": [], "sampled": []}
        exporter = Discard()
        try:
            await _run(app.service, ids, args.warmup)
            for _ in range(args.rounds):
                for mode, rounds in results.items():
                    if mode != "off":
                        sampler = ParentBased(TraceIdRatioBased(0.1)) if mode == "sampled" else None
                        provider = TracerProvider(resource=tracing.resource(), sampler=sampler)
                        tracing.install(BatchSpanProcessor(exporter), provider=provider)
                        await _run(app.service, ids, args.warmup // 10)
                    try:
                        rounds.append(await _run(app.service, ids, args.calls))
                    finally:
                        tracing.shutdown()
        finally:
            await app.close()
    print(f"machine: {machine_info(['opentelemetry-sdk', 'durable-rules'])}")
    print(f"{args.calls} sequential decides per mode and round, {args.rounds} rounds, modes alternating")
    medians = {
        mode: [statistics.median(r[k] for r in rounds) * 1e6 for k in range(3)] for mode, rounds in results.items()
    }
    print(f"{'tracing':8} {'wall us':>9} {'loop CPU us':>12} {'process CPU us':>15}   (per call, median of rounds)")
    for mode, (wall, thread, cpu) in medians.items():
        print(f"{mode:8} {wall:9.1f} {thread:12.1f} {cpu:15.1f}")
    for mode in ("on", "sampled"):
        added = [medians[mode][k] - medians["off"][k] for k in range(3)]
        print(f"{mode} - off: wall {added[0]:+.1f} us, loop CPU {added[1]:+.1f} us, process CPU {added[2]:+.1f} us")
    print(f"{exporter.spans} spans exported in all")
    print(
        f"tracing off, added per decision, timed alone: {_alone(_off_hooks):.2f} us "
        f"(before: three no-op spans, {_alone(_noop_spans):.2f} us)"
    )


if __name__ == "__main__":
    asyncio.run(main())
