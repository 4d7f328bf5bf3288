"""What the policy does with an entry it cannot use: a miss, counted and logged as a
decode error, and gone from Redis, whoever put it there and however it is broken.

Redis unlinks an entry over the size cap or of the wrong type before sending it (a
``ops.Dropped`` answer, see ``penny_cache.redis.lua``); the codec refuses the rest
(``codec.decode_state``), and the caller deletes it. A strict-mode tombstone is a miss
that must stay. Kept apart from ``reads`` so the read flows stay one screenful.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from penny_cache.codec import is_tombstone
from penny_cache.errors import CacheDecodeError
from penny_cache.keys import log_id
from penny_cache.observe.counters import SharedCounters
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.ops import Dropped

__all__ = ["UNREADABLE", "EntryChecks"]

_V = TypeVar("_V")
UNREADABLE: Final[Any] = object()  # what ``EntryChecks.decode_entry`` answers for an entry to drop


class EntryChecks:
    """The decode-failure rules; the attributes are set by ``CachePolicy.__init__``."""

    _counters: SharedCounters
    _errors: RateLimitedLog

    def decode_entry(
        self, payload: bytes | Dropped, user_id: str, decode: Callable[[bytes, str], _V]
    ) -> Any:
        """The value, None for a strict-mode tombstone (a miss that must stay) or an
        entry Redis already unlinked, or ``UNREADABLE`` (counted and logged; the caller
        deletes it)."""
        if isinstance(payload, Dropped):
            self.count_unreadable(user_id, f"Redis dropped it ({payload.reason})")
            return None
        if is_tombstone(payload):
            return None
        try:
            return decode(payload, user_id)
        except CacheDecodeError as exc:
            self.count_unreadable(user_id, str(exc))
            return UNREADABLE

    def count_unreadable(self, user_id: str, why: str) -> None:
        self._counters.incr("decode_errors")
        self._errors.warning(
            "decode", f"dropping an undecodable cache entry of {log_id(user_id)}: {why}"
        )
