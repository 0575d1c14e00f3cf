"""OTLP export of the metrics, when the standard OTEL_* variables ask for it.

The instruments are prometheus_client's (telemetry.metrics says why); this turns one collection of them into
OpenTelemetry SDK data points, with the OpenTelemetry names, units and attribute keys, and hands them to the
official OTLP/gRPC exporter (opentelemetry-exporter-otlp-proto-grpc), which reads the endpoint, headers, TLS,
compression and timeout from the usual OTEL_EXPORTER_OTLP_* variables itself. Cumulative temporality, as
prometheus_client keeps its values; each process (each worker) exports its own, as its own resource.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable, Mapping

import structlog
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as Family

from nba_service.telemetry.metrics import OTEL_LABELS, OTEL_NAMES

log = structlog.get_logger(__name__)

SCOPE = InstrumentationScope("nba_service")
DEFAULT_INTERVAL_MS = 60_000
DEFAULT_TIMEOUT_MS = 30_000


def otlp_requested(env: Mapping[str, str]) -> bool:
    """OTEL_METRICS_EXPORTER=otlp asks for it and =none refuses it; unset, an OTLP endpoint variable asks for it.

    (The specification's default exporter is otlp even with no endpoint; ours is off, so that a server nobody
    configured does not try to reach localhost:4317 every minute.)
    """
    exporters = env.get("OTEL_METRICS_EXPORTER")
    if exporters is not None and exporters.strip():
        return "otlp" in {name.strip() for name in exporters.split(",")}
    return bool(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _millis(env: Mapping[str, str], name: str, default: int) -> float:
    try:
        value = float(env.get(name, default))
    except ValueError:
        log.warning("otel_setting_ignored", variable=name, reason="not a number of milliseconds")
        return default / 1000
    return (value if value > 0 else default) / 1000


def metrics_data(families: Iterable[Family], resource: Resource, now_ns: int, start_ns: int) -> MetricsData:
    """One collection of prometheus_client families as OTLP metrics (families of other types are left out)."""
    metrics: list[Metric] = []
    for family in families:
        name, unit = OTEL_NAMES.get(family.name, (family.name, family.unit or ""))
        converted = _data(family, now_ns, start_ns)
        if converted is not None:
            metrics.append(Metric(name, family.documentation, unit, converted))
    scope = ScopeMetrics(SCOPE, metrics, "")
    return MetricsData([ResourceMetrics(resource, [scope], "")])


def _attributes(labels: Mapping[str, str], drop: str = "") -> dict[str, str]:
    return {OTEL_LABELS.get(k, k): v for k, v in labels.items() if k != drop and v != ""}


def _key(labels: Mapping[str, str], drop: str = "") -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _data(family: Family, now_ns: int, start_ns: int) -> Sum | Gauge | Histogram | None:
    created: dict[tuple[tuple[str, str], ...], int] = {
        _key(s.labels): int(s.value * 1e9) for s in family.samples if s.name.endswith("_created")
    }
    if family.type == "counter":
        sums = [
            NumberDataPoint(_attributes(s.labels), created.get(_key(s.labels), start_ns), now_ns, s.value)
            for s in family.samples
            if s.name.endswith("_total")
        ]
        return Sum(sums, AggregationTemporality.CUMULATIVE, is_monotonic=True)
    if family.type == "gauge":
        return Gauge([NumberDataPoint(_attributes(s.labels), start_ns, now_ns, s.value) for s in family.samples])
    if family.type != "histogram":
        return None
    series: dict[tuple[tuple[str, str], ...], dict[str, object]] = {}
    for sample in family.samples:
        entry = series.setdefault(_key(sample.labels, "le"), {"labels": sample.labels, "buckets": []})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))  # type: ignore[attr-defined]
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
    points: list[HistogramDataPoint] = []
    for key, entry in series.items():
        cumulative = sorted(entry["buckets"])  # type: ignore[call-overload]
        if not cumulative:
            continue
        counts = [int(c - p) for (_, c), (_, p) in zip(cumulative, [(0.0, 0.0), *cumulative[:-1]], strict=True)]
        bounds = [bound for bound, _ in cumulative[:-1]]  # the last is +Inf
        labels: Mapping[str, str] = entry["labels"]  # type: ignore[assignment]
        points.append(
            HistogramDataPoint(
                _attributes(labels, "le"),
                created.get(key, start_ns),
                now_ns,
                int(cumulative[-1][1]),
                float(entry.get("sum", 0.0)),  # type: ignore[arg-type]
                counts,
                bounds,
                None,  # type: ignore[arg-type]  # prometheus_client keeps no min or max: left unset in OTLP
                None,  # type: ignore[arg-type]
            )
        )
    return Histogram(points, AggregationTemporality.CUMULATIVE)


class OtlpMetrics:
    """Exports the registry every OTEL_METRIC_EXPORT_INTERVAL ms (60 s by default), and once more at `close`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        exporter: MetricExporter | None = None,
        env: Mapping[str, str] = os.environ,
        worker: int | None = None,
    ) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415 - only when asked for
                OTLPMetricExporter,
            )

            exporter = OTLPMetricExporter()
        self._registry = registry
        self._exporter = exporter
        self._interval = _millis(env, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL_MS)
        self._timeout_ms = _millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT_MS) * 1000
        extra: dict[str, str | int] = {"service.instance.id": str(uuid.uuid4())}
        if worker is not None:
            extra["nba.worker"] = worker
        resource = Resource.create(extra)  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over our default name
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "nba-service"}))
        self._resource = resource
        self._start_ns = time.time_ns()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="otlp-metrics")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.to_thread(self.export)

    def export(self) -> bool:
        data = metrics_data(self._registry.collect(), self._resource, time.time_ns(), self._start_ns)
        result = self._exporter.export(data, timeout_millis=self._timeout_ms)
        if result is not MetricExportResult.SUCCESS:
            log.warning("otlp_metrics_export_failed")
        return result is MetricExportResult.SUCCESS

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await asyncio.to_thread(self.export)
        await asyncio.to_thread(self._exporter.shutdown)
