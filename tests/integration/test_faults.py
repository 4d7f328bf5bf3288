"""The fault suite: each fault runs under the four-process coherence check.

Faults: SIGSTOP/SIGCONT of redis-server; a half-open network (the in-test proxy stops
forwarding without closing), added latency and connection resets; a subscriber cut by
Redis for a full output buffer; FLUSHALL; memory eviction; a writer killed right after
its SQL commit. Figures checked for each: no request failed (a worker would exit
non-zero), no read staler than ``max_staleness`` (+0.1 s), convergence, exact counters,
and the latency added during the fault (p99 of the calls that overlapped it, minus p99
outside it) within the cache's deadline per Redis call of a read.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.codec import decode_state
from penny_cache.keys import KeySchema
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.faultproxy import FaultProxy
from tests.integration.coherence_workers import DIMENSION, READ
from tests.integration.test_coherence import FaultLoop, Run, assert_coherent, run_history

pytestmark = [pytest.mark.integration, pytest.mark.faults]
SPAWN = multiprocessing.get_context("spawn")
DEADLINE: Final = 0.1  # PENNY_REDIS_TIMEOUT's default
CALLS_PER_READ: Final = 2  # a tracker read that misses: read-or-lease, then the fill


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def added_read_latency(run: Run, began: float, windows: list[tuple[float, float]]) -> float:
    """p99 of the reads overlapping a fault window minus p99 of the others (seconds);
    windows are seconds after the workload began, as the fault loops record them."""
    inside: list[float] = []
    outside: list[float] = []
    for result in run.results:
        for op in result.ops:
            if op.kind != READ:
                continue
            start, end = op.start - began, op.end - began
            hit = any(start < w_end and end > w_start for w_start, w_end in windows)
            (inside if hit else outside).append(op.end - op.start)
    return _percentile(inside, 0.99) - _percentile(outside, 0.99)


def _windows(times: list[float]) -> list[tuple[float, float]]:
    """Fault loops record (start, end) pairs."""
    return list(zip(times[::2], times[1::2], strict=True))


def _assert_fault_figures(run: Run, label: str) -> None:
    print(f"\n[{label}] {run.summary()}")
    assert run.faults, "the fault did not happen during the workload"
    assert_coherent(run)
    added = added_read_latency(run, run.began, _windows(run.faults))
    print(f"[{label}] added read latency p99 during the fault: {added * 1000:.1f} ms")
    assert added <= DEADLINE * CALLS_PER_READ, f"{added * 1000:.0f} ms added"


# -- faults on the server ----------------------------------------------------------------


def _sigstop(server: RedisServerProcess, stop: threading.Event, times: list[float]) -> None:
    """SIGSTOP redis-server for 0.6 s, twice (connections stay open, nothing answers)."""
    for delay in (0.8, 0.9):
        if stop.wait(delay):
            return
        times.append(time.monotonic())
        server.pause()
        stop.wait(0.6)
        server.resume()
        times.append(time.monotonic())


def _flushall(server: RedisServerProcess, stop: threading.Event, times: list[float]) -> None:
    """FLUSHALL at 1.0 s and 2.0 s: entries, sequence numbers, counters and scripts gone."""
    with redis.Redis(port=server.port, socket_timeout=2) as client:
        for delay in (1.0, 1.0):
            if stop.wait(delay):
                return
            times.append(time.monotonic())
            client.flushall()
            client.script_flush()
            times.append(time.monotonic())


def _evict(server: RedisServerProcess, stop: threading.Event, times: list[float]) -> None:
    """From 0.8 s: maxmemory just above what is used, volatile-lru, and junk keys with a
    TTL written until Redis evicts: entries (TTL) go, counters and sequences (no TTL) stay."""
    with redis.Redis(port=server.port, socket_timeout=2) as client:
        if stop.wait(0.8):
            return
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "volatile-lru")
        client.config_set("maxmemory", str(used + 512 * 1024))
        times.append(time.monotonic())
        pipe = client.pipeline(transaction=False)
        for n in range(20_000):
            pipe.set(f"junk:{n}", b"x" * 256, ex=600)
            if n % 500 == 499:
                pipe.execute()
        pipe.execute()
        times.append(time.monotonic())
        evicted = int(client.info("stats")["evicted_keys"])
        assert evicted > 0, "the junk did not push Redis into eviction"


def _cut_subscribers(channel: str) -> FaultLoop:
    """A 64 KiB hard limit on pub/sub output buffers, then bursts of forged 64 KiB
    messages (8 MiB: more than the socket buffers hold) on ``channel``: Redis
    disconnects the subscribers that fall behind."""

    def loop(server: RedisServerProcess, stop: threading.Event, times: list[float]) -> None:
        with redis.Redis(port=server.port, socket_timeout=5) as client:
            client.config_set("client-output-buffer-limit", "pubsub 65536 0 0")
            for delay in (0.8, 0.8):
                if stop.wait(delay):
                    return
                times.append(time.monotonic())
                pipe = client.pipeline(transaction=False)
                for _ in range(128):
                    pipe.publish(channel, b"forged " + b"x" * 65536)
                pipe.execute()
                times.append(time.monotonic())

    return loop


@pytest.mark.parametrize("fault", [_sigstop, _flushall, _evict], ids=lambda f: f.__name__[1:])
def test_server_faults_keep_the_history_coherent(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path, fault: Any
) -> None:
    """Under each server-side fault: no failed request, no stale read beyond the bound,
    convergence, exact counters, bounded added latency."""
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, fault)
    _assert_fault_figures(run, fault.__name__[1:])


def test_subscribers_cut_for_a_full_output_buffer_keep_the_history_coherent(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path
) -> None:
    """Subscribers Redis disconnects for a full output buffer reconnect (each flushing
    its near cache), with the same figures as the other faults."""
    cut = _cut_subscribers(KeySchema(namespace).channel())
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, cut)
    _assert_fault_figures(run, "cut_subscribers")
    assert run.stats["listener_reconnects"] > 0, "no subscriber was cut"


# -- faults on the network (the proxy) ---------------------------------------------------


class _Proxied:
    """What run_history needs: the URL workers use (the proxy's) and the proxy to hurt."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.url = proxy.url


@pytest.fixture
def proxied(own_redis: RedisServerProcess) -> Iterator[_Proxied]:
    with FaultProxy(own_redis.port) as proxy:
        yield _Proxied(proxy)


def _half_open(target: _Proxied, stop: threading.Event, times: list[float]) -> None:
    """Black-hole every connection for 0.7 s (open, silent), twice; then a reset."""
    for delay in (0.8, 0.8):
        if stop.wait(delay):
            return
        times.append(time.monotonic())
        target.proxy.blackhole()
        stop.wait(0.7)
        target.proxy.normal()
        times.append(time.monotonic())
    times.append(time.monotonic())
    target.proxy.reset()
    times.append(time.monotonic())


def _slow_network(target: _Proxied, stop: threading.Event, times: list[float]) -> None:
    """10 ms each way for 1 s: a 20 ms round trip stays well below the 45 ms read timeout
    even on a loaded machine (20 ms each way came within jitter of it under CI load and
    tripped a timeout), so the network is slower and nothing fails."""
    if stop.wait(0.8):
        return
    times.append(time.monotonic())
    target.proxy.latency(0.01)
    stop.wait(1.0)
    target.proxy.normal()
    times.append(time.monotonic())


@pytest.mark.parametrize("fault", [_half_open, _slow_network], ids=lambda f: f.__name__[1:])
def test_network_faults_keep_the_history_coherent(
    proxied: _Proxied, sqlite_url: str, namespace: str, tmp_path: Path, fault: Any
) -> None:
    """Through the proxy, a half-open (black-holed) network and a slow one: the same
    figures; a silent connection costs a timeout, then the breaker keeps calls off it."""
    run = run_history(proxied, sqlite_url, namespace, tmp_path, fault)
    _assert_fault_figures(run, fault.__name__[1:])


# -- a writer killed right after its SQL commit ---------------------------------------------


def commit_and_die(database_url: str, user: str) -> None:
    """A writer that commits an update and is killed before its write-through."""
    PersonalityStore(database_url).update_dimension(user, DIMENSION, 0.77)
    os._exit(9)


def _cached_version(server: RedisServerProcess, cache: PersonalityCache, user: str) -> int:
    """The version Redis holds for ``user`` (read raw: no breaker, no near cache)."""
    with redis.Redis(port=server.port, socket_timeout=2) as client:
        payload = client.get(cache.keys.state(user))
    assert payload is not None
    return decode_state(payload, user).version


def test_a_writer_killed_after_its_commit_is_published_by_an_outbox_sweep(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """The killed writer's version is committed but never written through: another
    process keeps serving the old version (cached) until its outbox sweeper, within
    grace + interval, publishes the committed one; then every reader has it."""
    cache = PersonalityCache.from_url(own_redis.url, namespace=namespace)
    store = PersonalityStore(sqlite_url)
    tracker = PersonalityTracker(store, cache, outbox_interval=0.2, outbox_grace=1.5)
    try:
        assert tracker.get_current_personality_state("kim").version == 0
        wait_until(lambda: cache.near_trusted, 5, "a trusted near cache")
        writer = SPAWN.Process(target=commit_and_die, args=(sqlite_url, "kim"))
        writer.start()
        writer.join(30)
        assert writer.exitcode == 9
        killed_at = time.monotonic()
        assert _cached_version(own_redis, cache, "kim") == 0  # Redis still holds version 0
        sweeper = tracker.outbox
        assert sweeper is not None
        wait_until(lambda: sweeper.replayed >= 1, 5, "the outbox sweep to publish version 1")
        took = time.monotonic() - killed_at
        print(f"\n[writer killed after commit] published by the sweeper after {took:.2f} s")
        assert _cached_version(own_redis, cache, "kim") == 1
        assert tracker.get_current_personality_state("kim").version == 1
        assert store.outbox_due(grace=0) == []
    finally:
        tracker.close()
        cache.close()
        store.close()
