"""``penny-cache check`` reads Redis's eviction policy from a real redis-server.

It used to say ``redis ok`` on a Redis with ``maxmemory-policy allkeys-lru``, which may
evict the shared counters and the invalidation sequence numbers (they have no TTL).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from penny_cache.app.embedded import RedisServerProcess
from tests.conftest import unavailable
from tests.integration.test_cli import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def started() -> Iterator[list[RedisServerProcess]]:
    servers: list[RedisServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def _redis(started: list[RedisServerProcess], *args: str) -> RedisServerProcess:
    try:
        server = RedisServerProcess(None, *args)
    except FileNotFoundError as exc:
        unavailable(str(exc))
        raise
    server.start()
    started.append(server)
    return server


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_check_fails_on_an_allkeys_policy(
    policy: str, started: list[RedisServerProcess], sqlite_url: str
) -> None:
    """Finding: check said ``redis ok`` (exit 0) on an allkeys-* Redis. Now it exits 1 and
    its message names the policy and the fix (volatile-lru or noeviction)."""
    server = _redis(started, "--maxmemory-policy", policy)
    result = run_cli("check", PENNY_REDIS_URL=server.url, PENNY_DATABASE_URL=sqlite_url)
    assert result.returncode == 1, result.stdout
    assert f"eviction UNSAFE  maxmemory-policy {policy}" in result.stdout
    assert "set maxmemory-policy to volatile-lru (or noeviction)" in result.stdout
    assert "no TTL" in result.stdout
    assert "redis   ok" in result.stdout  # reachable: the policy alone fails the check


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "noeviction"])
def test_check_passes_on_a_policy_that_keeps_keys_without_ttl(
    policy: str, started: list[RedisServerProcess], sqlite_url: str
) -> None:
    """A volatile-* or noeviction Redis passes, and check says which policy it read."""
    server = _redis(started, "--maxmemory-policy", policy)
    result = run_cli("check", PENNY_REDIS_URL=server.url, PENNY_DATABASE_URL=sqlite_url)
    assert result.returncode == 0, result.stdout
    assert f"eviction ok  maxmemory-policy {policy}" in result.stdout


def test_check_warns_when_the_acl_refuses_config_get(
    started: list[RedisServerProcess], sqlite_url: str
) -> None:
    """The service's ACL user may not run CONFIG GET (deploy/redis/users.acl): check then
    says it could not verify the policy and how to check by hand, without failing, even on
    an allkeys-lru Redis it cannot see."""
    server = _redis(
        started,
        "--maxmemory-policy",
        "allkeys-lru",
        *("--user", "svc", "on", ">pw", "~*", "&*", "+@all", "-config"),
    )
    url = f"redis://svc:pw@127.0.0.1:{server.port}/0"
    result = run_cli("check", PENNY_REDIS_URL=url, PENNY_DATABASE_URL=sqlite_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "eviction WARNING  could not verify maxmemory-policy" in result.stdout
    assert "not allowed" in result.stdout
    assert "redis-cli CONFIG GET maxmemory-policy" in result.stdout
