"""Strict write mode: before an update commits, the old version becomes unusable.

``StrictWrites.seal`` runs inside the update's SQL transaction, after the row lock is
taken (so the next version is known) and before COMMIT. It writes a tombstone at the
user's entry (``codec.encode_tombstone``: every fill and write-through below the new
version is refused; the new version itself replaces it) and publishes that version, so
every near cache drops older ones. If Redis cannot take it (unreachable, breaker open,
an error reply), the update is refused with ``CacheUnavailableError`` and the store rolls
the transaction back: nothing is acknowledged that other processes might not see.

It runs on the sync backend (the store calls it from the thread running the
transaction, a worker thread for the asyncio tracker), one Redis round trip while the
row lock is held. Reads are untouched: a tombstone reads as a miss and SQL answers.
"""

from __future__ import annotations

from penny_cache.codec import Entry, encode_tombstone
from penny_cache.errors import CacheError, CacheUnavailableError
from penny_cache.keys import KeySchema, encode_user_id
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import Tombstone
from penny_cache.policy.ports import SyncTransport
from penny_cache.signing import Signer

__all__ = ["StrictWrites"]


class StrictWrites:
    """The strict mode's step; the attributes are set by ``CachePolicy.__init__``."""

    _keys: KeySchema
    _near: NearCache | None
    _sync_backend: SyncTransport
    _ttl: float
    _signer: Signer

    def seal(self, user_id: str, version: int) -> None:
        """Make ``user_id``'s entries older than ``version`` unusable in Redis and in
        every near cache, or raise ``CacheUnavailableError`` (the caller must not commit).
        The tombstone lives as long as an entry (the cache TTL)."""
        ttl_ms = max(1, int(self._ttl * 1000))
        key = self._keys.state(user_id)
        entry = Entry(key, version, self._signer.seal(key, encode_tombstone(version)), ttl_ms)
        op = Tombstone(entry, self._keys.sequence(), self._keys.channel(), encode_user_id(user_id))
        try:
            self._sync_backend.run(op)
        except CacheError as exc:
            self._redis_failed("strict tombstone", exc)
            raise CacheUnavailableError(
                "strict write mode refused the update: the old version could not be made "
                f"unusable in Redis first ({exc}); nothing was committed"
            ) from exc
        if self._near is not None:
            self._near.invalidate(user_id, version)

    def _redis_failed(self, operation: str, exc: CacheError, *, count: bool = True) -> None:
        raise NotImplementedError  # WritePolicy's
