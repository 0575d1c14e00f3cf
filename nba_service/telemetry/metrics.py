"""The service's metrics: what a decision, a call, the stores and the deploys add to, and nothing that names a customer.

Recorded with prometheus_client, not the OpenTelemetry SDK: measured on the same machine, one SDK histogram
record costs ~7 us (attribute cleaning and hashing on every call), a prometheus_client child `observe` ~0.7 us
(~1.8 us in multiprocess mode), and Decide's whole server budget is 400 us. OTLP is served from the same
instruments by `telemetry.otlp`, which converts a collection into OTLP data points.

Every label value comes from a bounded set: the ruleset's own ids and versions, the channels, the gRPC methods
and status codes, fixed reason words. Children are cached per label set, so a decision costs dictionary lookups
and a few `inc` calls.

With `--workers N` the workers run in prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by
the supervisor): each process writes its values to memory-mapped files, and the supervisor's endpoint adds them
up, so one scrape is the whole pod and a retired worker's counts are not lost (see docs/operators/metrics.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from nba_service.domain.model import Channel
from nba_service.domain.pipeline import ActiveRuleset, Evaluation
from nba_service.domain.records import ShadowRun

if TYPE_CHECKING:
    from nba_service.settings import Settings

RpcDurationMetric = Literal["current", "legacy", "both"]

# Semantic conventions' advice for rpc.server.call.duration starts at 5 ms, where a whole Decide (~2 ms) would
# fall in the first bucket: three finer ones come first.
RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
RPC_BUCKETS_MS = tuple(b * 1000 for b in RPC_BUCKETS_S)
STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DEPLOY_ORIGINS = frozenset({"startup", "activate", "rollback", "folder", "sighup"})

# OpenTelemetry name, unit (UCUM) and attribute names of each family, for the OTLP export (telemetry.otlp);
# Prometheus names are derived from them the way OpenTelemetry's Prometheus exporters derive them.
OTEL_NAMES: dict[str, tuple[str, str]] = {
    "rpc_server_call_duration_seconds": ("rpc.server.call.duration", "s"),
    "rpc_server_duration_milliseconds": ("rpc.server.duration", "ms"),
    "http_server_request_duration_seconds": ("http.server.request.duration", "s"),
    "nba_decisions": ("nba.decisions", "{decision}"),
    "nba_rule_firings": ("nba.rule.firings", "{firing}"),
    "nba_candidates_dropped": ("nba.candidates.dropped", "{candidate}"),
    "nba_shadow_runs": ("nba.shadow.runs", "{run}"),
    "nba_store_operation_duration_seconds": ("nba.store.operation.duration", "s"),
    "nba_store_pool_connections": ("nba.store.pool.connections", "{connection}"),
    "nba_store_pool_max_connections": ("nba.store.pool.max_connections", "{connection}"),
    "nba_decision_log_queued": ("nba.decision_log.queued", "{record}"),
    "nba_ruleset_deploys": ("nba.ruleset.deploys", "{deploy}"),
}
OTEL_LABELS = {
    "rpc_system_name": "rpc.system.name",
    "rpc_method": "rpc.method",
    "rpc_response_status_code": "rpc.response.status_code",
    "error_type": "error.type",
    "rpc_system": "rpc.system",
    "rpc_service": "rpc.service",
    "rpc_grpc_status_code": "rpc.grpc.status_code",
    "http_request_method": "http.request.method",
    "http_route": "http.route",
    "http_response_status_code": "http.response.status_code",
}


class ServiceMetrics:
    """The instruments of one process; the decision service, the transports and the stores record through it."""

    def __init__(
        self, registry: CollectorRegistry, rpc_duration: RpcDurationMetric = "current", store: str = "sqlite"
    ) -> None:
        self.registry = registry
        self.store = store
        self._rpc_current = None
        self._rpc_legacy = None
        if rpc_duration in ("current", "both"):
            self._rpc_current = Histogram(
                "rpc_server_call_duration",
                "Measures the duration of an incoming Remote Procedure Call (RPC).",
                ["rpc_system_name", "rpc_method", "rpc_response_status_code", "error_type"],
                unit="seconds",
                buckets=RPC_BUCKETS_S,
                registry=registry,
            )
        if rpc_duration in ("legacy", "both"):
            self._rpc_legacy = Histogram(
                "rpc_server_duration",
                "Measures the duration of inbound RPC (semantic conventions 1.37 and before).",
                ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"],
                unit="milliseconds",
                buckets=RPC_BUCKETS_MS,
                registry=registry,
            )
        self._http = Histogram(
            "http_server_request_duration",
            "Duration of HTTP server requests (the HTTP/JSON API and the agent panel).",
            ["http_request_method", "http_route", "http_response_status_code", "error_type"],
            unit="seconds",
            buckets=RPC_BUCKETS_S,
            registry=registry,
        )
        self._decisions = Counter(
            "nba_decisions",
            "Decisions made (dry runs excluded), by channel, first action offered ('none': none), ruleset version.",
            ["channel", "action", "ruleset_version"],
            registry=registry,
        )
        self._firings = Counter(
            "nba_rule_firings", "Rules whose conditions held in a recorded decision.", ["rule_id"], registry=registry
        )
        self._dropped = Counter(
            "nba_candidates_dropped",
            "Candidate actions not offered, by stage (policy, arbitration) and reason.",
            ["stage", "reason"],
            registry=registry,
        )
        self._shadow = Counter(
            "nba_shadow_runs",
            "Shadow runs of a candidate ruleset, by result (agreed, disagreed, failed).",
            ["result"],
            registry=registry,
        )
        self._store = Histogram(
            "nba_store_operation_duration",
            "Store calls on the decision path: a profile read, a decision-record commit (one per group commit).",
            ["store", "operation"],
            unit="seconds",
            buckets=STORE_BUCKETS_S,
            registry=registry,
        )
        self._queued = Gauge(
            "nba_decision_log_queued",
            "Decision records and record updates waiting for their group commit.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.deploys = DeployMetrics(registry)
        self._decision_children: dict[tuple[Channel, str, str], Counter] = {}
        self._firing_children: dict[str, Counter] = {}
        self._dropped_children: dict[tuple[str, str], Counter] = {}
        self._store_children: dict[str, Histogram] = {}
        self._samplers: list[Callable[[], None]] = []
        self._pending_decisions: dict[tuple[Channel, str, str], int] = {}
        self._pending_firings: dict[str, int] = {}
        self._pending_dropped: dict[tuple[str, str], int] = {}

    # ---------------------------------------------------------------- decisions (the service calls these)

    def decided(self, channel: Channel, active: ActiveRuleset, evaluation: Evaluation) -> None:
        """Counts into plain dictionaries (~0.1 us an entry, where a counter's `inc` takes its lock, ~0.7 us);
        `sample` adds them to the counters about once a second, on the same event loop."""
        actions = evaluation.actions
        key = (channel, actions[0].action_id if actions else "none", active.ruleset.meta.version)
        decisions = self._pending_decisions
        decisions[key] = decisions.get(key, 0) + 1
        firings = self._pending_firings
        for fired in evaluation.rules_fired:
            firings[fired.rule_id] = firings.get(fired.rule_id, 0) + 1
        drops = self._pending_dropped
        for dropped in evaluation.dropped:
            reason = (dropped.stage, dropped.reason)
            drops[reason] = drops.get(reason, 0) + 1

    def _flush_counts(self) -> None:
        for key, count in self._pending_decisions.items():
            child = self._decision_children.get(key)
            if child is None:
                child = self._decision_children[key] = self._decisions.labels(key[0].value, key[1], key[2])
            child.inc(count)
        for rule_id, count in self._pending_firings.items():
            firing = self._firing_children.get(rule_id)
            if firing is None:
                firing = self._firing_children[rule_id] = self._firings.labels(rule_id)
            firing.inc(count)
        for reason, count in self._pending_dropped.items():
            dropped = self._dropped_children.get(reason)
            if dropped is None:
                dropped = self._dropped_children[reason] = self._dropped.labels(*reason)
            dropped.inc(count)
        self._pending_decisions.clear()
        self._pending_firings.clear()
        self._pending_dropped.clear()

    def shadow_compared(self, run: ShadowRun) -> None:
        self._shadow.labels("failed" if run.error else "agreed" if run.agreed else "disagreed").inc()

    def store_call(self, operation: str, seconds: float) -> None:
        child = self._store_children.get(operation)
        if child is None:
            child = self._store_children[operation] = self._store.labels(self.store, operation)
        child.observe(seconds)

    # ---------------------------------------------------------------- calls (the transports' interceptors)

    def rpc_recorder(self, method: str, code_name: str, code_value: int) -> Callable[[float], None]:
        """A callable that records one call's duration (seconds) into every enabled RPC histogram; the caller
        keeps it per (method, status), so a call costs a dictionary lookup and one or two `observe` calls."""
        service, _, short = method.lstrip("/").partition("/")
        observers: list[Callable[[float], None]] = []
        if self._rpc_current is not None:
            error = "" if code_name == "OK" else code_name
            current = self._rpc_current.labels("grpc", f"{service}/{short}", code_name, error)
            observers.append(current.observe)
        if self._rpc_legacy is not None:
            legacy = self._rpc_legacy.labels("grpc", service, short, str(code_value))
            observers.append(lambda seconds: legacy.observe(seconds * 1000.0))
        if len(observers) == 1:
            return observers[0]

        def recorder(seconds: float) -> None:
            for observe in observers:
                observe(seconds)

        return recorder

    def http_recorder(self, method: str, route: str, status: int) -> Callable[[float], None]:
        """As `rpc_recorder`, for the HTTP API (`http.server.request.duration`): `route` is the template, empty
        when no route matched."""
        error = str(status) if status >= 500 else ""
        return self._http.labels(method, route, str(status), error).observe

    # ---------------------------------------------------------------- state sampled now and then

    def sample_queue(self, queued: Callable[[], int]) -> None:
        self._samplers.append(lambda: self._queued.set(queued()))

    def sample_pool(self, in_use: Callable[[], int], idle: Callable[[], int], limit: int) -> None:
        """PostgreSQL only: the embedded store has no pool, so these families exist only when this is called."""
        pool = Gauge(
            "nba_store_pool_connections",
            "PostgreSQL pool connections, by state (in_use, idle).",
            ["state"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        Gauge(
            "nba_store_pool_max_connections",
            "The PostgreSQL pool's size limit.",
            registry=self.registry,
            multiprocess_mode="livesum",
        ).set(limit)
        in_use_gauge, idle_gauge = pool.labels("in_use"), pool.labels("idle")

        def sample() -> None:
            in_use_gauge.set(in_use())
            idle_gauge.set(idle())

        self._samplers.append(sample)

    def sample(self) -> None:
        """Adds the decisions counted since the last call to the counters and reads the sampled gauges. The runner
        calls it about once a second and at shutdown, on the event loop (multiprocess mode cannot call back into a
        worker at scrape time): counters are at most a second behind."""
        self._flush_counts()
        for sampler in self._samplers:
            sampler()


class DeployMetrics:
    """Ruleset deploys, counted where they are decided: the lone server, or a supervisor (not its workers)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "nba_ruleset_deploys",
            "Ruleset deploys, by origin and result (activated, refused).",
            ["origin", "result"],
            registry=registry,
        )

    def outcome(self, origin: str, result: str) -> None:
        self.counter.labels(origin if origin in DEPLOY_ORIGINS else "other", result).inc()


def quiet_exposition() -> None:
    """No `*_created` series (one more gauge per counter and histogram series, in the text format): a start time
    says nothing a counter reset does not, and the OTLP export uses the process's own start instead."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


def process_metrics(settings: Settings, env: Mapping[str, str] = os.environ) -> ServiceMetrics | None:
    """This process's instruments, or None when nobody asked for metrics (no --metrics-port, no OTLP)."""
    from nba_service.telemetry.otlp import otlp_requested  # noqa: PLC0415 - the OTLP side imports this module

    if settings.metrics_port is None and not otlp_requested(env):
        return None
    quiet_exposition()
    return ServiceMetrics(CollectorRegistry(), settings.rpc_duration_metric, settings.store)
