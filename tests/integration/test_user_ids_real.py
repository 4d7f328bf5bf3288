"""User ids mean one person (issue #16, item 8), and -0.0 is stored as 0.0 (item 9), on
every face: the sync and asyncio trackers, the drop-in cache and HTTP, on a real
redis-server and SQLite."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker
from penny_cache.app.service import create_app
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.errors import InvalidUserIdError, InvalidValueError
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration

NFC = "ren\u00e9"  # é as one code point
# (id, words the refusal names)
REFUSED = [
    ("rene\u0301", "NFC"),  # e + COMBINING ACUTE: the same name as NFC, another spelling
    ("a\u200bb", "format"),  # ZERO WIDTH SPACE
    ("a\u202eb", "format"),  # RIGHT-TO-LEFT OVERRIDE
    ("a\ufeffb", "format"),  # BOM / zero-width no-break space
    ("a\uffffb", "U+FFFF"),  # a noncharacter
    ("a\ufdd0b", "U+FDD0"),  # a noncharacter
    ("a\U0010fffeb", "U+10FFFE"),  # a noncharacter in the last plane
    ("a\ufffdb", "U+FFFD"),  # the replacement character
]
FORMALITY = "communication_formality"


@pytest.fixture
def tracker(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[PersonalityTracker]:
    cache = PersonalityCache.from_url(redis_url, namespace=namespace)
    with PersonalityTracker(PersonalityStore(sqlite_url), cache) as tracker:
        yield tracker


@pytest.mark.parametrize(("user_id", "words"), REFUSED)
def test_the_sync_tracker_refuses_ids_that_alias_or_hide(
    tracker: PersonalityTracker, user_id: str, words: str
) -> None:
    """Used to be: NFD "rene\\u0301" and NFC "ren\\u00e9" were two users; U+200B, U+202E
    and U+FFFF were accepted. Now: reads and updates raise InvalidUserIdError naming
    the problem (to normalise to NFC, a format character, the code point), and nothing
    is written."""
    with pytest.raises(InvalidUserIdError, match=re.escape(words)):
        tracker.get_current_personality_state(user_id)
    with pytest.raises(InvalidUserIdError, match=re.escape(words)):
        tracker.update_personality_dimension(user_id, FORMALITY, 0.9)
    assert tracker.update_personality_dimension(NFC, FORMALITY, 0.9).user_id == NFC


def test_the_async_tracker_refuses_the_same_ids(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """The asyncio face refuses every id the sync face does, with the same message, and
    takes the NFC spelling."""

    async def scenario() -> None:
        async with AsyncPersonalityCache.from_url(redis_url, namespace=namespace) as cache:
            tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), cache)
            try:
                for user_id, words in REFUSED:
                    with pytest.raises(InvalidUserIdError, match=re.escape(words)):
                        await tracker.get_current_personality_state(user_id)
                    with pytest.raises(InvalidUserIdError, match=re.escape(words)):
                        await tracker.update_personality_dimension(user_id, FORMALITY, 0.9)
                state = await tracker.update_personality_dimension(NFC, FORMALITY, 0.9)
                assert state.user_id == NFC
            finally:
                tracker.close()

    asyncio.run(scenario())


def test_the_drop_in_refuses_the_same_ids(redis_url: str, namespace: str) -> None:
    """The drop-in ``PersonalityStateCache`` refuses them on get, set and invalidate,
    and still keeps the NFC spelling's value."""
    cache = PersonalityStateCache(redis_url=redis_url, namespace=namespace)
    try:
        for user_id, words in REFUSED:
            with pytest.raises(InvalidUserIdError, match=re.escape(words)):
                cache.get(user_id)
            with pytest.raises(InvalidUserIdError, match=re.escape(words)):
                cache.set(user_id, {"x": 1})
            with pytest.raises(InvalidUserIdError, match=re.escape(words)):
                cache.invalidate(user_id)
        assert cache.set(NFC, {"x": 1})
        assert cache.get(NFC) == {"x": 1}
    finally:
        cache.close()


def test_http_answers_422_for_the_same_ids_and_writes_nothing(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Over HTTP every such id is a 422 on GET and PUT (the OpenAPI pattern refuses the
    characters; the library the non-NFC spelling), and the NFC user stays at version 1
    whatever was sent for its NFD spelling."""
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    with TestClient(create_app(settings)) as client:
        put = f"/personality/{NFC}/dimensions/{FORMALITY}"
        assert client.put(put, json={"value": 0.9}).json()["version"] == 1
        for user_id, words in REFUSED:
            got = client.get(f"/personality/{user_id}")
            assert got.status_code == 422, (user_id, got.text)
            written = client.put(
                f"/personality/{user_id}/dimensions/{FORMALITY}", json={"value": 0.1}
            )
            assert written.status_code == 422, (user_id, written.text)
            if words == "NFC":
                assert "NFC" in got.json()["detail"]
        assert client.get(f"/personality/{NFC}").json()["version"] == 1


def _positive_zero(number: float) -> bool:
    return number == 0.0 and math.copysign(1.0, number) == 1.0


def test_negative_zero_is_stored_as_zero_by_both_trackers(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to be: a value or confidence of -0.0 was committed as -0.0. Now: both faces
    store 0.0, read back from Redis and from SQL alike; and ``confidence=True`` is
    refused as HTTP refuses it."""
    cache = PersonalityCache.from_url(redis_url, namespace=namespace)
    with PersonalityTracker(PersonalityStore(sqlite_url), cache) as sync_tracker:
        state = sync_tracker.update_personality_dimension("z1", FORMALITY, -0.0, confidence=-0.0)
        again = sync_tracker.get_current_personality_state("z1")
        with pytest.raises(InvalidValueError):
            sync_tracker.update_personality_dimension("z1", FORMALITY, 0.5, confidence=True)
    stored = PersonalityStore(sqlite_url)
    try:
        from_sql = stored.load("z1")
    finally:
        stored.close()
    for found in (state, again, from_sql):
        dimension = found.dimensions[FORMALITY]
        assert _positive_zero(float(dimension.value)) and _positive_zero(dimension.confidence)

    async def scenario() -> None:
        async with AsyncPersonalityCache.from_url(redis_url, namespace=namespace) as async_cache:
            tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), async_cache)
            try:
                new = await tracker.update_personality_dimension(
                    "z2", FORMALITY, -0.0, confidence=-0.0
                )
                dimension = new.dimensions[FORMALITY]
                assert _positive_zero(float(dimension.value))
                assert _positive_zero(dimension.confidence)
            finally:
                tracker.close()

    asyncio.run(scenario())
