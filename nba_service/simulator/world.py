"""Simulated days through the real application: customers, events, calls in and out, answers and conversions.

The service, its stores and its decision records are the ones `nba serve` builds (`app.build_application`), run
on a clock this loop moves forward: the simulation writes what real traffic would, where real traffic would, so
whatever reads the store afterwards (`nba decisions export`, a report of uplift) cannot tell it apart.

The truth it draws from is known (`truth.py`): the unit is a customer and an action, at the first delivered
decision that showed the action to that customer or held them out of it (dropped `held_out`); at that moment the
unit converts with probability base + uplift when shown, base when held out, and a converter's conversion event
is written at a uniform time within the action's conversion window. Later decisions for the same unit draw
nothing. Nothing is written before the clock reaches its time: the stores read the newest event of each type, so
an event written ahead of time would reach profiles early. After the last day the clock runs on, deciding
nothing, until every conversion is written, so a report over the simulated range sees each unit's whole window.

Determinism: each purpose (background events, calls, dialer lists, answers, conversions) draws from its own
`random.Random` seeded from the seed, always in customer-id order. Decisions and writes run concurrently within
an hour, but never two for one customer at once: a customer's decision cannot see another's, and one customer's
events and outcomes are written in time order (the stores break ties between equal times by order of writing).
Decision ids are random; nothing depends on them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from nba_service.app import Application
from nba_service.domain.model import Channel
from nba_service.domain.ports import CustomerLoader
from nba_service.domain.profile import AttributeValue, OutcomeKind
from nba_service.domain.records import DecisionRecord
from nba_service.errors import FailedPrecondition, InvalidArgument, NbaError
from nba_service.service import MAX_CAMPAIGN_IDS, CampaignCall
from nba_service.simulator.truth import Truth
from nba_service.synthetic import MAX_CUSTOMERS, generate_profile, live_event

T = TypeVar("T")
_Answer = tuple[str, str, OutcomeKind, datetime] | None

ID_PREFIX: Final = "SIM-"
MAX_DAYS: Final = 3650
# Decisions (and writes) awaited together: enough for the group commit to batch records, few enough to keep the
# event loop responsive.
CONCURRENCY: Final = 100
CUSTOMER_BATCH: Final = 1000
INBOUND_HOURS: Final = range(8, 20)
HOUR: Final = timedelta(hours=1)
CAMPAIGN_DELAY: Final = timedelta(seconds=1)
DAY: Final = timedelta(days=1)
HELD_OUT: Final = "held_out"


def simulated_id(index: int) -> str:
    return f"{ID_PREFIX}{index:06d}"


class SimulatedClock:
    """The time the service and the stores take for now; only the loop moves it, and only forward."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, to: datetime) -> None:
        self.now = max(self.now, to)


@dataclass(frozen=True, slots=True)
class Plan:
    customers: int
    days: int
    seed: int
    start: datetime

    def problems(self) -> list[str]:
        found = []
        if not 1 <= self.customers <= MAX_CUSTOMERS:
            found.append(f"--customers: must be between 1 and {MAX_CUSTOMERS:,}, got {self.customers}")
        if not 1 <= self.days <= MAX_DAYS:
            found.append(f"--days: must be between 1 and {MAX_DAYS}, got {self.days}")
        if self.start.tzinfo is None:
            found.append("--start: must carry a time zone")
        return found


def latest_conversion_window(truth: Truth) -> timedelta:
    return max((a.conversion.within for a in truth.actions.values()), default=timedelta(0))


