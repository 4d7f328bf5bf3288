"""The least-privilege Redis ACL users of deploy/redis/users.acl, on a real redis-server.

Every test renders the committed template the way a deploy does (comment lines dropped,
password placeholders replaced by SHA-256 hashes of test passwords) and starts a private
redis-server on it: the file in git is the file tested. The ACL binds namespace "penny",
so these tests use that namespace on their own server.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import redis
from redis.exceptions import NoPermissionError

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.app.exporter import registry_for_settings
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.keys import KeySchema
from penny_cache.redis.scripts import ALL_SCRIPTS
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.security]

ACL_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"
NAMESPACE = "penny"
PLACEHOLDERS = {
    "penny-service": "#SERVICE_PASSWORD_SHA256",
    "penny-admin": "#ADMIN_PASSWORD_SHA256",
    "penny-exporter": "#EXPORTER_PASSWORD_SHA256",
    "redis-exporter": "#REDIS_EXPORTER_PASSWORD_SHA256",
}


def render_acl(template: str, passwords: dict[str, str]) -> str:
    """What the deploy step does: drop comment lines, put in the password hashes."""
    lines = [line for line in template.splitlines() if not line.startswith("#")]
    text = "\n".join(lines) + "\n"
    for user, placeholder in PLACEHOLDERS.items():
        digest = hashlib.sha256(passwords[user].encode()).hexdigest()
        text = text.replace(placeholder, f"#{digest}")
    return text


class AclRedis(RedisServerProcess):
    """A private redis-server whose default user is off: readiness needs a login."""

    def __init__(self, aclfile: Path, password: str) -> None:
        # DEBUG enabled (locally), so that the ACL is what refuses it to the service
        super().__init__(None, "--aclfile", str(aclfile), "--enable-debug-command", "local")
        self._probe_password = password

    def _ready(self) -> bool:
        if super()._ready():  # raises if redis-server exited (e.g. a bad ACL file)
            return True  # anonymous PING answered: default user on (a failing test says so)
        try:
            with redis.Redis(
                port=self.port,
                username="penny-service",
                password=self._probe_password,
                socket_timeout=0.5,
            ) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


class AclServer:
    """A started ``AclRedis`` plus the passwords of its users."""

    def __init__(self, server: AclRedis, passwords: dict[str, str]) -> None:
        self.server = server
        self.passwords = passwords

    @property
    def url(self) -> str:
        return self.server.url

    def settings(self, user: str, database_url: str = "sqlite://", **options: Any) -> Settings:
        return Settings(
            redis_url=self.server.url,
            redis_username=user,
            redis_password=self.passwords[user],
            namespace=NAMESPACE,
            database_url=database_url,
            **options,
        )

    def client(self, user: str) -> redis.Redis:
        return redis.Redis(
            port=self.server.port,
            username=user,
            password=self.passwords[user],
            socket_timeout=2,
        )

    def cli(self, command: str, user: str, database_url: str) -> subprocess.CompletedProcess[str]:
        """``penny-cache <command>`` with this user's credentials in PENNY_* variables."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
        environ.update(
            PENNY_REDIS_URL=self.url,
            PENNY_REDIS_USERNAME=user,
            PENNY_REDIS_PASSWORD=self.passwords[user],
            PENNY_NAMESPACE=NAMESPACE,
            PENNY_DATABASE_URL=database_url,
        )
        return subprocess.run(
            [sys.executable, "-m", "penny_cache.app.cli", command],
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
            check=False,
        )


def start_acl_server(directory: Path) -> Iterator[AclServer]:
    passwords = {user: secrets.token_hex(16) for user in PLACEHOLDERS}
    aclfile = directory / "users.acl"
    aclfile.write_text(render_acl(ACL_TEMPLATE.read_text(), passwords))
    try:
        server = AclRedis(aclfile, passwords["penny-service"])
        server.start()
    except (FileNotFoundError, TimeoutError) as exc:
        unavailable(f"cannot start redis-server: {exc}")
        raise
    try:
        yield AclServer(server, passwords)
    finally:
        server.stop()


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[AclServer]:
    """A fresh server with no scripts loaded."""
    yield from start_acl_server(tmp_path)


@pytest.fixture(scope="module")
def shared_acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    """One server for the refusal checks (they change nothing)."""
    yield from start_acl_server(tmp_path_factory.mktemp("acl"))


