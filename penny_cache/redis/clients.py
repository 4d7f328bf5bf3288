"""redis-py clients for each topology (standalone, Sentinel, Cluster), built from Settings.

The only module that knows how redis-py's Sentinel and Cluster clients are put
together. Every client gets the same short timeouts and no hidden retry loops: redis-py's
Cluster client otherwise retries with backoff for seconds, and a request must not wait
for Redis longer than the configured timeout (SQL answers instead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.utils import SENTINEL

from penny_cache.config import Settings

__all__ = [
    "FAST_FAILURE",
    "RETRY_SHARE",
    "LazyCluster",
    "SubscriberFactory",
    "async_client",
    "client_options",
    "socket_timeout",
    "subscriber_factory",
    "sync_client",
]

# (channel, socket timeout) -> a fresh client whose connection reaches that channel
SubscriberFactory = Callable[[str, float], redis.Redis]


RETRY_SHARE: Final = 0.45  # each of connect and read timeout, as a share of the deadline
FAST_FAILURE: Final = 0.1  # a failure within this share of the deadline may be retried


# connections per asyncio client (per worker process)
ASYNC_MAX_CONNECTIONS: Final = 64


def socket_timeout(deadline: float) -> float:
    """The connect and the read timeout that keep attempt + retry within ``deadline``."""
    return deadline * RETRY_SHARE


def client_options(deadline: float) -> dict[str, Any]:
    """Connect and read timeouts sized so that one attempt plus the backend's one retry
    fit in ``deadline``; redis-py itself retries nothing (the backend decides, see
    ``boundary.ErrorBoundary``)."""
    timeout = socket_timeout(deadline)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


class _SentinelConnection(SentinelManagedConnection):
    """redis-py's sync Sentinel connection does not drop itself when a read fails (its
    ``read_response`` defaults to ``disconnect_on_error=False``, unlike every other
    connection class): after a timeout it goes back to the pool with the late reply still
    unread, and the next command on it reads that reply as its own. Drop it instead."""

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding=disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class _SentinelSSLConnection(_SentinelConnection, SentinelManagedSSLConnection):
    """The same, over TLS."""


def _sentinel_connection(settings: Settings) -> type[SentinelManagedConnection]:
    return _SentinelSSLConnection if settings.redis_tls else _SentinelConnection


def _credentials(settings: Settings) -> dict[str, Any]:
    """User, password and TLS options (verification on unless explicitly turned off)."""
    found = {"username": settings.redis_username, "password": settings.redis_password}
    options: dict[str, Any] = {name: value for name, value in found.items() if value}
    if settings.redis_tls:
        options.update(_tls_options(settings))
    return options


def _tls_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    if settings.redis_tls_insecure:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return options


def _sentinel_kwargs(settings: Settings, retry: Any) -> dict[str, Any]:
    """The sentinels' connections: bounded like every call, and never retried (redis-py's
    default of 10 retries with backoff made one master lookup take 3-4 s with the
    sentinels unreachable)."""
    timeout = settings.redis_timeout
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}


def _sentinel(settings: Settings) -> Any:
    return Sentinel(
        settings.redis_sentinels, sentinel_kwargs=_sentinel_kwargs(settings, Retry(NoBackoff(), 0))
    )  # type: ignore[no-untyped-call]


def sync_client(settings: Settings) -> Any:
    """The request client: ``redis.Redis`` (standalone, Sentinel master) or ``RedisCluster``."""
    options = client_options(settings.redis_timeout) | _credentials(settings)
    topology = settings.redis_topology
    if topology == "sentinel":
        return _sentinel(settings).master_for(
            settings.redis_master_name, connection_class=_sentinel_connection(settings), **options
        )
    if topology == "cluster":
        return LazyCluster(settings)
    return redis.Redis.from_url(settings.redis_url, **options)


def _cluster(settings: Settings) -> RedisCluster:
    """redis-py's sync Cluster client: it connects in its constructor (to read the slots),
    so only ``LazyCluster`` and the subscriber factory call this, at first use."""
    options = client_options(settings.redis_timeout) | _credentials(settings)
    options.pop("retry")
    return RedisCluster.from_url(settings.redis_url, retry=Retry(NoBackoff(), 1), **options)


class LazyCluster:
    """A ``RedisCluster`` made on first use, not at construction.

    redis-py's sync Cluster client reads the slot map in its constructor, so with the
    seed nodes unreachable a worker used to die at start instead of answering from SQL
    like on a standalone Redis. Here construction never connects: the first command
    (under the backend's breaker) builds the client, a failure raises redis-py's
    ``RedisClusterException`` to the boundary (``CacheUnavailableError``), and the next
    admitted call tries again, so the cache starts using Redis once a seed answers.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: RedisCluster | None = None

    def client(self) -> RedisCluster:
        """The Cluster client, built now if no earlier attempt succeeded."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = _cluster(self._settings)
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def close(self) -> None:
        """Close the client if one was built (nothing to close otherwise)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def async_client(settings: Settings, max_connections: int) -> Any:
    """The asyncio request client, with the same options as ``sync_client``."""
    timeout = socket_timeout(settings.redis_timeout)
    options = client_options(settings.redis_timeout) | _credentials(settings)
    options["retry"] = aredis.retry.Retry(NoBackoff(), 0)
    topology = settings.redis_topology
    if topology == "sentinel":
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            settings.redis_sentinels,
            sentinel_kwargs=_sentinel_kwargs(settings, aredis.retry.Retry(NoBackoff(), 0)),
        )
        return sentinel.master_for(
            settings.redis_master_name, max_connections=max_connections, **options
        )
    if topology == "cluster":
        options.pop("retry")
        options.pop("health_check_interval")
        return aredis.RedisCluster.from_url(
            settings.redis_url,
            retry=aredis.retry.Retry(NoBackoff(), 1),
            max_connections=max_connections,
            **options,
        )
    # Bounded and blocking: a burst of coroutines waits up to ``timeout`` for a connection
    # instead of opening hundreds (or failing with "Too many connections").
    pool = aredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=timeout, **options
    )
    return aredis.Redis(connection_pool=pool)


