"""The circuit breaker and the backend's retry rule, on injected clocks (no network)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from penny_cache.errors import CacheError, CacheTimeoutError, CacheUnavailableError
from penny_cache.redis.backend import RedisBackend
from penny_cache.redis.breaker import CircuitBreaker
from tests.conftest import FakeClock


def test_opens_after_threshold_failures_in_a_row(clock: FakeClock) -> None:
    """Below the threshold calls still go to Redis; at it, none does until the cooldown."""
    breaker = CircuitBreaker(3, 1.0, clock)
    breaker.failure()
    breaker.failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(0.99)
    assert not breaker.allow()


def test_a_success_resets_the_count(clock: FakeClock) -> None:
    """Failures must be consecutive: one success in between starts the count again."""
    breaker = CircuitBreaker(2, 1.0, clock)
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed" and breaker.healthy is False
    breaker.success()
    assert breaker.healthy


def test_half_open_lets_exactly_one_trial_through(clock: FakeClock) -> None:
    """After the cooldown one caller is the trial; the others keep skipping Redis until
    it ends: a success closes, a failure reopens for another cooldown."""
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.failure()
    clock.advance(1.0)
    assert breaker.probe_due()
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.opened == 2


class _Client:
    """A redis-py stand-in whose GET (and the bounded read's GETRANGE) fails as
    scripted, advancing the clock."""

    def __init__(self, clock: FakeClock, script: list[tuple[float, BaseException | None]]):
        self.clock = clock
        self.script = script
        self.calls = 0

    def get(self, key: str) -> Any:
        took, error = self.script[self.calls]
        self.calls += 1
        self.clock.advance(took)
        if error is not None:
            raise error
        return b"value"

    def getrange(self, key: str, start: int, end: int) -> Any:
        return self.get(key)

    def ping(self) -> bool:
        return self.get("ping") is not None


def _backend(client: _Client, clock: FakeClock, threshold: int = 3) -> RedisBackend:
    breaker = CircuitBreaker(threshold, 1.0, clock)
    return RedisBackend(client, monotonic=clock, deadline=0.1, breaker=breaker)  # type: ignore[arg-type]


def test_a_fast_connection_failure_is_retried_once(clock: FakeClock) -> None:
    """A refused/reset connection that failed within a tenth of the deadline is retried
    once (a restarted Redis, a stale pooled connection), and the call succeeds."""
    client = _Client(clock, [(0.001, redis.ConnectionError("reset")), (0.002, None)])
    assert _backend(client, clock).get("k") == b"value"
    assert client.calls == 2


@pytest.mark.parametrize(
    ("error", "took", "expected"),
    [
        (redis.TimeoutError("slow"), 0.045, CacheTimeoutError),
        (redis.ConnectionError("cut late"), 0.02, CacheUnavailableError),
    ],
)
def test_timeouts_and_slow_failures_are_not_retried(
    clock: FakeClock, error: BaseException, took: float, expected: type[CacheError]
) -> None:
    """A timeout, or a connection failure that used up a tenth of the deadline, is not
    retried: attempt plus retry must stay within the deadline."""
    client = _Client(clock, [(took, error), (0.045, None)])
    with pytest.raises(expected):
        _backend(client, clock).get("k")
    assert client.calls == 1


def test_open_breaker_skips_redis_and_the_background_probe_closes_it(clock: FakeClock) -> None:
    """Once open, calls fail at once without touching the client; after the cooldown the
    background probe (probe) pings, and a success lets requests through again."""
    client = _Client(clock, [(0.045, redis.TimeoutError("slow"))] * 3 + [(0.001, None)] * 2)
    backend = _backend(client, clock)
    for _ in range(3):
        with pytest.raises(CacheTimeoutError):
            backend.get("k")
    with pytest.raises(CacheUnavailableError, match="circuit open"):
        backend.get("k")
    assert client.calls == 3
    assert not backend.probe()  # cooldown not over: no probe
    clock.advance(1.0)
    assert backend.probe() and backend.breaker.state == "closed"
    assert backend.get("k") == b"value"


def test_an_error_reply_proves_redis_reachable(clock: FakeClock) -> None:
    """A reply that is an error (NOPERM, WRONGTYPE) neither counts as a failure nor
    leaves a half-open trial hanging: Redis answered."""
    client = _Client(
        clock, [(0.045, redis.TimeoutError("x")), (0.001, redis.ResponseError("NOPERM"))]
    )
    backend = _backend(client, clock, threshold=1)
    with pytest.raises(CacheTimeoutError):
        backend.get("k")
    clock.advance(1.0)
    with pytest.raises(CacheError, match="NOPERM"):
        backend.get("k")
    assert backend.breaker.state == "closed"


def test_a_client_that_fails_inside_is_a_cache_fault_not_a_crash(clock: FakeClock) -> None:
    """An exception that is not a redis-py error (a race inside the client during a
    failover raised TypeError) becomes CacheUnavailableError and counts as a failure: a
    cache fault never fails the request."""
    client = _Client(clock, [(0.001, TypeError("argument must be an int"))] * 2)
    backend = _backend(client, clock, threshold=1)
    with pytest.raises(CacheUnavailableError, match="client failed: TypeError"):
        backend.get("k")
    assert backend.breaker.state == "open"
