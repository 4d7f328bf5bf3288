"""Penny's own tracker API on penny_cache: the migration face (issue 13, item 6).

Penny's ``PersonalityTracker`` is async and single-user; its callers read
``Dict[str, PersonalityDimension]`` dataclasses (``current_value``, a naive
``last_updated``). ``PennyPersonalityTracker`` keeps those names, arguments and shapes
over a ``PersonalityTracker`` (SQL the source of truth, Redis shared by every process),
so Penny keeps its analysis code and delegates storage with one line per method::

    self.storage = PennyPersonalityTracker(database_url="sqlite:///data/penny.db")
    async def get_current_personality_state(self):
        return await self.storage.get_current_personality_state()

Penny runs each sync call in a new event loop (``asyncio.new_event_loop()``, then
``run_until_complete``). Connections bound to a loop would die with it, so this face
holds none: it drives the sync tracker in a worker thread (``asyncio.to_thread``), from
whatever loop awaits it. ``SyncPennyPersonalityTracker`` is the same API without
``await``. What Penny did silently and this face refuses: a user id that is a dimension
name, and penny_cache's argument order (user first) passed to Penny's (dimension first).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Self

from penny_cache.cache import PersonalityCache
from penny_cache.catalogue import Catalogue
from penny_cache.config import Settings
from penny_cache.default import ProcessSingleton, get_shared_cache
from penny_cache.errors import ConfigurationError
from penny_cache.state import (
    DimensionValue,
    EvolutionRecord,
    PersonalityState,
    validate_user_id,
)
from penny_cache.state import PersonalityDimension as _StoredDimension
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

__all__ = [
    "DEFAULT_USER",
    "PennyPersonalityTracker",
    "PersonalityDimension",
    "PersonalityUpdate",
    "SyncPennyPersonalityTracker",
    "reset_shared_caches",
]

DEFAULT_USER: Final = "default"  # the key Penny's single-user tracker cached under
_UPDATE: Final = "(dimension, new_value, confidence_change=0.0, context=None, *, user_id=None)"
_HISTORY: Final = "(dimension=None, days=30, *, user_id=None)"


def _naive_utc(moment: datetime) -> datetime:
    """Penny's datetimes are naive UTC (SQLite's CURRENT_TIMESTAMP)."""
    return moment.astimezone(UTC).replace(tzinfo=None)


@dataclass(slots=True)
class PersonalityDimension:
    """Penny's dimension record: ``current_value`` and a naive UTC ``last_updated``."""

    name: str
    current_value: DimensionValue
    confidence: float
    last_updated: datetime
    learning_rate: float
    value_type: str

    @classmethod
    def from_stored(cls, name: str, dim: _StoredDimension) -> PersonalityDimension:
        return cls(
            name=name,
            current_value=dim.value,
            confidence=dim.confidence,
            last_updated=_naive_utc(dim.last_updated),
            learning_rate=dim.learning_rate,
            value_type=dim.value_type,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as Penny's ``to_dict`` (``last_updated`` in ISO 8601)."""
        return {
            "name": self.name,
            "current_value": self.current_value,
            "confidence": self.confidence,
            "value_type": self.value_type,
            "learning_rate": self.learning_rate,
            "last_updated": self.last_updated.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PersonalityDimension:
        """The inverse of ``to_dict``: ``from_dict(d.to_dict()) == d``."""
        return cls(
            name=data["name"],
            current_value=data["current_value"],
            confidence=data["confidence"],
            last_updated=datetime.fromisoformat(data["last_updated"]),
            learning_rate=data["learning_rate"],
            value_type=data["value_type"],
        )


@dataclass(frozen=True, slots=True)
class PersonalityUpdate:
    """One committed change, as Penny's history returns it (naive UTC ``timestamp``);
    values keep their types (Penny's own table returned them as text)."""

    dimension: str
    old_value: DimensionValue
    new_value: DimensionValue
    confidence_change: float
    trigger_context: str | None
    timestamp: datetime

    @classmethod
    def from_record(cls, record: EvolutionRecord) -> PersonalityUpdate:
        return cls(
            dimension=record.dimension,
            old_value=record.old_value,
            new_value=record.new_value,
            confidence_change=record.confidence_change,
            trigger_context=record.trigger_context,
            timestamp=_naive_utc(record.timestamp),
        )


_caches: dict[Settings, ProcessSingleton[PersonalityCache]] = {}


def _shared_cache(settings: Settings) -> PersonalityCache:
    """One cache per settings per process, however many trackers Penny builds."""
    singleton = _caches.setdefault(
        settings, ProcessSingleton(lambda: PersonalityCache.from_settings(settings))
    )
    return singleton.get()


def reset_shared_caches() -> None:
    """Close the caches made from ``settings=`` (tests; reconfiguration)."""
    while _caches:
        _caches.popitem()[1].reset()


class _Core:
    """Penny's semantics over a sync tracker, shared by the async and sync faces."""

    def __init__(
        self, tracker: PersonalityTracker, user_id: str, owned: list[Callable[[], object]]
    ) -> None:
        self.tracker = tracker
        self.catalogue = tracker.store.catalogue
        self.user_id = DEFAULT_USER
        self.user_id = self.user(user_id)
        self._owned = owned

    def user(self, user_id: object) -> str:
        if user_id is None:
            return self.user_id
        validate_user_id(user_id)
        self.catalogue.refuse_dimension_as_user_id(user_id, "user_id=... by keyword")
        return user_id  # type: ignore[return-value]

    def state(self, user_id: str | None) -> dict[str, PersonalityDimension]:
        current = self.tracker.get_current_personality_state(self.user(user_id))
        return _dimensions(current)

    def update(
        self,
        dimension: str,
        new_value: DimensionValue,
        confidence_change: float,
        context: str | None,
        user_id: str | None,
    ) -> bool:
        user = self.user(user_id)
        self._check_order(dimension, new_value)
        if dimension not in self.catalogue:
            return False  # Penny's contract: an unknown dimension is not updated
        tracker = self.tracker
        tracker.update_personality_dimension(user, dimension, new_value, confidence_change, context)
        return True

    def _check_order(self, dimension: object, new_value: object) -> None:
        if not isinstance(dimension, str):
            raise TypeError(f"dimension must be a dimension name, got {dimension!r}: {_UPDATE}")
        if dimension not in self.catalogue and new_value in self.catalogue:
            raise TypeError(
                f"update_personality_dimension({dimension!r}, {new_value!r}, ...) looks like "
                f"penny_cache's order (user_id, dimension, value); this API takes {_UPDATE}"
            )

    def history(self, dimension: object, days: object, user_id: str | None) -> list[Any]:
        user = self.user(user_id)
        if days in self.catalogue:
            raise TypeError(f"days={days!r} is a dimension name; this API takes {_HISTORY}")
        if dimension is not None and not isinstance(dimension, str):
            raise TypeError(f"dimension must be a dimension name or None: {_HISTORY}")
        records = self.tracker.get_personality_evolution_history(user, dimension, days)  # type: ignore[arg-type]
        return [PersonalityUpdate.from_record(record) for record in reversed(records)]

    def json_state(self, user_id: str | None) -> dict[str, dict[str, Any]]:
        return {name: dim.to_dict() for name, dim in self.state(user_id).items()}

    def close(self) -> None:
        while self._owned:
            self._owned.pop()()


def _dimensions(state: PersonalityState) -> dict[str, PersonalityDimension]:
    return {
        name: PersonalityDimension.from_stored(name, dim) for name, dim in state.dimensions.items()
    }


def _core(
    user_id: str,
    *,
    tracker: PersonalityTracker | None,
    store: PersonalityStore | None,
    cache: PersonalityCache | None,
    database_url: str | None,
    settings: Settings | None,
    catalogue: Catalogue | None,
) -> _Core:
    """The tracker given, or one built from the parts given (the rest from ``settings``,
    else the ``PENNY_*`` variables); what is built here is closed with the face."""
    if isinstance(tracker, AsyncPersonalityTracker):
        raise TypeError("give a PersonalityTracker: this face runs it in a worker thread")
    if tracker is not None:
        if store is not None or cache is not None or database_url is not None:
            raise TypeError("give a tracker, or the parts to build one, not both")
        return _Core(tracker, user_id, [])
    owned: list[Callable[[], object]] = []
    config = settings if settings is not None else Settings.from_env(os.environ)
    if store is None:
        store = PersonalityStore(database_url or config.database_url, catalogue=catalogue)
        owned.append(store.close)
    elif catalogue is not None and catalogue != store.catalogue:
        raise ConfigurationError("the store was given another catalogue than catalogue=")
    if cache is None:
        cache = get_shared_cache() if settings is None else _shared_cache(settings)
    built = PersonalityTracker(store, cache, **config.tracker_options())
    owned.append(built.close)
    return _Core(built, user_id, owned)


class _Face:
    """What both faces share: construction, the sync methods, closing."""

    def __init__(
        self,
        user_id: str = DEFAULT_USER,
        *,
        tracker: PersonalityTracker | None = None,
        store: PersonalityStore | None = None,
        cache: PersonalityCache | None = None,
        database_url: str | None = None,
        settings: Settings | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        """Penny's user ``user_id`` (``"default"``, as Penny's cache key), over
        ``tracker``, or over one built from ``store`` (or ``database_url``, with
        ``catalogue``) and ``cache``. Missing parts come from ``settings``, else from the
        ``PENNY_*`` variables and the process-wide ``get_shared_cache()``. Engines, outbox
        sweepers and caches are shared per process: a face per prompt costs no thread."""
        self._core = _core(
            user_id,
            tracker=tracker,
            store=store,
            cache=cache,
            database_url=database_url,
            settings=settings,
            catalogue=catalogue,
        )

    @property
    def user_id(self) -> str:
        return self._core.user_id

    @property
    def tracker(self) -> PersonalityTracker:
        return self._core.tracker

    @property
    def catalogue(self) -> Catalogue:
        return self._core.catalogue

    def get_personality_state(self, *, user_id: str | None = None) -> dict[str, dict[str, Any]]:
        """The current state as JSON-ready dicts (each ``PersonalityDimension.to_dict``)."""
        return self._core.json_state(user_id)

    def get_cache_stats(self) -> dict[str, Any]:
        """The shared cache's totals across every process (hits, misses, hit_rate, ...)."""
        return self.tracker.get_cache_stats()

    def close(self) -> None:
        """Close what this face built (its tracker and store; shared caches stay open)."""
        self._core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PennyPersonalityTracker(_Face):
    """Penny's async tracker API, shared across processes; works from any event loop."""

    async def get_current_personality_state(
        self, *, user_id: str | None = None
    ) -> dict[str, PersonalityDimension]:
        """Every dimension of the catalogue, as Penny's ``PersonalityDimension``."""
        return await asyncio.to_thread(self._core.state, user_id)

    async def update_personality_dimension(
        self,
        dimension: str,
        new_value: DimensionValue,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        user_id: str | None = None,
    ) -> bool:
        """Commit ``dimension := new_value`` (absolute); confidence moves by
        ``confidence_change``, clamped to [0, 1]. False for a dimension not in the
        catalogue; a value it does not allow raises ``InvalidValueError``."""
        args = (dimension, new_value, confidence_change, context, user_id)
        return await asyncio.to_thread(self._core.update, *args)

    async def get_personality_evolution_history(
        self, dimension: str | None = None, days: float = 30, *, user_id: str | None = None
    ) -> list[PersonalityUpdate]:
        """Committed changes of the last ``days`` days, newest first."""
        return await asyncio.to_thread(self._core.history, dimension, days, user_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class SyncPennyPersonalityTracker(_Face):
    """``PennyPersonalityTracker`` without ``await``: no event loop is needed or used."""

    def get_current_personality_state(
        self, *, user_id: str | None = None
    ) -> dict[str, PersonalityDimension]:
        """As ``PennyPersonalityTracker.get_current_personality_state``."""
        return self._core.state(user_id)

    def update_personality_dimension(
        self,
        dimension: str,
        new_value: DimensionValue,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        user_id: str | None = None,
    ) -> bool:
        """As ``PennyPersonalityTracker.update_personality_dimension``."""
        return self._core.update(dimension, new_value, confidence_change, context, user_id)

    def get_personality_evolution_history(
        self, dimension: str | None = None, days: float = 30, *, user_id: str | None = None
    ) -> list[PersonalityUpdate]:
        """As ``PennyPersonalityTracker.get_personality_evolution_history``."""
        return self._core.history(dimension, days, user_id)
