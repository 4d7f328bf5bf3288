"""Redis Cluster: the same backend operations, with invalidations on sharded channels.

On a Cluster a script may only touch one slot, and a plain ``PUBLISH`` is broadcast to
every node. So a write-through is two steps here: the version-checked write in the
entry's slot, then ``SPUBLISH`` on the user's invalidation shard (one of
``INVALIDATION_SHARDS`` channels, each with its own sequence number in its own slot),
which reaches only the node that owns that channel. A crash between the two steps is
covered like any undelivered write-through: the write is queued and retried whole.
"""

from __future__ import annotations

from typing import Any

from penny_cache.codec import Entry
from penny_cache.keys import INVALIDATION_SHARDS, invalidation_shard, shard_channel, shard_sequence
from penny_cache.redis_async import AsyncRedisBackend
from penny_cache.redis_backend import _FILL, _SHARD_PUBLISH, RedisBackend, entry_args

__all__ = ["AsyncClusterRedisBackend", "ClusterRedisBackend"]

_FLUSH = "flush"
_ANY_VERSION = "*"


def _cas_args(entry: Entry) -> list[Any]:
    # FILL without a lease token: the version compare-and-set alone. Its lease key must
    # be in the entry's slot; the entry key itself is (the token '' never matches).
    return [*entry_args(entry), ""]


def _shard_call(channel: str, encoded_user: str, version: str) -> tuple[list[str], list[Any]]:
    shard = invalidation_shard(encoded_user) if encoded_user else 0
    return [shard_sequence(channel, shard)], [shard_channel(channel, shard), version, encoded_user]


def _flush_calls(channel: str) -> list[tuple[list[str], list[Any]]]:
    return [
        ([shard_sequence(channel, shard)], [shard_channel(channel, shard), _FLUSH, ""])
        for shard in range(INVALIDATION_SHARDS)
    ]


class ClusterRedisBackend(RedisBackend):
    """``RedisBackend`` on a ``RedisCluster`` client."""

    def write_publish(self, entry: Entry, seq_key: str, channel: str, encoded_user: str) -> bool:
        keys, args = _shard_call(channel, encoded_user, str(entry.version))

        def run() -> bool:
            written = bool(self._eval(_FILL, [entry.key, entry.key], _cas_args(entry)))
            self._eval(_SHARD_PUBLISH, keys, args)
            return written

        return self._run(run)

    def invalidate_publish(self, key: str, seq_key: str, channel: str, encoded_user: str) -> None:
        keys, args = _shard_call(channel, encoded_user, _ANY_VERSION)

        def run() -> None:
            self._client.unlink(key)
            self._eval(_SHARD_PUBLISH, keys, args)

        self._run(run)

    def publish_flush(self, seq_key: str, channel: str) -> None:
        def run() -> None:
            for keys, args in _flush_calls(channel):
                self._eval(_SHARD_PUBLISH, keys, args)

        self._run(run)


class AsyncClusterRedisBackend(AsyncRedisBackend):
    """``AsyncRedisBackend`` on a ``redis.asyncio.RedisCluster`` client."""

    async def write_publish(
        self, entry: Entry, seq_key: str, channel: str, encoded_user: str
    ) -> bool:
        keys, args = _shard_call(channel, encoded_user, str(entry.version))

        async def run() -> bool:
            written = bool(await self._eval(_FILL, [entry.key, entry.key], _cas_args(entry)))
            await self._eval(_SHARD_PUBLISH, keys, args)
            return written

        return await self._run(run)

    async def invalidate_publish(
        self, key: str, seq_key: str, channel: str, encoded_user: str
    ) -> None:
        keys, args = _shard_call(channel, encoded_user, _ANY_VERSION)

        async def run() -> None:
            await self._client.unlink(key)
            await self._eval(_SHARD_PUBLISH, keys, args)

        await self._run(run)

    async def publish_flush(self, seq_key: str, channel: str) -> None:
        async def run() -> None:
            for keys, args in _flush_calls(channel):
                await self._eval(_SHARD_PUBLISH, keys, args)

        await self._run(run)
