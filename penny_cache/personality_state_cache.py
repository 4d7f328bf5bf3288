"""Drop-in replacement for Penny's old in-process ``personality_state_cache`` module.

Same names and semantics (``PersonalityStateCache(ttl_seconds=300)``, ``get``, ``set``,
``invalidate``, ``clear``, ``get_stats()``, ``.stats``, ``get_cache()``), but entries and
counters live in Redis, so every worker shares them: adopting penny_cache is an import
change. Values are any JSON-serialisable mapping (or a ``PersonalityState``), stored in
the versioned envelope, never pickled.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from penny_cache.cache import PersonalityCache
from penny_cache.codec import decode_mapping, encode_mapping
from penny_cache.config import Settings
from penny_cache.default import ProcessSingleton
from penny_cache.errors import InvalidStateError
from penny_cache.state import PersonalityState

__all__ = ["PersonalityStateCache", "get_cache", "reset_cache"]

_STATS_KEYS = ("hits", "misses", "invalidations")


class PersonalityStateCache:
    """The old cache's interface over the shared Redis cache."""

    def __init__(
        self,
        ttl_seconds: float = 300,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        core: PersonalityCache | None = None,
    ) -> None:
        if core is None:
            settings = Settings.from_env(os.environ)  # every PENNY_* setting applies
            settings = dataclasses.replace(
                settings,
                cache_ttl=ttl_seconds,
                redis_url=redis_url or settings.redis_url,
                namespace=namespace or settings.namespace,
            )
            core = PersonalityCache.from_settings(settings)
        self._core = core
        self.ttl_seconds = ttl_seconds

    def get(self, user_id: str) -> dict[str, Any] | None:
        """The stored mapping, or None; one hit or one miss, counted across processes."""
        return self._core.lookup(self._core.keys.legacy(user_id), user_id, decode_mapping)

    def set(self, user_id: str, state: Mapping[str, Any] | PersonalityState) -> None:
        """Store a JSON-serialisable mapping (or a state, as its ``to_dict()``)."""
        value = state.to_dict() if isinstance(state, PersonalityState) else state
        if not isinstance(value, Mapping):
            raise InvalidStateError(f"expected a mapping, got {type(state).__name__}")
        payload = encode_mapping(user_id, value)
        self._core.store_unversioned(self._core.keys.legacy(user_id), payload)

    def invalidate(self, user_id: str) -> None:
        """Drop the user's entry in every process."""
        self._core.invalidate_key(self._core.keys.legacy(user_id))

    def clear(self) -> None:
        """Drop every entry of this namespace (counters are kept, as before)."""
        self._core.clear(self._core.keys.legacy_pattern())

    def get_stats(self) -> dict[str, Any]:
        """hits, misses, invalidations, hit_rate, cache_size, ttl_seconds: all processes."""
        stats = self._core.get_stats()
        return {
            **{name: stats[name] for name in _STATS_KEYS},
            "hit_rate": stats["hit_rate"],
            "cache_size": self._core.size(self._core.keys.legacy_pattern()),
            "ttl_seconds": self.ttl_seconds,
        }

    @property
    def stats(self) -> dict[str, int]:
        """The old ``.stats`` dict: hits, misses, invalidations."""
        stats = self._core.get_stats()
        return {name: stats[name] for name in _STATS_KEYS}

    def close(self) -> None:
        """Publish the final counters and close connections."""
        self._core.close()


_shared: ProcessSingleton[PersonalityStateCache] = ProcessSingleton(PersonalityStateCache)


def get_cache() -> PersonalityStateCache:
    """The process-wide drop-in cache (as the old module's ``get_cache()``)."""
    return _shared.get()


def reset_cache() -> None:
    """Close and forget the drop-in singleton (tests)."""
    _shared.reset()
