"""The operator's commands that change data: ``penny-cache history-sweep`` (cron) and
``penny-cache after-restore`` (the DatabaseRestored runbook).

After a database restore to an older point Redis holds versions the restored database
has not committed yet; a write-through of the restored database's next version is
refused as older, so every worker serves the pre-restore state until the entry's TTL.
Nothing in Redis can tell, so the operator says so: every entry of the namespace is
dropped (the cache's own clear path: SCAN and UNLINK, then a flush message that empties
every worker's near cache), and the next read of each user fills from SQL.
"""

from __future__ import annotations

import sys
from typing import Final

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings, redact_url
from penny_cache.errors import InvalidInputError, StoreError
from penny_cache.store.database import PersonalityStore

__all__ = ["after_restore", "history_sweep"]

_BATCH: Final = 1000


def history_sweep(settings: Settings, days: float | None, batch: int = _BATCH) -> int:
    """Delete history rows older than ``days`` (default ``PENNY_HISTORY_DAYS``) until
    none is left; exit status 2 when neither says how many days to keep."""
    keep = days if days is not None else settings.history_days
    if keep is None:
        print(
            "penny-cache: history-sweep needs --days or PENNY_HISTORY_DAYS "
            "(unset: history is kept forever)",
            file=sys.stderr,
        )
        return 2
    try:
        store = PersonalityStore(settings.database_url)
    except InvalidInputError as exc:
        print(f"penny-cache: PENNY_DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    try:
        deleted = store.sweep_history(keep, batch=batch)
    except StoreError as exc:
        print(f"penny-cache: history sweep failed: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"deleted {deleted} history rows older than {keep:g} days from {store.url}")
    return 0


def after_restore(settings: Settings, confirmed: bool) -> int:
    """Drop every cache entry of the namespace so that Redis agrees with a restored
    database; refuses (status 2) without ``confirmed``."""
    if not confirmed:
        print(
            "penny-cache: after-restore drops every cache entry of namespace "
            f"{settings.namespace!r}; run it again with --yes",
            file=sys.stderr,
        )
        return 2
    where = f"{redact_url(settings.redis_url)}, namespace {settings.namespace}"
    with PersonalityCache.from_settings(settings, stats_flush_interval=None) as cache:
        problem = cache.check()
        if problem is not None:
            print(f"penny-cache: cannot reach Redis at {where}: {problem}", file=sys.stderr)
            return 1
        dropped = _drop_everything(cache)
        failed = int(cache.local_stats().get("redis_errors", 0))  # clear() answers, not raises
        problem = cache.check() or (f"{failed} Redis calls failed" if failed else None)
    if problem is not None:
        print(f"penny-cache: the clear did not complete ({problem}); run it again", file=sys.stderr)
        return 1
    entries, leases, dropin = dropped
    print(
        f"dropped {entries} entries, {leases} loader leases and {dropin} drop-in keys "
        f"from {where}; every worker was told to empty its near cache"
    )
    return 0


def _drop_everything(cache: PersonalityCache) -> tuple[int, int, int]:
    """Every store scope's entries (a restore into a new database has a new identity),
    their loader leases (a loader holding one read the old database), and the drop-in's
    keys (entries, fill tickets and their index). Each clear also publishes a flush."""
    keys = cache.keys
    return (
        cache.clear(f"{keys.base}:*:state:*"),
        cache.clear(f"{keys.base}:*:lease:*"),
        cache.clear(keys.legacy_pattern()),
    )
