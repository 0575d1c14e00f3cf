"""The embedded profile store: the bundled synthetic population, in memory, updated live.

It lets a newcomer run real decisions with no database. Profiles are handed out as immutable
snapshots, so a decision never sees a half-applied update.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nba_service.domain.profile import AttributeValue, Contact, Event, Profile
from nba_service.errors import NotFound

MAX_EVENTS_PER_CUSTOMER = 200
MAX_CONTACTS_PER_CUSTOMER = 500


@dataclass(slots=True)
class _Customer:
    attributes: dict[str, AttributeValue]
    events: list[Event] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    snapshot: Profile | None = None


class MemoryProfileStore:
    def __init__(
        self, profiles: Iterable[Profile] = (), clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._customers: dict[str, _Customer] = {}
        self._clock = clock
        for profile in profiles:
            self.put(profile)

    def put(self, profile: Profile) -> None:
        self._customers[profile.customer_id] = _Customer(
            dict(profile.attributes), list(profile.events), list(profile.contacts), profile
        )

    def __len__(self) -> int:
        return len(self._customers)

    def _customer(self, customer_id: str) -> _Customer:
        customer = self._customers.get(customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id!r} not found")
        return customer

    async def get_profile(self, customer_id: str) -> Profile:
        customer = self._customer(customer_id)
        if customer.snapshot is None:
            customer.snapshot = Profile(
                customer_id, dict(customer.attributes), tuple(customer.events), tuple(customer.contacts)
            )
        return customer.snapshot

    async def add_event(self, customer_id: str, event: Event) -> str:
        customer = self._customer(customer_id)
        now = self._clock()
        live = [e for e in customer.events if e.expires_at is None or e.expires_at > now]
        live.append(event)
        live.sort(key=lambda e: e.time)
        customer.events = live[-MAX_EVENTS_PER_CUSTOMER:]
        customer.snapshot = None
        return str(uuid.uuid4())

    async def add_contact(self, customer_id: str, contact: Contact) -> None:
        customer = self._customer(customer_id)
        customer.contacts.append(contact)
        customer.contacts.sort(key=lambda c: c.time)
        del customer.contacts[:-MAX_CONTACTS_PER_CUSTOMER]
        customer.snapshot = None

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
