"""penny_cache: a shared, coherent, observable Redis cache of Penny's personality state."""

from __future__ import annotations

from typing import Any

from penny_cache import _moved
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.catalogue import Catalogue, DimensionSpec
from penny_cache.config import Settings
from penny_cache.default import deprecated, get_shared_cache, reset_shared_cache
from penny_cache.errors import (
    CacheError,
    ConfigurationError,
    InvalidInputError,
    InvalidStateError,
    InvalidUserIdError,
    InvalidValueError,
    PennyCacheError,
    StoreError,
    StoreMismatchError,
    StoreUnavailableError,
    UnknownDimensionError,
)
from penny_cache.state import (
    CATALOGUE,
    EvolutionRecord,
    PersonalityDimension,
    PersonalityState,
)
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

__all__ = [  # noqa: RUF022 - plain sorted order, pinned by tests/unit/test_public_api.py
    "AsyncPersonalityCache",
    "AsyncPersonalityTracker",
    "CATALOGUE",
    "CacheError",
    "Catalogue",
    "ConfigurationError",
    "DimensionSpec",
    "EvolutionRecord",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUserIdError",
    "InvalidValueError",
    "PennyCacheError",
    "PersonalityCache",
    "PersonalityDimension",
    "PersonalityState",
    "PersonalityStore",
    "PersonalityTracker",
    "Settings",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "UnknownDimensionError",
    "get_shared_cache",
    "reset_shared_cache",
]

__version__ = "0.1.0"

_moved.install()


def __getattr__(name: str) -> Any:
    """``get_cache``/``reset_cache``: the old names of ``get_shared_cache`` and
    ``reset_shared_cache``, for one release, with a ``DeprecationWarning``."""
    return deprecated(__name__, name)
