"""A small OTLP/gRPC collector on loopback for the tests: it keeps what the service exports, spans and metrics."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """`start()` binds 127.0.0.1 on a free port; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ResourceSpans] = []
        self._metrics: list[ResourceMetrics] = []
        self._server: grpc.Server | None = None
        self.endpoint = ""

    def start(self) -> OtlpReceiver:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - the OTLP method name
        with self._lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                self._metrics.extend(request.resource_metrics)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            self._spans.extend(request.resource_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def resource_spans(self) -> list[ResourceSpans]:
        with self._lock:
            return list(self._spans)

    @property
    def resource_metrics(self) -> list[ResourceMetrics]:
        with self._lock:
            return list(self._metrics)