def assert_refused(client: redis.Redis, *command: str | int) -> None:
    """``command`` fails with NOPERM, or inside a Lua script with the ACL's refusal."""
    with pytest.raises(redis.ResponseError) as caught:
        client.execute_command(*command)  # type: ignore[no-untyped-call]
    error = caught.value
    in_script = re.match(r"The user executing the script can't (access|publish)", str(error))
    assert isinstance(error, NoPermissionError) or in_script, repr(error)


def test_service_answers_from_sql_until_an_admin_loads_the_scripts(
    acl_server: AclServer, sqlite_url: str
) -> None:
    """With the service user and no scripts on the server, reads and updates through the
    tracker succeed (SQL answers; the service may not SCRIPT LOAD, so every scripted cache
    write fails and is counted) and nothing raises; the service user cannot run
    load-scripts, penny-admin can; afterwards the same service user gets Redis hits."""
    settings = acl_server.settings("penny-service", sqlite_url, stats_flush_interval=0.05)
    store = PersonalityStore(sqlite_url)
    with PersonalityCache.from_settings(settings) as cache:
        tracker = PersonalityTracker(store, cache)
        assert cache.check() is None
        first = tracker.get_current_personality_state("alice")
        updated = tracker.update_personality_dimension("alice", "technical_depth_preference", 0.9)
        assert updated.version > first.version
        assert tracker.get_current_personality_state("alice").version == updated.version
        assert tracker.get_current_personality_state("bob").user_id == "bob"
        stats = cache.get_stats()
        assert stats["shared"] is True  # counters: HSET/HGETALL are allowed
        assert stats["redis_errors"] > 0  # the scripted writes were refused

    with acl_server.client("penny-admin") as admin:
        shas = [script.sha for script in ALL_SCRIPTS]
        assert admin.script_exists(*shas) == [False] * len(shas)

    refused = acl_server.cli("load-scripts", "penny-service", sqlite_url)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "NoPermissionError" in refused.stderr or "NOPERM" in refused.stderr

    loaded = acl_server.cli("load-scripts", "penny-admin", sqlite_url)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert f"loaded {len(ALL_SCRIPTS)} scripts" in loaded.stdout
    with acl_server.client("penny-admin") as admin:
        assert admin.script_exists(*shas) == [True] * len(shas)

    no_near = acl_server.settings("penny-service", sqlite_url, near_cache=False)
    with PersonalityCache.from_settings(no_near) as cache:
        tracker = PersonalityTracker(store, cache)
        before = cache.get_stats()
        assert tracker.get_current_personality_state("carol").user_id == "carol"  # fill
        assert tracker.get_current_personality_state("carol").user_id == "carol"  # hit
        after = cache.get_stats()
        assert after["hits"] > before["hits"]
        assert after["redis_errors"] == before["redis_errors"]
    store.close()


def test_updates_propagate_between_processes_under_the_service_user(
    acl_server: AclServer, sqlite_url: str
) -> None:
    """With the scripts loaded by the admin, two caches logged in as penny-service share
    the cache: one's update is written through and published, and the other's near
    cache (trusted only while its subscription answers PINGs) serves the new version."""
    loaded = acl_server.cli("load-scripts", "penny-admin", sqlite_url)
    assert loaded.returncode == 0, loaded.stderr
    settings = acl_server.settings("penny-service", sqlite_url, stats_flush_interval=0.05)
    store = PersonalityStore(sqlite_url)
    with (
        PersonalityCache.from_settings(settings) as cache_a,
        PersonalityCache.from_settings(settings) as cache_b,
    ):
        writer, reader = PersonalityTracker(store, cache_a), PersonalityTracker(store, cache_b)

        def near_hit_of(version: int) -> bool:
            near_before = cache_b.local_stats()["near_hits"]
            seen = reader.get_current_personality_state("dave").version
            return seen == version and cache_b.local_stats()["near_hits"] > near_before

        old = reader.get_current_personality_state("dave")
        wait_until(
            lambda: near_hit_of(old.version),
            5.0,
            "the reader's near cache to be trusted (its subscription answers)",
        )
        new = writer.update_personality_dimension("dave", "technical_depth_preference", 0.2)
        assert new.version > old.version
        wait_until(
            lambda: reader.get_current_personality_state("dave").version == new.version,
            2.0,
            "the reader to see the update",
        )
        wait_until(
            lambda: near_hit_of(new.version),
            5.0,
            "the new version to be served from the reader's near cache",
        )
        stats = cache_a.get_stats()
        assert stats["shared"] is True
        assert stats["listener_reconnects"] == 0
        assert stats["redis_errors"] == 0
        assert stats["invalidations"] >= 1
    store.close()


