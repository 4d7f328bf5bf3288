"""The verdict on Redis's eviction policy (``penny_cache.redis.eviction``), without Redis."""

from __future__ import annotations

import pytest
import redis

from penny_cache.redis.eviction import judge_eviction_policy, read_eviction_policy


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_fail_with_the_fix(policy: str) -> None:
    """Finding: an allkeys-* policy passed the check. Now it is a failure naming the fix."""
    verdict = judge_eviction_policy(policy)
    assert verdict.level == "failure"
    assert "volatile-lru (or noeviction)" in verdict.message
    assert policy in verdict.message


@pytest.mark.parametrize(
    "policy", ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]
)
def test_policies_that_keep_keys_without_ttl_pass(policy: str) -> None:
    """Policies that never pick a key without a TTL are ok."""
    assert judge_eviction_policy(policy).level == "ok"


def test_unknown_or_unreadable_policy_is_a_warning_with_the_manual_check() -> None:
    """A policy that cannot be read (ACL) or is unknown is a warning saying how to look."""
    for verdict in (judge_eviction_policy(None, "refused"), judge_eviction_policy("new-x")):
        assert verdict.level == "warning"
        assert "CONFIG GET maxmemory-policy" in verdict.message


class _Refusing:
    def config_get(self, pattern: str) -> dict[str, str]:
        raise redis.exceptions.NoPermissionError("NOPERM")


class _Answering:
    def config_get(self, pattern: str) -> dict[bytes, bytes]:
        return {b"maxmemory-policy": b"allkeys-lru"}


def test_read_policy_reports_refusal_and_decodes_bytes() -> None:
    """A NOPERM is reported as not allowed; an answer in bytes is decoded."""
    policy, why = read_eviction_policy(_Refusing())
    assert policy is None
    assert "not allowed" in why
    assert read_eviction_policy(_Answering()) == ("allkeys-lru", "")
