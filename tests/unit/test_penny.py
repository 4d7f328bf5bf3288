"""Penny's tracker API (penny_cache.penny) on fakeredis + SQLite: names, arguments, shapes
and semantics of the original, through the async face and the sync one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.catalogue import Catalogue, DimensionSpec
from penny_cache.errors import InvalidUserIdError, InvalidValueError, UnknownDimensionError
from penny_cache.penny import (
    PennyPersonalityTracker,
    PersonalityDimension,
    PersonalityUpdate,
    SyncPennyPersonalityTracker,
)
from penny_cache.store.database import PersonalityStore
from penny_cache.store.engines import ENGINES
from penny_cache.tracker import PersonalityTracker
from tests.conftest import FakeUTCClock

PENNY_FIELDS = [
    "name",
    "current_value",
    "confidence",
    "last_updated",
    "learning_rate",
    "value_type",
]
SASSY = Catalogue.penny().with_dimensions(
    DimensionSpec.continuous("sass_level", 0.5, learning_rate=0.2),
    DimensionSpec.categorical("humor_frequency", "sometimes", ("rarely", "sometimes", "often")),
)


@pytest.fixture
def penny(store: PersonalityStore, cache: PersonalityCache) -> Iterator[PennyPersonalityTracker]:
    with PennyPersonalityTracker(store=store, cache=cache) as face:
        yield face


@pytest.fixture
def sync_penny(
    store: PersonalityStore, cache: PersonalityCache
) -> Iterator[SyncPennyPersonalityTracker]:
    with SyncPennyPersonalityTracker(store=store, cache=cache) as face:
        yield face


def test_state_has_penny_shapes(penny: PennyPersonalityTracker) -> None:
    """get_current_personality_state() returns Penny's dataclasses: its six fields, a naive
    last_updated, the catalogue's learning rates, keyed by dimension name."""
    state = asyncio.run(penny.get_current_personality_state())
    assert list(state) == list(Catalogue.penny())
    humor = state["humor_style_preference"]
    assert isinstance(humor, PersonalityDimension)
    assert [f.name for f in dataclasses.fields(humor)] == PENNY_FIELDS
    assert (humor.current_value, humor.confidence, humor.learning_rate) == ("balanced", 0.3, 0.15)
    assert humor.value_type == "categorical" and humor.last_updated.tzinfo is None
    assert state["proactive_suggestions"].learning_rate == 0.08


def test_to_dict_from_dict_round_trip(penny: PennyPersonalityTracker) -> None:
    """Each dimension's to_dict() is JSON-ready and from_dict() rebuilds an equal one;
    get_personality_state() (sync) returns exactly those dicts."""
    asyncio.run(penny.update_personality_dimension("communication_formality", 0.8, 0.2))
    state = asyncio.run(penny.get_current_personality_state())
    for dim in state.values():
        assert PersonalityDimension.from_dict(json.loads(json.dumps(dim.to_dict()))) == dim
    assert penny.get_personality_state() == {name: d.to_dict() for name, d in state.items()}


def test_update_is_absolute_and_clamps_confidence(penny: PennyPersonalityTracker) -> None:
    """new_value replaces the value; confidence_change is a delta clamped to [0, 1]; the
    call returns True; Penny's newer keyword call (user_id=, dimension=, new_value=) works
    and touches only that user."""
    assert asyncio.run(penny.update_personality_dimension("technical_depth_preference", 0.9, 5))
    dim = asyncio.run(penny.get_current_personality_state())["technical_depth_preference"]
    assert (dim.current_value, dim.confidence) == (0.9, 1.0)
    assert asyncio.run(
        penny.update_personality_dimension(
            user_id="bob", dimension="technical_depth_preference", new_value=0.2
        )
    )
    bob = asyncio.run(penny.get_current_personality_state(user_id="bob"))
    assert bob["technical_depth_preference"].current_value == 0.2
    mine = asyncio.run(penny.get_current_personality_state())
    assert mine["technical_depth_preference"].current_value == 0.9


