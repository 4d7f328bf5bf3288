"""Is Redis's eviction policy one penny_cache survives? (``penny-cache check``)

Entries have a TTL, but the shared counters and the invalidation sequence numbers do
not: an ``allkeys-*`` policy may evict them, which silently resets a hit rate or makes
every listener see a sequence gap (and flush its near cache). ``volatile-*`` policies
only pick keys with a TTL, and ``noeviction`` refuses writes instead (penny_cache
answers from SQL and counts the errors). Reading the policy takes ``CONFIG GET``, which
the service's ACL user is not granted (deploy/redis/users.acl): then the check can only
say how to look by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import redis

__all__ = ["EvictionVerdict", "judge_eviction_policy", "read_eviction_policy"]

SAFE_POLICIES: Final = frozenset(
    {"noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)
FIX: Final = (
    "set maxmemory-policy to volatile-lru (or noeviction): allkeys-* evicts penny's "
    "counters and sequence numbers, which have no TTL"
)
BY_HAND: Final = (
    "check by hand with an admin user: redis-cli CONFIG GET maxmemory-policy "
    "(volatile-lru or noeviction are safe, allkeys-* is not)"
)


@dataclass(frozen=True, slots=True)
class EvictionVerdict:
    """What ``check`` prints about the policy: ok, a warning (not verified) or a failure."""

    level: Literal["ok", "warning", "failure"]
    policy: str | None
    message: str


def read_eviction_policy(client: Any) -> tuple[str | None, str]:
    """The configured ``maxmemory-policy`` and "", or None and why it could not be read
    (an ACL refusal, a Redis that hides CONFIG, a connection error)."""
    try:
        answer = client.config_get("maxmemory-policy")
    except redis.exceptions.NoPermissionError:
        return None, "CONFIG GET is not allowed for this Redis user"
    except redis.exceptions.RedisError as exc:
        return None, f"CONFIG GET failed: {exc}"
    if not isinstance(answer, dict) or not answer:
        return None, "CONFIG GET maxmemory-policy answered nothing"
    value = next(iter(answer.values()))
    return (value.decode() if isinstance(value, bytes) else str(value)), ""


def judge_eviction_policy(policy: str | None, why_unknown: str = "") -> EvictionVerdict:
    """A policy that may evict keys without a TTL fails; an unread one is a warning."""
    if policy is None:
        return EvictionVerdict(
            "warning", None, f"could not verify maxmemory-policy ({why_unknown}); {BY_HAND}"
        )
    if policy in SAFE_POLICIES:
        return EvictionVerdict("ok", policy, f"maxmemory-policy {policy}")
    if policy.startswith("allkeys-"):
        return EvictionVerdict("failure", policy, f"maxmemory-policy {policy}: {FIX}")
    return EvictionVerdict(
        "warning", policy, f"maxmemory-policy {policy} is not one penny_cache knows; {BY_HAND}"
    )
