"""The Helm chart (helm/nba-service): lint, render, Kubernetes schemas, and what the rendered objects promise.

Every value set in helm/ci/ and the defaults are rendered with the real helm (tests/helm_tool.py) and every
object is validated against the Kubernetes 1.33 schemas with kubernetes-validate, strictly (no unknown field).
The ServiceMonitor is a CRD kind those schemas do not hold: it is skipped by name, and checked by hand here.
The settings a rendered pod would start with are checked by the service's own settings model, on real files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from nba_service.domain.loader import load_ruleset_dir
from nba_service.security.policy import load_access_policy
from nba_service.settings import Settings
from nba_service.transport.grpc_server import LIVENESS_NAME, SERVICE_NAME
from tests.chart_support import (
    CHART,
    CI_VALUES,
    FULLNAME,
    NAMESPACE,
    ChartPki,
    Doc,
    PodLayout,
    cluster_config_maps,
    cluster_secrets,
    get_helm,
    helm_run,
    kinds,
    lay_out,
    make_chart_pki,
    one,
    render,
    render_text,
)
from tests.helm_tool import REPO_ROOT

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in the Kubernetes schemas: checked by hand
VALUE_SETS = ["defaults", *(p.name for p in CI_VALUES)]


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "defaults" else ["-f", str(REPO_ROOT / "helm" / "ci" / value_set)]


def values_of(value_set: str) -> dict[str, Any]:
    if value_set == "defaults":
        return {}
    return dict(YAML(typ="safe").load((REPO_ROOT / "helm" / "ci" / value_set).read_text()) or {})


@pytest.fixture(scope="session")
def helm() -> Path:
    return get_helm()


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, list[Doc]]:
    return {name: render(helm, *values_args(name)) for name in VALUE_SETS}


def deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", FULLNAME)


def container(docs: list[Doc]) -> Doc:
    return deployment(docs)["spec"]["template"]["spec"]["containers"][0]


def env_of(docs: list[Doc]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


# --------------------------------------------------------------------------------------------------
# Lint, render, validate


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lints_strictly(helm: Path, value_set: str) -> None:
    result = helm_run(helm, "lint", "--strict", str(CHART), *values_args(value_set))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict[str, list[Doc]], value_set: str) -> None:
    docs = rendered[value_set]
    checked = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, "1.33", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{value_set}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked.append(doc["kind"])
    assert {"Deployment", "Service"} <= set(checked)


def test_the_value_sets_cover_every_template(rendered: dict[str, list[Doc]]) -> None:
    """Each optional object is rendered by at least one value set, so every template is linted and validated."""
    seen = set().union(*(kinds(docs) for docs in rendered.values()))
    assert seen >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "NetworkPolicy",
        "ServiceMonitor",
    }


# --------------------------------------------------------------------------------------------------
# What the objects promise


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_run_unprivileged_on_a_read_only_root(rendered: dict[str, list[Doc]], value_set: str) -> None:
    """Server and migration pods: non-root uid, read-only root, no capabilities, RuntimeDefault seccomp; every
    path the service writes is on an emptyDir."""
    docs = rendered[value_set]
    for workload in [d for d in docs if d["kind"] in ("Deployment", "Job")]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for item in pod["containers"]:
            context = item["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
    pod = deployment(docs)["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = {m["mountPath"] for m in container(docs)["volumeMounts"] if m["name"] in empty_dirs}
    env = env_of(docs)
    for name in ("NBA_DB_PATH", "NBA_SPILL_DIR", "NBA_DEPLOY_DIR"):
        assert any(env[name].startswith(path + "/") for path in writable), (name, env[name], writable)
    assert "/tmp" in writable


def test_tls_probes_run_nba_health_on_the_health_service(rendered: dict[str, list[Doc]]) -> None:
    """With TLS (the default) the kubelet cannot probe gRPC itself: each probe runs `nba health` with the pod's
    certificates, readiness on nba.v1.NextBestAction, startup and liveness on `liveness`."""
    item = container(rendered["defaults"])
    grpc_port = str(item["ports"][0]["containerPort"])
    expected = {"startupProbe": LIVENESS_NAME, "readinessProbe": SERVICE_NAME, "livenessProbe": LIVENESS_NAME}
    for probe, service in expected.items():
        command = item[probe]["exec"]["command"]
        assert command[:2] == ["nba", "health"]
        options = dict(zip(command[2::2], command[3::2], strict=True))
        assert options["--service"] == service
        assert options["--target"] == f"127.0.0.1:{grpc_port}"
        assert options["--cacert"] == "/etc/nba/tls/ca.crt"
        assert options["--tls-server-name"] == f"{FULLNAME}.{NAMESPACE}.svc"
        assert (options["--cert"], options["--key"]) == ("/etc/nba/tls/tls.crt", "/etc/nba/tls/tls.key")
        assert float(options["--timeout"]) < item[probe]["timeoutSeconds"]


def test_plain_text_probes_are_the_kubelets_grpc_probes(rendered: dict[str, list[Doc]]) -> None:
    item = container(rendered["mesh-plaintext-values.yaml"])
    port = item["ports"][0]["containerPort"]
    assert item["readinessProbe"]["grpc"] == {"port": port, "service": SERVICE_NAME}
    assert item["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS_NAME}
    assert item["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS_NAME}
    assert env_of(rendered["mesh-plaintext-values.yaml"])["NBA_INSECURE"] == "true"


def test_a_probe_client_certificate_of_its_own(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["postgres-password-file-values.yaml"]
    command = container(docs)["readinessProbe"]["exec"]["command"]
    assert command[command.index("--cert") + 1] == "/etc/nba/probe-client/tls.crt"
    assert command[command.index("--tls-server-name") + 1] == "nba.contact-centre.svc.cluster.local"
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["probe-client"]["secret"]["secretName"] == "nba-probe-client-cert"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_termination_outlasts_grace_and_drain(rendered: dict[str, list[Doc]], value_set: str) -> None:
    """The kubelet's SIGKILL comes after the preStop pause, the calls' grace and the decision log's drain."""
    env = env_of(rendered[value_set])
    pod = deployment(rendered[value_set])["spec"]["template"]["spec"]
    pause = int(container(rendered[value_set])["lifecycle"]["preStop"]["exec"]["command"][1])
    needed = float(env["NBA_GRACE_SECONDS"]) + float(env["NBA_DRAIN_SECONDS"]) + pause
    assert pod["terminationGracePeriodSeconds"] > needed


