"""get_shared_cache(): one process-wide instance from PENNY_* variables, with a reset for tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from penny_cache import get_shared_cache, reset_shared_cache
from penny_cache.errors import ConfigurationError
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker


@pytest.fixture(autouse=True)
def fresh_singleton() -> Iterator[None]:
    reset_shared_cache()
    yield
    reset_shared_cache()


def test_get_shared_cache_is_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PENNY_NAMESPACE and PENNY_CACHE_TTL shape the process-wide cache."""
    monkeypatch.setenv("PENNY_NAMESPACE", "from-env")
    monkeypatch.setenv("PENNY_CACHE_TTL", "42")
    cache = get_shared_cache()
    assert (cache.namespace, cache.ttl) == ("from-env", 42.0)
    assert get_shared_cache() is cache


def test_reset_builds_a_new_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """After reset_shared_cache() the next get_shared_cache() reads the environment again."""
    first = get_shared_cache()
    reset_shared_cache()
    monkeypatch.setenv("PENNY_NAMESPACE", "second")
    second = get_shared_cache()
    assert second is not first and second.namespace == "second"


def test_bad_environment_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad PENNY_* value raises ConfigurationError that names it."""
    monkeypatch.setenv("PENNY_CACHE_TTL_JITTER", "2")
    with pytest.raises(ConfigurationError, match="PENNY_CACHE_TTL_JITTER"):
        get_shared_cache()


def test_tracker_without_a_cache_uses_get_shared_cache(
    monkeypatch: pytest.MonkeyPatch, store: PersonalityStore
) -> None:
    """PersonalityTracker(store) falls back to the process-wide cache, as the original did."""
    monkeypatch.setenv("PENNY_NAMESPACE", "tracker-default")
    assert PersonalityTracker(store).cache is get_shared_cache()
