"""Issue 15, item 1: the operator's commands (``penny_cache.admin`` and ``penny-cache
inspect/invalidate/verify/stats --reset``) on a real redis-server and SQL, with
divergences made on purpose: entries written behind the cache's back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from penny_cache.admin import AsyncCacheAdmin, CacheAdmin
from penny_cache.app.embedded import free_port
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import encode_state, encode_tombstone
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration

SECRET_VALUE = "roasting"  # a personal value: no command may print it


def _at(state: PersonalityState, version: int, user: str | None = None) -> PersonalityState:
    data = state.to_dict()
    data["version"] = version
    if user is not None:
        data["user_id"] = user
    return PersonalityState.from_dict(data)


@dataclass
class World:
    """A namespace with one user per kind of entry; ``raw`` writes behind the cache."""

    redis_url: str
    database_url: str
    namespace: str
    raw: redis.Redis
    store: PersonalityStore
    cache: PersonalityCache

    def key(self, user: str) -> str:
        return self.cache.keys.state(user)

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
        environ.update(
            PENNY_REDIS_URL=self.redis_url,
            PENNY_DATABASE_URL=self.database_url,
            PENNY_NAMESPACE=self.namespace,
            PENNY_MAX_STALENESS="0.2",
        )
        environ.update(extra)
        return environ

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "penny_cache.app.cli", *args],
            capture_output=True,
            text=True,
            env=self.env(**extra),
            timeout=120,
            check=False,
        )


@pytest.fixture
def world(redis_url: str, database_url: str) -> Iterator[World]:
    namespace = f"admin-{uuid.uuid4().hex[:8]}"
    raw = redis.Redis.from_url(redis_url)
    store = PersonalityStore(database_url)
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, stats_flush_interval=None)
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    for user in ("ann", "bob", "cy", "dee", "eve"):
        tracker.update_personality_dimension(user, "humor_style_preference", SECRET_VALUE)
        tracker.get_current_personality_state(user)
    tracker.close()
    yield World(redis_url, database_url, namespace, raw, store, cache)
    cache.clear(f"{cache.keys.base}:*")
    cache.close()
    store.close()
    raw.close()


def diverge(world: World) -> None:
    """bob older than SQL, cy ahead of SQL, dee garbage, ghost an orphan, eve a
    strict-mode tombstone (no divergence); ann agrees."""
    state = world.store.load("bob")
    old = encode_state(state)
    tracker = PersonalityTracker(world.store, world.cache, outbox_interval=None)
    tracker.update_personality_dimension("bob", "communication_formality", 0.9)
    tracker.close()
    world.raw.set(world.key("bob"), old, px=60_000)
    world.raw.set(world.key("cy"), encode_state(_at(world.store.load("cy"), 9)), px=60_000)
    world.raw.set(world.key("dee"), b"not an envelope", px=60_000)
    ghost = encode_state(_at(world.store.load("ann"), 3, user="ghost"))
    world.raw.set(world.key("ghost"), ghost, px=60_000)
    world.raw.set(world.key("eve"), encode_tombstone(2), px=60_000)


def test_verify_reports_each_divergence_by_kind(world: World) -> None:
    """Finding: nothing said whether Redis agrees with SQL. Now ``verify`` reads every
    entry beside SQL's version and names each divergence by kind; a strict-mode
    tombstone is none."""
    diverge(world)
    admin = CacheAdmin(world.cache, world.store, recheck_after=0.0)
    report = admin.verify()
    assert report.total == report.checked == 6
    assert dict(report.kinds) == {
        "agree": 1, "older": 1, "newer": 1, "undecodable": 1, "orphan": 1, "tombstone": 1,
    }  # fmt: skip
    assert report.examples == {
        "older": ["bob"], "newer": ["cy"], "undecodable": ["dee"], "orphan": ["ghost"],
    }  # fmt: skip
    assert world.raw.get(world.key("dee")) == b"not an envelope"  # read-only: nothing dropped


def test_verify_async_face_reports_the_same(world: World) -> None:
    """The asyncio face drives the same flows: the same report, SQL off the loop."""
    diverge(world)

    async def run() -> dict[str, int]:
        cache = AsyncPersonalityCache.from_url(
            world.redis_url, namespace=world.namespace, stats_flush_interval=None
        )
        try:
            admin = AsyncCacheAdmin(cache, world.store, recheck_after=0.01)
            report = await admin.verify(sample=6)
            check = await admin.inspect("cy")
            assert (check.kind, check.redis_version, check.sql_version) == ("newer", 9, 1)
            assert await admin.invalidate("cy")
            assert (await admin.inspect("cy")).status == "absent"
            assert cache.local_stats()["invalidations"] == 1
            return dict(report.kinds)
        finally:
            await cache.aclose()

    kinds = asyncio.run(run())
    assert kinds["older"] == kinds["newer"] == kinds["undecodable"] == kinds["orphan"] == 1


def test_verify_rechecks_a_suspect_after_the_staleness_bound(world: World) -> None:
    """Finding to avoid: an entry read while its update's write-through is in flight
    looks older than SQL. Now a suspect is read again after the bound and counts only
    if it still diverges: here the write-through lands during the wait."""
    diverge(world)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        world.raw.delete(world.key("bob"))  # the in-flight invalidation arrives

    admin = CacheAdmin(world.cache, world.store, recheck_after=0.25, sleep=sleep)
    report = admin.verify()
    assert waits == [0.25]
    assert report.kinds["older"] == 0
    assert report.kinds["newer"] == 1


def test_verify_samples_and_reports_progress(world: World) -> None:
    """``--sample N`` reads N entries (of the namespace's total) and reports progress."""
    seen: list[tuple[int, int]] = []
    report = CacheAdmin(world.cache, world.store).verify(
        sample=2, progress=lambda *a: seen.append(a)
    )
    assert (report.total, report.checked, seen) == (5, 2, [(2, 2)])
    assert report.divergent == 0


def test_inspect_shows_one_user_without_personal_values(world: World) -> None:
    """Finding: an operator could not see one user's entry beside SQL. ``inspect`` shows
    version, TTL, bytes, status, SQL's version and the outbox row, never a value."""
    check = CacheAdmin(world.cache, world.store).inspect("ann")
    assert (check.status, check.redis_version, check.sql_version, check.agree) == ("ok", 1, 1, True)
    assert check.ttl_seconds is not None and 0 < check.ttl_seconds <= world.cache.ttl + 1
    assert check.size_bytes == len(world.raw.get(world.key("ann")) or b"")
    assert check.outbox_version == 1  # no sweeper here confirmed the delivery
    absent = CacheAdmin(world.cache, world.store).inspect("nobody")
    assert (absent.status, absent.sql_version, absent.kind) == ("absent", None, "absent")
    result = world.cli("inspect", "ann", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["redis_version"], shown["sql_version"], shown["agree"]) == (1, 1, True)
    text = world.cli("inspect", "ann")
    assert "redis version  1" in text.stdout and "sql version    1" in text.stdout
    assert SECRET_VALUE not in result.stdout + text.stdout + text.stderr


def test_inspect_names_undecodable_and_forged_entries(world: World) -> None:
    """A garbage entry is ``undecodable`` with why (no bytes quoted); with
    PENNY_VALUE_KEY an unsigned entry is ``unsigned-or-forged``."""
    diverge(world)
    result = world.cli("inspect", "dee", "--json")
    shown = json.loads(result.stdout)
    assert (shown["status"], shown["kind"], shown["agree"]) == ("undecodable", "undecodable", False)
    assert "not an envelope" not in result.stdout
    key = "k" * 40
    signed = world.cli("inspect", "ann", "--json", PENNY_VALUE_KEY=key)
    assert json.loads(signed.stdout)["status"] == "unsigned-or-forged", signed.stderr


def test_a_key_of_another_type_is_undecodable(world: World) -> None:
    """A state key holding a hash (written behind the cache's back) is reported as
    undecodable (wrong type) by ``inspect`` and ``verify``, and left in place."""
    world.raw.delete(world.key("ann"))
    world.raw.hset(world.key("ann"), "version", "1")
    admin = CacheAdmin(world.cache, world.store, recheck_after=0.0)
    check = admin.inspect("ann")
    assert (check.status, check.why, check.kind) == ("undecodable", "wrong type", "undecodable")
    assert admin.verify().kinds["undecodable"] == 1
    assert world.raw.type(world.key("ann")) == b"hash"


def test_invalidate_goes_through_the_publish_path_and_is_counted(world: World) -> None:
    """Finding: no command invalidated one user. ``invalidate`` drops the entry through
    the cache's own path (near caches told) and counts it in ``invalidations``."""
    before = world.cache.get_stats()["invalidations"]
    result = world.cli("invalidate", "ann")
    assert result.returncode == 0, result.stderr
    assert "invalidated ann" in result.stdout and "version 1" in result.stdout
    assert world.raw.exists(world.key("ann")) == 0
    assert world.cache.get_stats()["invalidations"] == before + 1


def test_verify_cli_exit_status_and_summary(world: World) -> None:
    """``verify`` exits 0 when Redis agrees, 1 with a summary by kind when it does not;
    ``--progress`` draws a bar on stderr."""
    clean = world.cli("verify", "--all", "--progress")
    assert clean.returncode == 0, clean.stderr
    assert "Redis agrees with SQL" in clean.stdout and "5/5" in clean.stderr
    diverge(world)
    found = world.cli("verify", "--json", "--sample", "100")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["kinds"] == {
        "agree": 1, "tombstone": 1, "older": 1, "newer": 1, "undecodable": 1, "orphan": 1,
    }  # fmt: skip
    assert found.stderr == ""  # no TTL, no --progress: no bar


def test_stats_reset_needs_yes_and_zeroes_the_counters(world: World) -> None:
    """``stats --reset`` refuses without ``--yes`` (exit 2, one line); with it the
    shared counters read zero, and stay counted from zero while a live process keeps
    publishing: it used to delete the counter hashes, and the next flush of every
    running worker put its absolute totals back (the reset undone within a second).
    A second reset subtracts only what came since the first."""
    for _ in range(3):
        world.cache.get("ann")
    world.cache.flush_stats()
    assert world.cache.get_stats()["requests"] >= 3
    refused = world.cli("stats", "--reset")
    assert (refused.returncode, refused.stderr.count("\n")) == (2, 1)
    assert "--yes" in refused.stderr
    done = world.cli("stats", "--reset", "--yes")
    assert done.returncode == 0, done.stderr
    assert world.cache.get_stats()["requests"] == 0
    world.cache.get("ann")  # the live process counts on, publishing its absolutes
    assert world.cache.get_stats()["requests"] == 1
    again = world.cli("stats", "--reset", "--yes")
    assert again.returncode == 0, again.stderr
    world.cache.get("ann")
    assert world.cache.get_stats()["requests"] == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("inspect", ""), "not a user id"),
        (("inspect",), "give the USER"),
        (("invalidate", "x" * 300), "not a user id"),
        (("verify", "--sample", "0"), "--sample must be a positive integer"),
        (("verify", "--sample", "3", "--all"), "not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(world: World, args: tuple[str, ...], says: str) -> None:
    """Each command refuses bad input with one line on stderr and exit 2."""
    result = world.cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr


@pytest.mark.parametrize("args", [("inspect", "ann"), ("verify",), ("invalidate", "ann")])
def test_unreachable_redis_is_one_line_and_exit_1(world: World, args: tuple[str, ...]) -> None:
    """Redis unreachable: exit 1 and one line naming it, password masked."""
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = world.cli(*args, PENNY_REDIS_URL=dead, PENNY_REDIS_TIMEOUT="0.2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot reach Redis" in result.stderr
    assert "s3cret" not in result.stderr