def test_the_drop_in_works_under_the_service_user(acl_server: AclServer, sqlite_url: str) -> None:
    """With the scripts loaded by the admin, the drop-in's ticketed reads and writes, its
    invalidation, size and statistics (sorted-set commands inside its scripts) all run
    as penny-service, with no Redis error counted."""
    from penny_cache.personality_state_cache import PersonalityStateCache

    loaded = acl_server.cli("load-scripts", "penny-admin", sqlite_url)
    assert loaded.returncode == 0, loaded.stderr
    settings = acl_server.settings("penny-service", sqlite_url, stats_flush_interval=0.05)
    with PersonalityCache.from_settings(settings) as core:
        cache = PersonalityStateCache(core=core)
        assert cache.get("default") is None
        assert cache.set("default", {"formality": 0.4}) is True
        assert cache.get("default") == {"formality": 0.4}
        assert cache.get_stats()["cache_size"] == 1
        cache.invalidate("default")
        stats = cache.get_stats()
        assert (stats["cache_size"], stats["invalidations"]) == (0, 1)
        assert core.get_stats()["redis_errors"] == 0
        cache.reset_stats()
        assert cache.get_stats()["hits"] == 0


def test_exporters_and_cli_read_the_counters(acl_server: AclServer, sqlite_url: str) -> None:
    """`penny-cache exporter`'s read path works as penny-service and as the read-only
    penny-exporter (penny_cache_up 1 with the counters); `penny-cache check` and `stats`
    work as penny-service."""
    settings = acl_server.settings("penny-service", sqlite_url)
    with PersonalityCache.from_settings(settings) as cache:
        cache.get("erin")  # one counted miss
        assert cache.flush_stats()
    for user in ("penny-service", "penny-exporter"):
        registry, close = registry_for_settings(acl_server.settings(user), "test")
        try:
            text = prometheus_client.generate_latest(registry).decode()
        finally:
            close()
        assert 'penny_cache_up{namespace="penny"} 1.0' in text, (user, text)
        assert re.search(r'penny_cache_misses_total\{namespace="penny"\} [1-9]', text), text
    check = acl_server.cli("check", "penny-service", sqlite_url)
    assert check.returncode == 0, check.stdout + check.stderr
    # no CONFIG for the service: the eviction policy is a warning with the manual check
    assert "eviction WARNING  could not verify maxmemory-policy" in check.stdout
    assert "redis-cli CONFIG GET maxmemory-policy" in check.stdout
    stats = acl_server.cli("stats", "penny-service", sqlite_url)
    assert stats.returncode == 0, stats.stdout + stats.stderr


