"""Shared fixtures: fake and real Redis, SQLite and PostgreSQL, injected clocks.

Integration fixtures skip when a service cannot be had, unless ``PENNY_REQUIRE_SERVICES=1``
(set by ``.ci/run``), where they fail instead: CI must never pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fakeredis
import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.cache import PersonalityCache
from penny_cache.redis.backend import RedisBackend
from penny_cache.store.database import PersonalityStore

REQUIRE_SERVICES = os.environ.get("PENNY_REQUIRE_SERVICES") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("PENNY_TEST_REDIS_URL"),
        help="use this Redis for integration tests instead of starting redis-server",
    )


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where every service must be there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}", pytrace=False)
    pytest.skip(reason)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeUTCClock:
    """A wall clock for the store: fixed until advanced."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def utc_clock() -> FakeUTCClock:
    return FakeUTCClock()


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def fake_backend(fake_redis: fakeredis.FakeRedis) -> RedisBackend:
    return RedisBackend(fake_redis)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cache(fake_backend: RedisBackend, namespace: str) -> Iterator[PersonalityCache]:
    """A cache on fakeredis with no flusher thread (tests flush explicitly)."""
    with PersonalityCache(fake_backend, namespace=namespace, stats_flush_interval=None) as c:
        yield c


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'penny.db'}"


@pytest.fixture
def store(sqlite_url: str, utc_clock: FakeUTCClock) -> Iterator[PersonalityStore]:
    s = PersonalityStore(sqlite_url, clock=utc_clock)
    yield s
    s.close()


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServerProcess]:
    """Start a redis-server on a free loopback port (or skip/fail) and always stop it."""
    try:
        server = RedisServerProcess().start()
    except (FileNotFoundError, TimeoutError, RuntimeError) as exc:
        unavailable(f"cannot start redis-server: {exc}")
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real Redis: ``--redis-url``/``PENNY_TEST_REDIS_URL``, else a private redis-server."""
    given = request.config.getoption("--redis-url")
    if given:
        try:
            redis.Redis.from_url(given, socket_timeout=1).ping()
        except redis.RedisError as exc:
            unavailable(f"no Redis at {given}: {exc}")
        yield given
        return
    with private_redis() as server:
        yield server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServerProcess]:
    """A private redis-server this test may kill, pause or restart."""
    with private_redis() as server:
        yield server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database made for this test and dropped after it."""
    base = os.environ.get("PENNY_TEST_DATABASE_URL")
    if not base:
        unavailable("PENNY_TEST_DATABASE_URL is not set")
        return
    import sqlalchemy as sa

    from bench.databases import postgres_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_database(base, "penny_test"))
        except sa.exc.OperationalError as exc:
            unavailable(f"PostgreSQL unreachable at {base}: {exc}")
            return
        yield url
