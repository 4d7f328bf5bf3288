"""The drop-in's flows (``penny_cache.personality_state_cache``): reads that hand out a
fill ticket on a miss, writes that present it, invalidations, the size, and the reset of
the shared counters.

A mixin between ``WritePolicy`` and ``CachePolicy`` (which owns the state): the drop-in
drives these flows through ``PersonalityCache.run_op``. Its entries live under their own
keys (``KeySchema.legacy``), never mixed with ``PersonalityState`` entries; how a value
becomes bytes is the caller's (``penny_cache.values.ValueCodec``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from penny_cache.errors import CacheDecodeError, CacheError, CacheIntegrityError
from penny_cache.keys import LogIds, encode_user_id
from penny_cache.observe.counters import LocalCounters
from penny_cache.policy.entries import EntryChecks
from penny_cache.policy.flows import Flow
from penny_cache.policy.ops import CountIndexed, DeleteIndexed, Dropped, GetTicket, SetTicketed
from penny_cache.policy.writes import WritePolicy
from penny_cache.values import ClassNotLoadedError

__all__ = ["UNVERIFIED", "DropInPolicy", "Lookup"]

# The ticket of a read that could not reach Redis: no ticket key ever holds it, so the
# fill that follows is refused (whether anything changed meanwhile cannot be known).
UNVERIFIED: Final = "unverified"


class Lookup(NamedTuple):
    """One drop-in read: ``found`` (a hit), the value, and on a miss the ticket a fill
    must present (``UNVERIFIED`` when Redis could not be read: that fill is refused)."""

    found: bool
    value: Any
    ticket: str


class DropInPolicy(WritePolicy, EntryChecks):
    """The drop-in's flows; the state they use is declared by ``WritePolicy`` (and the
    lock-free counters here), set by ``CachePolicy.__init__``."""

    _local_counters: LocalCounters
    _log_ids: LogIds

    def _drop_in_keys(self, user_id: str) -> tuple[str, str, str, str]:
        keys = self._keys
        return (
            keys.legacy(user_id),
            keys.legacy_ticket(user_id),
            keys.legacy_index(),
            encode_user_id(user_id),
        )

    def drop_in_get_flow(
        self, user_id: str, token: str, decode: Callable[[bytes, str], Any]
    ) -> Flow[Lookup]:
        """Read one drop-in entry, counting one hit or miss; on a miss, the key's current
        fill ticket (``token`` becomes it if there is none)."""
        self._counters.ensure_started()
        ttl_ms = max(1, int(self._ttl * 1000))
        try:
            payload, ticket = yield GetTicket(*self._drop_in_keys(user_id), token, ttl_ms)
        except CacheError as exc:
            self._redis_failed("get", exc)
            payload, ticket = None, UNVERIFIED
        found, value = False, None
        if isinstance(payload, Dropped):  # Redis unlinked it (over the cap, wrong type)
            self.count_unreadable(user_id, f"Redis dropped it ({payload.reason})")
        elif payload is not None:
            try:
                payload = self._signer.open(self._keys.legacy(user_id), payload)
                found, value = True, decode(payload, user_id)
            except CacheDecodeError as exc:
                found = False
                yield from self._undecodable(user_id, exc)
        (self._local_counters.hit if found else self._local_counters.miss)()
        return Lookup(found, value, ticket)

    def _undecodable(self, user_id: str, exc: CacheDecodeError) -> Flow[None]:
        """Count and log it; drop the entry unless it is only this process that cannot
        rebuild its class (the others that can would lose a valid entry)."""
        self._counters.incr("decode_errors")
        if isinstance(exc, CacheIntegrityError):
            self._counters.incr("integrity_failures")
        kept = isinstance(exc, ClassNotLoadedError)
        self._errors.warning(
            "decode",
            f"{'a miss on' if kept else 'dropping'} an undecodable drop-in entry of "
            f"{self._log_ids(user_id)}: {exc}",
        )
        if not kept:
            yield from self._quiet(DeleteIndexed(*self._drop_in_keys(user_id)))

    def drop_in_set_flow(self, user_id: str, payload: bytes, ticket: str) -> Flow[bool]:
        """Store an encoded drop-in value with the TTL: unconditionally without a ticket,
        else only if nothing wrote or invalidated the key since the miss that handed the
        ticket out (a refused fill counts in ``fills_refused``). False if not written."""
        ttl_ms = max(1, int(self._ttl * 1000))
        key, ticket_key, index_key, member = self._drop_in_keys(user_id)
        payload = self._signer.seal(key, payload)
        op = SetTicketed(key, ticket_key, index_key, member, payload, ttl_ms, ticket)
        written = yield from self._quiet(op, default=False)
        if written:
            self._counters.incr("sets")
        elif ticket:
            self._counters.incr("fills_refused")
        return bool(written)

    def drop_in_invalidate_flow(self, user_id: str) -> Flow[bool]:
        """Drop the entry and end its outstanding tickets; counts an invalidation. False
        when Redis could not be reached."""
        done = yield from self._quiet(DeleteIndexed(*self._drop_in_keys(user_id)), default=None)
        if done is None:
            return False
        self._counters.incr("invalidations")
        return True

    def drop_in_size_flow(self) -> Flow[int]:
        """Drop-in entries that have not expired, from the index (no SCAN); 0 when Redis
        cannot be read."""
        found = yield from self._quiet(CountIndexed(self._keys.legacy_index()), default=0)
        return int(found)

    def reset_shared_stats(self) -> None:
        """Zero the namespace's shared counters for every process
        (``SharedCounters.reset_shared``): the live processes count on from zero."""
        self._counters.reset_shared()
