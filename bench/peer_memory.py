"""Near-cache memory: bytes per cached user, and the process RSS growth at N users.

States are built the way a read builds them (decoded from the envelope), so each entry
holds its own objects, as in a running worker. tracemalloc gives bytes per entry (every
Python allocation, states included); RSS is read from /proc before and after the near
cache is filled, first, so no earlier allocation is reused. The original design (a dict
of states with timestamps) is measured the same way for reference.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from penny_cache.codec import decode_state, encode_state
from penny_cache.policy.near import NearCache
from penny_cache.state import PersonalityState

__all__ = ["measure_memory"]


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _states(template: PersonalityState, users: int) -> Callable[[int], PersonalityState]:
    payload = encode_state(template)
    old = template.user_id.encode()

    def build(i: int) -> PersonalityState:
        user = f"user-{i:06d}"
        return decode_state(payload.replace(old, user.encode()), user)

    return build


def _fill(
    users: int, build: Callable[[int], PersonalityState], put: Callable[[PersonalityState], Any]
) -> tuple[int, int]:
    """(tracemalloc bytes, RSS bytes) added by building and keeping ``users`` states."""
    gc.collect()
    rss = _rss_bytes()
    tracemalloc.start()
    for i in range(users):
        put(build(i))
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return traced, _rss_bytes() - rss


def measure_memory(template: PersonalityState, users: int) -> dict[str, Any]:
    build = _states(template, users)
    near = NearCache(users, 600.0)
    near_bytes, near_rss = _fill(users, build, lambda s: near.put(s, near.ticket()))
    assert len(near) == users
    original: dict[str, tuple[float, PersonalityState]] = {}
    dict_bytes, _ = _fill(users, build, lambda s: original.__setitem__(s.user_id, (time.time(), s)))
    return {
        "users": users,
        "near_bytes_per_entry": near_bytes / users,
        "near_rss_mb": near_rss / 2**20,
        "dict_bytes_per_entry": dict_bytes / users,
        "ratio": near_bytes / dict_bytes,
    }
