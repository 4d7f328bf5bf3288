"""The Redis key schema, in one place and versioned.

Layout (``v1``), for namespace ``penny`` and store scope ``s``::

    penny:v1:s:state:{<user>}      a PersonalityState envelope (string, TTL)
    penny:v1:s:lease:{<user>}      a loader lease against stampedes (string, short TTL)
    penny:v1:legacy:{penny:v1:legacy}:entry:<user>
                                   a drop-in PersonalityStateCache value (string, TTL)
    penny:v1:legacy:{penny:v1:legacy}:ticket:<user>
                                   the drop-in's fill ticket of a user (string, TTL)
    penny:v1:legacy:{penny:v1:legacy}:index
                                   the drop-in's entries scored by expiry, ms (sorted set)
    penny:v1:inv:seq               the invalidation sequence number (integer, no TTL)
    penny:v1:inv                   the invalidation pub/sub channel
    {penny:stats:<k>}:v1:counters  cumulative counters of the processes in shard k of 16
                                   (hash, no TTL; a process writes one shard, readers sum all)
    {penny:stats:<k>}:v1:retired:<p>  marker that process <p> folded its counters (TTL)

On a Redis Cluster, invalidations use 16 sharded channels instead of the one channel, each
with its own sequence number in its slot (``SPUBLISH``/``SSUBSCRIBE``: a message reaches
only the node that owns the channel's slot, not every node)::

    penny:v1:inv:{penny:v1:inv:<k>}       sharded channel k (a user's shard: crc32 % 16)
    penny:v1:inv:seq:{penny:v1:inv:<k>}   its sequence number (same slot as the channel)

A user id is percent-encoded, so no validated id can carry ``*?[]{}:`` or whitespace into a
key: ``SCAN MATCH`` patterns stay exact and the braces are a Redis Cluster hash tag that
keeps everything of one user on one slot. The encoded id is at most 768 characters. The
drop-in's keys share one hash tag per namespace instead: its scripts keep the entry, the
user's ticket and the index of entries in step atomically, so they must be in one slot.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote

from penny_cache.config import Settings, validate_namespace
from penny_cache.errors import ConfigurationError
from penny_cache.state import validate_user_id

__all__ = [
    "COUNTER_SHARDS",
    "INVALIDATION_SHARDS",
    "KEY_SCHEMA",
    "UNBOUND_SCOPE",
    "KeySchema",
    "LogIds",
    "decode_user_id",
    "encode_user_id",
    "invalidation_shard",
    "shard_channel",
    "shard_sequence",
]

KEY_SCHEMA: Final = "v1"
COUNTER_SHARDS: Final = 16
INVALIDATION_SHARDS: Final = 16
UNBOUND_SCOPE: Final = "_"
_SAFE: Final = "-_.~@+="


def encode_user_id(user_id: str) -> str:
    """Validate ``user_id`` and return its key-safe form (memoised: the hot path calls it)."""
    if not isinstance(user_id, str):  # unhashable ids would fail inside lru_cache
        validate_user_id(user_id)
    return _encode_user_id(user_id)


@lru_cache(maxsize=65536)
def _encode_user_id(user_id: str) -> str:
    return quote(validate_user_id(user_id), safe=_SAFE)


# Used when no key is configured: log ids then match only within this process.
_PROCESS_LOG_KEY: Final = secrets.token_bytes(32)
_LOG_ID_BYTES: Final = 6


@dataclass(frozen=True, slots=True)
class LogIds:
    """How logs name a user: a keyed hash (HMAC-SHA256, 48 bits), never the id itself.

    Ids may be personal data and are often guessable (an email): an unkeyed hash of one
    is recovered by hashing candidates, so the hash is keyed with a per-deployment secret.
    The same key gives the same log id in every process, so an operator can still follow
    one user across workers' lines. Built from settings by ``for_settings`` and passed to
    whatever writes log lines."""

    key: bytes = field(repr=False)

    @classmethod
    def for_settings(cls, settings: Settings) -> LogIds:
        """``log_id_key`` if set; else one derived from ``value_key`` (a secret the
        deployment already shares); else this process's random key."""
        if settings.log_id_key:
            return cls(settings.log_id_key.encode())
        if settings.value_key:
            secret = settings.value_key.encode()
            return cls(hmac.new(secret, b"penny_cache log ids", hashlib.sha256).digest())
        return cls.per_process()

    @classmethod
    def per_process(cls) -> LogIds:
        """Log ids that match only within this process (no key configured)."""
        return cls(_PROCESS_LOG_KEY)

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self.key, user_id.encode("utf-8", "replace"), hashlib.sha256)
        return "user#" + digest.digest()[:_LOG_ID_BYTES].hex()


