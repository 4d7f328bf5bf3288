"""Assembly: ``Settings`` in, the parts of a cache out (backend, near cache, listener).

The one place that chooses the Redis topology and knows which driver sits underneath: the
faces (``penny_cache.cache``) call it from ``from_url``/``from_settings`` and the policy
never sees a redis-py type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from penny_cache.config import Settings
from penny_cache.errors import ConfigurationError
from penny_cache.keys import INVALIDATION_SHARDS, KeySchema, LogIds, shard_channel
from penny_cache.observe.metrics import ProcessMetrics
from penny_cache.policy.near import NearCache
from penny_cache.policy.ports import Listener, ListenerFactory, ListenerHooks
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.redis.boundary import boundary_options
from penny_cache.redis.breaker import CircuitBreaker
from penny_cache.redis.clients import (
    ASYNC_MAX_CONNECTIONS,
    async_client,
    socket_timeout,
    subscriber_factory,
    sync_client,
)
from penny_cache.redis.commands import ClusterCommands, Commands
from penny_cache.redis.listener import InvalidationListener, ListenerGroup
from penny_cache.signing import Signer

__all__ = [
    "Parts",
    "async_backend",
    "async_parts",
    "commands_for",
    "settings_from_url",
    "sync_backend",
    "sync_parts",
]

# from_url() keeps the short argument names of the original API.
_ALIASES: Final = {"ttl": "cache_ttl", "timeout": "redis_timeout", "cooldown": "redis_cooldown"}
_WIRING_OPTIONS: Final = ("stats_flush_interval", "metrics")


def settings_from_url(url: str, options: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """``from_url``'s options split: ``Settings`` fields (or their short aliases), and the
    wiring's own (``stats_flush_interval=None`` turns the background flusher off, for tests;
    ``metrics``)."""
    extra: dict[str, Any] = {n: options.pop(n) for n in _WIRING_OPTIONS if n in options}
    extra.setdefault("stats_flush_interval", 1.0)
    fields = {_ALIASES.get(name, name): value for name, value in options.items()}
    unknown = set(fields) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"unknown cache options: {', '.join(sorted(unknown))}")
    return Settings(redis_url=url, **fields), extra


# A cache's constructor arguments: positional (its backends) and keyword (policy options).
Parts = tuple[tuple[Any, ...], dict[str, Any]]


def sync_parts(
    settings: Settings,
    *,
    stats_flush_interval: float | object | None = ...,
    metrics: ProcessMetrics | None = None,
) -> Parts:
    """A ``PersonalityCache``'s: its backend, and the policy options."""
    backend = sync_backend(settings)
    flush = settings.stats_flush_interval if stats_flush_interval is ... else stats_flush_interval
    options = _policy_options(settings, backend, flush)
    options["metrics"] = metrics
    return (backend,), options


def async_parts(
    settings: Settings,
    *,
    stats_flush_interval: float | object | None = ...,
    metrics: ProcessMetrics | None = None,
) -> Parts:
    """An ``AsyncPersonalityCache``'s: redis.asyncio for requests; a sync client for the
    counters' flusher and the listener thread, sharing one breaker (the background probe
    reopens the asyncio requests too)."""
    (sync,), options = sync_parts(
        settings, stats_flush_interval=stats_flush_interval, metrics=metrics
    )
    return (async_backend(settings, breaker=sync.breaker), sync), options


def sync_backend(
    settings: Settings,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    breaker: CircuitBreaker | None = None,
) -> RedisBackend:
    """The sync backend of the configured topology (standalone and Sentinel share one
    class; a Cluster publishes on sharded channels)."""
    return RedisBackend(
        sync_client(settings),
        commands=commands_for(settings),
        subscribers=subscriber_factory(settings),
        **boundary_options(settings, monotonic, breaker),
    )


def commands_for(settings: Settings) -> Commands:
    """What the topology sends. Behind Sentinel a write that tells other processes about a
    change counts as done only once a replica has it (WAIT: a failover must not bring
    back the version it replaced); a Cluster announces on sharded channels."""
    signer = Signer.from_settings(settings)
    if settings.redis_topology == "cluster":
        return ClusterCommands(signer=signer)
    if settings.redis_topology == "sentinel":
        # below the read timeout, so WAIT answers before the read gives up
        wait_ms = max(1, int(socket_timeout(settings.redis_timeout) * 800))
        return Commands(wait_replicas=1, wait_timeout_ms=wait_ms, signer=signer)
    return Commands(signer=signer)


def async_backend(
    settings: Settings, *, breaker: CircuitBreaker | None = None
) -> AsyncRedisBackend:
    """The asyncio backend of the configured topology."""
    return AsyncRedisBackend(
        lambda: async_client(settings, ASYNC_MAX_CONNECTIONS),
        commands=commands_for(settings),
        **boundary_options(settings, time.monotonic, breaker),
    )


def _policy_options(settings: Settings, sync: RedisBackend, flush: Any) -> dict[str, Any]:
    near = None
    if settings.near_cache:
        near = NearCache(settings.near_cache_size, settings.near_ttl)
    return {
        "namespace": settings.namespace,
        "ttl": settings.cache_ttl,
        "ttl_jitter": settings.ttl_jitter,
        "stats_flush_interval": flush,
        "error_log_interval": settings.error_log_interval,
        "near": near,
        "listener": _listener_factory(sync, settings),
        "lease_ttl": settings.lease_ttl,
        "signer": Signer.from_settings(settings),
        "log_ids": LogIds.for_settings(settings),
        "shadow_sample": settings.shadow_sample,
        "max_staleness": settings.max_staleness,
    }


def _listener_factory(backend: RedisBackend, settings: Settings) -> ListenerFactory:
    """One listener on the namespace's channel; on a Cluster, one per sharded channel."""
    socket_timeout = max(settings.max_staleness, 0.5)
    signer = Signer.from_settings(settings)
    probe = None
    if settings.redis_topology == "sentinel":
        sequence_key = KeySchema(settings.namespace).sequence()

        def probe() -> int:
            return backend.read_counter(sequence_key)

    def build(near: NearCache, channel: str, hooks: ListenerHooks) -> Listener:
        def listener(name: str, tick: Callable[[], None], sharded: bool) -> InvalidationListener:
            return InvalidationListener(
                lambda: backend.subscriber(socket_timeout, name),
                name,
                near,
                max_staleness=settings.max_staleness,
                on_event=hooks.on_event,
                on_tick=tick,
                error_log_interval=settings.error_log_interval,
                on_applied=hooks.on_applied,
                sharded=sharded,
                sequence_probe=probe,
                recover=hooks.recover,
                signer=signer,
            )

        if settings.redis_topology != "cluster":
            return listener(channel, hooks.on_tick, sharded=False)
        shards = range(INVALIDATION_SHARDS)  # the periodic work runs on one member only
        return ListenerGroup(
            [
                listener(shard_channel(channel, k), hooks.on_tick if k == 0 else _idle, True)
                for k in shards
            ]
        )

    return build


def _idle() -> None:
    """The periodic hook of the listeners that do not run the periodic work."""
