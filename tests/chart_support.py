"""Rendering the Helm chart, and laying a rendered pod out on this machine as the kubelet would.

`PodLayout` reads a rendered Deployment or Job and writes its ConfigMap and Secret volumes into a directory in
the kubelet's shape (`..data/KEY` with `KEY` a symlink to it), makes its emptyDirs, and rewrites the mount paths
in its environment and probe commands to those directories. Tests then run the rendered commands for real:
`nba db migrate` from the Job, `nba serve` from the Deployment, the probes' `nba health`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from ruamel.yaml import YAML

from tests.helm_tool import REPO_ROOT, ToolUnavailable, helm_binary
from tests.security_pki import _ca, _ec_key, _name, _write_cert, _write_key, make_pki

CHART = REPO_ROOT / "helm" / "nba-service"
CI_VALUES = sorted((REPO_ROOT / "helm" / "ci").glob("*.yaml"))
KUBE_VERSION = "1.33.0"
RELEASE = "r"
NAMESPACE = "contact-centre"
NBA_SCRIPT = REPO_ROOT / ".venv" / "bin" / "nba"
FULLNAME = f"{RELEASE}-nba-service"

Doc = dict[str, Any]


def get_helm() -> Path:
    """helm, or a failure under CI=true and a skip elsewhere, saying why."""
    try:
        return helm_binary()
    except ToolUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and helm cannot be had: {exc}", pytrace=False)
        pytest.skip(f"helm cannot be had: {exc}")


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def render_text(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return helm_run(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )


def render(helm: Path, *args: str) -> list[Doc]:
    """The rendered objects; fails the test with helm's message if rendering fails."""
    result = render_text(helm, *args)
    if result.returncode != 0:
        pytest.fail(f"helm template {' '.join(args)} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in YAML(typ="safe").load_all(result.stdout) if doc]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class PodLayout:
    """One rendered container laid out under `root`: its environment and commands with local paths."""

    root: Path
    env: dict[str, str]
    args: list[str]
    probes: dict[str, Doc]
    mounts: dict[str, Path]

    def local(self, text: str) -> str:
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(self.mounts[mount_path]) + text[len(mount_path) :]
        return text

    def command(self, argv: list[str]) -> list[str]:
        """A rendered command with the image's `nba` replaced by this checkout's and mount paths made local."""
        return [str(NBA_SCRIPT) if i == 0 and arg == "nba" else self.local(arg) for i, arg in enumerate(argv)]

    def probe_command(self, name: str) -> list[str]:
        return self.command(self.probes[name]["exec"]["command"])


def _write_volume(directory: Path, files: Mapping[str, bytes]) -> None:
    """The kubelet's layout of a ConfigMap or Secret volume: files in ..data, a symlink per key beside it."""
    data = directory / "..2026_01_01_00_00_00.000000001"
    data.mkdir(parents=True)
    (directory / "..data").symlink_to(data.name)
    for key, content in files.items():
        (data / key).write_bytes(content)
        (directory / key).symlink_to(f"..data/{key}")


def lay_out(
    docs: list[Doc],
    root: Path,
    *,
    secrets: Mapping[str, Mapping[str, bytes]],
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    kind: str = "Deployment",
) -> PodLayout:
    """Lays out the first container of the rendered `kind`. `secrets` and `config_maps` stand for objects that
    exist in the cluster but not in the chart (they are referenced, never rendered)."""
    workload = one(docs, kind)
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    rendered_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    maps = {**(config_maps or {}), **rendered_maps}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        local = root / mount["mountPath"].lstrip("/")
        if "emptyDir" in volume:
            local.mkdir(parents=True)
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            assert name in maps, f"ConfigMap {name} is neither rendered nor given to the test"
            _write_volume(local, {k: v.encode() for k, v in maps[name].items()})
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets, f"Secret {name} is not given to the test"
            items = volume["secret"].get("items")
            chosen = {i["path"]: secrets[name][i["key"]] for i in items} if items else dict(secrets[name])
            _write_volume(local, chosen)
        else:
            raise AssertionError(f"volume {mount['name']} of an unexpected type: {volume}")
        mounts[mount["mountPath"]] = local
    layout = PodLayout(root, {}, list(container.get("args", [])), {}, mounts)
    for item in container.get("env", []):
        if "value" in item:
            layout.env[item["name"]] = layout.local(str(item["value"]))
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            layout.env[item["name"]] = secrets[ref["name"]][ref["key"]].decode()
    layout.probes = {
        key: container[key] for key in ("startupProbe", "readinessProbe", "livenessProbe") if key in container
    }
    return layout


def run_env(layout: PodLayout) -> dict[str, str]:
    """This process's environment without its NBA_* variables, plus the pod's."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("NBA_")}, **layout.env}


@dataclasses.dataclass(frozen=True)
class ChartPki:
    ca: bytes
    server_cert: bytes  # for the chart's service names, issued for server and client authentication
    server_key: bytes
    probe_cert: bytes
    probe_key: bytes
    desktop_cert: Path
    desktop_key: Path
    ca_file: Path
    jwks: Path
    pki: Any


def make_chart_pki(directory: Path) -> ChartPki:
    """The test PKI plus a server certificate named as the chart's probes expect it (`--tls-server-name`)."""
    base = make_pki(directory)
    ca_cert, ca_key = _ca("Chart Test CA")
    now = dt.datetime.now(dt.UTC)

    def leaf(name: str, sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]) -> tuple[bytes, bytes]:
        key = _ec_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return cert_path.read_bytes(), key_path.read_bytes()

    server_names: list[x509.GeneralName] = [
        x509.DNSName(f"{FULLNAME}.{NAMESPACE}.svc"),
        x509.DNSName("nba.contact-centre.svc.cluster.local"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_cert, server_key = leaf("server", server_names, both)
    probe_cert, probe_key = leaf("probe", [x509.DNSName("probe")], [ExtendedKeyUsageOID.CLIENT_AUTH])
    leaf("desktop", [x509.DNSName("desktop")], [ExtendedKeyUsageOID.CLIENT_AUTH])
    ca_file = directory / "chart-ca.pem"
    _write_cert(ca_file, ca_cert)
    return ChartPki(
        ca_file.read_bytes(),
        server_cert,
        server_key,
        probe_cert,
        probe_key,
        directory / "desktop.crt",
        directory / "desktop.key",
        ca_file,
        base.jwks,
        base,
    )


def cluster_secrets(pki: ChartPki, dsn: str) -> dict[str, dict[str, bytes]]:
    """The Secrets the value sets reference (they exist in a cluster, never in the chart)."""
    tls = {"tls.crt": pki.server_cert, "tls.key": pki.server_key, "ca.crt": pki.ca}
    probe = {"tls.crt": pki.probe_cert, "tls.key": pki.probe_key, "ca.crt": pki.ca}
    return {
        f"{FULLNAME}-tls": tls,
        "nba-serving-cert": tls,
        "nba-probe-client-cert": probe,
        f"{FULLNAME}-postgres": {"dsn": dsn.encode()},
        "nba-db": {"dsn": dsn.encode()},
        "nba-db-password": {"password": b"s3cret-from-a-secret\n"},
    }


def cluster_config_maps(pki: ChartPki) -> dict[str, dict[str, str]]:
    """The ConfigMaps existing-configmaps-values.yaml names."""
    bundled = {p.name: p.read_text(encoding="utf-8") for p in (REPO_ROOT / "rulesets").glob("*.yaml")}
    policy = "callers:\n  - {name: alice, match: {token_subject: alice}, roles: [desktop]}\n"
    return {
        "contact-centre-rulesets": bundled,
        "nba-access-policy": {"access-policy.yaml": policy},
        "idp-jwks": {"jwks.json": pki.jwks.read_text()},
    }