def test_the_metrics_port_reaches_the_server(rendered: dict[str, list[Doc]]) -> None:
    env = env_of(rendered["defaults"])
    port = next(p for p in container(rendered["defaults"])["ports"] if p["name"] == "metrics")
    assert env["NBA_METRICS_PORT"] == str(port["containerPort"]) == "9464"
    assert env["NBA_RPC_DURATION_METRIC"] == "current"


def test_workers_are_set_explicitly(rendered: dict[str, list[Doc]]) -> None:
    """os.cpu_count() in a container counts the node's cores: the chart always says how many workers."""
    for docs in rendered.values():
        assert int(env_of(docs)["NBA_WORKERS"]) >= 1
    assert env_of(rendered["postgres-password-file-values.yaml"])["NBA_WORKERS"] == "4"


def test_the_connection_migration_sysctl_reaches_the_pod(rendered: dict[str, list[Doc]]) -> None:
    """Opt-in (the kubelet must allow it): a leaving worker's queued connections go to the other workers."""
    spec = deployment(rendered["fixed-replicas-values.yaml"])["spec"]["template"]["spec"]
    assert spec["securityContext"]["sysctls"] == [{"name": "net.ipv4.tcp_migrate_req", "value": "1"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "sysctls" not in deployment(rendered["defaults"])["spec"]["template"]["spec"]["securityContext"]


def test_service_ports_are_named_with_app_protocols(rendered: dict[str, list[Doc]]) -> None:
    service = one(rendered["defaults"], "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http"]["appProtocol"] == "https"
    assert ports["metrics"]["appProtocol"] == "http"  # plain HTTP whatever the TLS: no customer data in it
    container_ports = {p["name"] for p in container(rendered["defaults"])["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports
    mesh = {p["name"]: p for p in one(rendered["mesh-plaintext-values.yaml"], "Service")["spec"]["ports"]}
    assert list(mesh) == ["grpc", "metrics"]
    assert mesh["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_the_service_selects_the_server_pods_only(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["defaults"]
    selector = one(docs, "Service")["spec"]["selector"]
    server_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    job_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= server_labels.items()
    assert not selector.items() <= job_labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    for constraint in deployment(docs)["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["defaults"]
    job = one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    item = job["spec"]["template"]["spec"]["containers"][0]
    assert item["image"] == container(docs)["image"]
    assert item["args"] == ["db", "migrate"]
    job_env = {e["name"]: e for e in item["env"]}
    assert job_env["NBA_DSN"]["valueFrom"] == env_of(docs)["NBA_DSN"]
    assert job["spec"]["template"]["spec"].get("serviceAccountName") is None  # the chart's does not exist yet
    assert "Job" not in kinds(rendered["sqlite-trial-values.yaml"])


def test_the_password_file_reaches_server_and_migration(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["postgres-password-file-values.yaml"]
    assert env_of(docs)["NBA_DSN_PASSWORD_FILE"] == "/etc/nba/postgres/password"
    job_env = {e["name"]: e.get("value") for e in one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["NBA_DSN_PASSWORD_FILE"] == "/etc/nba/postgres/password"


def test_autoscaling_and_disruption_budget(rendered: dict[str, list[Doc]]) -> None:
    defaults = rendered["defaults"]
    hpa = one(defaults, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert "replicas" not in deployment(defaults)["spec"]  # the HPA owns the count
    fixed = rendered["fixed-replicas-values.yaml"]
    assert "HorizontalPodAutoscaler" not in kinds(fixed)
    assert deployment(fixed)["spec"]["replicas"] == 3
    assert one(fixed, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # One replica: a PDB would block every node drain.
    assert "PodDisruptionBudget" not in kinds(rendered["sqlite-trial-values.yaml"])


def test_network_policy_and_service_monitor_only_when_asked(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        if name != "networkpolicy-servicemonitor-values.yaml":
            assert not kinds(docs) & {"NetworkPolicy", "ServiceMonitor"}, name
    docs = rendered["networkpolicy-servicemonitor-values.yaml"]
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {"grpc", "http"}
    assert {"port": 5432, "protocol": "TCP"} in policy["spec"]["egress"][1]["ports"]
    scrape = policy["spec"]["ingress"][1]
    assert scrape["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("metrics", "/metrics", "http")
    assert "metrics" in {p["name"] for p in one(docs, "Service")["spec"]["ports"]}
    assert "metrics" in {p["name"] for p in container(docs)["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_reflection_is_off_unless_asked(rendered: dict[str, list[Doc]]) -> None:
    assert env_of(rendered["defaults"])["NBA_REFLECTION"] == "false"
    assert env_of(rendered["mesh-plaintext-values.yaml"])["NBA_REFLECTION"] == "true"


# --------------------------------------------------------------------------------------------------
# Configuration: rulesets, policy, checksum


def test_the_bundled_rulesets_are_the_reviewed_files(rendered: dict[str, list[Doc]]) -> None:
    """The default ConfigMap carries rulesets/ byte for byte (the chart links to it, never copies)."""
    data = one(rendered["defaults"], "ConfigMap", f"{FULLNAME}-rulesets")["data"]
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (REPO_ROOT / "rulesets").glob("*.yaml")}
    assert data == on_disk


@pytest.mark.parametrize("value_set", [s for s in VALUE_SETS if s != "existing-configmaps-values.yaml"])
def test_rendered_rulesets_and_policy_load(rendered: dict[str, list[Doc]], value_set: str, tmp_path: Path) -> None:
    """What the ConfigMaps carry loads with the service's own loaders, and the active ruleset is among them."""
    docs = rendered[value_set]
    rulesets = tmp_path / "rulesets"
    rulesets.mkdir()
    for key, text in one(docs, "ConfigMap", f"{FULLNAME}-rulesets")["data"].items():
        (rulesets / key).write_text(text, encoding="utf-8")
    names = {r.meta.name for r in load_ruleset_dir(rulesets)}
    active = env_of(docs).get("NBA_RULESET")
    assert active is None or active in names
    policy = tmp_path / "access-policy.yaml"
    policy.write_text(one(docs, "ConfigMap", f"{FULLNAME}-access-policy")["data"]["access-policy.yaml"])
    assert load_access_policy(policy) is not None


def checksum(helm: Path, *args: str) -> str:
    annotations = deployment(render(helm, *args))["spec"]["template"]["metadata"]["annotations"]
    return str(annotations["checksum/config"])


def test_checksum_follows_the_configuration(helm: Path, tmp_path: Path) -> None:
    """A changed ruleset or access policy changes checksum/config (the pods roll); a replica count does not."""
    base = checksum(helm)
    assert len(base) == 64
    ruleset = (REPO_ROOT / "helm" / "ci" / "custom-ruleset-values.yaml").as_posix()
    assert checksum(helm, "-f", ruleset) != base
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "accessPolicy:\n  policy:\n    callers:\n      - {name: d, match: {certificate_cn: d}, roles: [dialer]}\n"
    )
    assert checksum(helm, "-f", str(policy)) != base
    assert checksum(helm, "--set", "replicaCount=5", "--set", "autoscaling.enabled=false") == base


# --------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "workers=0"], "workers: Must be greater than or equal to 1"),
        (["--set", "store=mysql"], "store: store must be one of the following"),
        (
            ["--set", "securityContext.privileged=true"],
            "securityContext.privileged does not match",
        ),
        (["--set", "replicas=3"], "Additional property replicas is not allowed"),
        (
            ["--set", "accessPolicy.policy.callers[0].roles={root}"],
            "accessPolicy.policy.callers.0.roles.0 must be one of",
        ),
    ],
)
def test_the_schema_names_a_bad_value(helm: Path, args: list[str], message: str) -> None:
    result = render_text(helm, *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "tls.enabled=false"], "tls.enabled=false needs insecure=true"),
        (["--set", "insecure=true"], "tls.enabled and insecure: give one of them"),
        (["--set", "tls.clientAuth=false"], "callers must prove who they are"),
        (["--set", "store=sqlite"], "store=sqlite keeps an embedded database inside each pod"),
        (["--set", "shutdown.terminationGracePeriodSeconds=30"], "must exceed graceSeconds + drainSeconds"),
        (["--set", "jwt.enabled=true"], "jwt.enabled needs jwt.issuer and jwt.audience"),
        (
            ["--set", "serviceMonitor.enabled=true", "--set", "metrics.enabled=false"],
            "serviceMonitor.enabled needs metrics.enabled",
        ),
        (["--set", "metrics.port=8080"], "metrics.port must differ from grpc.port and http.port"),
    ],
)
def test_combinations_the_service_would_refuse_fail_at_render(helm: Path, args: list[str], message: str) -> None:
    result = render_text(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------------
# The settings a rendered pod starts with, checked by the service's settings model on real files


@pytest.fixture(scope="session")
def chart_pki(tmp_path_factory: pytest.TempPathFactory) -> ChartPki:
    return make_chart_pki(tmp_path_factory.mktemp("chart-pki"))


@pytest.fixture
def pod_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(layout: PodLayout) -> None:
        for name in [n for n in os.environ if n.startswith("NBA_")]:
            monkeypatch.delenv(name)
        for name, value in layout.env.items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_rendered_pod_settings_are_valid(
    rendered: dict[str, list[Doc]], value_set: str, chart_pki: ChartPki, tmp_path: Path, pod_env: Any
) -> None:
    """Each value set's pod, its Secrets and ConfigMaps laid out as the kubelet mounts them, passes the
    service's settings model: every file is where the environment says, TLS files belong together, the
    policy has callers who can prove who they are. The settings mirror the values."""
    docs = rendered[value_set]
    dsn = "postgresql://nba@db.contact-centre.svc:5432/nba"
    layout = lay_out(
        docs, tmp_path, secrets=cluster_secrets(chart_pki, dsn), config_maps=cluster_config_maps(chart_pki)
    )
    pod_env(layout)
    try:
        settings = Settings()
    except ValidationError as exc:
        pytest.fail(f"{value_set}: the pod's settings are refused: {exc}")
    values = values_of(value_set)
    assert settings.workers == values.get("workers", 2)
    assert settings.store == values.get("store", "postgres")
    assert (settings.tls_cert is not None) == values.get("tls", {}).get("enabled", True)
    assert settings.access_policy is not None
    assert settings.host == "0.0.0.0"
    if settings.store == "postgres":
        assert settings.dsn == dsn
        assert settings.pool_max == values.get("postgres", {}).get("poolMax", 10)