def test_unknown_dimension_returns_false_and_writes_nothing(
    penny: PennyPersonalityTracker, store: PersonalityStore
) -> None:
    """As in Penny, an unknown dimension is not an error: False, and nothing is written."""
    assert asyncio.run(penny.update_personality_dimension("sass_level", 0.9, 0.1, "x")) is False
    assert store.load("default").version == 0


def test_bad_value_raises(penny: PennyPersonalityTracker) -> None:
    """A value the catalogue does not allow raises instead of being stored as text."""
    with pytest.raises(InvalidValueError):
        asyncio.run(penny.update_personality_dimension("humor_style_preference", "slapstick"))


def test_history_is_newest_first_with_penny_fields(
    penny: PennyPersonalityTracker, utc_clock: FakeUTCClock
) -> None:
    """get_personality_evolution_history returns PersonalityUpdate records newest first
    (naive timestamps), filtered by dimension and by days."""
    for value, context in [(0.6, "first"), (0.7, "second"), (0.8, "third")]:
        asyncio.run(
            penny.update_personality_dimension("communication_formality", value, 0.1, context)
        )
        utc_clock.advance(days=1)
    asyncio.run(penny.update_personality_dimension("response_length_preference", "brief"))
    history = asyncio.run(penny.get_personality_evolution_history("communication_formality"))
    assert [h.trigger_context for h in history] == ["third", "second", "first"]
    assert all(isinstance(h, PersonalityUpdate) for h in history)
    newest = history[0]
    assert (newest.old_value, newest.new_value, newest.confidence_change) == (0.7, 0.8, 0.1)
    assert newest.timestamp.tzinfo is None and newest.timestamp > history[1].timestamp
    every = asyncio.run(penny.get_personality_evolution_history())
    assert every[0].dimension == "response_length_preference" and len(every) == 4
    recent = asyncio.run(penny.get_personality_evolution_history(days=1.5))
    assert [h.trigger_context for h in recent] == [None, "third"]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda p: p.update_personality_dimension("alice", "communication_formality", 0.7),
            TypeError,
            "penny_cache's order",
        ),
        (
            lambda p: p.update_personality_dimension(0.7, "communication_formality"),
            TypeError,
            "dimension must be",
        ),
        (
            lambda p: p.update_personality_dimension(
                "technical_depth_preference", 0.5, user_id="communication_formality"
            ),
            InvalidUserIdError,
            "dimension name",
        ),
        (
            lambda p: p.get_personality_evolution_history("alice", "communication_formality"),
            TypeError,
            "days=",
        ),
        (lambda p: p.get_personality_evolution_history("alice"), UnknownDimensionError, "alice"),
    ],
)
def test_argument_order_mistakes_raise(
    penny: PennyPersonalityTracker, call: object, error: type[Exception], words: str
) -> None:
    """penny_cache's order (user first) given to Penny's API, or a dimension name where a
    user id goes, raises naming the expected order instead of passing silently."""
    with pytest.raises(error, match=words):
        asyncio.run(call(penny))  # type: ignore[operator]


def test_a_dimension_name_cannot_be_the_default_user(
    store: PersonalityStore, cache: PersonalityCache
) -> None:
    """PennyPersonalityTracker("communication_formality") is refused at construction."""
    with pytest.raises(InvalidUserIdError, match="dimension name"):
        PennyPersonalityTracker("communication_formality", store=store, cache=cache)


def test_each_call_in_a_new_event_loop(penny: PennyPersonalityTracker) -> None:
    """Penny's pattern, a new loop per call (closed after it), works for every method:
    the face holds nothing bound to a loop."""
    for n in range(5):
        loop = asyncio.new_event_loop()
        try:
            ok = loop.run_until_complete(
                penny.update_personality_dimension("conversation_pace_preference", n / 10)
            )
            state = loop.run_until_complete(penny.get_current_personality_state())
        finally:
            loop.close()
        assert ok and state["conversation_pace_preference"].current_value == n / 10
    assert penny.get_cache_stats()["redis_errors"] == 0


