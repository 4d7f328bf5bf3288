"""``CacheAdmin`` and ``AsyncCacheAdmin``: what an operator asks of one cache and its
database (``penny-cache inspect``, ``invalidate``, ``verify``, ``stats --reset``).

The runbooks used to fall back to raw ``redis-cli``, which shows bytes, not whether they
agree with SQL. These read an entry the way the workers do (signature, tombstone,
envelope) and put SQL's committed version beside it, without changing either: no lease,
no delete of a bad entry, no hit or miss counted. Only ``invalidate`` and
``reset_stats`` write, through the cache's own paths. Nothing here returns a personal
value: versions, sizes, lifetimes and why an entry does not decode.

A divergence is a *decodable* entry that disagrees with SQL after the staleness bound
(an update's write-through may be in flight when the entry is read, so a suspect is
read again after ``recheck_after`` before it counts), or an entry no worker can use
(undecodable, unsigned or forged). A strict-mode tombstone is never served, so it is
no divergence. Both faces drive the same flows, as the trackers do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TypeVar

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import decode_state, is_tombstone, prefix_version
from penny_cache.errors import CacheDecodeError, CacheIntegrityError
from penny_cache.keys import decode_user_id
from penny_cache.policy.flows import TrackerFlow, adrive, drive
from penny_cache.policy.ops import Blocking, Describe, Described, Dropped, ListMatching, Op, Sleep
from penny_cache.signing import Signer
from penny_cache.store.database import PersonalityStore
from penny_cache.user_ids import validate_user_id

__all__ = ["DIVERGENT", "AsyncCacheAdmin", "CacheAdmin", "EntryCheck", "VerifyReport"]

BATCH: Final = 500  # keys per pipelined read and per SQL query
DIVERGENT: Final = ("older", "newer", "undecodable", "orphan")
_RECHECKED: Final = frozenset({"older", "newer", "orphan"})
_EXAMPLES: Final = 10
_T = TypeVar("_T")
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class EntryCheck:
    """One user's Redis entry beside SQL. ``status``: ``ok``, ``tombstone``,
    ``undecodable``, ``unsigned-or-forged`` (with ``PENNY_VALUE_KEY``) or ``absent``;
    ``sql_version`` None: SQL has no row for the user; ``ttl_seconds`` None: absent or
    no TTL."""

    user_id: str
    status: str
    why: str
    redis_version: int | None
    ttl_seconds: float | None
    size_bytes: int
    sql_version: int | None
    outbox_version: int | None = None
    outbox_since: str | None = None

    @property
    def kind(self) -> str:
        """``agree``, ``absent``, ``tombstone``, or one of ``DIVERGENT``."""
        if self.status in ("absent", "tombstone"):
            return self.status
        if self.status != "ok" or self.redis_version is None:
            return "undecodable"
        if self.sql_version is None:
            return "orphan" if self.redis_version > 0 else "agree"
        if self.redis_version < self.sql_version:
            return "older"
        return "newer" if self.redis_version > self.sql_version else "agree"

    @property
    def agree(self) -> bool:
        return self.kind not in DIVERGENT

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind, "agree": self.agree}


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found: entries per kind (``agree``, ``tombstone`` and the
    ``DIVERGENT`` kinds), of ``checked`` read out of ``total`` in the namespace, and up
    to ten user ids per divergent kind (to ``inspect``)."""

    total: int = 0
    checked: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def divergent(self) -> int:
        return sum(self.kinds[kind] for kind in DIVERGENT)

    def add(self, check: EntryCheck) -> None:
        kind = check.kind
        self.kinds[kind] += 1
        if kind in DIVERGENT and len(self.examples.setdefault(kind, [])) < _EXAMPLES:
            self.examples[kind].append(check.user_id)

    def as_dict(self) -> dict[str, Any]:
        kinds = {kind: self.kinds[kind] for kind in ("agree", "tombstone", *DIVERGENT)}
        return {"total": self.total, "checked": self.checked, "kinds": kinds,
                "divergent": self.divergent, "examples": self.examples}  # fmt: skip


def user_of(key: str) -> str:
    """The user id of a state key (``<base>:<scope>:state:{<encoded id>}``)."""
    return decode_user_id(key.rpartition(":state:")[2].removeprefix("{").removesuffix("}"))


def describe(
    user_id: str, key: str, found: Described, signer: Signer
) -> tuple[str, str, int | None]:
    """(status, why, version) of a stored entry, read as a worker would read it."""
    payload = found.payload
    if payload is None:
        return "absent", "", None
    if isinstance(payload, Dropped):
        return "undecodable", payload.reason, None
    try:
        body = signer.open(key, payload)
    except CacheIntegrityError as exc:
        return "unsigned-or-forged", str(exc), None
    if is_tombstone(body):
        return "tombstone", "", prefix_version(body)
    try:
        return "ok", "", decode_state(body, user_id).version
    except CacheDecodeError as exc:
        return "undecodable", str(exc), None


