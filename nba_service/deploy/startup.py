"""Which version a process serves when it starts, and what a change of the configured files means."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import structlog

from nba_service.deploy.gate import Candidate, Prepared, parse, prepare
from nba_service.deploy.state import DeployState, Refusal, VersionInfo, now
from nba_service.domain.loader import TESTS_SUFFIX
from nba_service.domain.model import Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.errors import CandidateRefused, NbaError
from nba_service.settings import Settings

log = structlog.get_logger(__name__)


def start_version(
    configured: Ruleset, state: DeployState | None, load: Callable[[Ruleset], ActiveRuleset]
) -> tuple[Prepared, VersionInfo]:
    """The configured files serve unless an admin activated another version since they last changed: a
    restart must not silently undo a deploy or a rollback. Every path passes the gate, so a version whose
    scenarios fail never serves; with no earlier good version that means the process does not start."""
    candidate = Candidate.from_file(Path(configured.source))
    if state is None:
        prepared = prepare(candidate, configured, load)
        return prepared, _info(configured, "start-up", prepared.scenarios_passed, configured.source)
    record = state.read()
    active = record.active
    if (
        active is not None
        and record.configured_hash == configured.content_hash
        and active.hash != configured.content_hash
    ):
        try:
            kept = Candidate.from_file(Path(active.path))
            return prepare(kept, parse(kept), load), active
        except (OSError, NbaError) as exc:
            log.error("last_activated_version_unusable", version=active.shown(), error=str(exc))
    try:
        prepared = prepare(candidate, configured, load)
    except CandidateRefused as exc:
        if active is None or active.hash == configured.content_hash:
            raise
        refusal = Refusal(
            configured.meta.name,
            configured.meta.version,
            configured.content_hash,
            exc.message,
            tuple(f"{p.field}: {p.problem}" for p in exc.problems),
            now(),
            "start-up",
        )
        state.write(replace(state.refused(record, refusal), configured_hash=configured.content_hash))
        log.error("configured_ruleset_refused_serving_last_good", reason=exc.message, serving=active.shown())
        kept = Candidate.from_file(Path(active.path))
        return prepare(kept, parse(kept), load), active
    if active is not None and active.hash == configured.content_hash:
        info = active
    else:
        path = state.keep(configured.meta.name, configured.content_hash, candidate.content, candidate.tests)
        info = _info(configured, "start-up", prepared.scenarios_passed, str(path))
        record = state.switched(record, info)
    state.write(replace(record, configured_hash=configured.content_hash))
    return prepared, info


def files_digest(path: Path) -> str:
    """One hash over the configured ruleset files and their scenario tests, without parsing them: cheap
    enough to poll, and any change to what could be deployed changes it."""
    digest = hashlib.sha256()
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path, path.with_name(path.stem + TESTS_SUFFIX)]
    for file in files:
        if file.exists():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _info(ruleset: Ruleset, origin: str, passed: int, path: str) -> VersionInfo:
    meta = ruleset.meta
    return VersionInfo(meta.name, meta.version, ruleset.content_hash, now(), origin, passed, path)


async def follow_configured_files(
    settings: Settings,
    follow: Callable[[str], Awaitable[None]],
    loop: asyncio.AbstractEventLoop,
    on_sighup: Callable[[], None] | None = None,
) -> None:
    """Calls `follow("folder")` when the configured ruleset files change (polled every `watch_seconds`) and
    `follow("sighup")` on SIGHUP; whoever owns the deploys decides what a change means. `on_sighup` is called
    on SIGHUP as well (a signal has one handler per loop: whatever else SIGHUP reloads hangs on this one)."""
    hup = asyncio.Event()

    def hung_up() -> None:
        hup.set()
        if on_sighup is not None:
            on_sighup()

    loop.add_signal_handler(signal.SIGHUP, hung_up)
    digest = await asyncio.to_thread(files_digest, settings.rulesets)
    interval = settings.watch_seconds or None
    try:
        while True:
            try:
                await asyncio.wait_for(hup.wait(), interval)
                origin = "sighup"
            except TimeoutError:
                origin = "folder"
            hup.clear()
            try:
                current = await asyncio.to_thread(files_digest, settings.rulesets)
            except OSError as exc:
                log.warning("rulesets_unreadable", path=str(settings.rulesets), error=str(exc))
                continue
            if origin == "folder" and current == digest:
                continue
            digest = current
            await follow(origin)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
