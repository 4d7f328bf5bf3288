"""One sample instance of every ``CacheOp``, built from the op's own fields.

A new operation whose fields are of the kinds below gets its sample for free, so the
plan-coverage and error-contract tests reach it without being edited; a field of a new
kind fails loudly here, naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from penny_cache.codec import Entry, version_prefix
from penny_cache.policy.ops import CacheOp

__all__ = ["CACHE_OPS", "envelope", "sample"]

CACHE_OPS: tuple[type[Any], ...] = typing.get_args(CacheOp)

_USER = "sample-user"
_BY_TYPE: dict[str, Any] = {
    "str": f"sample:{{{_USER}}}",
    "int": 60_000,
    "bytes": b"payload",
}


def envelope(version: int, user: str = _USER) -> bytes:
    """An envelope whose prefix the Lua version compare-and-set can read."""
    return f'{version_prefix()}{version},"user":"{user}","state":{{}}}}'.encode()


def _value(op: type[Any], field: dataclasses.Field[Any]) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if kind == "Entry":
        return Entry(f"sample:{{{_USER}}}", 1, envelope(1), 60_000)
    if field.name in ("encoded_user", "token"):
        return _USER
    if field.name == "pattern":
        return "sample:*"
    if field.name == "keys":
        return (f"sample:{{{_USER}}}",)
    if kind in _BY_TYPE:
        return _BY_TYPE[kind]
    raise AssertionError(f"no sample value for {op.__name__}.{field.name}: {kind}")


def sample(op: type[Any]) -> CacheOp:
    """An instance of ``op`` with plausible values in every field."""
    values = {f.name: _value(op, f) for f in dataclasses.fields(op)}
    return typing.cast("CacheOp", op(**values))
