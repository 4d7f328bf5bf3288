"""The catalogue as data: declaring dimensions, validating against them, and states written
under one catalogue read under another (no migration, no crash)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny_cache.cache import PersonalityCache
from penny_cache.catalogue import PENNY, Catalogue, DimensionSpec, load_catalogue
from penny_cache.codec import decode_state, encode_state
from penny_cache.errors import (
    ConfigurationError,
    InvalidUserIdError,
    InvalidValueError,
    UnknownDimensionError,
)
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import (
    CATALOGUE,
    EPOCH,
    PersonalityState,
    apply_update,
    conform,
    conformer,
    default_state,
)
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.conftest import FakeUTCClock

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SASS = DimensionSpec.continuous("sass_level", 0.5, learning_rate=0.2)
FREQUENCY = DimensionSpec.categorical(
    "humor_frequency", "sometimes", ("rarely", "sometimes", "often"), learning_rate=0.05
)
SASSY = Catalogue.penny().with_dimensions(SASS, FREQUENCY)


def test_penny_is_the_default_and_catalogue_is_its_mapping() -> None:
    """Catalogue.default() is Penny's, CATALOGUE is its read-only mapping, with Penny's
    per-dimension learning rates."""
    assert Catalogue.default() is Catalogue.penny() is PENNY
    assert CATALOGUE is PENNY.specs
    rates = {name: spec.learning_rate for name, spec in CATALOGUE.items()}
    assert rates == {
        "communication_formality": 0.1,
        "technical_depth_preference": 0.1,
        "conversation_pace_preference": 0.1,
        "proactive_suggestions": 0.08,
        "humor_style_preference": 0.15,
        "response_length_preference": 0.1,
        "emotional_support_style": 0.12,
    }


def test_with_dimensions_extends_without_changing_the_original() -> None:
    """with_dimensions returns a new catalogue (Penny's first, then the new ones); Penny's
    stays as it was; equal declarations compare and hash equal."""
    assert list(SASSY) == [*PENNY, "sass_level", "humor_frequency"]
    assert "sass_level" not in PENNY and len(PENNY) == 7
    again = Catalogue.penny().with_dimensions(SASS, FREQUENCY)
    assert again == SASSY and hash(again) == hash(SASSY)
    assert SASSY.validate_value("sass_level", 1) == 1.0
    assert SASSY.validate_value("humor_frequency", "often") == "often"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: PENNY.with_dimensions(SASS, SASS), "twice"),
        (lambda: DimensionSpec.continuous("Sass Level", 0.5), "snake case"),
        (lambda: DimensionSpec.continuous("sass", 2.0), "default"),
        (lambda: DimensionSpec.continuous("sass", 0.5, learning_rate=1.5), "learning_rate"),
        (lambda: DimensionSpec.continuous("sass", 0.5, minimum=1, maximum=0), "below"),
        (lambda: DimensionSpec.categorical("freq", "x", ()), "options"),
        (lambda: DimensionSpec.categorical("freq", "never", ("a", "b")), "default"),
        (lambda: DimensionSpec.categorical("freq", "a", ("a", "a")), "repeat"),
        (lambda: Catalogue([]), "at least one"),
        (
            lambda: Catalogue([DimensionSpec.continuous("humor_style_preference", 0.5)]),
            "Penny's dimensions",
        ),
    ],
)
def test_inconsistent_declarations_raise_configuration_error(make: object, words: str) -> None:
    """A catalogue that cannot work is refused when declared, saying why."""
    with pytest.raises(ConfigurationError, match=words):
        make()  # type: ignore[operator]


def test_penny_names_may_change_default_and_rate_only() -> None:
    """An application may give Penny's dimensions another default or learning rate."""
    slower = PENNY.with_learning_rates(humor_style_preference=0.05)
    assert slower["humor_style_preference"].learning_rate == 0.05
    assert slower["communication_formality"].learning_rate == 0.1
    custom = Catalogue([DimensionSpec.continuous("communication_formality", 0.9)])
    assert custom["communication_formality"].default == 0.9


def test_continuous_range_is_the_declared_one() -> None:
    """A continuous dimension takes numbers in its own range, not only [0, 1]."""
    volume = Catalogue([DimensionSpec.continuous("volume", 5, minimum=0, maximum=10)])
    assert volume.validate_value("volume", 7.5) == 7.5
    with pytest.raises(InvalidValueError, match=r"\[0, 10\]"):
        volume.validate_value("volume", 11)
    with pytest.raises(UnknownDimensionError, match="known: volume"):
        volume.validate_value("communication_formality", 0.5)


def test_states_of_other_catalogues_decode_and_conform() -> None:
    """An entry written under Penny's catalogue decodes, and conform() shows it through
    SASSY: the new dimensions at their defaults (last updated at EPOCH), every learning
    rate SASSY's; a SASSY entry read through Penny's loses only the extra dimensions."""
    old = apply_update(default_state("alice", T0), "communication_formality", 0.9, 0.1, T0)
    decoded = decode_state(encode_state(old), "alice")
    seen = conform(decoded, SASSY)
    assert list(seen.dimensions) == list(SASSY)
    assert seen.dimensions["communication_formality"].value == 0.9
    assert seen.dimensions["sass_level"].value == 0.5
    assert seen.dimensions["sass_level"].last_updated == EPOCH
    assert seen.dimensions["humor_frequency"].learning_rate == 0.05
    assert seen.version == old.version
    newer = apply_update(default_state("bob", T0, SASSY), "sass_level", 0.7, 0.0, T0)
    back = conform(decode_state(encode_state(newer), "bob"), PENNY)
    assert list(back.dimensions) == list(PENNY)
    assert conform(back, PENNY) is back  # a conforming state is returned as it is


def test_a_state_still_checks_penny_dimensions_fully() -> None:
    """Relaxing which dimensions a state holds did not relax Penny's ranges and options."""
    data = default_state("alice", T0).to_dict()
    data["dimensions"]["communication_formality"]["value"] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PersonalityState.from_dict(data)


def _tracker(url: str, catalogue: Catalogue, cache: PersonalityCache) -> PersonalityTracker:
    store = PersonalityStore(url, catalogue=catalogue, clock=FakeUTCClock(T0))
    return PersonalityTracker(store, cache, outbox_interval=None)


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())


