"""The exception tree of penny_cache.

Driver errors (redis-py, SQLAlchemy) are translated into these at one boundary each
(``redis.boundary.ErrorBoundary`` and ``store/database.py``), so callers never need to
import a driver to handle a failure::

    PennyCacheError
    ├── InvalidInputError (ValueError)      bad input at an edge; nothing was written
    │   ├── InvalidUserIdError
    │   ├── UnknownDimensionError
    │   ├── InvalidValueError
    │   └── InvalidStateError              a state or mapping that cannot be cached
    │       └── UncacheableValueError (TypeError)  a drop-in value that would not come back
    ├── ConfigurationError (ValueError)     bad settings; the message names the variable
    │   └── StoreMismatchError              one cache asked to serve two databases
    ├── CacheError                          Redis trouble; the tracker never lets it escape
    │   ├── CacheUnavailableError           cannot connect, or cooling down after a failure
    │   ├── CacheTimeoutError               Redis did not answer within the timeout
    │   ├── CacheNotReplicatedError         no replica acknowledged a write in time (Sentinel)
    │   └── CacheDecodeError                an entry that is not a valid envelope
    │       └── CacheIntegrityError         an envelope stored under another user's key
    └── StoreError                          the SQL source of truth failed
        ├── StoreUnavailableError           cannot connect or the database is locked
        └── StoreConflictError              an update lost its race too many times
"""

from __future__ import annotations

__all__ = [
    "CacheDecodeError",
    "CacheError",
    "CacheIntegrityError",
    "CacheNotReplicatedError",
    "CacheTimeoutError",
    "CacheUnavailableError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUserIdError",
    "InvalidValueError",
    "PennyCacheError",
    "StoreConflictError",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "UncacheableValueError",
    "UnknownDimensionError",
]


class PennyCacheError(Exception):
    """Root of every error penny_cache raises on purpose."""


class InvalidInputError(PennyCacheError, ValueError):
    """Input rejected at an edge before anything was written."""


class InvalidUserIdError(InvalidInputError):
    """A user id that is empty, not a string, too long or holds control characters."""


class UnknownDimensionError(InvalidInputError):
    """A dimension name that is not in the catalogue."""


class InvalidValueError(InvalidInputError):
    """A dimension value or confidence change outside what the catalogue allows."""


class InvalidStateError(InvalidInputError):
    """A state (or legacy mapping) that cannot be validated or serialised."""


class UncacheableValueError(InvalidStateError, TypeError):
    """A drop-in value that would not come back from the cache equal, with its types (a
    tuple, a set, an arbitrary class): a ``TypeError``, and still an ``InvalidStateError``
    for callers of the earlier drop-in. The message names the type and what to do."""


class ConfigurationError(PennyCacheError, ValueError):
    """Settings that cannot work; raised at start, naming the variable."""


class StoreMismatchError(ConfigurationError):
    """A cache already bound to one database was handed a tracker on another."""


class CacheError(PennyCacheError):
    """Redis could not do what was asked."""


class CacheUnavailableError(CacheError):
    """Redis cannot be reached (or was unreachable moments ago and is cooling down)."""


class CacheTimeoutError(CacheError):
    """Redis did not answer within the socket timeout."""


class CacheNotReplicatedError(CacheError):
    """A write reached the primary but no replica acknowledged it in time (Sentinel)."""


class CacheDecodeError(CacheError):
    """A stored entry is not a valid envelope of the current schema."""


class CacheIntegrityError(CacheDecodeError):
    """A stored envelope names a different user than the key it was read from."""


class StoreError(PennyCacheError):
    """The SQL source of truth failed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or stayed locked past its timeout."""


class StoreConflictError(StoreError):
    """An update kept losing its version race and gave up."""
