"""The seams the decision service depends on; stores and engines plug in behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from nba_service.domain.archive import ArchivedSource, ArchivedVersion
from nba_service.domain.do_not_contact import Listing, Selection
from nba_service.domain.facts import FactValue
from nba_service.domain.model import Ruleset
from nba_service.domain.profile import DoNotContact, Event, Outcome, Profile
from nba_service.domain.records import DecisionRecord, DecisionSummary, DeliveryUpdate, RecordUpdate, ShadowUpdate
from nba_service.domain.segments import Segment


class ProfileStore(Protocol):
    async def get_profile(self, customer_id: str) -> Profile:
        """The live profile in one read; raises NotFound for an unknown customer."""
        ...

    async def add_event(self, customer_id: str, event: Event, recorded_by: str = "") -> str:
        """Stores a live event durably, with the principal that reported it, and returns its id; raises NotFound
        for an unknown customer."""
        ...

    async def add_outcome(self, outcome: Outcome) -> bool:
        """Stores an outcome durably: one contact per offered action (its latest outcome), plus the audit row.
        False when an outcome with the same `idempotency_key` was already stored (nothing is written then)."""
        ...

    async def get_profiles(self, customer_ids: Sequence[str]) -> list[Profile]:
        """The live profiles of a batch of customers (one round trip on PostgreSQL), in the order asked; unknown
        customers are left out."""
        ...

    async def missing_customers(self, customer_ids: Sequence[str]) -> list[int]:
        """Positions in `customer_ids` of customers the store does not hold (a campaign checks before deciding)."""
        ...

    async def segment_page(self, segment: Segment, after: str, limit: int) -> list[Profile]:
        """Up to `limit` profiles of the segment's customers whose ids sort after `after`, in id order."""
        ...

    async def mark_wrong_number(self, customer_id: str, number: str, when: datetime) -> bool:
        """Marks the customer's number as not reaching them (never exported again); False for no such number."""
        ...

    def set_reads(self, event_types: Sequence[str], history: timedelta) -> None:
        """Which event types and how much contact history a profile read returns from now on."""
        ...

    async def ready(self) -> bool:
        """Whether the store can answer now (feeds the health service)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class CustomerLoader(Protocol):
    """Adds whole customers (attributes, consents, do-not-call, phones, events, contact history) in one
    transaction: how `nba simulate` creates its population in whichever store is configured."""

    async def add_customers(self, profiles: Sequence[Profile]) -> int:
        """Returns how many were added; an id the store already holds fails the whole call."""
        ...


class DoNotContactRegistry(Protocol):
    """The do-not-contact register (nba_service.domain.do_not_contact): listings are added and lifted, never
    deleted, so the whole history can be exported for compliance. Profile reads carry the active listings."""

    async def add_listing(self, customer_id: str, entry: DoNotContact) -> Listing:
        """Stores a checked listing (`do_not_contact.new_listing`). Raises NotFound (field customer_id) for an
        unknown customer and FailedPrecondition (field channel) when an active listing of the same channel and
        reason exists: nothing is stored twice, and nothing already stored changes."""
        ...

    async def remove_listings(
        self, customer_id: str, selection: Selection, removed_by: str, note: str = ""
    ) -> list[Listing]:
        """Lifts the customer's active listings that `selection` matches (marked removed, by whom, when, why) and
        returns them; raises NotFound naming the field when none matches."""
        ...

    async def listings(self, customer_id: str | None = None, *, include_inactive: bool = False) -> list[Listing]:
        """One customer's listings, or everyone's, oldest first: only active ones unless `include_inactive` (then
        expired and removed ones too)."""
        ...

    def export_listings(self) -> AsyncIterator[Listing]:
        """Every listing ever added, removed and expired ones included, oldest first."""
        ...


class DecisionLog(Protocol):
    async def record(self, record: DecisionRecord) -> None:
        """Returns once the record is durable; raises Unavailable when it cannot be made durable in time."""
        ...

    def mark(self, update: DeliveryUpdate) -> None:
        """Queues a correction for a durable record whose answer never reached the caller."""
        ...

    def defer(self, update: ShadowUpdate) -> None:
        """Queues an addition to a durable record that nobody waits for: it rides with a later commit rather
        than costing a waiting answer a commit of its own."""
        ...

    async def find(self, decision_id: str) -> DecisionSummary | None: ...

    def healthy(self) -> bool:
        """False while records cannot be made durable (store away, disk full, read-only file)."""
        ...

    async def close(self) -> None:
        """Writes what is queued within the drain time; reports what it could not write and where it left it."""
        ...


class RecordSink(Protocol):
    """Where a group-commit writer makes records durable: one transaction per call."""

    async def write(self, records: Sequence[DecisionRecord], updates: Sequence[RecordUpdate]) -> None:
        """Stores all records and applies all updates in one transaction, or raises."""
        ...

    async def dead_letter(self, record: DecisionRecord, error: str) -> None:
        """Sets aside a record the store refused, with the error; raises if even that is impossible."""
        ...

    def is_refusal(self, error: BaseException) -> bool:
        """Whether the store refused the content itself (retrying it unchanged can never succeed)."""
        ...

    async def probe(self) -> None:
        """A small real write, so a failing store is seen to recover even while no decision is waiting."""
        ...

    async def find(self, decision_id: str) -> DecisionSummary | None:
        """The stored decision an outcome refers to; raises Unavailable when the store cannot answer."""
        ...


class RecordExport(Protocol):
    def export(
        self, since: datetime | None, until: datetime | None, customer_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Decision and outcome records in the versioned export format, oldest first."""
        ...


class RecordReader(Protocol):
    async def get_record(self, decision_id: str) -> DecisionRecord | None:
        """The whole durable record, or None: unknown, set aside as a dead letter, or still queued for its
        commit. Raises Unavailable when the store cannot answer."""
        ...


class RulesetArchive(Protocol):
    """Every version that ever served, by content hash: what a decision record's hash is explained by."""

    async def keep(self, ruleset: Ruleset, activated_at: datetime, *, by: str = "", origin: str = "") -> None:
        """Stores the source by content hash (idempotent) and notes the activation with who asked and how (not
        again when this name's latest activation is already this hash: a restart or another worker keeps the first
        one's). Raises (Unavailable, FailedPrecondition) when it cannot: the version must then not serve."""
        ...

    async def source(self, ruleset_hash: str) -> ArchivedSource | None:
        """By full hash or a unique prefix of at least 12 hex digits; raises InvalidArgument naming the problem
        for a bad or ambiguous prefix."""
        ...

    async def versions(self, name: str | None = None) -> list[ArchivedVersion]:
        """Every version ever active, newest activation first."""
        ...


class Evaluator(Protocol):
    def evaluate(self, facts: Mapping[str, FactValue]) -> list[int]: ...

    def close(self) -> None: ...
