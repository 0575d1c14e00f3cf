"""Helpers for the end-to-end tests: a real `nba serve` process, and a local oracle of what it should answer.

The oracle evaluates the bundled sample with the reference evaluator and the policy code, the same
pieces the service composes, so tests choose their customers from the data instead of hard-coding ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ruamel.yaml import YAML

from nba_service._proto.nba.v1 import nba_pb2, nba_pb2_grpc
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel
from nba_service.domain.pipeline import evaluate, reference_active
from nba_service.domain.policy import Candidate
from nba_service.domain.profile import Contact, Event, Profile
from nba_service.domain.reference import ReferenceEvaluator
from nba_service.export import export_records
from nba_service.settings import Settings
from nba_service.synthetic import SAMPLE_PATH, read_sample

REPO_ROOT = Path(__file__).resolve().parents[2]
RULESET_PATH = REPO_ROOT / "rulesets" / "retail-banking.yaml"
NBA_SCRIPT = Path(sys.executable).parent / "nba"
SERVICE_NAME = "nba.v1.NextBestAction"
START_TIMEOUT_S = 30.0

PB_CHANNEL = {Channel.AGENT_DESKTOP: nba_pb2.AGENT_DESKTOP, Channel.OUTBOUND_DIALER: nba_pb2.OUTBOUND_DIALER}


def utcnow() -> datetime:
    return datetime.now(UTC)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a file; other lines (C-core warnings, a torn last line) are skipped."""
    if not path.exists():
        return []
    items: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                items.append(item)
    return items


def export_lines(database: Path, **filters: Any) -> list[dict[str, Any]]:
    """The records of an embedded database, as `nba decisions export` prints them."""
    lines: list[str] = []
    settings = Settings(db_path=database, rulesets=RULESET_PATH)
    asyncio.run(export_records(settings, lines.append, **filters))
    return [json.loads(line) for line in lines]


@dataclasses.dataclass
class ServerHandle:
    """One running `nba serve` process and what a test needs to talk to it."""

    process: subprocess.Popen[bytes]
    address: str
    database: Path
    server_log: Path
    spawned_at: datetime
    ready_at: datetime
    http_address: str | None = None  # with --http-port: the HTTP/JSON API's host:port
    _channels: list[grpc.Channel] = dataclasses.field(default_factory=list)
    _stub: nba_pb2_grpc.NextBestActionStub | None = None

    def new_channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    @property
    def stub(self) -> nba_pb2_grpc.NextBestActionStub:
        if self._stub is None:
            self._stub = nba_pb2_grpc.NextBestActionStub(self.new_channel())
        return self._stub

    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.new_channel())

    def health_status(self, service: str = "") -> int:
        return self.health().Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def decide(self, customer_id: str, channel: Channel, max_actions: int = 0, **kwargs: Any) -> nba_pb2.DecideResponse:
        request = nba_pb2.DecideRequest(
            customer_id=customer_id, channel=PB_CHANNEL[channel], max_actions=max_actions, **kwargs
        )
        return self.stub.Decide(request, timeout=10)

    def log_events(self) -> list[dict[str, Any]]:
        return read_json_lines(self.server_log)

    def log_text(self) -> str:
        return self.server_log.read_text(encoding="utf-8", errors="replace") if self.server_log.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """Every record the server's database holds, read through `nba decisions export`'s own code."""
        return export_lines(self.database)

    def decision_lines(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("kind") == "decision"]

    def wait_for_decisions(self, decision_ids: Iterable[str], timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """The decision records with these ids, once the log writer has written them all."""
        wanted = set(decision_ids)
        deadline = time.monotonic() + timeout
        while True:
            found = {r["decision_id"]: r for r in self.decision_lines() if r.get("decision_id") in wanted}
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"database {self.database} lacks {sorted(wanted - set(found))}")
            time.sleep(0.05)

    def close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._stub = None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signals the process (if it still runs) and waits; kills it if it overstays `timeout`."""
        self.close_channels()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


def server_command(workdir: Path, *extra_args: str) -> list[str]:
    """The `nba serve` command line for a server whose files live in `workdir`: one process unless the test
    asks for workers (`--workers N`), so that what a test sees is one server's doing."""
    workers = () if "--workers" in extra_args else ("--workers", "1")
    return [
        str(NBA_SCRIPT),
        "serve",
        "--port",
        "0",
        "--log-format",
        "json",
        # The one bundled file, named explicitly: a second file dropped into rulesets/ must not stop the tests.
        "--rulesets",
        str(RULESET_PATH),
        *workers,
        *extra_args,
    ]


def server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}


