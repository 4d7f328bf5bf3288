"""Reading ``PENNY_*`` variables: names, parsers, ``_FILE`` secrets, and misspellings.

Kept apart from ``penny_cache.config`` (which says what a valid setting is) because the
environment has failure modes of its own: a variable set to nothing (a Kubernetes secret
that rendered empty) used to be taken as unset, so a worker wrote to penny.db in its
working directory instead of refusing to start; a misspelt name was ignored silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, TypeVar

from penny_cache.errors import ConfigurationError

__all__ = [
    "ENV_NAMES",
    "OTHER_VARIABLES",
    "env_values",
    "unknown_variables",
]

_T = TypeVar("_T")

ENV_NAMES: Final = {
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
    "shadow_sample": "PENNY_SHADOW_SAMPLE",
}

# The project's own PENNY_* variables that are not settings: known, so never "unknown".
OTHER_VARIABLES: Final = frozenset(
    {
        "PENNY_CATALOGUE",  # the HTTP service's catalogue (package.module:NAME)
        "PENNY_EMBEDDED_FAKEREDIS",  # make run/demo: fakeredis instead of redis-server
        "PENNY_REQUIRE_SERVICES",  # tests: fail instead of skip without Redis/PostgreSQL
        "PENNY_TEST_REDIS_URL",
        "PENNY_TEST_DATABASE_URL",
        "PENNY_BENCH_DATABASE_URL",
    }
)

# a password or key may begin or end with a space: taken as it is
_VERBATIM: Final = frozenset(
    {"redis_password", "redis_username", "value_key", "value_key_previous", "log_id_key"}
)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _parse_addresses(text: str) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` (IPv6 as ``[::1]:26379``)."""
    addresses = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(item)
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    **dict.fromkeys(
        (
            "cache_ttl",
            "ttl_jitter",
            "redis_timeout",
            "redis_cooldown",
            "stats_flush_interval",
            "error_log_interval",
            "near_cache_ttl",
            "max_staleness",
            "lease_ttl",
            "outbox_interval",
            "outbox_grace",
            "history_days",
            "shadow_sample",
        ),
        float,
    ),
    **dict.fromkeys(
        ("near_cache_size", "http_port", "http_workers", "exporter_port", "breaker_failures"),
        int,
    ),
    **dict.fromkeys(
        ("near_cache", "redis_cluster", "redis_tls_insecure", "serve_stale"), _parse_bool
    ),
    "redis_sentinels": _parse_addresses,
}


def env_values(environ: Mapping[str, str], defaults: Mapping[str, object]) -> dict[str, object]:
    """The settings ``environ`` sets, parsed, by field name. ``defaults`` (field name to
    default) only words the error for a variable that is set but empty."""
    values: dict[str, object] = {}
    for name, env_name in ENV_NAMES.items():
        raw = _raw_value(environ, env_name, defaults.get(name))
        if raw is None:
            continue
        if name not in _VERBATIM:
            raw = raw.strip()
        values[name] = _parse(_PARSERS.get(name, str), raw, env_name)
    return values


def _raw_value(environ: Mapping[str, str], env_name: str, default: object) -> str | None:
    """``NAME``, or the contents of the file ``NAME_FILE`` names (for secrets); None when
    neither is set. Set but empty is an error: never the default."""
    file_variable = f"{env_name}_FILE"
    path = environ.get(file_variable)
    direct = environ.get(env_name)
    if path is not None and direct is not None:
        raise ConfigurationError(f"set {env_name} or {file_variable}, not both")
    if path is None:
        if direct is not None and not direct.strip():
            raise _empty(env_name, default)
        return direct
    if not path.strip():
        raise _empty(file_variable, default, what="a file name")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{file_variable}: cannot read {path!r}: {exc}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ConfigurationError(
            f"{file_variable} names {path!r}, which is empty; {_unset_hint(env_name, default)}"
        )
    return text


def _empty(variable: str, default: object, what: str = "") -> ConfigurationError:
    return ConfigurationError(
        f"{variable} is set but empty; {_unset_hint(variable, default, what)}"
    )


def _unset_hint(variable: str, default: object, what: str = "") -> str:
    shown = "no value" if default is None else f"the default {default}"
    what = what or ("a URL" if variable.endswith("_URL") else "a value")
    return f"unset it to use {shown}, or give {what}"


def _parse(parse: Callable[[str], _T], raw: str, env_name: str) -> _T:
    try:
        return parse(raw)
    except ValueError:
        raise ConfigurationError(f"{env_name} is not a valid value: {raw!r}") from None


def unknown_variables(environ: Iterable[str]) -> list[str]:
    """One line per ``PENNY_*`` name that nothing reads (a misspelling, usually), with the
    nearest known name when there is one: what the CLI, service and exporter warn about."""
    known = set(ENV_NAMES.values()) | OTHER_VARIABLES
    known |= {f"{name}_FILE" for name in ENV_NAMES.values()}
    lines = []
    for name in sorted(environ):
        if not name.startswith("PENNY_") or name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{name} is not a penny_cache setting and is ignored{hint}")
    return lines
