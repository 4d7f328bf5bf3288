"""The in-process near cache: bounded, short-lived, and never trusted on its own.

Storage is ``cachebox.LRUCache`` (Rust, thread-safe, ~50 ns a lookup); expiry is kept
here against an injected monotonic clock, so tests move time instead of sleeping.

Whether an entry may be *served* is not decided here: the cache asks the invalidation
listener first (``trusted_until``). This module only guarantees that nothing older than
what an invalidation announced gets back in:

* ``invalidate(user, version)`` drops the entry and records a floor for that user;
* ``put(user, state, ticket)`` is refused when the state is below the user's floor, or
  when the user was invalidated without a version after the ``ticket`` was taken, or when
  the whole cache was flushed after it (the ticket is taken before the read that
  produced the state, so a slow reader cannot put back what a message removed);
* ``flush()`` empties everything and starts a new generation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple

import cachebox

from penny_cache.state import PersonalityState

__all__ = ["NearCache", "NearEntry", "Ticket"]

_UNVERSIONED: Final = -1


class Ticket(NamedTuple):
    """Taken before a read: the generation and invalidation count the read started in."""

    generation: int
    applied: int


class NearEntry(NamedTuple):
    state: PersonalityState
    expires_at: float


class NearCache:
    """A bounded per-process map of user id to state, with version floors."""

    def __init__(
        self,
        maxsize: int = 10_000,
        ttl: float = 10.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: cachebox.LRUCache[str, NearEntry] = cachebox.LRUCache(maxsize)
        # The raw lookup, for the hot path in PersonalityCache.get (no extra frame).
        self.lookup: Callable[[str], NearEntry | None] = self._entries.get
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._floors: dict[str, tuple[int, int]] = {}
        self._max_floors = max(4 * maxsize, 1024)
        self._generation = 0
        self._applied = 0
        self.flushes = 0

    def get(self, user_id: str, now: float) -> PersonalityState | None:
        """The entry if present and not expired at ``now`` (the caller's clock reading)."""
        entry = self._entries.get(user_id)
        if entry is not None and now < entry.expires_at:
            return entry.state
        return None

    def last_known(self, user_id: str) -> PersonalityState | None:
        """The entry even if expired: the fail-safe answer when SQL is down. An entry
        that was invalidated is gone, so this is never a version known to be replaced."""
        entry = self._entries.get(user_id)
        return None if entry is None else entry.state

    def ticket(self) -> Ticket:
        """Take before reading Redis; hand to ``put`` with what the read returned."""
        return Ticket(self._generation, self._applied)

    def put(self, state: PersonalityState, ticket: Ticket) -> bool:
        """Keep ``state`` unless an invalidation or flush since ``ticket`` forbids it."""
        with self._lock:
            if ticket.generation != self._generation:
                return False
            floor = self._floors.get(state.user_id)
            if floor is not None:
                version, applied_at = floor
                if state.version < version:
                    return False
                if version == _UNVERSIONED and applied_at > ticket.applied:
                    return False
            current = self._entries.get(state.user_id)
            if current is not None and current.state.version > state.version:
                return False
            expires_at = self._monotonic() + self._ttl
            self._entries.insert(state.user_id, NearEntry(state, expires_at))
            return True

    def invalidate(self, user_id: str, version: int | None) -> None:
        """Drop what is older than ``version`` (or everything, for None) and remember it."""
        with self._lock:
            self._applied += 1
            current = self._entries.get(user_id)
            if version is None or (current is not None and current.state.version < version):
                self._entries.pop(user_id, None)
            floor = _UNVERSIONED if version is None else version
            previous = self._floors.get(user_id)
            if previous is not None and previous[0] > floor:
                floor = previous[0]
            self._floors[user_id] = (floor, self._applied)
            if len(self._floors) > self._max_floors:
                self._flush_locked()

    def flush(self) -> None:
        """Forget everything; puts holding an older ticket are refused."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._entries.clear()
        self._floors.clear()
        self._generation += 1
        self.flushes += 1

    def __len__(self) -> int:
        return len(self._entries)