class _AdminFlows:
    """The flows both faces drive: Redis operations, ``Blocking`` SQL, one ``Sleep``."""

    def __init__(
        self,
        cache: PersonalityCache | AsyncPersonalityCache,
        store: PersonalityStore,
        *,
        recheck_after: float = 0.5,
        rand: random.Random | None = None,
    ) -> None:
        """``recheck_after``: the staleness bound (``PENNY_MAX_STALENESS``); a suspect
        entry is read again after it before it counts as divergent."""
        self._policy = cache
        self._store = store
        self._recheck_after = recheck_after
        self._rand = rand or random.Random()
        cache.serve_store(lambda: store.identity)

    def _bind(self) -> None:
        if self._policy.scope_pending:
            self._policy.resolve_scope()

    def _checks_flow(self, keys: Sequence[str]) -> TrackerFlow[list[EntryCheck]]:
        found = yield Describe(tuple(keys))
        users = [user_of(key) for key in keys]
        versions = yield Blocking(lambda: self._store.versions(users))
        checks = []
        for user, key, entry in zip(users, keys, found, strict=True):
            status, why, version = describe(user, key, entry, self._policy.signer)
            payload = entry.payload
            size = len(payload) if isinstance(payload, bytes) else 0
            ttl = entry.ttl_ms / 1000 if entry.ttl_ms >= 0 else None
            checks.append(EntryCheck(user, status, why, version, ttl, size, versions.get(user)))
        return checks

    def inspect_flow(self, user_id: str) -> TrackerFlow[EntryCheck]:
        validate_user_id(user_id)
        yield Blocking(self._bind)
        (check,) = yield from self._checks_flow([self._policy.keys.state(user_id)])
        row = yield Blocking(lambda: self._store.outbox_row(user_id))
        if row is None:
            return check
        since = row.created_at.isoformat()
        return EntryCheck(**{**asdict(check), "outbox_version": row.version, "outbox_since": since})

    def verify_flow(
        self, sample: int | None, progress: Progress | None = None
    ) -> TrackerFlow[VerifyReport]:
        """``sample`` keys at random (None: all), in batches; suspects read again after
        the staleness bound."""
        yield Blocking(self._bind)
        keys: list[str] = yield ListMatching(self._policy.keys.state_pattern())
        report = VerifyReport(total=len(keys))
        if sample is not None and sample < len(keys):
            keys = self._rand.sample(keys, sample)
        suspects: list[str] = []
        for start in range(0, len(keys), BATCH):
            for check in (yield from self._checks_flow(keys[start : start + BATCH])):
                if check.kind in _RECHECKED:
                    suspects.append(self._policy.keys.state(check.user_id))
                else:
                    report.add(check)
            report.checked = min(start + BATCH, len(keys))
            if progress is not None:
                progress(report.checked, len(keys))
        if suspects:
            yield Sleep(self._recheck_after)
            for start in range(0, len(suspects), BATCH):
                for check in (yield from self._checks_flow(suspects[start : start + BATCH])):
                    report.add(check)
        return report


class CacheAdmin(_AdminFlows):
    """The operator's commands on a ``PersonalityCache`` and its ``PersonalityStore``."""

    def __init__(
        self,
        cache: PersonalityCache,
        store: PersonalityStore,
        *,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> None:
        super().__init__(cache, store, **options)
        self._cache = cache
        self._sleep = sleep

    def _call(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return op.call()
        if isinstance(op, Sleep):
            return self._sleep(op.seconds)
        return self._cache.run_op(op)  # type: ignore[arg-type]

    def inspect(self, user_id: str) -> EntryCheck:
        """The user's entry, SQL's version and outbox row (``InvalidInputError`` for a
        bad id)."""
        return drive(self.inspect_flow(user_id), self._call)

    def verify(self, sample: int | None = None, progress: Progress | None = None) -> VerifyReport:
        """Compare ``sample`` entries (None: every entry) of the namespace with SQL."""
        return drive(self.verify_flow(sample, progress), self._call)

    def invalidate(self, user_id: str) -> bool:
        """Drop the user's entry everywhere, through the cache's publish path (counted
        in ``invalidations``); False when Redis could not be reached."""
        validate_user_id(user_id)
        return self._cache.invalidate(user_id)

    def reset_stats(self) -> None:
        """Zero the namespace's shared counters (``CacheError`` when Redis refuses);
        live processes' own counts come back with their next flush."""
        self._cache.reset_shared_stats()


class AsyncCacheAdmin(_AdminFlows):
    """``CacheAdmin`` for asyncio: SQL and the recheck's wait never block the loop."""

    def __init__(
        self, cache: AsyncPersonalityCache, store: PersonalityStore, **options: Any
    ) -> None:
        super().__init__(cache, store, **options)
        self._cache = cache

    async def _call(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.call)
        if isinstance(op, Sleep):
            return await asyncio.sleep(op.seconds)
        return await self._cache.run_op(op)  # type: ignore[arg-type]

    async def inspect(self, user_id: str) -> EntryCheck:
        """As ``CacheAdmin.inspect``."""
        return await adrive(self.inspect_flow(user_id), self._call)

    async def verify(
        self, sample: int | None = None, progress: Progress | None = None
    ) -> VerifyReport:
        """As ``CacheAdmin.verify``."""
        return await adrive(self.verify_flow(sample, progress), self._call)

    async def invalidate(self, user_id: str) -> bool:
        """As ``CacheAdmin.invalidate``."""
        validate_user_id(user_id)
        return await self._cache.invalidate(user_id)

    async def reset_stats(self) -> None:
        """As ``CacheAdmin.reset_stats`` (in a worker thread)."""
        await asyncio.to_thread(self._cache.reset_shared_stats)
