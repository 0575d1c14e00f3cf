"""What has been deployed: every version ever activated, kept by content hash, and which one is active.

Versions are copied into the deploy folder (never read again from where they came from), so a rollback
serves exactly the text that was signed off even after the source folder changed, and a restart serves
the version that was last activated instead of silently going back to the files on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from nba_service.domain.loader import TESTS_SUFFIX
from nba_service.domain.model import Ruleset
from nba_service.errors import FieldProblem
from nba_service.stores.group_commit import write_file_atomically

log = structlog.get_logger(__name__)

STATE_FILE = "state.json"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: str
    hash: str
    activated_at: datetime
    source: str
    scenarios_passed: int
    path: str
    """The kept ruleset file; its scenario tests, when it has any, are the `.tests.yaml` beside it."""
    activated_by: str = ""
    """Who activated it: the admin caller's principal; "" for start-up, SIGHUP and the folder watch."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "activated_at": self.activated_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VersionInfo:
        return cls(**{**data, "activated_at": datetime.fromisoformat(data["activated_at"])})

    def shown(self) -> str:
        return f"{self.name} {self.version} ({self.hash[:12]})"


@dataclass(frozen=True, slots=True)
class Activation:
    """How a version came to serve and who asked, handed by a supervisor to the workers it starts for that version:
    they, not the supervisor, note it in the store's archive, which every replica shares."""

    origin: str
    by: str = ""

    def to_json(self) -> dict[str, str]:
        return {"origin": self.origin, "by": self.by}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Activation:
        return cls(str(data["origin"]), str(data.get("by", "")))


@dataclass(frozen=True, slots=True)
class Refusal:
    name: str
    version: str
    hash: str
    reason: str
    problems: tuple[str, ...]
    at: datetime
    origin: str = ""
    by: str = ""
    """Who asked, as `VersionInfo.activated_by`; "" also in refusals kept before this field existed."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems), "at": self.at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refusal:
        return cls(**{**data, "problems": tuple(data["problems"]), "at": datetime.fromisoformat(data["at"])})


@dataclass(frozen=True, slots=True)
class DeployRecord:
    active: VersionInfo | None = None
    previous: VersionInfo | None = None
    last_refusal: Refusal | None = None
    configured_hash: str = ""
    """The hash of the configured rulesets source when it was last considered: a change is a new candidate."""
    history: tuple[str, ...] = field(default=())


class DeployState:
    """The deploy folder (`<spill_dir>/rulesets` by default); one process writes it, others only read."""

    def __init__(self, root: Path, on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self._on_outcome = on_outcome  # (origin, "activated" | "refused"): the deploy metrics

    def activated(self, origin: str, version: VersionInfo, previous: VersionInfo | None) -> None:
        """Reports a switch, whichever way the service deploys: its one log line, and the metrics."""
        log_activated(origin, version, previous)
        if self._on_outcome is not None:
            self._on_outcome(origin, "activated")

    def read(self) -> DeployRecord:
        path = self.root / STATE_FILE
        if not path.exists():
            return DeployRecord()
        data = json.loads(path.read_text(encoding="utf-8"))
        return DeployRecord(
            active=_opt(VersionInfo.from_json, data.get("active")),
            previous=_opt(VersionInfo.from_json, data.get("previous")),
            last_refusal=_opt(Refusal.from_json, data.get("last_refusal")),
            configured_hash=str(data.get("configured_hash", "")),
            history=tuple(data.get("history", ())),
        )

    def write(self, record: DeployRecord) -> None:
        data = {
            "active": record.active.to_json() if record.active else None,
            "previous": record.previous.to_json() if record.previous else None,
            "last_refusal": record.last_refusal.to_json() if record.last_refusal else None,
            "configured_hash": record.configured_hash,
            "history": list(record.history[-50:]),
        }
        write_file_atomically(self.root / STATE_FILE, json.dumps(data, indent=2) + "\n")

    def keep(self, name: str, content_hash: str, content: str, tests: str | None) -> Path:
        """Copies a candidate into the folder of its hash; the same text always lands in the same place."""
        folder = self.root / "versions" / f"{_safe(name)}-{content_hash[:16]}"
        write_file_atomically(folder / f"{_safe(name)}.yaml", content)
        tests_path = folder / f"{_safe(name)}{TESTS_SUFFIX}"
        if tests is not None:
            write_file_atomically(tests_path, tests)
        elif tests_path.exists():
            os.unlink(tests_path)
        return folder / f"{_safe(name)}.yaml"

    def switched(self, record: DeployRecord, new: VersionInfo) -> DeployRecord:
        """The record after `new` became active: the old active one becomes the rollback target."""
        previous = record.active if record.active is not None and record.active.hash != new.hash else record.previous
        return replace(record, active=new, previous=previous, history=(*record.history, new.hash))

    def refused(self, record: DeployRecord, refusal: Refusal) -> DeployRecord:
        return replace(record, last_refusal=refusal)

    def refuse(
        self,
        record: DeployRecord,
        ruleset: Ruleset | None,
        reason: str,
        problems: tuple[FieldProblem, ...],
        origin: str,
        by: str = "",
    ) -> None:
        """Keeps and logs why a candidate did not serve, and who asked for it: a refused deploy is as much part
        of the audit trail as one that served. `ruleset` is None when its text did not even load."""
        refusal = Refusal(
            ruleset.meta.name if ruleset else "",
            ruleset.meta.version if ruleset else "",
            ruleset.content_hash if ruleset else "",
            reason,
            tuple(f"{p.field}: {p.problem}" if p.field else p.problem for p in problems),
            now(),
            origin,
            by,
        )
        self.write(self.refused(record, refusal))
        log.error("ruleset_refused", origin=origin, reason=reason, problems=list(refusal.problems)[:20], by=by or None)
        if self._on_outcome is not None:
            self._on_outcome(origin, "refused")


def log_activated(origin: str, version: VersionInfo, previous: VersionInfo | None) -> None:
    """The one log line of a switch, whichever way the service deploys."""
    log.info(
        "ruleset_activated",
        origin=origin,
        ruleset=version.name,
        version=version.version,
        hash=version.hash[:12],
        scenarios_passed=version.scenarios_passed,
        previous=previous.shown() if previous else None,
        by=version.activated_by or None,
    )


def now() -> datetime:
    return datetime.now(UTC)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "ruleset"


def _opt(reader: Any, value: Any) -> Any:
    return None if value is None else reader(value)
