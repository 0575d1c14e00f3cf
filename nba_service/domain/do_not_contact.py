"""Do-not-contact listings as a compliance team keeps them: who listed a customer, why, from which source, until
when, and who lifted the listing again.

The policy (`nba_service.domain.policy`) reads only the live part of a listing, `DoNotContact`, from the profile.
This module adds what the register keeps around it (the listing's id and its removal), the checks every store
applies before it writes, and the one export format, so both stores and the `nba dnc` command agree on them.
Nothing here deletes: a removed listing stays, with who removed it, when and why.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nba_service.domain.model import Channel
from nba_service.domain.profile import DoNotContact, DoNotContactReason
from nba_service.errors import FailedPrecondition, FieldProblem, InvalidArgument, NotFound, Problems

EVERY_CHANNEL = "all"
"""How a listing on every channel (`DoNotContact.channel is None`) is spelled on the command line and in exports."""
MAX_TEXT = 500
"""Longest source, note or name kept: enough for a reference and a sentence, not a pasted document."""

EXPORT_COLUMNS = (
    "listing_id",
    "customer_id",
    "channel",
    "reason",
    "source",
    "note",
    "added_by",
    "added_at",
    "expires_at",
    "removed_by",
    "removed_at",
    "removal_note",
    "state",
)


class ListingState(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Listing:
    """One row of the register: a listing with its id and, once lifted, its removal."""

    listing_id: int
    customer_id: str
    entry: DoNotContact
    removed_at: datetime | None = None
    removed_by: str = ""
    removal_note: str = ""

    def state(self, now: datetime) -> ListingState:
        if self.removed_at is not None:
            return ListingState.REMOVED
        if self.entry.expires_at is not None and self.entry.expires_at <= now:
            return ListingState.EXPIRED
        return ListingState.ACTIVE

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The export's row (EXPORT_COLUMNS); `state` is as of `now`, the time of the export."""
        entry = self.entry
        return {
            "listing_id": self.listing_id,
            "customer_id": self.customer_id,
            "channel": channel_text(entry.channel),
            "reason": entry.reason.value,
            "source": entry.source,
            "note": entry.note,
            "added_by": entry.added_by,
            "added_at": entry.added_at.isoformat(),
            "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(),
            "removed_by": self.removed_by or None,
            "removed_at": None if self.removed_at is None else self.removed_at.isoformat(),
            "removal_note": self.removal_note or None,
            "state": self.state(now).value,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Which of a customer's active listings a removal lifts: every one unless narrowed to a channel (None: the
    listing on every channel) or a reason."""

    channel: Channel | None = None
    channel_given: bool = False
    reason: DoNotContactReason | None = None

    def matches(self, listing: Listing) -> bool:
        if self.channel_given and listing.entry.channel is not self.channel:
            return False
        return self.reason is None or listing.entry.reason is self.reason

    def __str__(self) -> str:
        parts = []
        if self.channel_given:
            parts.append(f"on {channel_words(self.channel)}")
        if self.reason is not None:
            parts.append(f"for {self.reason.value}")
        return " ".join(parts)


def channel_text(channel: Channel | None) -> str:
    return EVERY_CHANNEL if channel is None else channel.value


def channel_words(channel: Channel | None) -> str:
    """The channel in a sentence: `on every channel` reads better than `on all`."""
    return "every channel" if channel is None else channel.value


def parse_channel(text: str) -> Channel | None:
    """A channel name, or `all` for every channel; raises InvalidArgument naming `channel`."""
    if text == EVERY_CHANNEL:
        return None
    try:
        return Channel(text)
    except ValueError:
        choices = ", ".join([*(c.value for c in Channel), EVERY_CHANNEL])
        raise InvalidArgument.of("channel", f"{text[:64]!r} is not one of {choices}") from None


def parse_reason(text: str) -> DoNotContactReason:
    try:
        return DoNotContactReason(text)
    except ValueError:
        choices = ", ".join(r.value for r in DoNotContactReason)
        raise InvalidArgument.of("reason", f"{text[:64]!r} is not one of {choices}") from None


def new_listing(
    *,
    channel: str,
    reason: str,
    source: str,
    added_by: str,
    now: datetime,
    expires_at: datetime | None = None,
    note: str = "",
) -> DoNotContact:
    """A listing to add, checked whole: every bad field is named in one InvalidArgument. `now` is the time it is
    added (the store's clock), so an expiry must be after it."""
    problems = Problems()
    listed_channel: Channel | None = None
    listed_reason = DoNotContactReason.CUSTOMER_REQUEST
    try:
        listed_channel = parse_channel(channel)
    except InvalidArgument as exc:
        problems.extend(exc.problems)
    try:
        listed_reason = parse_reason(reason)
    except InvalidArgument as exc:
        problems.extend(exc.problems)
    _text(problems, "source", source, required="say where the request came from (a call, a letter, a register)")
    _text(problems, "added_by", added_by, required="say who is adding it")
    _text(problems, "note", note)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            problems.add("expires_at", "has no time zone")
        elif expires_at <= now:
            problems.add("expires_at", f"{expires_at.isoformat()} is in the past (now {now.isoformat()})")
    problems.raise_if_any()
    return DoNotContact(listed_channel, listed_reason, source.strip(), now, expires_at, added_by.strip(), note.strip())


def check_removal(removed_by: str, note: str) -> None:
    problems = Problems()
    _text(problems, "removed_by", removed_by, required="say who is removing it")
    _text(problems, "removal_note", note)
    problems.raise_if_any()


def _text(problems: Problems, field: str, value: str, required: str = "") -> None:
    if required and not value.strip():
        problems.add(field, f"is empty: {required}")
    elif len(value) > MAX_TEXT:
        problems.add(field, f"is {len(value)} characters long (at most {MAX_TEXT})")


def unknown_customer(customer_id: str) -> NotFound:
    return NotFound(
        f"customer {customer_id!r} not found", (FieldProblem("customer_id", f"no customer {customer_id[:64]!r}"),)
    )


def already_listed(existing: Listing) -> FailedPrecondition:
    """Adding what is already listed is refused, not refreshed: a refresh would overwrite the first listing's
    source and expiry (and could shorten it), and a second row would count one request twice."""
    entry = existing.entry
    until = f" until {entry.expires_at.isoformat()}" if entry.expires_at is not None else ""
    problem = (
        f"already listed for {entry.reason.value} on {channel_words(entry.channel)} (listing {existing.listing_id}, "
        f"added {entry.added_at.isoformat()} by {entry.added_by}{until}); remove it first to change it"
    )
    return FailedPrecondition(f"customer {existing.customer_id!r}: {problem}", (FieldProblem("channel", problem),))


def nothing_listed(customer_id: str, selection: Selection) -> NotFound:
    narrowed = str(selection)
    problem = f"no active do-not-contact listing {narrowed}" if narrowed else "no active do-not-contact listing"
    field = "channel" if selection.channel_given or selection.reason is None else "reason"
    return NotFound(f"customer {customer_id!r}: {problem}", (FieldProblem(field, problem),))


def duplicate_of(listings: list[Listing], entry: DoNotContact, now: datetime) -> Listing | None:
    """The active listing an addition would repeat: the same channel and reason."""
    return next(
        (
            listing
            for listing in listings
            if listing.state(now) is ListingState.ACTIVE
            and listing.entry.channel is entry.channel
            and listing.entry.reason is entry.reason
        ),
        None,
    )
