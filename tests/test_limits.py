"""Token buckets and call counters, on a clock the test steps: no sleeping, no flakiness."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from nba_service.errors import ResourceExhausted
from nba_service.security.limits import CallCounter, Rate, RateLimiter, Refused, retry_hint
from nba_service.security.policy import Caller
from nba_service.transport.grpc_errors import to_status
from nba_service.transport.grpc_limits import caller_key, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRate:
    def test_refuses_rates_and_bursts_that_allow_nothing(self) -> None:
        for per_second, burst in ((0.0, 1), (-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)):
            with pytest.raises(ValueError, match=r"rate|burst"):
                Rate(per_second, burst)


class TestRateLimiter:
    def test_a_full_bucket_lets_the_burst_through_then_refuses(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock)
        rate = Rate(50, 5)
        assert [limiter.take("desk-01", rate) for _ in range(5)] == [None] * 5
        refused = limiter.take("desk-01", rate)
        assert refused == Refused("rate limit of 50 calls/s", 0.02)  # one token takes 1/50 s to come back

    def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock)
        rate = Rate(10, 3)
        for _ in range(3):
            assert limiter.take("k", rate) is None
        clock.now += 0.05  # half a token
        refused = limiter.take("k", rate)
        assert refused is not None
        assert refused.retry_after == pytest.approx(0.05)
        clock.now += 0.05
        assert limiter.take("k", rate) is None
        clock.now += 3600  # an hour idle refills to the burst, not to 36,000
        assert [limiter.take("k", rate) is None for _ in range(4)] == [True, True, True, False]

    def test_waiting_the_hint_is_enough(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock)
        rate = Rate(3, 1)
        assert limiter.take("k", rate) is None
        refused = limiter.take("k", rate)
        assert refused is not None
        clock.now += refused.retry_after
        assert limiter.take("k", rate) is None

    def test_each_key_has_its_own_bucket(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock)
        rate = Rate(1, 1)
        assert limiter.take("desk-01", rate) is None
        assert limiter.take("desk-01", rate) is not None
        assert limiter.take("dialer-01", rate) is None

    def test_the_rate_is_given_per_call_so_a_new_rate_applies_at_once(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock)
        assert limiter.take("k", Rate(1, 1)) is None
        clock.now += 0.01
        assert limiter.take("k", Rate(1, 1)) is not None  # 1/s: a hundredth of a token came back
        clock.now += 0.01
        assert limiter.take("k", Rate(100, 1)) is None  # 100/s (say, a role's limit after a reload): a whole one

    def test_forgets_the_least_recently_used_key_beyond_its_capacity(self) -> None:
        clock = Clock()
        limiter = RateLimiter(clock, max_keys=3)
        rate = Rate(1, 1)
        for key in ("a", "b", "c"):
            assert limiter.take(key, rate) is None
        assert limiter.take("a", rate) is not None  # "a" used again: "b" is now the oldest
        assert limiter.take("d", rate) is None
        assert len(limiter) == 3
        assert limiter.take("b", rate) is None  # forgotten, so it comes back full
        assert limiter.take("a", rate) is not None  # still tracked, still empty


class TestCallCounter:
    def test_refuses_beyond_the_cap_and_admits_again_once_a_call_leaves(self) -> None:
        clock = Clock()
        counter = CallCounter(2, clock)
        first, second = counter.enter(), counter.enter()
        assert not isinstance(first, Refused)
        assert not isinstance(second, Refused)
        third = counter.enter()
        assert isinstance(third, Refused)
        assert third.limit == "limit of 2 concurrent calls per process"
        assert counter.running == 2
        first.leave()
        assert counter.running == 1
        assert not isinstance(counter.enter(), Refused)

    def test_the_hint_follows_how_long_calls_take(self) -> None:
        clock = Clock()
        counter = CallCounter(1, clock, typical_s=0.05)
        for _ in range(200):
            slot = counter.enter()
            assert not isinstance(slot, Refused)
            clock.now += 0.4
            slot.leave()
        held = counter.enter()
        refused = counter.enter()
        assert not isinstance(held, Refused)
        assert isinstance(refused, Refused)
        assert refused.retry_after == pytest.approx(0.4, abs=0.011)

    def test_a_cap_below_one_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one call"):
            CallCounter(0)


class TestRetryHint:
    @pytest.mark.parametrize(
        ("seconds", "hint"), [(0.0, 0.01), (0.001, 0.01), (0.02, 0.02), (0.0201, 0.03), (0.19, 0.19), (1.234, 1.24)]
    )
    def test_rounds_up_to_ten_milliseconds(self, seconds: float, hint: float) -> None:
        assert retry_hint(seconds) == pytest.approx(hint)


class TestCallerKey:
    @pytest.mark.parametrize(
        ("peer", "host"),
        [
            ("ipv4:10.0.0.7:51234", "10.0.0.7"),
            ("ipv6:[::1]:51234", "::1"),
            ("ipv6:[2001:db8::5]:443", "2001:db8::5"),
            ("unix:/tmp/nba.sock", "/tmp/nba.sock"),
        ],
    )
    def test_peer_host_drops_the_port(self, peer: str, host: str) -> None:
        assert peer_host(peer) == host

    def test_a_verified_principal_is_its_own_key_whatever_the_connection(self) -> None:
        caller = Caller.trusted("cert:CN=desk-01,O=Bank")
        assert caller_key(caller, "ipv4:10.0.0.7:1") == caller_key(caller, "ipv4:10.0.0.8:2") == caller.principal

    def test_anonymous_callers_are_counted_per_address(self) -> None:
        anonymous = Caller.trusted("anonymous")
        assert caller_key(anonymous, "ipv4:10.0.0.7:1") == "anonymous@10.0.0.7"
        assert caller_key(None, "ipv4:10.0.0.7:2") == "anonymous@10.0.0.7"
        assert caller_key(None, "ipv4:10.0.0.8:2") == "anonymous@10.0.0.8"


class TestResourceExhaustedStatus:
    def test_carries_the_message_and_a_retry_info(self) -> None:
        status = to_status(ResourceExhausted("rate limit of 50 calls/s for x exceeded; retry after 0.02 s", 0.02))
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert status.details == "rate limit of 50 calls/s for x exceeded; retry after 0.02 s"
        rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
        info = error_details_pb2.RetryInfo()
        assert rich.details[0].Unpack(info)
        assert info.retry_delay.ToNanoseconds() == 20_000_000