SERVICE_REFUSED: list[tuple[str | int, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("EVAL", "return 1", 0),
    ("SCRIPT", "LOAD", "return 1"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "LIST"),
    ("FUNCTION", "FLUSH"),
    ("DEBUG", "SLEEP", 0),
    ("SHUTDOWN", "NOSAVE"),
    ("MONITOR",),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "penny-service", "+@all"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("INFO",),
    ("SELECT", 1),
    ("REPLICAOF", "127.0.0.1", 1),
    ("GET", "other:key"),
    ("SET", "other:key", "x"),
    ("GET", "pennyx:v1:_:state:{alice}"),  # a prefix of the namespace is not the namespace
    ("HGETALL", "{other:stats:0}:v1:counters"),
    ("PUBLISH", "other-channel", "x"),
    ("SUBSCRIBE", "other-channel"),
    ("PSUBSCRIBE", "*"),
]


@pytest.mark.parametrize("command", SERVICE_REFUSED, ids=lambda c: " ".join(map(str, c)))
def test_service_user_is_refused_what_it_does_not_need(
    shared_acl_server: AclServer, command: tuple[str | int, ...]
) -> None:
    """penny-service gets NOPERM for every command, key and channel outside its job."""
    with shared_acl_server.client("penny-service") as client:
        assert_refused(client, *command)
        assert client.ping()


def test_scripts_cannot_reach_outside_the_namespace(shared_acl_server: AclServer) -> None:
    """EVALSHA is allowed, so the key and channel rules must hold inside the scripts: a
    loaded script run on a key or channel outside the namespace is refused."""
    fill, write_publish = ALL_SCRIPTS[0], ALL_SCRIPTS[1]
    with shared_acl_server.client("penny-admin") as admin:
        admin.script_load(fill.source)
        admin.script_load(write_publish.source)
    with shared_acl_server.client("penny-service") as service:
        assert_refused(service, "EVALSHA", fill.sha, 2, "other:a", "other:b", 1, "x", 1000, "", "")
        assert_refused(
            service,
            "EVALSHA",
            write_publish.sha,
            2,
            "penny:v1:_:state:{mallory}",
            "penny:v1:inv:seq",
            1,
            "x",
            1000,
            "",
            "other-channel",
            "mallory",
        )


def test_other_users_are_limited_to_their_job(shared_acl_server: AclServer) -> None:
    """Anonymous connections run nothing; penny-admin can only load scripts (not run
    them, flush them or read keys); penny-exporter only reads the counter hashes;
    redis-exporter reads server metrics but no key."""
    with (
        pytest.raises(redis.AuthenticationError),
        redis.Redis(port=shared_acl_server.server.port, socket_timeout=2) as anonymous,
    ):
        anonymous.ping()
    with shared_acl_server.client("penny-admin") as admin:
        sha = admin.script_load("return 1")
        for command in [
            ("EVALSHA", sha, 0),
            ("SCRIPT", "FLUSH"),
            ("GET", "penny:v1:inv:seq"),
            ("FLUSHALL",),
        ]:
            assert_refused(admin, *command)
    with shared_acl_server.client("penny-exporter") as exporter:
        assert exporter.hgetall("{penny:stats:0}:v1:counters") == {}
        for command in [
            ("HSET", "{penny:stats:0}:v1:counters", "x", 1),
            ("GET", "penny:v1:_:state:{alice}"),
            ("SUBSCRIBE", "penny:v1:inv"),
        ]:
            assert_refused(exporter, *command)
    with shared_acl_server.client("redis-exporter") as monitor:
        assert "redis_version" in monitor.info("server")
        assert monitor.config_get("maxmemory")
        assert monitor.slowlog_len() >= 0
        for command in [
            ("GET", "penny:v1:inv:seq"),
            ("CONFIG", "SET", "maxmemory", "1"),
            ("CLIENT", "KILL", "TYPE", "normal"),
            ("EVAL", "return 1", 0),
        ]:
            assert_refused(monitor, *command)


def test_an_unrendered_acl_file_does_not_start(tmp_path: Path) -> None:
    """Deployed without its password hashes (placeholders left in), the file stops
    redis-server at start instead of running with known passwords."""
    unrendered = [
        line for line in ACL_TEMPLATE.read_text().splitlines() if not line.startswith("#")
    ]
    aclfile = tmp_path / "unrendered.acl"
    aclfile.write_text("\n".join(unrendered) + "\n")
    server = AclRedis(aclfile, "unused")
    try:
        with pytest.raises(RuntimeError, match="ACL"):
            server.start(timeout=10)
    finally:
        server.stop()


def test_the_service_user_repairs_a_counters_key_it_finds_of_another_type(
    acl_server: AclServer, sqlite_url: str
) -> None:
    """The service's own credential may SET over a counters hash (that is the attack:
    it used to leave every process writing there unable to count, and not ready). The
    repair runs as penny-service too (``TYPE`` and ``UNLINK`` inside a loaded script):
    the first flush is refused and repairs, the next lands."""
    loaded = acl_server.cli("load-scripts", "penny-admin", sqlite_url)
    assert loaded.returncode == 0, loaded.stderr
    service = acl_server.client("penny-service")
    keys = KeySchema("penny").all_counters()
    for key in keys:
        service.set(key, "planted")
    settings = acl_server.settings("penny-service", sqlite_url)
    with PersonalityCache.from_settings(settings) as cache:
        cache.get("frank")
        assert cache.flush_stats() is False
        assert cache.flush_stats() is True
        assert cache.counting is True
        assert sum(service.type(key) == b"hash" for key in keys) == 1
