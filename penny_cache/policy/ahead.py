"""An entry ahead of SQL: Redis refuses a write-through because it holds a version SQL
never committed (forged, or left by a database restored to an older point).

SQL's committed version is the latest there is: every legitimate entry is written after
its commit, so whatever Redis holds above SQL's current version came from elsewhere. A
strict-mode tombstone is the one legitimate exception, one version ahead while its
update commits. Without this check a forged entry at version 2^62 refused every later
write-through, the outbox counted the refusal as delivered, and every worker served it
until its TTL (which a forger need not set).

So a refused write-through of a committed version asks Redis what refused it
(``ops.Inspect``), and only when that is newer than the version just committed, asks SQL
for its current state. If Redis is ahead of it, the entry is replaced by SQL's state with
a compare-and-set on the exact bytes found (``ops.ReplacePublish``: a write that landed
meanwhile is never overwritten) and every near cache drops the user. Counted as
``version_ahead`` and logged. A healthy fleet pays nothing: the check starts only after
a refusal, and SQL is read only when the refusing version is newer than the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from penny_cache.codec import Entry
from penny_cache.errors import CacheError
from penny_cache.keys import KeySchema, LogIds, encode_user_id
from penny_cache.observe.counters import SharedCounters
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.flows import Flow, TrackerFlow
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import Blocking, Held, Inspect, ReplacePublish
from penny_cache.state import PersonalityState

__all__ = ["SqlState", "VersionAhead"]

# How a write-through learns SQL's current state of its user (``PersonalityStore.load``).
SqlState = Callable[[], PersonalityState]


class VersionAhead:
    """The check after a refused write-through; the attributes are set by
    ``CachePolicy.__init__``."""

    _keys: KeySchema
    _near: NearCache | None
    _counters: SharedCounters
    _errors: RateLimitedLog
    _log_ids: LogIds

    def write_through_flow(self, state: PersonalityState, *, sealed: bool = False) -> Flow[bool]:
        raise NotImplementedError  # WritePolicy's

    def is_pending(self, user_id: str) -> bool:
        raise NotImplementedError  # WritePolicy's

    def _entry(self, user_id: str, state: PersonalityState) -> Entry:
        raise NotImplementedError  # WritePolicy's

    def _redis_failed(self, operation: str, exc: CacheError, *, count: bool = True) -> None:
        raise NotImplementedError  # WritePolicy's

    def checked_write_through_flow(
        self, state: PersonalityState, sql_state: SqlState, *, sealed: bool = False
    ) -> TrackerFlow[bool]:
        """``write_through_flow``, then, if Redis refused it, the check: True when Redis
        holds a version SQL committed (this one, a newer commit, or SQL's current after
        a replacement); False when the write is queued (Redis failed) or a replacement
        lost a race to another write (the outbox checks again)."""
        written = yield from self.write_through_flow(state, sealed=sealed)
        if written or self.is_pending(state.user_id):
            return written
        try:
            return (yield from self._settle_flow(state, sql_state))
        except CacheError as exc:
            self._redis_failed("version check", exc)
            return False

    def _settle_flow(self, committed: PersonalityState, sql_state: SqlState) -> TrackerFlow[bool]:
        held: Held | None = yield Inspect(self._keys.state(committed.user_id))
        if held is None or held.version <= committed.version:
            return True  # gone, unreadable (the next write replaces it) or the same
        current: PersonalityState = yield Blocking(sql_state)
        if held.version <= current.version + (1 if held.tombstone else 0):
            return True  # a real newer commit (or the tombstone of one in flight)
        return (yield from self._replace_flow(held, current))

    def _replace_flow(self, held: Held, current: PersonalityState) -> Flow[bool]:
        user_id = current.user_id
        entry = self._entry(user_id, current)
        op = ReplacePublish(
            entry, held.found, self._keys.sequence(), self._keys.channel(), encode_user_id(user_id)
        )
        replaced: Any = yield op
        if self._near is not None:
            self._near.invalidate(user_id, None)
        self._counters.incr("version_ahead")
        self._errors.warning(
            "version-ahead",
            f"redis held version {held.version}{' (a tombstone)' if held.tombstone else ''} "
            f"of {self._log_ids(user_id)}, ahead of SQL's {current.version}: "
            f"{'replaced by SQL' if replaced else 'changed meanwhile, checked again later'}",
        )
        return bool(replaced)