def test_old_database_gains_a_dimension_without_migration(tmp_path: Path) -> None:
    """A database written under Penny's catalogue, opened with SASSY: the stored values
    stay, the new dimensions read as defaults, can be written and appear in the history,
    and the SQL schema is byte-for-byte unchanged (no migration ran)."""
    path = tmp_path / "penny.db"
    url = f"sqlite:///{path}"
    cache = PersonalityCache(RedisBackend(fakeredis.FakeRedis()), stats_flush_interval=None)
    old = _tracker(url, PENNY, cache)
    old.update_personality_dimension("alice", "communication_formality", 0.8, 0.1)
    schema = _schema(path)
    old.close()
    new = _tracker(url, SASSY, cache)
    loaded = new.store.load("alice")  # from SQL, not the cache
    assert loaded.dimensions["communication_formality"].value == 0.8
    assert loaded.dimensions["sass_level"].value == 0.5
    state = new.get_current_personality_state("alice")
    assert state.dimensions["communication_formality"].value == 0.8
    assert state.dimensions["sass_level"].value == 0.5
    new.update_personality_dimension("alice", "sass_level", 0.9, 0.2, context="sassy")
    assert new.get_current_personality_state("alice").dimensions["sass_level"].value == 0.9
    assert [r.dimension for r in new.get_personality_evolution_history("alice", "sass_level")] == [
        "sass_level"
    ]
    assert _schema(path) == schema
    new.close()


def test_trackers_validate_against_their_stores_catalogue(tmp_path: Path) -> None:
    """A Penny-catalogue tracker refuses sass_level; a SASSY one refuses an option it
    does not declare; both refuse a dimension name given as the user id."""
    url = f"sqlite:///{tmp_path / 'penny.db'}"
    cache = PersonalityCache(RedisBackend(fakeredis.FakeRedis()), stats_flush_interval=None)
    with _tracker(url, PENNY, cache) as penny, _tracker(url, SASSY, cache) as sassy:
        with pytest.raises(UnknownDimensionError):
            penny.update_personality_dimension("alice", "sass_level", 0.9)
        with pytest.raises(InvalidValueError, match="rarely, sometimes, often"):
            sassy.update_personality_dimension("alice", "humor_frequency", "always")
        with pytest.raises(InvalidUserIdError, match="wrong order"):
            sassy.update_personality_dimension("communication_formality", 0.7, 0.1)  # type: ignore[arg-type]
        with pytest.raises(InvalidUserIdError, match="wrong order"):
            penny.get_personality_evolution_history("communication_formality", days=14)