def invalidation_shard(encoded_user: str) -> int:
    """Which of the sharded invalidation channels carries this (encoded) user's messages."""
    return zlib.crc32(encoded_user.encode()) % INVALIDATION_SHARDS


def shard_channel(channel: str, shard: int) -> str:
    """Sharded channel ``shard`` of ``channel``; hash-tagged with its sequence key."""
    return f"{channel}:{{{channel}:{shard}}}"


def shard_sequence(channel: str, shard: int) -> str:
    return f"{channel}:seq:{{{channel}:{shard}}}"


def decode_user_id(encoded: str) -> str:
    """Invert ``encode_user_id`` (for tools that list keys)."""
    return unquote(encoded)


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Every key and pattern of one namespace and store scope."""

    namespace: str
    scope: str = UNBOUND_SCOPE

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        validate_namespace(self.scope, source="store scope")
        if self.scope == "legacy":  # legacy_pattern() would match this scope's keys
            raise ConfigurationError("'legacy' is reserved and cannot be a store scope")

    @property
    def base(self) -> str:
        return f"{self.namespace}:{KEY_SCHEMA}"

    def state(self, user_id: str) -> str:
        return f"{self.base}:{self.scope}:state:{{{encode_user_id(user_id)}}}"

    def lease(self, user_id: str) -> str:
        """The loader lease of a user: same hash tag (slot) as the entry."""
        return f"{self.base}:{self.scope}:lease:{{{encode_user_id(user_id)}}}"

    def sequence(self) -> str:
        """The namespace's invalidation sequence counter."""
        return f"{self.base}:inv:seq"

    def channel(self) -> str:
        """The namespace's invalidation channel (one per namespace, all scopes)."""
        return f"{self.base}:inv"

    def state_pattern(self) -> str:
        return f"{self.base}:{self.scope}:state:*"

    def _legacy_tag(self) -> str:
        """Every drop-in key starts with this: one hash tag (slot) per namespace."""
        return f"{self.base}:legacy:{{{self.base}:legacy}}"

    def legacy(self, user_id: str) -> str:
        """A drop-in entry."""
        return f"{self._legacy_tag()}:entry:{encode_user_id(user_id)}"

    def legacy_ticket(self, user_id: str) -> str:
        """The drop-in's fill ticket of a user (same slot as the entry)."""
        return f"{self._legacy_tag()}:ticket:{encode_user_id(user_id)}"

    def legacy_index(self) -> str:
        """The drop-in's entries, scored by expiry (same slot as every drop-in key)."""
        return f"{self._legacy_tag()}:index"

    def legacy_pattern(self) -> str:
        """Every drop-in key: entries, tickets and the index."""
        return f"{self.base}:legacy:*"

    def _stats_tag(self, shard: int) -> str:
        return f"{{{self.namespace}:stats:{shard}}}:{KEY_SCHEMA}"

    def counters(self, process_id: str) -> str:
        """The counters hash ``process_id`` writes: one of 16, so that many processes
        do not all write one key (one hot slot on a Cluster)."""
        return f"{self._stats_tag(self._counter_shard(process_id))}:counters"

    def all_counters(self) -> list[str]:
        """Every counters hash: totals are the sum over all of them."""
        return [f"{self._stats_tag(shard)}:counters" for shard in range(COUNTER_SHARDS)]

    def retired_marker(self, process_id: str) -> str:
        """Same slot as ``counters(process_id)``."""
        return f"{self._stats_tag(self._counter_shard(process_id))}:retired:{process_id}"

    @staticmethod
    def _counter_shard(process_id: str) -> int:
        return zlib.crc32(process_id.encode()) % COUNTER_SHARDS

    def with_scope(self, scope: str) -> KeySchema:
        return KeySchema(self.namespace, scope)
