"""The chart's rendered pods, run for real on this machine against PostgreSQL.

What the kubelet would do with the rendered objects, done here with this checkout's `nba`: the migration
Job's command with its environment, then the Deployment's command with its environment and its ConfigMap and
Secret volumes laid out as the kubelet mounts them (tests/chart_support.py), its probes run as the kubelet runs
them (the `nba health` exec probes with TLS, a gRPC Health/Check for the kubelet's own gRPC probe in plain
text), a real call with a caller the rendered access policy admits, and SIGTERM within the pod's
terminationGracePeriodSeconds.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ruamel.yaml import YAML

from tests.chart_support import (
    FULLNAME,
    NAMESPACE,
    NBA_SCRIPT,
    ChartPki,
    PodLayout,
    cluster_secrets,
    free_port,
    get_helm,
    lay_out,
    make_chart_pki,
    one,
    render,
    run_env,
)
from tests.helm_tool import REPO_ROOT

pytestmark = pytest.mark.e2e

CUSTOMERS = 20
PROBE_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def chart_pki(tmp_path_factory: pytest.TempPathFactory) -> ChartPki:
    return make_chart_pki(tmp_path_factory.mktemp("chart-pki"))


def migrate_and_seed(docs: list[dict], root: Path, secrets: dict[str, dict[str, bytes]]) -> None:
    """The hook Job's own command and environment, then a few customers to decide for."""
    job = lay_out(docs, root / "job", secrets=secrets, kind="Job")
    migrated = subprocess.run(
        job.command(["nba", *job.args]), env=run_env(job), capture_output=True, text=True, timeout=60, check=False
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_initial" in migrated.stdout
    seeded = subprocess.run(
        [str(NBA_SCRIPT), "db", "seed", "--customers", str(CUSTOMERS)],
        env=run_env(job),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr


class Pod:
    """The Deployment's container as a process: started from its args, env and working directory."""

    def __init__(self, layout: PodLayout, grace_period: int) -> None:
        self.layout = layout
        self.grace_period = grace_period
        self.log = layout.root / "server.log"
        workdir = layout.mounts["/var/lib/nba"]  # the image's WORKDIR
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                layout.command(["nba", *layout.args]), env=run_env(layout), cwd=workdir, stdout=out, stderr=out
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def until(self, check: object, what: str) -> None:
        """Runs `check` as the kubelet runs a startup probe, until it passes."""
        deadline = time.monotonic() + PROBE_DEADLINE_S
        while not check():  # type: ignore[operator]
            if self.process.poll() is not None:
                pytest.fail(f"the pod's nba serve exited with {self.process.returncode}; log:\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not pass within {PROBE_DEADLINE_S} s; log:\n{self.text()}")
            time.sleep(0.5)

    def terminate(self) -> int:
        """SIGTERM, as the kubelet sends it after preStop; the exit must come within the grace period."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(self.grace_period)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        pod.kill()


def exec_probe(layout: PodLayout, probe: str) -> subprocess.CompletedProcess[str] | None:
    """The probe's command as the kubelet runs it: None when it outlives timeoutSeconds (a failure)."""
    try:
        return subprocess.run(
            layout.probe_command(probe),
            env=run_env(layout),
            capture_output=True,
            text=True,
            timeout=layout.probes[probe]["timeoutSeconds"],
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def passes(layout: PodLayout, probe: str) -> subprocess.CompletedProcess[str] | None:
    """The first passing run within the probe's failureThreshold tries (the kubelet's verdict), or None."""
    for _ in range(layout.probes[probe]["failureThreshold"]):
        result = exec_probe(layout, probe)
        if result is not None and result.returncode == 0:
            return result
    return None


@pytest.mark.slow
def test_default_values_migrate_serve_probe_and_stop(
    pg_empty_dsn: str, chart_pki: ChartPki, tmp_path: Path, pods: list[Pod]
) -> None:
    """The defaults (PostgreSQL, mutual TLS, the chart's access policy and bundled rulesets, 2 workers): the
    migration Job migrates an empty database, the pod starts, its three `nba health` probes pass, a desktop
    certificate named in the default policy gets a decision, and SIGTERM ends it with exit 0 in time."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    docs = render(
        get_helm(),
        "--set",
        f"grpc.port={grpc_port}",
        "--set",
        f"http.port={http_port}",
        "--set",
        f"metrics.port={metrics_port}",
    )
    secrets = cluster_secrets(chart_pki, pg_empty_dsn)
    migrate_and_seed(docs, tmp_path, secrets)
    layout = lay_out(docs, tmp_path / "pod", secrets=secrets)
    grace = int(one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    pod = Pod(layout, grace)
    pods.append(pod)

    pod.until(lambda: passes(layout, "startupProbe") is not None, "the startup probe")
    for probe, service in (("readinessProbe", "nba.v1.NextBestAction"), ("livenessProbe", "liveness")):
        result = passes(layout, probe)
        assert result is not None, f"{probe} failed; log:\n{pod.text()}"
        assert result.stdout == f"{service}: SERVING\n"
    decided = subprocess.run(
        [
            str(NBA_SCRIPT),
            "decide",
            "CUST-000001",
            "--target",
            f"127.0.0.1:{grpc_port}",
            "--cacert",
            str(chart_pki.ca_file),
            "--cert",
            str(chart_pki.desktop_cert),
            "--key",
            str(chart_pki.desktop_key),
            "--tls-server-name",
            f"{FULLNAME}.{NAMESPACE}.svc",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=run_env(layout),
    )
    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.startswith("Decision ")
    assert '"workers": 2' in pod.text() or "workers=2" in pod.text()
    # The pod's metrics port: one scrape sums both workers; on PostgreSQL it shows the pools.
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        if "nba_decisions_total{action=" in scraped or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert 'rpc_server_call_duration_seconds_count{error_type="",rpc_method="nba.v1.NextBestAction/Decide"' in scraped
    assert 'nba_store_pool_connections{state="in_use"}' in scraped
    assert 'nba_store_operation_duration_seconds_count{operation="read_profile",store="postgres"} 1.0' in scraped
    assert "CUST-000001" not in scraped
    assert pod.terminate() == 0, pod.text()


def test_plain_text_values_answer_the_kubelets_grpc_probes(
    pg_empty_dsn: str, chart_pki: ChartPki, tmp_path: Path, pods: list[Pod]
) -> None:
    """mesh-plaintext-values.yaml (plain text said explicitly, bearer tokens): the kubelet's own gRPC probes
    (Health/Check on the rendered port and service, no TLS) pass, and a token whose subject the rendered
    policy names gets a decision."""
    grpc_port = free_port()
    values = REPO_ROOT / "helm" / "ci" / "mesh-plaintext-values.yaml"
    docs = render(
        get_helm(),
        "-f",
        str(values),
        "--set",
        f"grpc.port={grpc_port}",
        "--set",
        f"metrics.port={free_port()}",
        "--set",
        "workers=1",
        "--set-file",
        f"jwt.jwks={chart_pki.jwks}",
    )
    secrets = cluster_secrets(chart_pki, pg_empty_dsn)
    migrate_and_seed(docs, tmp_path, secrets)
    layout = lay_out(docs, tmp_path / "pod", secrets=secrets)
    grace = int(one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    pod = Pod(layout, grace)
    pods.append(pod)

    def kubelet_probe(probe: str) -> bool:
        spec = layout.probes[probe]["grpc"]
        with grpc.insecure_channel(f"127.0.0.1:{spec['port']}") as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=spec["service"]),
                    timeout=layout.probes[probe]["timeoutSeconds"],
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    pod.until(lambda: kubelet_probe("startupProbe"), "the startup probe")
    assert kubelet_probe("readinessProbe")
    assert kubelet_probe("livenessProbe")
    jwt_values = YAML(typ="safe").load(values.read_text())["jwt"]
    token = chart_pki.pki.token(sub="desktop-gateway", iss=jwt_values["issuer"], aud=jwt_values["audience"])
    decided = subprocess.run(
        [str(NBA_SCRIPT), "decide", "CUST-000002", "--target", f"127.0.0.1:{grpc_port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**run_env(layout), "NBA_TOKEN": token},
    )
    assert decided.returncode == 0, decided.stderr
    assert pod.terminate() == 0, pod.text()