def test_conformer_remembers_per_user_and_notices_a_new_state() -> None:
    """The tracker's conformer returns the view it made for the same state object, and
    makes a new one when the user's state object changes (a new version, another
    catalogue's entry)."""
    view = conformer(SASSY)
    old = default_state("alice", T0)
    first = view(old)
    assert view(old) is first and "sass_level" in first.dimensions
    newer = apply_update(old, "communication_formality", 0.2, 0.0, T0)
    shown = view(newer)
    assert shown.version == 1 and shown.dimensions["communication_formality"].value == 0.2
    sassy = default_state("alice", T0, SASSY)
    assert view(sassy) is sassy


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ("tests.unit.test_catalogue", "package.module:NAME"),
        ("tests.unit.no_such_module:SASSY", "cannot import"),
        ("tests.unit.test_catalogue:SASS", "not a Catalogue"),
    ],
)
def test_load_catalogue_names_what_is_wrong(reference: str, words: str) -> None:
    """A setting naming a catalogue is checked at start: ConfigurationError saying why."""
    with pytest.raises(ConfigurationError, match=words):
        load_catalogue(reference)
    assert load_catalogue("tests.unit.test_catalogue:SASSY") is SASSY


@st.composite
def catalogues(draw: st.DrawFn) -> Catalogue:
    """Penny's catalogue (maybe with other learning rates) plus up to four dimensions of
    an application, continuous or categorical, drawn from a small pool of names."""
    extra: list[DimensionSpec] = []
    for name in draw(st.lists(st.sampled_from(EXTRA_NAMES), unique=True, max_size=4)):
        rate = draw(st.floats(min_value=0, max_value=1))
        if draw(st.booleans()):
            extra.append(DimensionSpec.continuous(name, 0.25, learning_rate=rate, maximum=2))
        else:
            extra.append(DimensionSpec.categorical(name, "a", ("a", "b"), learning_rate=rate))
    rate = draw(st.sampled_from([0.05, 0.15]))
    return PENNY.with_learning_rates(communication_formality=rate).with_dimensions(*extra)


EXTRA_NAMES = ["sass_level", "humor_frequency", "volume", "warmth"]


@settings(max_examples=100, deadline=None)
@given(catalogues(), catalogues())
def test_any_entry_reads_under_any_catalogue(written: Catalogue, read: Catalogue) -> None:
    """A state written under one catalogue, encoded for Redis and read under another,
    decodes and shows exactly the reader's dimensions with the reader's learning rates;
    a value survives where both declare the dimension with the same kind; conform is
    idempotent."""
    state = default_state("alice", T0, written)
    for name in written:
        spec = written[name]
        value = spec.options[-1] if spec.options else spec.minimum
        state = apply_update(state, name, value, 0.1, T0)
    shown = conform(decode_state(encode_state(state), "alice"), read)
    assert list(shown.dimensions) == list(read)
    assert conform(shown, read) is shown
    for name, dim in shown.dimensions.items():
        assert dim.learning_rate == read[name].learning_rate
        same_kind = name in written and written[name].value_type == read[name].value_type
        expected = state.dimensions[name].value if same_kind else read[name].default
        assert dim.value == expected


def test_a_state_in_another_order_is_shown_in_the_catalogues_order() -> None:
    """A state holding exactly the reader's dimensions but in another order (written
    under a catalogue that declared them the other way round) is shown in the reader's
    order: it used to pass for conforming and keep the writer's order."""
    volume = DimensionSpec.continuous("volume", 0.25, maximum=2)
    warmth = DimensionSpec.continuous("warmth", 0.25, maximum=2)
    written, read = PENNY.with_dimensions(volume, warmth), PENNY.with_dimensions(warmth, volume)
    state = decode_state(encode_state(default_state("alice", T0, written)), "alice")
    assert list(conform(state, read).dimensions) == list(read)
