"""The drop-in keeps values as they were set, or refuses them (fakeredis).

Each test states the property it proves; multi-process versions on a real redis-server
are in ``tests/integration/test_dropin_processes.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import fakeredis
import msgspec
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import InvalidStateError, UncacheableValueError
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.policy.ops import CountMatching, UnlinkMatching
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import default_state
from tests.penny_shapes import PersonalityDimension, penny_state


class Point(msgspec.Struct, frozen=True):
    x: int
    at: datetime


@dataclasses.dataclass
class Nested:
    points: list[Point]
    dims: dict[str, PersonalityDimension]
    when: date


def _core(fake_redis: fakeredis.FakeRedis, namespace: str) -> PersonalityCache:
    return PersonalityCache(
        RedisBackend(fake_redis), namespace=namespace, ttl=300, stats_flush_interval=None
    )


@pytest.fixture
def core(fake_redis: fakeredis.FakeRedis, namespace: str) -> Iterator[PersonalityCache]:
    with _core(fake_redis, namespace) as c:
        yield c


@pytest.fixture
def cache(core: PersonalityCache) -> PersonalityStateCache:
    return PersonalityStateCache(core=core)


AWARE = datetime(2026, 3, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))
ROUND_TRIPS: dict[str, Any] = {
    "penny-tracker-dict": penny_state(),
    "naive-datetime": datetime(2026, 1, 2, 3, 4, 5, 6),
    "aware-datetime": AWARE,
    "utc-datetime": datetime(2026, 1, 2, tzinfo=UTC),
    "date-and-time": {"d": date(2026, 1, 2), "t": time(3, 4, 5)},
    "nested": Nested(
        [Point(1, AWARE), Point(2, datetime(2026, 1, 1))],
        penny_state(0.9),
        date(2026, 5, 6),
    ),
    "list-of-mixed": [1, 2.5, "x", None, True, {"at": datetime(2026, 1, 1)}, [AWARE]],
    "plain-json": {"formality": 0.46, "vocabulary": ["yo", "indeed"], "n": 3, "ok": False},
    "personality-state": default_state("default", datetime(2026, 1, 1, tzinfo=UTC)),
    "struct": Point(3, AWARE),
}


def _types(value: Any) -> Any:
    """The type tree of a value (containers by content), to compare beyond ``==``."""
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), _types(dataclasses.asdict(value)))
    if isinstance(value, datetime):
        return (datetime, value.tzinfo is None)
    return type(value)


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_values_come_back_equal_with_their_types(cache: PersonalityStateCache, name: str) -> None:
    """``get()`` returns a value equal to what ``set()`` stored, of the same types all the
    way down: Penny's dict of dataclasses (naive datetimes stay naive), aware datetimes,
    Structs, dates, nested mixes."""
    value = ROUND_TRIPS[name]
    assert cache.set("default", value) is True
    back = cache.get("default")
    assert back == value
    assert _types(back) == _types(value)


def test_penny_tracker_reads_attributes_of_what_it_cached(cache: PersonalityStateCache) -> None:
    """Penny's tracker code works on a hit: ``state[name].current_value`` and a naive
    ``last_updated`` (the web UI showed ``--`` when dicts came back)."""
    cache.set("default", penny_state(0.46))
    state = cache.get("default")
    assert state["communication_formality"].current_value == 0.46
    assert state["humor_style_preference"].learning_rate == 0.15
    assert state["communication_formality"].last_updated.tzinfo is None


class _Opaque:
    pass


def _local_dataclass() -> Any:
    @dataclasses.dataclass
    class Local:
        x: int

    return Local(1)


@dataclasses.dataclass
class Unannotated:
    when: Any  # a datetime here would come back as a string


REFUSED: dict[str, Any] = {
    "tuple": (1, 2),
    "set": {1, 2},
    "frozenset-in-dict": {"a": frozenset({1})},
    "arbitrary-class": _Opaque(),
    "int-keys": {1: "a"},
    "local-dataclass": _local_dataclass(),
    "field-that-would-change-type": Unannotated(datetime(2026, 1, 1)),
    "nan": float("nan"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_values_that_would_not_come_back_are_refused_and_nothing_stored(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityStateCache, name: str
) -> None:
    """``set()`` raises a TypeError (``UncacheableValueError``, also an
    ``InvalidStateError``) naming the type and what to do, and writes nothing."""
    with pytest.raises(UncacheableValueError) as caught:
        cache.set("default", REFUSED[name])
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, InvalidStateError)
    assert "value_type=" in str(caught.value) and "dataclasses" in str(caught.value)
    assert list(fake_redis.scan_iter(match=cache.core.keys.legacy_pattern())) == []


def test_refusal_names_the_offending_type_and_where(cache: PersonalityStateCache) -> None:
    """The message names the type and its place in the value."""
    with pytest.raises(TypeError, match=r"builtins\.tuple at value\['dims'\]\[1\]"):
        cache.set("default", {"dims": [1, (2, 3)]})


def test_value_type_argument_names_the_type_to_rebuild(core: PersonalityCache) -> None:
    """With ``value_type=`` the value is rebuilt as that type (msgspec.convert target),
    and a value that would not come back as it is refused."""
    typed = PersonalityStateCache(core=core, value_type=dict[str, PersonalityDimension])
    typed.set("default", penny_state(0.3))
    assert typed.get("default") == penny_state(0.3)
    with pytest.raises(TypeError):
        typed.set("default", {"x": (1, 2)})


def _plant(fake_redis: fakeredis.FakeRedis, cache: PersonalityStateCache, types: str) -> None:
    envelope = f'{{"schema":1,"version":0,"user":"default","value":{{"x":1}},"types":{types}}}'
    fake_redis.set(cache.core.keys.legacy("default"), envelope.encode())


@pytest.mark.parametrize(
    "types",
    [
        '{"c":"builtins:object"}',  # loaded, but neither a dataclass nor a Struct
        '{"c":"os:system"}',  # a function
        '{"c":"tests.penny_shapes:PersonalityDimension"}',  # fields do not fit
        '{"q":1}',  # malformed
    ],
)
def test_an_entry_naming_a_class_that_cannot_be_rebuilt_is_a_counted_miss(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityStateCache, types: str
) -> None:
    """An entry whose type description names something that is not a dataclass or
    Struct, or does not fit, is a miss with a counted decode error, never a crash; the
    entry is dropped."""
    _plant(fake_redis, cache, types)
    assert cache.get("default") is None
    stats = cache.core.get_stats()
    assert (stats["decode_errors"], stats["misses"]) == (1, 1)
    assert fake_redis.exists(cache.core.keys.legacy("default")) == 0


@pytest.mark.parametrize(
    "name", ["penny_not_loaded_xyz:Thing", "tests.penny_shapes:NotDefinedHere"]
)
def test_an_entry_of_a_class_not_loaded_here_is_a_miss_that_is_kept(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityStateCache, name: str
) -> None:
    """A class this process has not loaded is never imported: the read is a miss with a
    counted decode error, and the entry stays (other processes that loaded the class
    read it)."""
    _plant(fake_redis, cache, f'{{"c":"{name}"}}')
    assert cache.get("default") is None
    assert "penny_not_loaded_xyz" not in sys.modules
    assert cache.core.get_stats()["decode_errors"] == 1
    assert fake_redis.exists(cache.core.keys.legacy("default")) == 1


def test_personality_cache_set_points_to_the_drop_in(core: PersonalityCache) -> None:
    """``PersonalityCache.set(user, <not a PersonalityState>)`` raises an
    InvalidStateError whose message points to the drop-in for arbitrary values."""
    with pytest.raises(InvalidStateError, match=r"personality_state_cache\.PersonalityStateCache"):
        core.set("default", {"formality": 0.5})  # type: ignore[arg-type]


def test_get_stats_sends_no_scan(
    cache: PersonalityStateCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_stats()`` reads the counters and the index; it never lists keys."""
    cache.set("a", {"x": 1})
    sent: list[Any] = []
    run_op = cache.core.run_op

    def recording(op: Any) -> Any:
        sent.append(op)
        return run_op(op)

    monkeypatch.setattr(cache.core, "run_op", recording)
    assert cache.get_stats()["cache_size"] == 1
    assert sent and not any(isinstance(op, CountMatching | UnlinkMatching) for op in sent)
