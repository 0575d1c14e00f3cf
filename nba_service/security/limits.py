"""How much one caller, and the process as a whole, may ask at once: token buckets and call counters.

Pure bookkeeping with an injected clock, so tests can step time instead of sleeping; the gRPC interceptor
(`transport/grpc_limits.py`) decides what the key of a call is and turns a refusal into RESOURCE_EXHAUSTED.
Every count lives in one process: with `--workers N` each worker keeps its own, so the limits a caller meets
are per process (see docs/operators/limits-and-secrets.md for how to size them).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
MAX_TRACKED_KEYS = 10_000
"""Buckets kept at most; beyond it the least recently used one is forgotten (it comes back full). Keys are
authenticated principals or peer addresses, so this only bounds memory against many distinct callers."""
MIN_RETRY_S = 0.01
_EPSILON = 1e-9  # clock arithmetic in floats: a caller who waited exactly the hint must get the token


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_second` calls on average, and up to `burst` at once after a quiet spell."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError(f"a rate must be a positive number of calls per second, not {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"a burst must allow at least one call, not {self.burst}")

    def shown(self) -> str:
        return f"{self.per_second:g} calls/s"


def retry_hint(seconds: float) -> float:
    """Rounded up to the next 10 ms: a caller that waits exactly the hint is not refused again for rounding."""
    return max(MIN_RETRY_S, math.ceil(round(seconds * 1000, 6) / 10) / 100)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a call may not run now, and after how many seconds the same call would."""

    limit: str
    retry_after: float


class RateLimiter:
    """One token bucket per key. A call takes one token; tokens come back at `rate.per_second`, up to
    `rate.burst`. The rate is given per call, so one key's rate can depend on who it is (a seam for per-role
    limits in the access policy) without this class knowing about roles."""

    def __init__(self, clock: Clock = time.monotonic, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, rate: Rate) -> Refused | None:
        """Takes a token for one call by `key`; None when it may run, else how long until it could."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(rate.burst), now)
        else:
            bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.at) * rate.per_second)
            bucket.at = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return None
        return Refused(f"rate limit of {rate.shown()}", retry_hint((1.0 - bucket.tokens) / rate.per_second))

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What the server enforces: `rate` per caller (None: no rate limit), calls running at once in the process,
    and HTTP/2 streams at once per connection (a client queues calls beyond it; nothing is refused)."""

    rate: Rate | None
    max_concurrent_calls: int
    max_streams_per_connection: int


class Slot:
    """One admitted call; `leave` when it is over, whatever its outcome."""

    __slots__ = ("_counter", "_started")

    def __init__(self, counter: CallCounter, started: float) -> None:
        self._counter = counter
        self._started = started

    def leave(self) -> None:
        self._counter.left(self._started)


class CallCounter:
    """Calls running now, in total, against a cap. The retry hint is how long calls have been taking lately
    (a moving average): by then a slot has most likely come free."""

    def __init__(self, cap: int, clock: Clock = time.monotonic, typical_s: float = 0.05) -> None:
        if cap < 1:
            raise ValueError(f"a concurrency cap must allow at least one call, not {cap}")
        self.cap = cap
        self._clock = clock
        self._running = 0
        self._typical = typical_s

    @property
    def running(self) -> int:
        return self._running

    def enter(self) -> Slot | Refused:
        """Counts a call in, or refuses it when `cap` calls are running."""
        if self._running >= self.cap:
            return Refused(f"limit of {self.cap} concurrent calls per process", retry_hint(self._typical))
        self._running += 1
        return Slot(self, self._clock())

    def left(self, started: float) -> None:
        self._running -= 1
        took = max(0.0, self._clock() - started)
        self._typical += (took - self._typical) / 16
