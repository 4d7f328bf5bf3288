"""When this process's outbox sweeper may retry a row whose replay failed.

Exponential per row (the sweeper's interval, doubled per failure, up to a cap), so a row
that fails every time costs one replay per cap instead of one per pass, and a pass
reaches the rows behind it. Kept in memory, per process: see ``store.outbox``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RowBackoff"]

_MAX_DOUBLINGS: Final = 30  # 2**30 times any sane base is past every cap


class RowBackoff:
    """Failures and retry times by user (one outbox row per user). Not thread-safe:
    the sweeper calls it under its pass lock."""

    def __init__(self, base: float, cap: float) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {base} and {cap}")
        self._base = base
        self._cap = cap
        self._rows: dict[str, tuple[int, float]] = {}  # user -> (failures, retry at)

    def waiting(self, user_id: str, now: float) -> bool:
        """True while the row's retry time has not come."""
        entry = self._rows.get(user_id)
        return entry is not None and now < entry[1]

    def failed(self, user_id: str, now: float) -> float:
        """Count a failure; the seconds until the row may be retried."""
        failures = self._rows.get(user_id, (0, now))[0] + 1
        delay: float = min(self._cap, self._base * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
        self._rows[user_id] = (failures, now + delay)
        return delay

    def forget(self, user_id: str) -> None:
        """The row was delivered (here or elsewhere): its next failure starts over."""
        self._rows.pop(user_id, None)

    def clear(self) -> None:
        self._rows.clear()

    def prune(self, now: float) -> None:
        """Drop rows whose retry time passed a whole cap ago without a new failure: a
        pass would have retried them, so another process delivered them (no row left)."""
        stale = now - self._cap
        for user_id in [user for user, (_n, at) in self._rows.items() if at < stale]:
            del self._rows[user_id]

    def waiting_count(self, now: float) -> int:
        return sum(1 for _n, at in list(self._rows.values()) if now < at)

    def __len__(self) -> int:
        return len(self._rows)