def test_sync_wrapper_has_the_same_api(
    sync_penny: SyncPennyPersonalityTracker, utc_clock: FakeUTCClock
) -> None:
    """SyncPennyPersonalityTracker: the same calls without await, the same results, and it
    works inside a running event loop too (it uses none)."""
    assert sync_penny.update_personality_dimension("emotional_support_style", "empathetic", 0.2)
    utc_clock.advance(minutes=1)
    assert sync_penny.update_personality_dimension(dimension="nope", new_value=1) is False
    state = sync_penny.get_current_personality_state()
    assert state["emotional_support_style"].current_value == "empathetic"
    assert sync_penny.get_personality_state()["emotional_support_style"]["confidence"] == 0.5
    history = sync_penny.get_personality_evolution_history("emotional_support_style", days=1)
    assert [h.new_value for h in history] == ["empathetic"]

    async def inside_a_loop() -> dict[str, PersonalityDimension]:
        return sync_penny.get_current_personality_state(user_id="carol")

    assert asyncio.run(inside_a_loop())["emotional_support_style"].current_value == "balanced"
    assert set(sync_penny.get_cache_stats()) >= {"hits", "misses", "hit_rate"}


def test_custom_catalogue_through_the_face(sqlite_url: str, cache: PersonalityCache) -> None:
    """Built from a database URL with an application's catalogue, the face tracks
    sass_level and humor_frequency like Penny's own, learning rates included."""
    with SyncPennyPersonalityTracker(
        database_url=sqlite_url, cache=cache, catalogue=SASSY, user_id="dave"
    ) as face:
        assert face.update_personality_dimension("sass_level", 0.9, 0.1, "roasted")
        assert face.update_personality_dimension("humor_frequency", "often")
        state = face.get_current_personality_state()
        assert (state["sass_level"].current_value, state["sass_level"].learning_rate) == (0.9, 0.2)
        assert state["humor_frequency"].current_value == "often"
        history = face.get_personality_evolution_history()
        assert [h.dimension for h in history] == ["humor_frequency", "sass_level"]
        assert face.user_id == "dave" and face.catalogue == SASSY


def test_faces_built_per_prompt_share_and_close(
    store: PersonalityStore, cache: PersonalityCache
) -> None:
    """A face given a tracker uses it and closes nothing of it; parts and a tracker
    together are refused."""
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    for _ in range(3):
        with SyncPennyPersonalityTracker(tracker=tracker) as face:
            assert face.tracker is tracker
    assert tracker.get_current_personality_state("default").version == 0
    with pytest.raises(TypeError, match="not both"):
        SyncPennyPersonalityTracker(tracker=tracker, store=store)


def test_last_updated_is_naive_utc(penny: PennyPersonalityTracker, utc_clock: FakeUTCClock) -> None:
    """last_updated is the store's UTC time without its zone, as Penny's SQLite gave it."""
    asyncio.run(penny.update_personality_dimension("communication_formality", 0.4))
    dim = asyncio.run(penny.get_current_personality_state())["communication_formality"]
    assert dim.last_updated == utc_clock.now.replace(tzinfo=None)
    assert abs(dim.last_updated - datetime(2026, 1, 1, 12)) < timedelta(seconds=1)


def test_a_face_per_prompt_leaves_no_thread_or_engine(
    sqlite_url: str, cache: PersonalityCache
) -> None:
    """Penny builds a tracker per prompt and never closes it: twenty faces dropped after
    use leave the thread and engine counts where the first one left them."""

    def prompt(n: int) -> None:
        face = PennyPersonalityTracker(database_url=sqlite_url, cache=cache)
        assert asyncio.run(face.update_personality_dimension("proactive_suggestions", n / 20))

    prompt(0)
    before = (threading.active_count(), len(ENGINES))
    for n in range(1, 21):
        prompt(n)
    assert (threading.active_count(), len(ENGINES)) == before
