"""Runs rulesets through the one decision pipeline over a population, on every core: two versions for
`nba rulesets diff`, one for `nba rulesets starved`.

Each worker process loads the versions into durable_rules once (the engine that serves, through
`app.activate`, the loading the service itself does) and then evaluates chunks of customers, returning
only small tallies (`review.diff`, `review.starved`); the parent adds them up. Worker processes are started with
`spawn`: the parent may hold threads (a store's reader threads) that a fork would copy mid-flight, and
durable_rules keeps process-global state that must be born in the process that uses it. A worker that
dies fails the run (`BrokenProcessPool`) instead of leaving it waiting. At most two chunks per worker are in
flight, so a population file of any size streams through in bounded memory, and a bad line stops the run at
the first bad chunk in file order.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from nba_service.domain.model import Channel, Direction, Ruleset
from nba_service.domain.pipeline import FALLBACK_ENGINE, ActiveRuleset, evaluate
from nba_service.review.diff import ChannelImpact, merge_impacts
from nba_service.review.population import CHUNK, Chunk, Population, chunk_profiles

Tally = tuple[int, dict[Channel, ChannelImpact]]


def desk_direction(channel: Channel, desk: Direction) -> Direction | None:
    """The direction a run decides in: the one asked for the agent desktop; the dialer's own (it only calls out)."""
    return desk if channel is Channel.AGENT_DESKTOP else None


@dataclass(frozen=True, slots=True)
class Versions:
    """Both versions loaded into the engine, and what every evaluation of the run shares."""

    old: ActiveRuleset
    new: ActiveRuleset
    channels: tuple[Channel, ...]
    now: datetime
    limit: int
    desk: Direction = Direction.INBOUND

    @classmethod
    def load(
        cls,
        old: Ruleset,
        new: Ruleset,
        channels: Sequence[Channel],
        now: datetime,
        limit: int,
        desk: Direction = Direction.INBOUND,
    ) -> Versions:
        from nba_service.app import activate  # noqa: PLC0415 - durable_rules only where decisions are made

        loaded_old = activate(old)
        try:
            loaded_new = activate(new)
        except BaseException:
            loaded_old.engine.close()
            raise
        return cls(loaded_old, loaded_new, tuple(channels), now, limit, desk)

    def close(self) -> None:
        self.old.engine.close()
        self.new.engine.close()

    def tally(self, chunk: Chunk) -> Tally:
        impacts = {channel: ChannelImpact(channel) for channel in self.channels}
        customers = 0
        for profile in chunk_profiles(chunk, self.now):
            customers += 1
            for channel, impact in impacts.items():
                way = desk_direction(channel, self.desk)
                old = evaluate(self.old, profile, channel, self.now, self.limit, direction=way)
                new = evaluate(self.new, profile, channel, self.now, self.limit, direction=way)
                impact.add(profile.customer_id, old.action_ids, new.action_ids)
                impact.fallbacks_old += old.engine == FALLBACK_ENGINE
                impact.fallbacks_new += new.engine == FALLBACK_ENGINE
        return customers, impacts


class Loaded(Protocol):
    """Rulesets loaded into the engine in one process, tallying chunks of customers."""

    def tally(self, chunk: Chunk) -> Any: ...

    def close(self) -> None: ...


_loaded: Loaded | None = None


def _start_worker(load: Callable[[], Loaded]) -> None:
    global _loaded  # noqa: PLW0603 - one per worker process, made once by the pool's initializer
    _loaded = load()


def _work(chunk: Chunk) -> Any:
    if _loaded is None:
        raise RuntimeError("worker process started without its rulesets")
    return _loaded.tally(chunk)


def run_chunks(
    load: Callable[[], Loaded], population: Population, *, workers: int, take: Callable[[Any], None]
) -> None:
    """`load()` (picklable: it runs in each worker process) once per process, then each chunk's tally handed
    to `take` in population order."""
    if workers == 1:
        loaded = load()
        try:
            for chunk in population.chunks(CHUNK):
                take(loaded.tally(chunk))
        finally:
            loaded.close()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(load,)) as pool:
        pending: deque[Future[Any]] = deque()
        try:
            for chunk in population.chunks(CHUNK):
                pending.append(pool.submit(_work, chunk))
                while len(pending) >= 2 * workers:
                    take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


@dataclass(frozen=True, slots=True)
class Simulation:
    impacts: dict[Channel, ChannelImpact]
    customers: int
    seconds: float
    workers: int


def simulate(
    old: Ruleset,
    new: Ruleset,
    population: Population,
    *,
    channels: Sequence[Channel],
    now: datetime,
    limit: int,
    workers: int,
    progress: Callable[[int], None] = lambda _: None,
    desk: Direction = Direction.INBOUND,
) -> Simulation:
    """Both versions over every customer of an open population; `progress` is told each chunk's size when done."""
    started = time.perf_counter()
    impacts: dict[Channel, ChannelImpact] = {channel: ChannelImpact(channel) for channel in channels}
    customers = 0

    def take(tally: Tally) -> None:
        nonlocal customers
        customers += tally[0]
        merge_impacts(impacts, tally[1])
        progress(tally[0])

    run_chunks(partial(Versions.load, old, new, channels, now, limit, desk), population, workers=workers, take=take)
    return Simulation(impacts, customers, time.perf_counter() - started, workers)
