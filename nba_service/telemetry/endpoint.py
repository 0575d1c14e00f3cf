"""The Prometheus scrape endpoint (`--metrics-port`): prometheus_client's own HTTP server, in a thread.

A lone server serves its own registry. A supervisor serves the sum of its workers' (prometheus_client's
multiprocess mode: the workers write to memory-mapped files in a folder the supervisor made), plus its own
deploy counters, so one scrape per pod is the pod's whole picture whatever worker a call landed on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name: it reads it when imported


@dataclass
class ScrapeEndpoint:
    server: WSGIServer
    host: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_scrape(registry: CollectorRegistry, host: str, port: int) -> ScrapeEndpoint:
    """Serves `registry` at /metrics (any path, in fact) on host:port; raises OSError naming the port when taken."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(f"cannot serve metrics on {shown}: {exc.strerror or exc}") from exc
    return ScrapeEndpoint(server, host)


class WorkerMetricsFolder:
    """The folder the workers' multiprocess files live in, made empty for each supervisor and removed after it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="nba-metrics-"))

    def registry(self) -> CollectorRegistry:
        from prometheus_client import multiprocess  # noqa: PLC0415

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.path))  # type: ignore[no-untyped-call]
        return registry

    def worker_exited(self, pid: int) -> None:
        """Drops the exited worker's live gauges (queue, pool); its counters and histograms stay counted."""
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid, path=str(self.path))  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def in_multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))
