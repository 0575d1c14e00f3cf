"""TLS and mutual TLS against the real `nba serve`, with certificates and keys made in the test.

What the handshake refuses (no client certificate, an expired one, one from another CA, plain text on a TLS
port) never reaches the service: the client sees UNAVAILABLE. Which calls each role may make is the access
policy's test (tests/e2e/test_access.py); here every caller that gets through is one the policy lets Decide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from tests.e2e._support import NBA_SCRIPT, ServerHandle, ruleset_sha256, server_command, server_env, start_server
from tests.security_pki import AUDIENCE, ISSUER, ROLES, Pki, make_pki

pytestmark = pytest.mark.e2e

GRPCURL = Path(sys.executable).parent / "grpcurl"
CUSTOMER = "CUST-000058"


def role_policy(path: Path) -> Path:
    """Each client certificate of the test PKI gets the role it is named after; token subject alice is a desktop."""
    lines = ["callers:"]
    for role in ROLES:
        lines += [f"  - name: {role}", f"    match: {{certificate_cn: {role}}}", f"    roles: [{role}]"]
    lines += ["  - name: alice", "    match: {token_subject: alice}", "    roles: [desktop]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def credentials(pki: Pki, client: str | None, ca: Path | None = None) -> grpc.ChannelCredentials:
    root = (ca or pki.ca_cert).read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root)
    pair = pki.client(client)
    return grpc.ssl_channel_credentials(root, pair.key.read_bytes(), pair.cert.read_bytes())


def decide(channel: grpc.Channel) -> nba_pb2.DecideResponse:
    stub = nba_pb2_grpc.NextBestActionStub(channel)
    return stub.Decide(nba_pb2.DecideRequest(customer_id=CUSTOMER, channel=nba_pb2.AGENT_DESKTOP), timeout=10)


def port_of(server: ServerHandle) -> str:
    return server.address.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("nba-mtls")
    handle = start_server(
        workdir,
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca_cert),
        "--access-policy",
        str(role_policy(workdir / "policy.yaml")),
    )
    yield handle
    handle.stop()


class TestMutualTls:
    def test_a_client_certificate_from_the_ca_is_served(self, mtls: ServerHandle, pki: Pki) -> None:
        serving = next(e for e in mtls.log_events() if e.get("event") == "serving")
        assert serving["tls"] == "mutual"
        assert not [e for e in mtls.log_events() if e.get("event") == "plain_text_listener"]
        with grpc.secure_channel(mtls.address, credentials(pki, "desktop")) as channel:
            response = decide(channel)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.ruleset.hash == ruleset_sha256()
        assert response.decision_id
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    @pytest.mark.parametrize("client", [None, "expired", "foreign"])
    def test_refused_in_the_handshake(self, mtls: ServerHandle, pki: Pki, client: str | None) -> None:
        """No client certificate, an expired one, one from another CA: the connection never carries a call."""
        with (
            grpc.secure_channel(mtls.address, credentials(pki, client)) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            decide(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    def test_a_server_the_client_does_not_trust(self, mtls: ServerHandle, pki: Pki) -> None:
        creds = credentials(pki, "desktop", ca=pki.other_ca_cert)
        with grpc.secure_channel(mtls.address, creds) as channel, pytest.raises(grpc.RpcError) as caught:
            decide(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    def test_plain_text_to_a_tls_port(self, mtls: ServerHandle) -> None:
        with grpc.insecure_channel(mtls.address) as channel, pytest.raises(grpc.RpcError) as caught:
            decide(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    def test_nba_decide_with_a_client_certificate(self, mtls: ServerHandle, pki: Pki) -> None:
        desk = pki.client("desktop")
        tls = ["--cacert", str(pki.ca_cert), "--cert", str(desk.cert), "--key", str(desk.key)]
        done = subprocess.run(
            [str(NBA_SCRIPT), "decide", CUSTOMER, "--target", mtls.address, "--json", *tls],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ruleset"]["hash"] == ruleset_sha256()

    def test_the_same_options_from_the_environment(self, mtls: ServerHandle, pki: Pki) -> None:
        desk = pki.client("desktop")
        env = {**server_env(), "NBA_CACERT": str(pki.ca_cert), "NBA_CERT": str(desk.cert), "NBA_KEY": str(desk.key)}
        done = subprocess.run(
            [str(NBA_SCRIPT), "decide", CUSTOMER, "--target", mtls.address],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Decision ")

    @pytest.mark.parametrize(
        ("options", "says"),
        [
            (["--cacert", "{ca}"], "wants a client certificate it trusts"),
            ([], "if it speaks TLS, give --cacert"),
            (["--cacert", "{other}", "--cert", "{cert}", "--key", "{key}"], "does not verify against --cacert"),
        ],
    )
    def test_a_tls_failure_is_one_line_and_exit_3(
        self, mtls: ServerHandle, pki: Pki, options: list[str], says: str
    ) -> None:
        desk = pki.client("desktop")
        values = {"ca": pki.ca_cert, "other": pki.other_ca_cert, "cert": desk.cert, "key": desk.key}
        args = [o.format(**values) for o in options]
        done = subprocess.run(
            [str(NBA_SCRIPT), "decide", CUSTOMER, "--target", mtls.address, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in server_env().items() if k != "GRPC_VERBOSITY"},
            check=False,
        )
        assert done.returncode == 3
        assert done.stderr.count("\n") == 1, done.stderr
        assert says in done.stderr
        assert mtls.address in done.stderr

    def test_grpcurl_lists_and_decides(self, mtls: ServerHandle, pki: Pki) -> None:
        desk = pki.client("desktop")
        tls = ["-cacert", str(pki.ca_cert), "-cert", str(desk.cert), "-key", str(desk.key)]
        target = f"127.0.0.1:{port_of(mtls)}"
        listed = subprocess.run(
            [str(GRPCURL), *tls, target, "list"], capture_output=True, text=True, timeout=60, check=False
        )
        assert listed.returncode == 0, listed.stderr
        assert "nba.v1.NextBestAction" in listed.stdout.split()
        request = json.dumps({"customer_id": CUSTOMER, "channel": "AGENT_DESKTOP"})
        called = subprocess.run(
            [str(GRPCURL), *tls, "-d", request, target, "nba.v1.NextBestAction/Decide"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert called.returncode == 0, called.stderr
        answer = json.loads(called.stdout)
        assert answer["ruleset"]["hash"] == ruleset_sha256()
        refused = subprocess.run(
            [str(GRPCURL), "-connect-timeout", "2", "-cacert", str(pki.ca_cert), target, "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0


class TestTokensOverTls:
    def test_a_bearer_token_over_server_tls(self, pki: Pki, tmp_path: Path) -> None:
        """Server TLS without client certificates; callers prove who they are with a JWT from the JWKS."""
        server = start_server(
            tmp_path / "server",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--jwks-file",
            str(pki.jwks),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--access-policy",
            str(role_policy(tmp_path / "policy.yaml")),
        )
        try:
            token_file = tmp_path / "token"
            token_file.write_text(pki.token("ec", sub="alice"))
            command = [str(NBA_SCRIPT), "decide", CUSTOMER, "--target", server.address, "--cacert", str(pki.ca_cert)]
            good = subprocess.run(
                [*command, "--token-file", str(token_file)],
                capture_output=True,
                text=True,
                timeout=60,
                env=server_env(),
                check=False,
            )
            assert good.returncode == 0, good.stderr
            expired = pki.token("rsa", sub="alice", iat=int(time.time()) - 900, exp=int(time.time()) - 600)
            bad = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=60,
                env={**server_env(), "NBA_TOKEN": expired},
                check=False,
            )
            assert bad.returncode == 2
            assert bad.stderr.strip() == "error: UNAUTHENTICATED: the token has expired"
            assert expired not in server.log_text()
        finally:
            server.stop()


def test_plain_text_off_loopback_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    """Nothing is bound: the refusal comes before the port is opened."""
    policy = role_policy(tmp_path / "policy.yaml")
    args = ["--host", "0.0.0.0", "--access-policy", str(policy), "--jwks-file", str(pki.jwks)]
    args += ["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]
    done = subprocess.run(
        server_command(tmp_path, *args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=server_env(),
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "cannot start: --host 0.0.0.0 without --tls-cert/--tls-key: plain text off loopback needs --insecure"
    )


def test_plain_text_on_loopback_is_logged_loudly(server: ServerHandle) -> None:
    warning = next(e for e in server.log_events() if e.get("event") == "plain_text_listener")
    assert warning["level"] == "warning"
    assert warning["address"] == server.address
    assert "--tls-cert" in warning["hint"]


def test_workers_and_dev_certs(tmp_path: Path) -> None:
    """`nba dev-certs` writes what two workers serve mutual TLS with; each new connection, whichever worker
    takes it, completes the handshake, and the CLI calls with the printed options."""
    certs = tmp_path / "certs"
    written = subprocess.run(
        [str(NBA_SCRIPT), "dev-certs", str(certs)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--access-policy" in written.stdout
    keys = {p.name: p.stat().st_mode & 0o777 for p in certs.glob("*.key")}
    assert keys == dict.fromkeys(("ca.key", "server.key", *(f"{role}.key" for role in ROLES)), 0o600)
    server = start_server(
        tmp_path / "server",
        "--workers",
        "2",
        "--tls-cert",
        str(certs / "server.pem"),
        "--tls-key",
        str(certs / "server.key"),
        "--tls-client-ca",
        str(certs / "ca.pem"),
        "--access-policy",
        str(certs / "access-policy.yaml"),
    )
    try:
        serving = next(e for e in server.log_events() if e.get("event") == "serving")
        assert len(serving["worker_pids"]) == 2
        creds = grpc.ssl_channel_credentials(
            (certs / "ca.pem").read_bytes(), (certs / "desktop.key").read_bytes(), (certs / "desktop.pem").read_bytes()
        )
        for _ in range(6):  # fresh connections: the kernel spreads them over both workers
            with grpc.secure_channel(server.address, creds) as channel:
                assert decide(channel).ruleset.hash == ruleset_sha256()
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
            decide(channel)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        tls = ["--cacert", str(certs / "ca.pem"), "--cert", str(certs / "desktop.pem")]
        tls += ["--key", str(certs / "desktop.key")]
        done = subprocess.run(
            [str(NBA_SCRIPT), "decide", CUSTOMER, "--target", f"localhost:{port_of(server)}", *tls],
            capture_output=True,
            text=True,
            timeout=60,
            env=server_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
    finally:
        assert server.stop() == 0
