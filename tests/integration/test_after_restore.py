"""Issue #16, item 3 (restore): ``penny-cache after-restore`` makes Redis agree with a
database restored to an older point (real redis-server, PostgreSQL, two worker caches:
one sync tracker, one asyncio tracker, each with its near cache and listener;
and a three-node Redis Cluster)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Final

import pytest
import redis
import sqlalchemy as sa

from penny_cache.app.embedded import free_port
from penny_cache.app.maintenance import after_restore
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.config import Settings
from penny_cache.keys import KeySchema
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from tests.topologies import RedisClusterProcesses, running

pytestmark = pytest.mark.integration

DIM: Final = "communication_formality"
USER: Final = "restored-user"


def _restore_to_version_2(url: str) -> None:
    """What a restore to the point after version 2 leaves in SQL, done behind the
    workers' backs: the user's row and dimension as at version 2, no later history."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE penny_personality_users SET version = 2 WHERE user_id = :u"),
            {"u": USER},
        )
        conn.execute(
            sa.text(
                "UPDATE penny_personality_dimensions SET numeric_value = 0.2 "
                "WHERE user_id = :u AND dimension = :d"
            ),
            {"u": USER, "d": DIM},
        )
        conn.execute(
            sa.text("DELETE FROM penny_personality_history WHERE user_id = :u AND version > 2"),
            {"u": USER},
        )
        conn.execute(sa.text("DELETE FROM penny_outbox WHERE user_id = :u"), {"u": USER})
    engine.dispose()


