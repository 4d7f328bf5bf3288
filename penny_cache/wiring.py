"""Assembly: Settings in, a wired ``PersonalityCache`` out (backend, near cache, listener).

Kept apart so the policy (``cache.py``) never imports redis-py: only this module, the
backend and the listener know which driver sits underneath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from penny_cache.config import Settings
from penny_cache.errors import ConfigurationError
from penny_cache.flows import Listener, ListenerFactory
from penny_cache.invalidation import InvalidationListener, ListenerGroup
from penny_cache.keys import INVALIDATION_SHARDS, KeySchema, shard_channel
from penny_cache.near import NearCache
from penny_cache.process_metrics import ProcessMetrics
from penny_cache.redis_backend import RedisBackend

if TYPE_CHECKING:
    from penny_cache.aio import AsyncPersonalityCache
    from penny_cache.cache import PersonalityCache

__all__ = [
    "async_cache_from_settings",
    "async_cache_from_url",
    "cache_from_settings",
    "cache_from_url",
]

# from_url() keeps the short argument names of the original API.
_ALIASES: Final = {"ttl": "cache_ttl", "timeout": "redis_timeout", "cooldown": "redis_cooldown"}


def cache_from_url(cls: type[PersonalityCache], url: str, **options: Any) -> PersonalityCache:
    """``PersonalityCache.from_url``: options are ``Settings`` fields (or their aliases);
    ``stats_flush_interval=None`` turns the background flusher off (tests)."""
    flush: Any = options.pop("stats_flush_interval", 1.0)
    metrics: Any = options.pop("metrics", None)
    return cache_from_settings(
        cls, _settings(url, options), stats_flush_interval=flush, metrics=metrics
    )


def _settings(url: str, options: dict[str, Any]) -> Settings:
    fields = {_ALIASES.get(name, name): value for name, value in options.items()}
    unknown = set(fields) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"unknown cache options: {', '.join(sorted(unknown))}")
    return Settings(redis_url=url, **fields)


def cache_from_settings(
    cls: type[PersonalityCache],
    settings: Settings,
    *,
    stats_flush_interval: float | object | None = ...,
    metrics: ProcessMetrics | None = None,
) -> PersonalityCache:
    """A cache shaped by ``settings`` on a redis-py backend."""
    backend = RedisBackend.from_settings(settings)
    flush = settings.stats_flush_interval if stats_flush_interval is ... else stats_flush_interval
    return cls(backend, **_policy_options(settings, backend, flush), metrics=metrics)


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
    }


def _listener_factory(backend: RedisBackend, settings: Settings) -> ListenerFactory:
    """One listener on the namespace's channel; on a Cluster, one per sharded channel."""
    socket_timeout = max(settings.max_staleness, 0.5)
    probe = None
    if settings.redis_topology == "sentinel":
        sequence_key = KeySchema(settings.namespace).sequence()

        def probe() -> int:
            return backend.read_counter(sequence_key)

    def build(
        near: NearCache,
        channel: str,
        on_event: Callable[[str], None],
        on_tick: Callable[[], None],
        on_applied: Callable[[float], None],
    ) -> Listener:
        def listener(name: str, tick: Callable[[], None], sharded: bool) -> InvalidationListener:
            return InvalidationListener(
                lambda: backend.subscriber(socket_timeout, name),
                name,
                near,
                max_staleness=settings.max_staleness,
                on_event=on_event,
                on_tick=tick,
                error_log_interval=settings.error_log_interval,
                on_applied=on_applied,
                sharded=sharded,
                sequence_probe=probe,
            )

        if settings.redis_topology != "cluster":
            return listener(channel, on_tick, sharded=False)
        shards = range(INVALIDATION_SHARDS)  # the periodic work runs on one member only
        return ListenerGroup(
            [
                listener(shard_channel(channel, k), on_tick if k == 0 else _idle, True)
                for k in shards
            ]
        )

    return build


def _idle() -> None:
    """The periodic hook of the listeners that do not run the periodic work."""


def async_cache_from_url(
    cls: type[AsyncPersonalityCache], url: str, **options: Any
) -> AsyncPersonalityCache:
    """``AsyncPersonalityCache.from_url``: the same options as ``cache_from_url``."""
    flush: Any = options.pop("stats_flush_interval", 1.0)
    metrics: Any = options.pop("metrics", None)
    return async_cache_from_settings(
        cls, _settings(url, options), stats_flush_interval=flush, metrics=metrics
    )


def async_cache_from_settings(
    cls: type[AsyncPersonalityCache],
    settings: Settings,
    *,
    stats_flush_interval: float | object | None = ...,
    metrics: ProcessMetrics | None = None,
) -> AsyncPersonalityCache:
    """redis.asyncio for requests; a sync client for the counters' flusher and the
    listener thread."""
    from penny_cache.redis_async import AsyncRedisBackend

    # one breaker for both: the background probe (sync) reopens the asyncio requests too
    sync = RedisBackend.from_settings(settings)
    backend = AsyncRedisBackend.from_settings(settings, breaker=sync.breaker)
    flush = settings.stats_flush_interval if stats_flush_interval is ... else stats_flush_interval
    return cls(backend, sync, **_policy_options(settings, sync, flush), metrics=metrics)
