"""The HTTP/JSON API for CRM plugins against a real `nba serve --http-port 0`: the same decisions, records and
errors as gRPC, and an OpenAPI document the responses keep to."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nba_service.domain.model import Channel
from tests.e2e._support import (
    Oracle,
    ServerHandle,
    ids,
    read_json_lines,
    server_command,
    server_env,
    start_server,
    with_event,
)

pytestmark = pytest.mark.e2e

LABEL_MAX = 12


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("nba-http"), "--http-port", "0")
    yield handle
    handle.stop()


@pytest.fixture
def client(http_server: ServerHandle) -> Iterator[httpx.Client]:
    assert http_server.http_address is not None, "the serving event names no http_address"
    with httpx.Client(base_url=f"http://{http_server.http_address}", timeout=10) as http:
        yield http


def _stable_customer(server: ServerHandle, oracle: Oracle, channel: Channel, exclude: set[str] = set()) -> str:  # noqa: B006
    for profile in oracle.customers(server.ready_at):
        expected = oracle.stable(server, profile.customer_id, channel, limit=3)
        if expected and profile.customer_id not in exclude:
            return profile.customer_id
    pytest.fail(f"no sample customer with a stable decision on {channel.value}")


class TestDecide:
    @pytest.mark.parametrize("channel", [Channel.AGENT_DESKTOP, Channel.OUTBOUND_DIALER])
    def test_decides_as_the_oracle_with_card_fields(
        self, http_server: ServerHandle, client: httpx.Client, oracle: Oracle, channel: Channel
    ) -> None:
        """Both channels answer the ranked actions the pipeline predicts, each with a title, short labels, its
        rank, and the decision id that the record carries."""
        customer = _stable_customer(http_server, oracle, channel)
        expected = oracle.stable(http_server, customer, channel, limit=3)
        response = client.post("/v1/decide", json={"customer_id": customer, "channel": channel.name})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [a["action_id"] for a in body["actions"]] == ids(expected or [])
        for rank, action in enumerate(body["actions"], start=1):
            assert action["rank"] == rank
            assert action["title"]
            assert action["script"]
            assert 0 < len(action["accept_label"]) <= LABEL_MAX
            assert 0 < len(action["decline_label"]) <= LABEL_MAX
        record = http_server.wait_for_decisions([body["decision_id"]])[body["decision_id"]]
        assert record["customer_id"] == customer

    def test_unknown_customer_is_404(self, client: httpx.Client) -> None:
        response = client.post("/v1/decide", json={"customer_id": "NOBODY-404", "channel": "AGENT_DESKTOP"})
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"

    def test_invalid_fields_are_all_named(self, client: httpx.Client) -> None:
        """Every bad field in one answer, as the gRPC BadRequest detail names them."""
        response = client.post(
            "/v1/decide",
            json={"customer_id": "", "channel": "AGENT_DESKTOP", "max_actions": 99, "context": {"reason": "x\u0000"}},
        )
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == "INVALID_ARGUMENT"
        fields = {f["field"]: f["problem"] for f in body["fields"]}
        assert "context.reason" in fields
        assert "NUL" in fields["context.reason"]

    def test_service_checks_name_fields(self, client: httpx.Client) -> None:
        response = client.post("/v1/decide", json={"customer_id": "", "max_actions": 99})
        assert response.status_code == 400
        fields = {f["field"] for f in response.json()["fields"]}
        assert fields == {"customer_id", "channel", "max_actions"}

    def test_unknown_field_and_bad_json(self, client: httpx.Client) -> None:
        response = client.post("/v1/decide", json={"customer": "C-1"})
        assert response.status_code == 400
        assert response.json()["fields"][0] == {"field": "customer", "problem": "is not a field of this request"}
        response = client.post("/v1/decide", content=b"{", headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["fields"][0]["field"] == "body"


def test_outcome_is_recorded_and_checked(http_server: ServerHandle, client: httpx.Client, oracle: Oracle) -> None:
    customer = _stable_customer(http_server, oracle, Channel.AGENT_DESKTOP)
    decision = client.post("/v1/decide", json={"customer_id": customer, "channel": "AGENT_DESKTOP"}).json()
    action = decision["actions"][0]["action_id"]
    response = client.post(
        "/v1/outcomes", json={"decision_id": decision["decision_id"], "action_id": action, "outcome": "ACCEPTED"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["customer_id"] == customer
    wrong = client.post(
        "/v1/outcomes",
        json={"decision_id": decision["decision_id"], "action_id": "not-offered", "outcome": "ACCEPTED"},
    )
    assert wrong.status_code == 400
    assert wrong.json()["fields"][0]["field"] == "action_id"
    missing = client.post("/v1/outcomes", json={"decision_id": "no-such", "action_id": action, "outcome": "DECLINED"})
    assert missing.status_code == 404


def test_event_changes_the_next_decision(http_server: ServerHandle, client: httpx.Client, oracle: Oracle) -> None:
    attributes: dict[str, Any] = {"amount": 48250.75, "account_last4": "7781"}
    edit = with_event("large_deposit", attributes)
    for profile in oracle.customers(http_server.ready_at):
        before = oracle.stable(http_server, profile.customer_id, Channel.AGENT_DESKTOP)
        after = oracle.stable(http_server, profile.customer_id, Channel.AGENT_DESKTOP, edits=(edit,))
        if before is not None and after is not None and "term-deposit-rates" in set(ids(after)) - set(ids(before)):
            customer = profile.customer_id
            break
    else:
        pytest.fail("no sample customer gains term-deposit-rates from a large deposit")
    ask = {"customer_id": customer, "channel": "AGENT_DESKTOP", "max_actions": 20}
    assert "term-deposit-rates" not in [a["action_id"] for a in client.post("/v1/decide", json=ask).json()["actions"]]
    event = client.post("/v1/events", json={"customer_id": customer, "type": "large_deposit", "attributes": attributes})
    assert event.status_code == 200, event.text
    assert event.json()["event_id"]
    assert "term-deposit-rates" in [a["action_id"] for a in client.post("/v1/decide", json=ask).json()["actions"]]
    bad = client.post("/v1/events", json={"customer_id": customer, "type": "large_deposit", "attributes": {"amout": 1}})
    assert bad.status_code == 400
    assert bad.json()["fields"][0]["field"] == "attributes[amout]"


def test_health_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "SERVING"}
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/decide", "/v1/outcomes", "/v1/events", "/healthz"} <= set(document["paths"])
    action = document["components"]["schemas"]["RecommendedAction"]["properties"]
    assert {"title", "accept_label", "decline_label", "rank"} <= set(action)


def test_deadline_header(http_server: ServerHandle, client: httpx.Client, oracle: Oracle) -> None:
    """X-Request-Timeout is the caller's deadline, as gRPC's: one already past gets 504 and nothing is decided;
    a malformed one is refused by name; a generous one changes nothing."""
    customer = _stable_customer(http_server, oracle, Channel.AGENT_DESKTOP)
    ask = {"customer_id": customer, "channel": "AGENT_DESKTOP"}
    late = client.post("/v1/decide", json=ask, headers={"X-Request-Timeout": "0.000000001"})
    assert late.status_code == 504, late.text
    assert late.json()["code"] == "DEADLINE_EXCEEDED"
    for bad in ("soon", "-1", "0", "nan", "inf", "301"):
        refused = client.post("/v1/decide", json=ask, headers={"X-Request-Timeout": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["fields"][0]["field"] == "X-Request-Timeout"
    fine = client.post("/v1/decide", json=ask, headers={"X-Request-Timeout": "30"})
    assert fine.status_code == 200, fine.text
    record = http_server.wait_for_decisions([fine.json()["decision_id"]])[fine.json()["decision_id"]]
    assert record["delivery"] == "sent"


def test_workers_share_the_http_port(tmp_path: Path) -> None:
    """With --workers 2 both workers listen for HTTP on the one fixed port (SO_REUSEPORT), the supervisor's
    `serving` names it, and decisions over new connections are all answered and recorded. (Which worker took a
    connection is not visible over HTTP; the gRPC worker tests check the spread.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(tmp_path, "--workers", "2", "--http-port", str(port))
    try:
        assert server.http_address == f"127.0.0.1:{port}"
        decided: list[str] = []
        for _ in range(12):  # a new connection each time: the kernel spreads them over the workers
            with httpx.Client(base_url=f"http://{server.http_address}", timeout=30) as http:
                response = http.post("/v1/decide", json={"customer_id": "CUST-000001", "channel": "AGENT_DESKTOP"})
                assert response.status_code == 200, response.text
                decided.append(response.json()["decision_id"])
        assert set(server.wait_for_decisions(decided)) == set(decided)
        workers = {e["pid"] for e in read_json_lines(tmp_path / "server.log") if e.get("event") == "worker_serving"}
        assert len(workers) == 2
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("workers", [1, 2])
def test_http_alone(tmp_path: Path, workers: int) -> None:
    """`--no-grpc`: the HTTP/JSON API serves alone, decisions are answered and recorded, /healthz is SERVING,
    nothing listens on the gRPC port, and SIGTERM stops it cleanly; with workers the supervisor holds the HTTP
    port instead of the gRPC one."""
    grpc_port, http_port = _free_port(), _free_port()
    server = start_server(
        tmp_path,
        *("--workers", str(workers), "--no-grpc", "--port", str(grpc_port), "--http-port", str(http_port)),
    )
    try:
        serving = next(e for e in server.log_events() if e.get("event") == "serving")
        assert "address" not in serving, serving
        assert serving["http_address"] == f"127.0.0.1:{http_port}"
        with httpx.Client(base_url=f"http://{server.http_address}", timeout=30) as http:
            assert http.get("/healthz").json()["status"] == "SERVING"
            decided = []
            for _ in range(4):
                response = http.post("/v1/decide", json={"customer_id": "CUST-000001", "channel": "AGENT_DESKTOP"})
                assert response.status_code == 200, response.text
                decided.append(response.json()["decision_id"])
        assert set(server.wait_for_decisions(decided)) == set(decided)
        assert _refuses_connections(grpc_port), "something listens on the gRPC port although --no-grpc was given"
    finally:
        assert server.stop() == 0, server.log_text()


def test_no_grpc_needs_an_http_port(tmp_path: Path) -> None:
    """Nothing to serve is a start-up error that names both options, before anything is loaded."""
    done = subprocess.run(
        server_command(tmp_path, "--no-grpc"),
        check=False,
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--no-grpc / NBA_GRPC=false needs --http-port" in done.stderr
