"""A small OTLP/gRPC receiver on loopback: what a collector would get, for tests to read.

No collector or Jaeger installs here, and a receiver of our own shows exactly what was exported.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every export it is sent; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self.resource_spans: list[ResourceSpans] = []
        self.resource_metrics: list[ResourceMetrics] = []
        self.metadata: list[dict[str, str]] = []
        """The request metadata of each export: what OTEL_EXPORTER_OTLP_HEADERS sent."""
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Export(self, request, context):  # noqa: N802 - the OTLP method name, for both services
        with self._lock:
            self.metadata.append({key: str(value) for key, value in context.invocation_metadata()})
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.resource_spans.extend(request.resource_spans)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.resource_metrics.extend(request.resource_metrics)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def spans(self) -> list[tuple[dict[str, object], Span]]:
        """Every span received so far, with its resource's attributes."""
        with self._lock:
            found = []
            for resource_spans in self.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                found.extend((resource, span) for scope in resource_spans.scope_spans for span in scope.spans)
            return found


def _value(value) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def attributes(span: Span) -> dict[str, object]:
    return {a.key: _value(a.value) for a in span.attributes}
