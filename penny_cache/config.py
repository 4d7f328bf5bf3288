"""Settings: one frozen, typed object, read from ``PENNY_*`` variables at the edge.

No I/O happens here; a bad value raises ``ConfigurationError`` naming the variable, so
a misconfigured worker fails at start instead of on its first request.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from penny_cache.errors import ConfigurationError
from penny_cache.settings_env import ENV_NAMES, env_values, unknown_variables

__all__ = [
    "DEFAULT_REDIS_URL",
    "Settings",
    "positive_seconds",
    "redact_url",
    "validate_jitter",
    "validate_namespace",
    "validate_redis_url",
    "validate_write_mode",
]

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_DATABASE_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*://")
WRITE_MODES: Final = ("available", "strict")


def validate_namespace(namespace: object, *, source: str = "namespace") -> str:
    """A namespace becomes part of every key, so it must be short and glob-free."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"{source} must be 1-64 characters of A-Z a-z 0-9 _ . -, got {namespace!r}"
        )
    return namespace


def validate_redis_url(url: object, *, source: str = "redis url") -> str:
    """Reject URLs redis-py would misread, before any connection is tried."""
    try:
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise ConfigurationError(f"{source} is malformed ({exc}): {url!r}") from None
    if not isinstance(url, str) or scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            f"{source} must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    _check_port(url, source)
    parts = urlsplit(url)
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ConfigurationError(f"{source}: the database in the path must be a number")
    return url


