"""Every ruleset version that ever served, kept by content hash, so any past decision can be explained.

A decision record names its version by hash only; the archive is what turns that hash back into the
text that decided. A version that cannot be archived must not serve: nobody could explain its decisions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from nba_service.domain.model import Ruleset
from nba_service.errors import FailedPrecondition, InvalidArgument

MIN_PREFIX = 12
FULL_HASH = 64
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class ArchivedSource:
    name: str
    version: str
    hash: str
    source: str
    """The ruleset file's text, exactly: its UTF-8 bytes hash to `hash`."""


@dataclass(frozen=True, slots=True)
class ArchivedVersion:
    name: str
    version: str
    hash: str
    first_activated_at: datetime
    last_activated_at: datetime
    activations: int
    last_activated_by: str = ""
    """Who asked for its latest activation (a caller's principal, `anonymous` on an open server); "" when nobody
    did (a start-up or a change of the configured files) or when it was noted before this was kept."""
    last_activation_origin: str = ""
    """How that activation came about: start-up, activate, rollback, folder, sighup; "" before this was kept."""


def archivable_text(ruleset: Ruleset) -> str:
    """The text to keep for a version; refuses one whose text is unknown or does not match its hash, since
    keeping it would name a version nobody can fetch back."""
    if not ruleset.text:
        raise FailedPrecondition(
            f"ruleset {ruleset.meta.name} {ruleset.meta.version} ({ruleset.content_hash[:12]}) carries no source "
            "text to archive"
        )
    if hashlib.sha256(ruleset.text.encode("utf-8")).hexdigest() != ruleset.content_hash:
        raise FailedPrecondition(
            f"ruleset {ruleset.meta.name} {ruleset.meta.version}: its text does not hash to {ruleset.content_hash[:12]}"
        )
    return ruleset.text


def hash_prefix(text: str) -> str:
    """A lookup key in canonical form; raises InvalidArgument naming what is wrong with it."""
    key = text.strip().lower().removeprefix("sha256:")
    if not key:
        raise InvalidArgument.of("ruleset_hash", "is required")
    if not _HEX.fullmatch(key):
        raise InvalidArgument.of("ruleset_hash", f"{text[:80]!r} is not a hexadecimal hash")
    if len(key) > FULL_HASH:
        raise InvalidArgument.of("ruleset_hash", f"is {len(key)} hex digits long; a sha256 hash has {FULL_HASH}")
    if len(key) < MIN_PREFIX:
        raise InvalidArgument.of(
            "ruleset_hash", f"{key!r} is too short: give the full hash or at least {MIN_PREFIX} hex digits"
        )
    return key


def ambiguous(prefix: str, matches: list[str]) -> InvalidArgument:
    shown = ", ".join(sorted(m[:16] for m in matches))
    return InvalidArgument.of(
        "ruleset_hash", f"prefix {prefix!r} matches {len(matches)} archived versions ({shown}); give more digits"
    )
