"""Drop-in replacement for Penny's old in-process ``personality_state_cache`` module.

Same names and semantics (``PersonalityStateCache(ttl_seconds=300)``, ``get``, ``set``,
``invalidate``, ``clear``, ``get_stats()``, ``.stats``, ``get_cache()``), but entries and
counters live in Redis, so every worker shares them: adopting penny_cache is an import
change. Three things the in-process original never needed:

* Values come back as they were set, with their types (Penny's ``dict`` of
  ``PersonalityDimension`` dataclasses with naive ``datetime`` fields included), or
  ``set()`` refuses them with ``UncacheableValueError``, a ``TypeError`` that says what to
  do (see ``penny_cache.values``). Never pickled; nothing imported because Redis said so.
* A ``set()`` after a miss cannot go back in time: the miss took the key's fill ticket
  (kept per instance, per key), and the ``set()`` lands only if no process wrote or
  invalidated the key since. A ``set()`` with no preceding miss writes as before.
* ``.stats`` counts this instance's lookups; ``get_stats()`` the shared totals of every
  process on the namespace, and ``cache_size`` from an index of entries by expiry (no
  SCAN; what it cannot see is in ``get_stats``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import uuid
from typing import Any, Final

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.default import ProcessSingleton
from penny_cache.policy.flows import Flow, drive
from penny_cache.values import ValueCodec

__all__ = ["PersonalityStateCache", "get_cache", "reset_cache"]

_STATS_KEYS: Final = ("hits", "misses", "invalidations")
MAX_TICKETS: Final = 65536


class PersonalityStateCache:
    """The old cache's interface over the shared Redis cache."""

    def __init__(
        self,
        ttl_seconds: float = 300,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        core: PersonalityCache | None = None,
        value_type: Any = None,
    ) -> None:
        """``value_type`` (optional) names the type ``get()`` rebuilds (a msgspec type,
        e.g. ``dict[str, PersonalityDimension]``) instead of the types recorded at
        ``set()``."""
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
        self._codec = ValueCodec(value_type)
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._tickets: dict[str, str] = {}  # user -> the ticket of this instance's miss
        self._stats = dict.fromkeys(_STATS_KEYS, 0)
        self._token_prefix = uuid.uuid4().hex
        self._serial = itertools.count()

    @property
    def core(self) -> PersonalityCache:
        """The shared cache underneath (its namespace, counters and connections)."""
        return self._core

    def _run(self, flow: Flow[Any]) -> Any:
        return drive(flow, self._core.run_op)

    def get(self, user_id: str) -> Any:
        """The value ``set()`` stored, or None; one hit or one miss, counted here and in
        the shared totals. A miss keeps the key's fill ticket for this instance's next
        ``set()`` of that user (a later hit does not drop it: the hit proves that
        somebody wrote since the miss, so a fill prepared after the miss is late)."""
        token = f"{self._token_prefix}:{next(self._serial)}"
        found, value, ticket = self._run(
            self._core.drop_in_get_flow(user_id, token, self._codec.decode)
        )
        with self._lock:
            self._stats["hits" if found else "misses"] += 1
            if not found:
                self._tickets.pop(user_id, None)  # re-inserted: the newest miss is last
                if ticket:
                    if len(self._tickets) >= MAX_TICKETS:  # the oldest miss's set goes plain
                        del self._tickets[next(iter(self._tickets))]
                    self._tickets[user_id] = ticket
        return value

    def set(self, user_id: str, state: Any) -> bool:
        """Store ``state`` for ``user_id``; True if stored. After a miss of this user by
        this instance, only if no process has written or invalidated the key since then.
        Raises ``UncacheableValueError`` (a ``TypeError``) for a value that would not come
        back equal, before anything is stored."""
        payload = self._codec.encode(user_id, state)
        with self._lock:
            ticket = self._tickets.pop(user_id, "")
        return bool(self._run(self._core.drop_in_set_flow(user_id, payload, ticket)))

    def invalidate(self, user_id: str) -> None:
        """Drop the user's entry in every process, and refuse every fill (``set()`` after
        a miss) that any process prepared before now."""
        if self._run(self._core.drop_in_invalidate_flow(user_id)):
            with self._lock:
                self._stats["invalidations"] += 1

    def clear(self) -> None:
        """Drop every drop-in entry (and ticket) of this namespace; counters are kept."""
        with self._lock:
            self._tickets.clear()
        self._core.clear(self._core.keys.legacy_pattern())

    def get_stats(self) -> dict[str, Any]:
        """hits, misses, invalidations, hit_rate of every process on the namespace (the
        shared totals; ``.stats`` is this instance's), ``cache_size`` and ``ttl_seconds``.

        ``cache_size`` is the drop-in's entries that have not expired, kept in an index
        as entries are set and invalidated (no SCAN). It cannot see entries removed
        behind its back (maxmemory evictions, a DEL by hand) until their TTL would
        have ended or their user is next read; FLUSHALL empties it with the rest.
        """
        stats = self._core.get_stats()
        return {
            **{name: stats[name] for name in _STATS_KEYS},
            "hit_rate": stats["hit_rate"],
            "cache_size": self._run(self._core.drop_in_size_flow()),
            "ttl_seconds": self.ttl_seconds,
        }

    @property
    def stats(self) -> dict[str, int]:
        """The old ``.stats`` dict: this instance's hits, misses and invalidations."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Zero this instance's ``.stats`` and the namespace's shared totals (tests)."""
        with self._lock:
            self._stats = dict.fromkeys(_STATS_KEYS, 0)
        self._core.reset_shared_stats()

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
