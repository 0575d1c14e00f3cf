"""The seams the decision service depends on; stores and engines plug in behind them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from nba_service.domain.facts import FactValue
from nba_service.domain.profile import Contact, Event, Outcome, Profile
from nba_service.domain.records import DecisionRecord, DecisionSummary


class ProfileStore(Protocol):
    async def get_profile(self, customer_id: str) -> Profile:
        """The live profile in one read; raises NotFound for an unknown customer."""
        ...

    async def add_event(self, customer_id: str, event: Event) -> str:
        """Stores a live event and returns its id; raises NotFound for an unknown customer."""
        ...

    async def add_contact(self, customer_id: str, contact: Contact) -> None: ...

    async def ready(self) -> bool:
        """Whether the store can answer now (feeds the health service)."""
        ...

    async def close(self) -> None: ...


class DecisionLog(Protocol):
    async def append(self, record: DecisionRecord) -> None:
        """Queues a record; waits when the queue is full rather than dropping it."""
        ...

    async def append_outcome(self, outcome: Outcome) -> None: ...

    async def find(self, decision_id: str) -> DecisionSummary | None: ...

    async def close(self) -> None:
        """Writes everything queued before returning."""
        ...


class Evaluator(Protocol):
    def evaluate(self, facts: Mapping[str, FactValue]) -> list[int]: ...

    def close(self) -> None: ...
