"""The `nba` command line as a newcomer meets it, run as a subprocess: clear usage errors, JSON with proto field
names, documented exit codes, settings errors that name the flag and the variable, one line when the port is
taken, and `--version`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from nba_service.domain.model import Channel
from nba_service.settings import Settings
from tests.e2e._support import NBA_SCRIPT, Oracle, ServerHandle, server_env

pytestmark = pytest.mark.e2e


def nba(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**server_env(), **(env or {})},
        cwd=cwd,
        check=False,
    )


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_version_is_the_package_version() -> None:
    """`nba --version` prints the installed package's version and exits 0."""
    result = nba("--version")
    assert result.returncode == 0, result.stderr
    assert importlib.metadata.version("nba-service") in result.stdout


@pytest.mark.parametrize("value", ["-1", "4294967296"])
def test_max_actions_out_of_range_is_a_usage_error(value: str) -> None:
    """`--max-actions -1` (or more than the request can carry) is a usage error naming the option, exit 2,
    not a traceback; nothing is sent."""
    result = nba("decide", "CUST-000001", "--max-actions", value, "--target", f"127.0.0.1:{_closed_port()}")
    assert result.returncode == 2, result.stderr
    assert "--max-actions" in result.stderr
    assert "Traceback" not in result.stderr


def _no_action_customer(server: ServerHandle, oracle: Oracle) -> str:
    for profile in oracle.customers(server.ready_at):
        if oracle.stable(server, profile.customer_id, Channel.AGENT_DESKTOP) == []:
            return profile.customer_id
    pytest.fail("no sample customer is sure to get no action")


def test_decide_json_uses_proto_field_names_and_prints_empty_fields(server: ServerHandle, oracle: Oracle) -> None:
    """`nba decide --json` prints the proto's snake_case names (as grpcurl and the decision records do) and every
    field even when empty: `actions` is `[]`, not missing."""
    result = nba("decide", "CUST-000058", "--json", "--max-actions", "20", "--target", server.address)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"decision_id", "actions", "ruleset", "decided_at", "direction"} <= set(document)
    assert document["direction"] == "INBOUND"  # the desktop's usual direction, when none is asked for
    assert document["actions"], "CUST-000058 has actions in the README example"
    assert {"action_id", "script", "priority", "category", "reason", "rule_id", "valid_until", "mandatory"} <= set(
        document["actions"][0]
    )
    assert document["actions"][0]["mandatory"] is False  # the bundled ruleset has no mandatory action
    assert "decisionId" not in result.stdout
    assert "validUntil" not in result.stdout

    empty = nba("decide", _no_action_customer(server, oracle), "--json", "--target", server.address)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["actions"] == []


def test_exit_code_table_is_in_the_help() -> None:
    """`nba --help` documents the exit codes of the client commands."""
    result = nba("--help")
    assert result.returncode == 0
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for line in (
        "0 done",
        "1 any other failure",
        "2 usage error, or the request was refused: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION",
        "3 the service cannot be reached, or answers UNAVAILABLE",
        "4 no answer within --timeout: DEADLINE_EXCEEDED",
    ):
        assert line in lines, result.stdout


def test_exit_codes_of_client_commands(server: ServerHandle) -> None:
    """0 done; 2 INVALID_ARGUMENT or NOT_FOUND; 3 nothing listens at the target; 4 DEADLINE_EXCEEDED (which used
    to exit 1 like any other failure)."""
    target = ("--target", server.address)
    assert nba("decide", "CUST-000001", *target).returncode == 0
    assert nba("decide", "CUST-999999", *target).returncode == 2
    assert nba("decide", "CUST 1", *target).returncode == 2
    assert nba("outcome", "no-such-decision", "welcome-call", "accepted", *target).returncode == 2

    unreachable = nba("decide", "CUST-000001", "--target", f"127.0.0.1:{_closed_port()}")
    assert unreachable.returncode == 3, unreachable.stderr
    assert "cannot reach the service" in unreachable.stderr

    # A listener that accepts connections and never speaks: every call runs into its deadline, however
    # loaded the machine (a real server may answer a local call before a tiny deadline's timer fires).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = ("--target", f"127.0.0.1:{silent.getsockname()[1]}")
        late = nba("decide", "CUST-000001", "--timeout", "0.3", *mute)
        assert late.returncode == 4, late.stderr
        assert "DEADLINE_EXCEEDED" in late.stderr
        for command in (
            ["event", "CUST-000001", "large_deposit", "--attr", "amount=1"],
            ["outcome", "d", "a", "accepted"],
        ):
            assert nba(*command, "--timeout", "0.3", *mute).returncode == 4


def test_event_attribute_typo_is_refused_with_the_declared_names(server: ServerHandle) -> None:
    """`nba event CUST-000058 large_deposit --attr amout=48250` (a typo of `amount`) is refused, exit 2, and the
    message lists the attributes large_deposit events declare."""
    result = nba("event", "CUST-000058", "large_deposit", "--attr", "amout=48250", "--target", server.address)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "attributes[amout]" in result.stderr
    assert "amount" in result.stderr.replace("amout", "")
    assert "account_last4" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--port", "70000"], {}), ([], {"NBA_PORT": "70000"})],
    ids=["flag", "environment"],
)
def test_settings_errors_name_the_flag_and_the_variable(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    """An invalid setting, given as a flag or in the environment, is a usage error naming both spellings the
    user can act on (`--port / NBA_PORT`), not the model's field name."""
    result = nba("serve", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "--port / NBA_PORT: Input should be less than or equal to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_options_follow_the_settings_model() -> None:
    """`nba serve --help` offers one option per settings field (with its description and variable) except the
    DSN, which is read from NBA_DSN only, as the help says."""
    result = nba("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name, field in Settings.model_fields.items():
        flag, variable = "--" + name.replace("_", "-"), f"NBA_{name.upper()}"
        if name == "dsn":
            assert flag not in text.replace("--dsn-password-file", "")  # the password's file is a flag of its own
            assert variable in text
            continue
        assert flag in text, flag
        assert variable in text, variable
        if field.description:
            assert field.description[1:] in text, field.description
    assert "[sqlite|postgres]" in text


def test_dsn_on_the_command_line_is_refused(tmp_path: Path) -> None:
    """`nba serve --dsn ...` is a usage error that points to NBA_DSN, and does not echo the DSN (its password)."""
    result = nba("serve", "--dsn", "postgresql://nba:s3cret@127.0.0.1/nba", cwd=tmp_path)
    assert result.returncode == 2
    assert "NBA_DSN" in result.stderr
    assert "s3cret" not in result.stderr


def test_port_taken_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """With the port held open by another socket, `nba serve` prints exactly one line, saying it cannot listen
    and why, with none of gRPC's C-core log lines, and exits 2."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(NBA_SCRIPT), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in env.items() if not k.startswith("NBA_")},
            cwd=tmp_path,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"cannot start: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert result.stdout == ""
