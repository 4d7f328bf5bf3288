"""Real Redis topologies on loopback for the tests: a 3-primary Cluster and a Sentinel group.

Each starts its own ``redis-server`` processes on free ports (never 6379), waits on
conditions with deadlines, and removes everything it started on ``stop()``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis

from penny_cache.app.embedded import RedisServerProcess, free_port, wait_until
from tests.conftest import unavailable

READY_WITHIN = 30.0


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


class RedisClusterProcesses:
    """Three primaries, no replicas, all 16384 slots assigned (``redis-cli --cluster``)."""

    def __init__(self, primaries: int = 3) -> None:
        self.nodes = [
            RedisServerProcess(
                None,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                # an explicit bus port: the default (port + 10000) fails above 55535
                "--cluster-port",
                str(free_port()),
            )
            for _ in range(primaries)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterProcesses:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._all_ok, READY_WITHIN, "cluster_state:ok on every node")
        return self

    def _all_ok(self) -> bool:
        for node in self.nodes:
            with _client(node.port) as client:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
        return True

    def node_id(self, port: int) -> str:
        with _client(port) as client:
            return str(client.execute_command("CLUSTER MYID"))

    def owner_of(self, slot: int) -> int:
        """The port of the node that serves ``slot``."""
        with _client(self.nodes[0].port) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise LookupError(f"slot {slot} is not served")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate one slot with its keys (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)."""
        from_port = self.owner_of(slot)
        if from_port == to_port:
            return
        source: Any = _client(from_port)
        target: Any = _client(to_port)
        try:
            target_id, source_id = self.node_id(to_port), self.node_id(from_port)
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source.execute_command(
                    "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
            for node in self.nodes:
                with _client(node.port) as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        finally:
            source.close()
            target.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelProcess:
    """One ``redis-server --sentinel`` watching ``master_name``."""

    def __init__(self, master_name: str, master_port: int, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="penny-sentinel-")
        conf = Path(self._dir, "sentinel.conf")
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} 500\n"
            f"sentinel failover-timeout {master_name} 5000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        log = Path(self._dir, "sentinel.log").open("ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def client(self) -> redis.Redis:
        return _client(self.port)

    def stop(self) -> None:
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


class SentinelGroup:
    """A primary, one replica and three sentinels (quorum 2, failover after 0.5 s)."""

    master_name = "penny-test"

    def __init__(self, sentinel_ports: tuple[int, ...] = ()) -> None:
        """``sentinel_ports``: where the sentinels listen (free ports when empty)."""
        self.primary = RedisServerProcess()
        self.replica: RedisServerProcess | None = None
        self.sentinels: list[SentinelProcess] = []
        self._sentinel_ports: tuple[int | None, ...] = sentinel_ports or (None, None, None)

    @property
    def url(self) -> str:
        """The first primary's URL (Settings needs one; Sentinel settings ignore it)."""
        return self.primary.url

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", s.port) for s in self.sentinels)

    def settings_options(self) -> dict[str, Any]:
        return {"redis_sentinels": self.addresses, "redis_master_name": self.master_name}

    def start(self) -> SentinelGroup:
        self.primary.start()
        replica_of = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica = RedisServerProcess(None, *replica_of).start()
        wait_until(self._replica_synced, READY_WITHIN, "the replica to sync")
        self.sentinels = [
            SentinelProcess(self.master_name, self.primary.port, port)
            for port in self._sentinel_ports
        ]
        wait_until(self._sentinels_agree, READY_WITHIN, "sentinels to see each other")
        return self

    def _replica_synced(self) -> bool:
        assert self.replica is not None
        with _client(self.replica.port) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    others = client.execute_command("SENTINEL SENTINELS", self.master_name)
                    replicas = client.execute_command("SENTINEL REPLICAS", self.master_name)
            except redis.RedisError:
                return False
            if len(others) < 2 or not replicas:
                return False
        return True

    def master_port(self) -> int:
        """The port the sentinels currently name as the primary."""
        with self.sentinels[0].client() as client:
            _host, port = client.execute_command(
                "SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name
            )
        return int(port)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()


_T = TypeVar("_T", RedisClusterProcesses, SentinelGroup)


@contextlib.contextmanager
def running(servers: _T, what: str) -> Iterator[_T]:
    """``servers`` started, then stopped (and their files removed); a start that fails
    skips the test, or fails it under ``PENNY_REQUIRE_SERVICES=1``."""
    try:
        servers.start()
    except (FileNotFoundError, TimeoutError, RuntimeError, OSError) as exc:
        servers.stop()
        unavailable(f"cannot start {what}: {exc}")
    try:
        yield servers
    finally:
        servers.stop()
