"""Logs name users by a hash and never carry a payload or a secret."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.codec import encode_state
from penny_cache.config import Settings, redact_url
from penny_cache.keys import LogIds
from penny_cache.state import default_state
from tests.unit.test_cache import T0

pytestmark = pytest.mark.security


def test_a_hostile_entry_is_logged_without_its_values_or_the_user_id(
    cache: PersonalityCache, fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry whose state carries an out-of-range value is dropped; the log line names
    the user by hash only and quotes neither the value nor the id."""
    user = "alice@example.com"
    payload = encode_state(default_state(user, T0)).replace(b'"value":0.5', b'"value":7.25', 1)
    assert b"7.25" in payload
    fake_redis.set(cache.keys.state(user), payload)
    with caplog.at_level(logging.WARNING, logger="penny_cache"):
        assert cache.get(user) is None
    text = caplog.text
    assert "dropping an undecodable cache entry" in text
    assert LogIds.per_process()(user) in text
    assert user not in text and "7.25" not in text


def test_log_ids_are_stable_and_distinct() -> None:
    """The same user always gets the same hash (lines can be matched), others another."""
    log_id = LogIds(b"k")
    assert log_id("bob") == log_id("bob") != log_id("bob2")
    assert "bob" not in log_id("bob")


def test_settings_never_show_the_password() -> None:
    """Neither the password setting nor a password in the URL shows in a repr or error."""
    settings = Settings(redis_url="redis://u:hunter2@h:6379/0", redis_password="s3cret")
    assert "s3cret" not in repr(settings)
    assert "hunter2" not in redact_url(settings.redis_url)
