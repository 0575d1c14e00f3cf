"""Traces: set up from the standard `OTEL_*` variables, and free when nobody asked for them.

Spans on OpenTelemetry's no-op provider still cost ~4 us each (the three a decision had, ~13 us), and a
decision now has seven stages within a CPU budget of 0.4 ms. So nothing here touches OpenTelemetry until
`configure` installs a provider: `stage` hands back one shared no-op context manager, the transports add no
interceptor or middleware, and `current_ids` answers "" without asking for a span: ~1 us a decision in all
(`make bench-tracing`).

Tracing is on when the environment asks for an exporter (`OTEL_TRACES_EXPORTER=otlp|console`, or an
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true.
Unlike the SDK's own default (otlp to localhost), an unset environment means off: a server should not try a
collector nobody runs. Everything else (sampler, resource, batch sizes, headers, TLS) is the SDK's reading of
its variables. Each process installs its own provider (a supervisor's workers each call `configure`) and
flushes it on the way out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from importlib import metadata

from opentelemetry import trace
from opentelemetry.sdk.resources import PROCESS_PID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from nba_service.errors import FailedPrecondition

DEFAULT_SERVICE_NAME = "nba-service"
INSTRUMENTATION = "nba_service"


class _Unwatched:
    """A do-nothing context manager: half the cost of `contextlib.nullcontext` (~0.13 against 0.23 us a stage)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


_NULL: AbstractContextManager[None] = _Unwatched()
_EXPORTERS = ("otlp", "console", "none")

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def tracer() -> trace.Tracer | None:
    """The tracer spans are made with, or None when tracing is off (then make none)."""
    return _tracer


def stage(name: str) -> AbstractContextManager[object]:
    """A child span of the current span, named for a stage of the work; a shared no-op when tracing is off or
    the current trace is not sampled (no call span, or one the sampler left out: under the parent-based
    samplers its children would be left out too, and making them cost ~15 us each for nothing). A call span
    that has ended still parents a stage: a shadow run's comes after the answer."""
    current = _tracer
    if current is None or not trace.get_current_span().get_span_context().trace_flags.sampled:
        return _NULL
    return current.start_as_current_span(name)


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span in hex as OpenTelemetry shows them, or ("", "") without one."""
    if _tracer is None:
        return "", ""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """Which exporters the environment asks for; [] means tracing stays off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise FailedPrecondition(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not an exporter this server has (otlp, console or none)"
        )
    for key in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(key, "").strip().lower()
        if protocol and "otlp" in names:
            if protocol != "grpc":
                raise FailedPrecondition(f"{key}: {protocol!r} is not supported; this server exports OTLP over grpc")
            break
    return [n for n in names if n != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415 - only when asked

    return OTLPSpanExporter()  # endpoint, headers, TLS, timeout and compression from OTEL_EXPORTER_OTLP_*


def resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) with our name when none is given, and
    the process id, which tells a supervisor's workers apart."""
    detected = Resource.create({SERVICE_VERSION: metadata.version("nba-service"), PROCESS_PID: os.getpid()})
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return detected


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Installs this process's provider when the environment asks for traces; whether it did. Raises
    FailedPrecondition, naming the variable, for a setting this server cannot honour."""
    names = exporter_names(os.environ if env is None else env)
    if not names:
        return False
    install(*(BatchSpanProcessor(_exporter(name)) for name in names))
    return True


def install(*processors: SpanProcessor, provider: TracerProvider | None = None) -> TracerProvider:
    """Turns tracing on with these processors (tests give an in-memory exporter's). The provider is ours, not
    the global one, so a process can turn it off and on again."""
    global _tracer, _provider  # noqa: PLW0603 - the one switch every span site reads
    provider = provider or TracerProvider(resource=resource())  # sampler from OTEL_TRACES_SAMPLER[_ARG]
    for processor in processors:
        provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION, metadata.version("nba-service"))
    return provider


def shutdown() -> None:
    """Exports what is still buffered and turns tracing off; blocks up to the exporter's timeout."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()