def redact_url(url: object) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "***@" + text.rsplit("@", maxsplit=1)[-1] if "@" in text else text
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def positive_seconds(value: object, name: str) -> float:
    """A finite duration above zero, or ``ConfigurationError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def validate_jitter(value: object, name: str) -> float:
    """A TTL jitter is a fraction in [0, 1): 1 would allow a zero TTL."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigurationError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def validate_write_mode(value: object, *, source: str = "write_mode") -> str:
    """``available`` (updates commit even when Redis is out of reach; others see them
    within the staleness bound) or ``strict`` (an update that cannot first make the old
    version unusable in Redis is refused and commits nothing)."""
    if value not in WRITE_MODES:
        raise ConfigurationError(f"{source} must be 'available' or 'strict', got {value!r}")
    return str(value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process needs to reach Redis and SQL and shape its cache."""

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = "sqlite:///penny.db"
    namespace: str = "penny"
    cache_ttl: float = 300.0
    ttl_jitter: float = 0.0
    redis_timeout: float = 0.1
    redis_cooldown: float = 1.0
    stats_flush_interval: float = 1.0
    error_log_interval: float = 60.0
    near_cache: bool = True
    near_cache_size: int = 10_000
    near_cache_ttl: float | None = None  # None: min(10 s, cache_ttl / 10)
    max_staleness: float = 0.5
    lease_ttl: float = 0.25
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master_name: str = "mymaster"
    redis_cluster: bool = False
    http_port: int = 8000
    http_workers: int = 2
    exporter_port: int = 9464
    breaker_failures: int = 3
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_insecure: bool = False
    serve_stale: bool = False
    outbox_interval: float = 0.5
    outbox_grace: float = 1.0
    write_mode: str = "available"
    value_key: str | None = field(default=None, repr=False)
    value_key_previous: str | None = field(default=None, repr=False)
    log_id_key: str | None = field(default=None, repr=False)
    history_days: float | None = None
    shadow_sample: float = 0.01  # share of Redis hits compared with SQL (0: off)

    def __post_init__(self) -> None:
        validate_redis_url(self.redis_url, source=_label("redis_url"))
        validate_write_mode(self.write_mode, source=_label("write_mode"))
        self._check_topology()
        self._check_tls()
        for name in ("http_port", "exporter_port"):
            _check_int(getattr(self, name), name, 1, 65535)
        _check_int(self.http_workers, "http_workers", 1, 256)
        _check_int(self.breaker_failures, "breaker_failures", 1, 1000)
        validate_namespace(self.namespace, source=_label("namespace"))
        _check_database_url(self.database_url)
        for name, (low, high) in _DURATIONS.items():
            _check_duration(getattr(self, name), name, low, high)
        validate_jitter(self.ttl_jitter, _label("ttl_jitter"))
        if self.near_cache_ttl is not None:
            _check_duration(self.near_cache_ttl, "near_cache_ttl", 0, _NEAR_CACHE_TTL_MAX)
        self._check_relations()
        self._check_keys()
        _check_share(self.shadow_sample, "shadow_sample")
        size = self.near_cache_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10_000_000:
            raise ConfigurationError(
                f"{_label('near_cache_size')} must be 1..10000000, got {size!r}"
            )

    def _check_relations(self) -> None:
        for name in ("near_cache_ttl", "lease_ttl"):
            value = getattr(self, name)
            if value is not None and value >= self.cache_ttl:
                raise ConfigurationError(
                    f"{_label(name)} ({value}) must be below {_label('cache_ttl')} "
                    f"({self.cache_ttl})"
                )

    def _check_keys(self) -> None:
        """Secrets long enough to be keys; history kept a sane number of days."""
        for name in ("value_key", "value_key_previous"):
            key = getattr(self, name)
            if key is not None and len(str(key).encode()) < _MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"{_label(name)} must be at least {_MIN_KEY_BYTES} bytes "
                    "(e.g. the output of `openssl rand -hex 32`)"
                )
        days = self.history_days
        if days is not None:
            low, high = _HISTORY_DAYS
            if (
                isinstance(days, bool)
                or not isinstance(days, int | float)
                or not math.isfinite(days)
                or not low <= days <= high
            ):
                raise ConfigurationError(
                    f"{_label('history_days')} must be {low}..{high} days "
                    f"(unset: keep forever), got {days!r}"
                )

    def _check_topology(self) -> None:
        if self.redis_sentinels and self.redis_cluster:
            raise ConfigurationError(
                f"{_label('redis_sentinels')} and {_label('redis_cluster')} exclude each other"
            )
        for host, port in self.redis_sentinels:
            if not host or not 1 <= port <= 65535:
                raise ConfigurationError(f"{_label('redis_sentinels')}: bad address {host}:{port}")
        if self.redis_sentinels and not self.redis_master_name.strip():
            raise ConfigurationError(f"{_label('redis_master_name')} must not be empty")

    def _check_tls(self) -> None:
        """Certificate verification is on unless turned off by name: a URL that says
        ``ssl_cert_reqs=none`` is refused without PENNY_REDIS_TLS_INSECURE."""
        query = parse_qs(urlsplit(self.redis_url).query)
        weakened = [v for v in query.get("ssl_cert_reqs", []) if v.lower() != "required"]
        weakened += [v for v in query.get("ssl_check_hostname", []) if v.lower() != "true"]
        if weakened and not self.redis_tls_insecure:
            raise ConfigurationError(
                f"{_label('redis_url')} turns off TLS certificate or host name "
                f"verification; set {_label('redis_tls_insecure')} to allow it explicitly"
            )
        for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigurationError(f"{_label(name)}: no such file: {path!r}")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ConfigurationError(
                f"{_label('redis_tls_cert_file')} and {_label('redis_tls_key_file')} go together"
            )

    @property
    def redis_tls(self) -> bool:
        """Whether connections to Redis use TLS (a ``rediss://`` URL)."""
        return urlsplit(self.redis_url).scheme == "rediss"

    @property
    def redis_topology(self) -> str:
        """Where the cache's Redis lives: "standalone", "sentinel" or "cluster"."""
        if self.redis_sentinels:
            return "sentinel"
        return "cluster" if self.redis_cluster else "standalone"

    @property
    def near_ttl(self) -> float:
        """How long a near-cache entry lives: well below the Redis TTL."""
        if self.near_cache_ttl is not None:
            return self.near_cache_ttl
        return min(10.0, self.cache_ttl / 10)

    def tracker_options(self) -> dict[str, Any]:
        """The keyword arguments both trackers take from these settings."""
        return {
            "outbox_interval": self.outbox_interval,
            "outbox_grace": self.outbox_grace,
            "serve_stale": self.serve_stale,
            "write_mode": self.write_mode,
            "history_days": self.history_days,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``PENNY_*`` variables (``environ``, by default this
        process's ``os.environ``); unset ones keep their defaults, and one set to nothing
        is an error (see ``penny_cache.settings_env``)."""
        if environ is None:
            environ = os.environ
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return cls(**env_values(environ, defaults))  # type: ignore[arg-type]

    @staticmethod
    def unknown_variables(environ: Iterable[str]) -> list[str]:
        """A warning line per ``PENNY_*`` name no setting reads, with "did you mean"."""
        return unknown_variables(environ)


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{_label(name)} must be an integer {low}..{high}, got {value!r}")


def _check_share(value: object, name: str) -> None:
    """A share of events in [0, 1] (NaN, infinities and booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigurationError(f"{_label(name)} must be a share in 0..1, got {value!r}")


# duration setting -> (lowest, highest) in seconds; the lowest is exclusive when 0
_DURATIONS: Final[Mapping[str, tuple[float, float]]] = {
    "cache_ttl": (0, 30 * 86400),  # a TTL Redis takes in ms; 1e300 failed every write
    "redis_timeout": (0, 60),
    "redis_cooldown": (0, 3600),
    "stats_flush_interval": (0.05, 3600),  # 1e-9 busy-looped the flusher
    "error_log_interval": (0, 86400),
    "max_staleness": (0, 600),
    "lease_ttl": (0, 60),  # readers wait on a lease: never on a dead loader for long
    "outbox_interval": (0, 3600),
    "outbox_grace": (0, 3600),
}
_NEAR_CACHE_TTL_MAX: Final = 86400.0
_HISTORY_DAYS: Final = (1, 36500)
_MIN_KEY_BYTES: Final = 32


def _check_duration(value: object, name: str, low: float, high: float) -> None:
    seconds = positive_seconds(value, _label(name))
    if not low <= seconds <= high:
        raise ConfigurationError(f"{_label(name)} must be {low:g}..{high:g} seconds, got {value!r}")


def _check_database_url(url: object) -> None:
    """What SQLAlchemy would refuse later, said at start and naming the variable (the
    store itself parses it; this module knows no SQLAlchemy)."""
    label = _label("database_url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{label} must not be empty")
    if not _DATABASE_URL.match(url):
        raise ConfigurationError(f"{label} must look like dialect://..., got {redact_url(url)!r}")
    _check_port(url, label)


def _check_port(url: str, label: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"{label} is malformed ({exc}): {redact_url(url)!r}") from None


def _label(field: str) -> str:
    """How an error names a setting: its variable, and the argument it comes from."""
    return f"{ENV_NAMES[field]} ({field})"
