"""Settings: one frozen, typed object, read from ``PENNY_*`` variables at the edge.

No I/O happens here; a bad value raises ``ConfigurationError`` naming the variable, so
a misconfigured worker fails at start instead of on its first request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from penny_cache.errors import ConfigurationError

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
_T = TypeVar("_T")
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
    if not isinstance(url, str) or urlsplit(url).scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            f"{source} must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    parts = urlsplit(url)
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ConfigurationError(f"{source}: the database in the path must be a number")
    return url


def redact_url(url: object) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    text = str(url)
    parts = urlsplit(text)
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
        if not self.database_url.strip():
            raise ConfigurationError("PENNY_DATABASE_URL must not be empty")
        for name in _DURATIONS:
            positive_seconds(getattr(self, name), _label(name))
        validate_jitter(self.ttl_jitter, _label("ttl_jitter"))
        if self.near_cache_ttl is not None:
            positive_seconds(self.near_cache_ttl, _label("near_cache_ttl"))
        size = self.near_cache_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10_000_000:
            raise ConfigurationError(
                f"{_label('near_cache_size')} must be 1..10000000, got {size!r}"
            )
        if self.near_cache_ttl is not None and self.near_cache_ttl >= self.cache_ttl:
            raise ConfigurationError(
                f"{_label('near_cache_ttl')} ({self.near_cache_ttl}) must be below "
                f"{_label('cache_ttl')} ({self.cache_ttl})"
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
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``PENNY_*`` variables; unset ones keep their defaults."""
        values: dict[str, object] = {}
        for setting in fields(cls):
            env_name = _ENV_NAMES[setting.name]
            raw = _raw_value(environ, env_name)
            if raw is None or raw.strip() == "":
                continue
            if setting.name not in _VERBATIM:  # a password may begin or end with a space
                raw = raw.strip()
            parse = _PARSERS.get(setting.name, str)
            values[setting.name] = _parse(parse, raw, env_name)
        return cls(**values)  # type: ignore[arg-type]


def _raw_value(environ: Mapping[str, str], env_name: str) -> str | None:
    """``NAME``, or the contents of the file ``NAME_FILE`` names (for secrets)."""
    path = environ.get(f"{env_name}_FILE", "").strip()
    if not path:
        return environ.get(env_name)
    if environ.get(env_name, "").strip():
        raise ConfigurationError(f"set {env_name} or {env_name}_FILE, not both")
    try:
        return Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{env_name}_FILE: cannot read {path!r}: {exc}") from None


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{_label(name)} must be an integer {low}..{high}, got {value!r}")


def _parse_addresses(text: str) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` (IPv6 as ``[::1]:26379``)."""
    addresses = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(item)
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def _parse(parse: Callable[[str], _T], raw: str, env_name: str) -> _T:
    try:
        return parse(raw)
    except ValueError:
        raise ConfigurationError(f"{env_name} is not a valid value: {raw!r}") from None


_ENV_NAMES: Final = {
    "redis_url": "PENNY_REDIS_URL",
    "database_url": "PENNY_DATABASE_URL",
    "namespace": "PENNY_NAMESPACE",
    "cache_ttl": "PENNY_CACHE_TTL",
    "ttl_jitter": "PENNY_CACHE_TTL_JITTER",
    "redis_timeout": "PENNY_REDIS_TIMEOUT",
    "redis_cooldown": "PENNY_REDIS_COOLDOWN",
    "stats_flush_interval": "PENNY_STATS_FLUSH_INTERVAL",
    "error_log_interval": "PENNY_ERROR_LOG_INTERVAL",
    "near_cache": "PENNY_NEAR_CACHE",
    "near_cache_size": "PENNY_NEAR_CACHE_SIZE",
    "near_cache_ttl": "PENNY_NEAR_CACHE_TTL",
    "max_staleness": "PENNY_MAX_STALENESS",
    "lease_ttl": "PENNY_LEASE_TTL",
    "redis_username": "PENNY_REDIS_USERNAME",
    "redis_password": "PENNY_REDIS_PASSWORD",
    "redis_sentinels": "PENNY_REDIS_SENTINELS",
    "redis_master_name": "PENNY_REDIS_MASTER_NAME",
    "redis_cluster": "PENNY_REDIS_CLUSTER",
    "http_port": "PENNY_HTTP_PORT",
    "http_workers": "PENNY_HTTP_WORKERS",
    "exporter_port": "PENNY_EXPORTER_PORT",
    "breaker_failures": "PENNY_BREAKER_FAILURES",
    "redis_tls_ca_file": "PENNY_REDIS_TLS_CA_FILE",
    "redis_tls_cert_file": "PENNY_REDIS_TLS_CERT_FILE",
    "redis_tls_key_file": "PENNY_REDIS_TLS_KEY_FILE",
    "redis_tls_insecure": "PENNY_REDIS_TLS_INSECURE",
    "serve_stale": "PENNY_SERVE_STALE",
    "outbox_interval": "PENNY_OUTBOX_INTERVAL",
    "outbox_grace": "PENNY_OUTBOX_GRACE",
    "write_mode": "PENNY_WRITE_MODE",
    "value_key": "PENNY_VALUE_KEY",
    "value_key_previous": "PENNY_VALUE_KEY_PREVIOUS",
    "log_id_key": "PENNY_LOG_ID_KEY",
    "history_days": "PENNY_HISTORY_DAYS",
}
_VERBATIM: Final = frozenset(
    {"redis_password", "redis_username", "value_key", "value_key_previous", "log_id_key"}
)
_DURATIONS: Final = (
    "cache_ttl",
    "redis_timeout",
    "redis_cooldown",
    "stats_flush_interval",
    "error_log_interval",
    "max_staleness",
    "lease_ttl",
    "outbox_interval",
    "outbox_grace",
)


def _label(field: str) -> str:
    """How an error names a setting: its variable, and the argument it comes from."""
    return f"{_ENV_NAMES[field]} ({field})"


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    "cache_ttl": float,
    "ttl_jitter": float,
    "redis_timeout": float,
    "redis_cooldown": float,
    "stats_flush_interval": float,
    "error_log_interval": float,
    "near_cache": _parse_bool,
    "near_cache_size": int,
    "near_cache_ttl": float,
    "max_staleness": float,
    "lease_ttl": float,
    "redis_sentinels": _parse_addresses,
    "redis_cluster": _parse_bool,
    "http_port": int,
    "http_workers": int,
    "exporter_port": int,
    "breaker_failures": int,
    "redis_tls_insecure": _parse_bool,
    "serve_stale": _parse_bool,
    "outbox_interval": float,
    "outbox_grace": float,
    "history_days": float,
}