def _subscriber_options(settings: Settings, socket_timeout: float) -> dict[str, Any]:
    """No retries: a dropped subscription must surface to the listener."""
    options = client_options(settings.redis_timeout) | _credentials(settings)
    options.update(socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
    return options


def subscriber_factory(settings: Settings) -> SubscriberFactory:
    """Fresh subscriber clients: on the Sentinel's current master, or on the Cluster
    node that owns the (sharded) channel's slot, looked up anew at each connect."""
    topology = settings.redis_topology
    if topology == "sentinel":
        sentinel = _sentinel(settings)

        def on_master(_channel: str, socket_timeout: float) -> redis.Redis:
            options = _subscriber_options(settings, socket_timeout)
            client: redis.Redis = sentinel.master_for(
                settings.redis_master_name,
                connection_class=_sentinel_connection(settings),
                **options,
            )
            return client

        return on_master
    if topology == "cluster":
        return _ClusterSubscribers(settings)

    def standalone(_channel: str, socket_timeout: float) -> redis.Redis:
        options = _subscriber_options(settings, socket_timeout)
        return redis.Redis.from_url(settings.redis_url, **options)

    return standalone


class _ClusterSubscribers:
    """Connects each subscriber to the node owning its channel's slot.

    A private cluster client holds the topology and refreshes it before each connect: a
    subscriber reconnects after its slot moved (Redis sends ``sunsubscribe``) or its
    node failed, and must find the new owner, not the cached old one.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._topology: RedisCluster | None = None

    def __call__(self, channel: str, socket_timeout: float) -> redis.Redis:
        with self._lock:
            if self._topology is None:
                self._topology = _cluster(self._settings)
            else:
                self._topology.nodes_manager.initialize()
            node = self._topology.get_node_from_key(channel)  # type: ignore[no-untyped-call]
        options = _subscriber_options(self._settings, socket_timeout)
        if self._settings.redis_tls:
            options["ssl"] = True
        return redis.Redis(host=node.host, port=node.port, **options)