def _cli(
    *args: str, redis_url: str, database_url: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    environ.update(
        PENNY_REDIS_URL=redis_url, PENNY_DATABASE_URL=database_url, PENNY_NAMESPACE=namespace
    )
    return subprocess.run(
        [sys.executable, "-m", "penny_cache.app.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def _value(state: PersonalityState) -> tuple[int, object]:
    return state.version, state.dimensions[DIM].value


def test_after_restore_makes_both_workers_serve_the_restored_database(
    redis_url: str, postgres_url: str, namespace: str
) -> None:
    """What used to happen: after a restore to version 2, Redis still held version 5 and
    refused the restored database's next commit (version 3) as older, so workers served
    version 5 for up to PENNY_CACHE_TTL, and nothing said what to do. Shown first here;
    then `penny-cache after-restore` refuses without --yes (exit 2, one line, nothing
    dropped), and with it drops the namespace's entries and flushes every near cache:
    both workers serve the restored version 2 and later writes go through again."""
    sync_cache = PersonalityCache.from_url(redis_url, namespace=namespace)
    worker_a = PersonalityTracker(PersonalityStore(postgres_url), sync_cache, outbox_interval=None)
    async_cache = AsyncPersonalityCache.from_url(redis_url, namespace=namespace)
    worker_b = AsyncPersonalityTracker(
        PersonalityStore(postgres_url), async_cache, outbox_interval=None
    )
    redis_view = PersonalityCache.from_url(
        redis_url, namespace=namespace, near_cache=False, store=PersonalityStore(postgres_url)
    )
    cli = {"redis_url": redis_url, "database_url": postgres_url, "namespace": namespace}
    with asyncio.Runner() as loop:

        def read_b() -> tuple[int, object]:
            return _value(loop.run(worker_b.get_current_personality_state(USER)))

        def read_a() -> tuple[int, object]:
            return _value(worker_a.get_current_personality_state(USER))

        try:
            for n in range(1, 6):
                worker_a.update_personality_dimension(USER, DIM, n / 10)
            assert read_a() == read_b() == (5, 0.5)

            _restore_to_version_2(postgres_url)
            # the finding: nothing tells Redis of the restore; both serve version 5,
            # which the restored database no longer has (a write of this user would
            # now be checked against SQL and replace it, test_versions_ahead.py; users
            # nobody writes stay wrong for up to PENNY_CACHE_TTL)
            assert read_a() == (5, 0.5)
            entry = redis_view.get(USER)
            assert entry is not None and entry.version == 5
            print(f"\n[before after-restore] A {read_a()}, B {read_b()}, Redis {entry.version}")

            refused = _cli("after-restore", **cli)
            assert refused.returncode == 2
            assert len(refused.stderr.strip().splitlines()) == 1 and "--yes" in refused.stderr
            assert redis_view.get(USER) is not None  # nothing dropped

            done = _cli("after-restore", "--yes", **cli)
            finished = time.monotonic()
            assert done.returncode == 0, done.stderr
            assert "dropped 1 entries" in done.stdout, done.stdout
            deadline = time.monotonic() + 5
            while (read_a(), read_b()) != ((2, 0.2), (2, 0.2)):
                assert time.monotonic() < deadline, f"still A {read_a()}, B {read_b()}"
                time.sleep(0.01)
            print(f"[after-restore] {done.stdout.strip()}")
            took = time.monotonic() - finished
            print(f"[after-restore] both workers on version 2 {took:.3f} s after it returned")

            put = loop.run(worker_b.update_personality_dimension(USER, DIM, 0.7))
            assert _value(put) == (3, 0.7)  # written through again
            entry = redis_view.get(USER)
            assert entry is not None and entry.version == 3
            deadline = time.monotonic() + 5
            while read_a() != (3, 0.7):
                assert time.monotonic() < deadline, f"worker A still on {read_a()}"
                time.sleep(0.01)
        finally:
            worker_a.close()
            worker_b.close()
            sync_cache.close()
            loop.run(async_cache.aclose())
            redis_view.close()


def test_after_restore_drops_entries_leases_and_dropin_keys_only(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command drops what could carry pre-restore state: entries of every store
    scope (a restore into a new database has a new identity), loader leases and the
    drop-in's keys; the invalidation sequence, the shared counters and other namespaces
    stay (counters are history, and a lost sequence would only flush every near cache
    once more)."""
    client = redis.Redis.from_url(redis_url)
    keys = KeySchema(namespace, "scope1")
    doomed = [
        keys.state("ann"),
        keys.with_scope("scope2").state("bob"),
        keys.lease("ann"),
        keys.legacy("ann"),
        keys.legacy_ticket("ann"),
        keys.legacy_index(),
    ]
    kept = [keys.sequence(), keys.counters("p1"), KeySchema(f"{namespace}x", "scope1").state("ann")]
    for key in doomed + kept:
        client.set(key, b"1")
    settings = Settings(redis_url=redis_url, namespace=namespace)
    assert after_restore(settings, confirmed=True) == 0
    assert "dropped 2 entries, 1 loader leases and 3 drop-in keys" in capsys.readouterr().out
    assert [client.exists(key) for key in doomed] == [0] * len(doomed)
    assert [client.exists(key) for key in kept] == [1] * len(kept)
    client.delete(*kept)


def test_after_restore_reports_an_unreachable_redis(namespace: str) -> None:
    """Redis down: exit 1 with one line naming where (no password), nothing claimed."""
    result = _cli(
        "after-restore",
        "--yes",
        redis_url=f"redis://user:secret@127.0.0.1:{free_port()}/0",
        database_url="sqlite://",
        namespace=namespace,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach Redis" in result.stderr and "secret" not in result.stderr
    assert "dropped" not in result.stdout


def test_after_restore_fails_loudly_when_redis_refuses_the_clear(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache's clear path answers a count and logs failures instead of raising: an
    ACL user that may not UNLINK would have been told "dropped 0 entries" and exit 0.
    The command exits 1 and says to run it again; the entry is still there."""
    client = redis.Redis.from_url(redis_url)
    user = f"restore-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                       commands=["+@all", "-unlink"])  # fmt: skip
    key = KeySchema(namespace, "scope1").state("ann")
    client.set(key, b"1")
    try:
        host, port = (
            client.connection_pool.connection_kwargs["host"],
            client.connection_pool.connection_kwargs["port"],
        )
        settings = Settings(redis_url=f"redis://{user}:pw@{host}:{port}/0", namespace=namespace)
        assert after_restore(settings, confirmed=True) == 1
        err = capsys.readouterr().err
        assert "did not complete" in err and "run it again" in err
        assert client.exists(key) == 1
    finally:
        client.acl_deluser(user)
        client.delete(key)


def test_after_restore_drops_entries_on_every_cluster_node(
    sqlite_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a Redis Cluster the entries of one namespace live on every primary: the
    command (the cache's clear path: SCAN of every node, UNLINK per slot) drops them
    all, and the next read fills from SQL."""
    with running(RedisClusterProcesses(), "a Redis Cluster") as cluster:
        settings = Settings(
            redis_url=cluster.url, redis_cluster=True, database_url=sqlite_url, namespace=namespace
        )
        store = PersonalityStore(sqlite_url)
        cache = PersonalityCache.from_settings(settings, store=store, stats_flush_interval=None)
        tracker = PersonalityTracker(store, cache, outbox_interval=None)
        try:
            users = [f"user-{n}" for n in range(60)]
            for user in users:
                tracker.update_personality_dimension(user, DIM, 0.4)
            pattern = f"{namespace}:v1:*:state:*"
            before = _keys_per_node(cluster, pattern)
            assert sum(before) == len(users) and all(before), before
            assert after_restore(settings, confirmed=True) == 0
            assert f"dropped {len(users)} entries" in capsys.readouterr().out
            assert _keys_per_node(cluster, pattern) == [0] * len(cluster.nodes)
            assert tracker.get_current_personality_state(users[0]).version == 1
        finally:
            tracker.close()
            cache.close()
            store.close()


def _keys_per_node(cluster: RedisClusterProcesses, pattern: str) -> list[int]:
    counts = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=500)))
    return counts