def start_server(
    workdir: Path, *extra_args: str, env: dict[str, str] | None = None, database: Path | None = None
) -> ServerHandle:
    """Starts `nba serve` on a free port and returns once its `serving` log event names the address.

    `env` adds variables (e.g. `NBA_DB_PATH`, which `server_env()` strips from the parent's); `database` is
    the database the server was told to use, when it is not `workdir/var/nba.db`."""
    workdir.mkdir(parents=True, exist_ok=True)
    server_log = workdir / "server.log"
    spawned_at = utcnow()
    with server_log.open("wb") as stderr:
        process = subprocess.Popen(
            server_command(workdir, *extra_args),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=workdir,
            env={**server_env(), **(env or {})},
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        serving = next((e for e in read_json_lines(server_log) if e.get("event") == "serving"), None)
        if serving is not None:
            break
        if process.poll() is not None:
            pytest.fail(f"nba serve exited with {process.returncode} before serving; log:\n{server_log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            pytest.fail(f"nba serve did not log 'serving' within {START_TIMEOUT_S}s; log:\n{server_log.read_text()}")
        time.sleep(0.02)
    return ServerHandle(
        process,
        serving.get("address", ""),  # none with --no-grpc
        database or workdir / "var" / "nba.db",
        server_log,
        spawned_at,
        utcnow(),
        http_address=serving.get("http_address"),
    )


# --------------------------------------------------------------------------------------------------
# The local oracle
# --------------------------------------------------------------------------------------------------


def ruleset_document() -> dict[str, Any]:
    """The bundled ruleset as plain YAML data, read without the service's loader."""
    document: dict[str, Any] = YAML(typ="safe").load(RULESET_PATH.read_bytes())
    return document


def ruleset_sha256() -> str:
    return hashlib.sha256(RULESET_PATH.read_bytes()).hexdigest()


ProfileEdit = Callable[[Profile, datetime], Profile]


def with_event(event_type: str, attributes: dict[str, Any]) -> ProfileEdit:
    """A profile edit adding an event that happened `now` (as an IngestEvent without a time does)."""

    def edit(profile: Profile, now: datetime) -> Profile:
        return dataclasses.replace(profile, events=(*profile.events, Event(event_type, now, dict(attributes))))

    return edit


def with_contact(contact_factory: Callable[[datetime], Contact]) -> ProfileEdit:
    def edit(profile: Profile, now: datetime) -> Profile:
        return dataclasses.replace(profile, contacts=(*profile.contacts, contact_factory(now)))

    return edit


class Oracle:
    """What the service should decide for a sample customer, computed in this process."""

    def __init__(self, path: Path = RULESET_PATH) -> None:
        """`path`: another ruleset than the bundled one, e.g. a shadow candidate, on the same sample."""
        self.ruleset = load_ruleset_file(path)
        self.reference = ReferenceEvaluator(self.ruleset)
        self.active = reference_active(self.ruleset)
        self._index = {rule.id: i for i, rule in enumerate(self.ruleset.rules)}
        self._cache: dict[datetime, dict[str, Profile]] = {}

    def profiles(self, anchor: datetime) -> dict[str, Profile]:
        """The bundled sample as a server started at `anchor` holds it."""
        if anchor not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[anchor] = {p.customer_id: p for p in read_sample(SAMPLE_PATH, anchor)}
        return self._cache[anchor]

    def evaluate(self, profile: Profile, channel: Channel, now: datetime, limit: int = 20) -> list[Candidate]:
        """The service's own pipeline, on the reference evaluator instead of durable_rules."""
        result = evaluate(self.active, profile, channel, now, limit)
        rules = self.ruleset.rules
        return [
            Candidate(self._index[a.rule_id], rules[self._index[a.rule_id]], self.ruleset.actions[a.action_id])
            for a in result.actions
        ]

    def stable(
        self,
        server: ServerHandle,
        customer_id: str,
        channel: Channel,
        *,
        limit: int = 20,
        edits: tuple[ProfileEdit, ...] = (),
        horizon: timedelta = timedelta(seconds=90),
    ) -> list[Candidate] | None:
        """The expected ranked candidates for a call made within `horizon` from now, or None if unsure.

        The server anchored its sample somewhere between spawning and logging `serving`, and will decide
        at some moment in the next `horizon`: every time-dependent check (event ages, trigger lifetimes,
        cap windows, quiet hours) is monotonic in those, so the two extremes agreeing is enough.
        """
        now = utcnow()
        outcomes = []
        for anchor, moment in ((server.ready_at, now), (server.spawned_at - timedelta(seconds=1), now + horizon)):
            profile = self.profiles(anchor).get(customer_id)
            if profile is None:
                return None
            for edit in edits:
                profile = edit(profile, now)
            outcomes.append(self.evaluate(profile, channel, moment, limit))
        first, second = ([(c.rule.id, c.action.id) for c in o] for o in outcomes)
        return outcomes[0] if first == second else None

    def customers(self, anchor: datetime) -> list[Profile]:
        return list(self.profiles(anchor).values())


def ids(candidates: Iterable[Candidate]) -> list[str]:
    return [c.action.id for c in candidates]


def response_ids(response: nba_pb2.DecideResponse) -> list[str]:
    return [a.action_id for a in response.actions]


def is_plain_name(value: object) -> bool:
    """A name the service renders as it is: letters (any script), spaces and light punctuation."""
    if not isinstance(value, str) or not value.strip() or len(value) > 60 or value != " ".join(value.split()):
        return False
    return all(ch.isprintable() and not ch.isdigit() and ch not in "{}<>@/\\" for ch in value)
