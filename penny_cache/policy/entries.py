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
from penny_cache.errors import CacheDecodeError, CacheIntegrityError
from penny_cache.keys import LogIds
from penny_cache.observe.counters import SharedCounters
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.ops import Dropped
from penny_cache.signing import Signer

__all__ = ["UNREADABLE", "EntryChecks"]

_V = TypeVar("_V")
UNREADABLE: Final[Any] = object()  # what ``EntryChecks.decode_entry`` answers for an entry to drop


class EntryChecks:
    """The decode-failure rules; the attributes are set by ``CachePolicy.__init__``."""

    _counters: SharedCounters
    _errors: RateLimitedLog
    _log_ids: LogIds
    _signer: Signer

    def decode_entry(
        self,
        payload: bytes | Dropped,
        user_id: str,
        decode: Callable[[bytes, str], _V],
        key: str,
    ) -> Any:
        """The value, None for a strict-mode tombstone (a miss that must stay) or an
        entry Redis already unlinked, or ``UNREADABLE`` (counted and logged; the caller
        deletes it). With a value key an entry that does not verify under ``key`` is
        unreadable, a tombstone included."""
        if isinstance(payload, Dropped):
            self.count_unreadable(user_id, f"Redis dropped it ({payload.reason})")
            return None
        try:
            payload = self._signer.open(key, payload)
            if is_tombstone(payload):
                return None
            return decode(payload, user_id)
        except CacheDecodeError as exc:
            self.count_unreadable(user_id, str(exc), integrity=isinstance(exc, CacheIntegrityError))
            return UNREADABLE

    def count_unreadable(self, user_id: str, why: str, *, integrity: bool = False) -> None:
        self._counters.incr("decode_errors")
        if integrity:
            self._counters.incr("integrity_failures")
        self._errors.warning(
            "decode", f"dropping an undecodable cache entry of {self._log_ids(user_id)}: {why}"
        )