def default_start(now: datetime, days: int, truth: Truth) -> datetime:
    """Midnight UTC early enough that the decision days and every conversion window after them end a day before
    `now`, so a report up to now sees the whole run."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = latest_conversion_window(truth)
    return today - DAY - days * DAY - timedelta(days=window.days + (1 if window % DAY else 0))


@dataclass(slots=True)
class ActionTally:
    shown: int = 0
    held_out: int = 0
    converted_shown: int = 0
    converted_held_out: int = 0


@dataclass(slots=True)
class Summary:
    """What the run wrote, counted as it was written."""

    customers: int
    days: int
    seed: int
    start: datetime
    end: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))
    inbound_decisions: int = 0
    dialer_decisions: int = 0
    calls_placed: int = 0
    offers_shown: int = 0
    held_out: int = 0
    background_events: int = 0
    conversion_events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    actions: dict[str, ActionTally] = field(default_factory=dict)

    @property
    def decisions(self) -> int:
        return self.inbound_decisions + self.dialer_decisions

    def conversions(self) -> dict[str, int]:
        """Units that converted, by how they were first exposed."""
        return {
            "shown": sum(t.converted_shown for t in self.actions.values()),
            "held_out": sum(t.converted_held_out for t in self.actions.values()),
        }

    def to_json(self) -> dict[str, object]:
        return {
            "customers": self.customers,
            "days": self.days,
            "seed": self.seed,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "decisions": {"inbound": self.inbound_decisions, "dialer": self.dialer_decisions, "total": self.decisions},
            "dialer_calls_placed": self.calls_placed,
            "offers_shown": self.offers_shown,
            "held_out": self.held_out,
            "units": {
                "shown": sum(t.shown for t in self.actions.values()),
                "held_out": sum(t.held_out for t in self.actions.values()),
            },
            "conversions": self.conversions(),
            "events": {"background": self.background_events, "conversion": self.conversion_events},
            "outcomes": dict(sorted(self.outcomes.items())),
        }


@dataclass(frozen=True, slots=True)
class _Write:
    """Something the world does at a moment: an event arrives, or an agent records a conversion."""

    customer_id: str
    event_type: str = ""
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    expires_at: datetime | None = None
    decision_id: str = ""
    action_id: str = ""
    conversion: bool = False


class World:
    """One run: the application to drive, the truth to draw from, the plan and the clock the application reads."""

    def __init__(self, app: Application, truth: Truth, plan: Plan, clock: SimulatedClock) -> None:
        problems = plan.problems()
        if problems:
            raise InvalidArgument("; ".join(problems))
        self.app = app
        self.service = app.service
        self.truth = truth
        self.plan = plan
        self.clock = clock
        self.summary = Summary(plan.customers, plan.days, plan.seed, plan.start)
        self.summary.actions = {action_id: ActionTally() for action_id in truth.actions}
        streams = ("events", "calls", "dialer", "answers", "conversions")
        self._rng = {name: random.Random(f"{plan.seed}:{name}") for name in streams}
        self._ids = [simulated_id(i) for i in range(1, plan.customers + 1)]
        self._attributes: dict[str, dict[str, AttributeValue]] = {}
        self._exposed: set[tuple[str, str]] = set()
        self._queue: list[tuple[datetime, int, _Write]] = []
        self._order = itertools.count()

    async def run(self, progress: Callable[[int], None] | None = None) -> Summary:
        """Creates the customers, runs the days, then the conversion windows; `progress(1)` after each day and
        once more when the windows are done."""
        await self._create_customers()
        for day in range(self.plan.days):
            await self._day(self.plan.start + day * DAY)
            if progress is not None:
                progress(1)
        # Every conversion falls within its window of a decision day, so by `end` all are written.
        end = self.plan.start + self.plan.days * DAY + latest_conversion_window(self.truth)
        while self._queue:
            await self._flush(self._queue[0][0])
        self.clock.advance(end)
        if progress is not None:
            progress(1)
        self.summary.end = end
        return self.summary

    # ------------------------------------------------------------------ customers

    async def _create_customers(self) -> None:
        store = self.app.store
        if not isinstance(store, CustomerLoader):
            raise FailedPrecondition(f"the {self.app.settings.store} store cannot add customers")
        loader: CustomerLoader = store
        missing = set(await _in_pages(self._ids, self.app.store.missing_customers))
        if len(missing) != len(self._ids):
            taken = next(c for i, c in enumerate(self._ids) if i not in missing)
            raise FailedPrecondition(
                f"the store already holds simulated customers ({taken} among them): simulate into a fresh database "
                "(--db-path, or another PostgreSQL database), so the run starts from a known state"
            )
        actions = tuple(self.service.active.ruleset.actions)
        self.clock.advance(self.plan.start)
        for first in range(0, len(self._ids), CUSTOMER_BATCH):
            batch = []
            for index in range(first + 1, min(first + CUSTOMER_BATCH, len(self._ids)) + 1):
                profile = generate_profile(index, seed=self.plan.seed, now=self.plan.start, action_ids=actions)
                self._attributes[simulated_id(index)] = dict(profile.attributes)
                batch.append(replace(profile, customer_id=simulated_id(index)))
            await loader.add_customers(batch)

    # ------------------------------------------------------------------ one day

    async def _day(self, start: datetime) -> None:
        world = self.truth.world
        events, calls, dialer = self._rng["events"], self._rng["calls"], self._rng["dialer"]
        whole, part = divmod(world.events, 1.0)
        for customer in self._ids:
            for _ in range(int(whole) + (events.random() < part)):
                at = start + timedelta(minutes=events.randrange(24 * 60))
                event = live_event(events, self._attributes[customer], at)
                self._at(at, _Write(customer, event.type, dict(event.attributes), event.expires_at))
        inbound: dict[int, list[str]] = {}
        for customer in self._ids:
            if calls.random() < world.inbound_calls:
                inbound.setdefault(calls.choice(INBOUND_HOURS), []).append(customer)
        listed = {hour: [c for c in self._ids if dialer.random() < world.dialer_calls] for hour in world.dialer_hours}
        for hour in range(24):
            now = start + hour * HOUR
            await self._flush(now)
            if hour in inbound:
                await self._inbound(inbound[hour])
            if listed.get(hour):
                # A second after the hour's inbound calls: one customer's two decisions never share an instant,
                # which would leave their order (and so the report's first exposure) to their random ids.
                self.clock.advance(now + CAMPAIGN_DELAY)
                await self._campaign(now + CAMPAIGN_DELAY, listed[hour])

    async def _inbound(self, customers: Sequence[str]) -> None:
        decisions = await _bounded(
            self.service.decide(c, Channel.AGENT_DESKTOP, context_reason="simulated inbound call") for c in customers
        )
        records = await self._records([d.decision_id for d in decisions])
        self.summary.inbound_decisions += len(records)
        for record in records:
            self._expose(record, contacted=True)
        answers = [self._answer(record, action.action_id) for record in records for action in record.actions]
        await self._record_outcomes(answers)

    async def _campaign(self, now: datetime, customers: list[str]) -> None:
        answered_share = 1 - self.truth.world.no_answer
        for part, first in enumerate(range(0, len(customers), MAX_CAMPAIGN_IDS), start=1):
            campaign_id = f"SIM-{now:%Y%m%d-%H}-{part}"
            listed = customers[first : first + MAX_CAMPAIGN_IDS]
            campaign = await self.service.prepare_campaign(campaign_id, Channel.OUTBOUND_DIALER, customer_ids=listed)
            results = [result async for result in self.service.decide_batch(campaign)]
            records = await self._records([r.decision_id for r in results])
            self.summary.dialer_decisions += len(records)
            outcomes: list[_Answer] = []
            for result, record in zip(results, records, strict=True):
                if not isinstance(result, CampaignCall):
                    self._expose(record, contacted=False)
                    continue
                self.summary.calls_placed += 1
                answered = self._rng["answers"].random() < answered_share
                self._expose(record, contacted=answered)
                action_id = result.action.action_id
                outcomes.append(
                    self._answer(record, action_id)
                    if answered
                    else (record.decision_id, action_id, OutcomeKind.NO_ANSWER, now)
                )
            await self._record_outcomes(outcomes)

    async def _records(self, decision_ids: Sequence[str]) -> list[DecisionRecord]:
        """The records as the store keeps them: what a report will read, so exposures are counted from the same."""
        found = await _bounded(self.app.records.get_record(d) for d in decision_ids)
        missing = [d for d, r in zip(decision_ids, found, strict=True) if r is None]
        if missing:
            raise NbaError(f"decision {missing[0]} was answered but its record is not in the store")
        return [r for r in found if r is not None]

    # ------------------------------------------------------------------ the truth

    def _expose(self, record: DecisionRecord, *, contacted: bool) -> None:
        """Counts what the decision showed and held out, and draws conversion for units met for the first time."""
        self.summary.offers_shown += len(record.actions)
        held = [d.action_id for d in record.dropped if d.reason == HELD_OUT]
        self.summary.held_out += len(held)
        exposures = [(a.action_id, True) for a in record.actions] + [(a, False) for a in held]
        draw = self._rng["conversions"]
        for action_id, shown in exposures:
            truth = self.truth.actions.get(action_id)
            unit = (record.customer_id, action_id)
            if truth is None or unit in self._exposed:
                continue
            self._exposed.add(unit)
            tally = self.summary.actions[action_id]
            if shown:
                tally.shown += 1
            else:
                tally.held_out += 1
            if draw.random() >= (truth.shown if shown else truth.base):
                continue
            if shown:
                tally.converted_shown += 1
            else:
                tally.converted_held_out += 1
            at = record.decided_at + truth.conversion.within * draw.random()
            conversion = truth.conversion
            self._at(at, _Write(record.customer_id, conversion.event, dict(truth.attributes), conversion=True))
            if shown and contacted and draw.random() < self.truth.world.converted_recorded:
                self._at(at, _Write(record.customer_id, decision_id=record.decision_id, action_id=action_id))

    def _answer(self, record: DecisionRecord, action_id: str) -> _Answer:
        """How the customer answers an action they heard (None: nothing recorded), drawn in call order."""
        responses = self.truth.responses
        roll = self._rng["answers"].random()
        for kind, share in (
            (OutcomeKind.ACCEPTED, responses.accepted),
            (OutcomeKind.DECLINED, responses.declined),
            (OutcomeKind.NOT_NOW, responses.not_now),
        ):
            if roll < share:
                return record.decision_id, action_id, kind, record.decided_at
            roll -= share
        return None

    async def _record_outcomes(self, answers: Sequence[_Answer]) -> None:
        """Each outcome is its own call, as an agent's or a dialer's; one customer's never depend on another's (one
        decision per customer in a batch)."""
        by_decision: dict[str, list[tuple[str, str, OutcomeKind, datetime]]] = {}
        for answer in answers:
            if answer is not None:
                by_decision.setdefault(answer[0], []).append(answer)
        # One decision's outcomes in the order drawn: contacts at the same time are read back in the order written.
        await _bounded(self._outcomes_in_order(outcomes) for outcomes in by_decision.values())

    async def _outcomes_in_order(self, outcomes: list[tuple[str, str, OutcomeKind, datetime]]) -> None:
        for outcome in outcomes:
            await self._outcome(*outcome)

    async def _outcome(self, decision_id: str, action_id: str, kind: OutcomeKind, when: datetime) -> None:
        await self.service.record_outcome(decision_id, action_id, kind, when, note="simulated")
        self.summary.outcomes[kind.value] += 1

    # ------------------------------------------------------------------ time

    def _at(self, when: datetime, write: _Write) -> None:
        heapq.heappush(self._queue, (when, next(self._order), write))

    async def _flush(self, now: datetime) -> None:
        """Moves the clock to `now`, writing first whatever happened up to then."""
        due: list[tuple[datetime, _Write]] = []
        while self._queue and self._queue[0][0] <= now:
            when, _, write = heapq.heappop(self._queue)
            due.append((when, write))
        self.clock.advance(now)
        by_customer: dict[str, list[tuple[datetime, _Write]]] = {}
        for when, write in due:
            by_customer.setdefault(write.customer_id, []).append((when, write))
        # No decision is made until all are stored, so customers' writes may overlap; one customer's go in time
        # order, as the store breaks ties between equal times by the order of writing.
        await _bounded(self._write_in_order(writes) for writes in by_customer.values())

    async def _write_in_order(self, writes: list[tuple[datetime, _Write]]) -> None:
        for when, write in writes:
            await self._write(when, write)

    async def _write(self, when: datetime, write: _Write) -> None:
        if write.event_type:
            await self.service.ingest_event(
                write.customer_id, write.event_type, write.attributes, when, write.expires_at
            )
            if write.conversion:
                self.summary.conversion_events += 1
            else:
                self.summary.background_events += 1
        else:
            await self._outcome(write.decision_id, write.action_id, OutcomeKind.CONVERTED, when)


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Awaits the calls `CONCURRENCY` at a time; results in the calls' order."""
    results: list[T] = []
    pending = iter(calls)
    while chunk := list(itertools.islice(pending, CONCURRENCY)):
        results.extend(await asyncio.gather(*chunk))
    return results


async def _in_pages(ids: Sequence[str], call: Callable[[Sequence[str]], Awaitable[list[int]]]) -> list[int]:
    positions: list[int] = []
    for first in range(0, len(ids), 10_000):
        positions.extend(first + p for p in await call(ids[first : first + 10_000]))
    return positions
