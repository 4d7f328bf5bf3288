"""The versioned envelope that goes into Redis: JSON through msgspec, never pickle.

Wire form (field order is part of the contract: the compare-and-set of ``scripts.FILL``
and ``scripts.WRITE_PUBLISH`` reads the version from the prefix without parsing the whole
value)::

    {"schema":1,"version":7,"user":"user-1","state":{...PersonalityState...}}

Anything that does not decode as the current schema, or names another user than the
key it came from, raises ``CacheDecodeError`` (or its subclass ``CacheIntegrityError``);
the cache treats both as a miss and deletes the entry. So does an entry whose version,
as the Lua scripts read it from the prefix (digits only, no leading zero, at most
``MAX_VERSION_DIGITS``), is not the version msgspec decodes: JSON allows a key twice,
Lua reads the first ``"version"`` and msgspec keeps the last, and an entry the two read
differently used to be served with one version while refusing writes with the other.
Nesting too deep for the decoder (``RecursionError``) is undecodable like the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypeVar

import msgspec

from penny_cache.errors import CacheDecodeError, CacheIntegrityError, InvalidStateError
from penny_cache.state import PersonalityState, builtin_hook

__all__ = [
    "ENVELOPE_SCHEMA",
    "MAX_ENTRY_BYTES",
    "MAX_VERSION_DIGITS",
    "Entry",
    "decode_mapping",
    "decode_state",
    "encode_mapping",
    "encode_state",
    "encode_tombstone",
    "is_tombstone",
    "prefix_version",
    "version_prefix",
]

ENVELOPE_SCHEMA: Final = 1
MAX_ENTRY_BYTES: Final = 64 * 1024
# A Lua number (a double) holds every integer of 15 digits exactly; no SQL row gets near.
MAX_VERSION_DIGITS: Final = 15


class Entry(NamedTuple):
    """One envelope to write under ``key``, version-checked against what is there."""

    key: str
    version: int
    payload: bytes
    ttl_ms: int


class _StateEnvelope(msgspec.Struct, frozen=True):
    schema: int
    version: int
    user: str
    state: PersonalityState


class _MappingEnvelope(msgspec.Struct, frozen=True):
    schema: int
    version: int
    user: str
    state: dict[str, Any]


class _Header(msgspec.Struct):
    schema: int


_E = TypeVar("_E", _StateEnvelope, _MappingEnvelope)
_encoder = msgspec.json.Encoder(enc_hook=builtin_hook)
_state_decoder = msgspec.json.Decoder(_StateEnvelope)
_mapping_decoder = msgspec.json.Decoder(_MappingEnvelope)
_header_decoder = msgspec.json.Decoder(_Header)


def version_prefix() -> str:
    """The literal start of every current envelope, as the Lua scripts match it."""
    return f'{{"schema":{ENVELOPE_SCHEMA},"version":'


_PREFIX_BYTES: Final = version_prefix().encode()


TOMBSTONE_SUFFIX: Final = ',"tombstone":1}'


def encode_tombstone(version: int) -> bytes:
    """What strict mode writes before committing ``version``: the version prefix the Lua
    compare-and-set reads (so it refuses every fill below ``version``) and no state (so
    no reader can use it). ``scripts._CAS`` lets ``version`` itself replace it."""
    return f"{version_prefix()}{version}{TOMBSTONE_SUFFIX}".encode()


def is_tombstone(payload: bytes) -> bool:
    """Whether an entry is a strict-mode tombstone: a miss, never an entry to delete."""
    return payload.endswith(b'"tombstone":1}') and payload.startswith(_PREFIX_BYTES)


def encode_state(state: PersonalityState) -> bytes:
    """Serialise a state into a current-schema envelope."""
    return _encode(_StateEnvelope(ENVELOPE_SCHEMA, state.version, state.user_id, state))


def encode_mapping(user_id: str, value: Mapping[str, Any]) -> bytes:
    """Serialise a JSON-ready mapping (the drop-in API) into an envelope."""
    try:
        return _encode(_MappingEnvelope(ENVELOPE_SCHEMA, 0, user_id, dict(value)))
    except (TypeError, NotImplementedError, msgspec.EncodeError) as exc:
        raise InvalidStateError(f"value is not JSON-serialisable: {exc}") from exc


def _encode(envelope: msgspec.Struct) -> bytes:
    payload = _encoder.encode(envelope)
    if len(payload) > MAX_ENTRY_BYTES:
        raise InvalidStateError(f"entry is {len(payload)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return payload


def decode_state(payload: bytes, user_id: str) -> PersonalityState:
    """Decode an entry read under ``user_id``'s key, or raise ``CacheDecodeError``."""
    envelope = _decode(_state_decoder, payload)
    _check_prefix(payload, envelope.version)
    if envelope.user != user_id or envelope.state.user_id != user_id:
        raise CacheIntegrityError("entry belongs to another user than its key")
    if envelope.version != envelope.state.version:
        raise CacheDecodeError("envelope version differs from the state's version")
    return envelope.state


def decode_mapping(payload: bytes, user_id: str) -> dict[str, Any]:
    """Decode a drop-in mapping entry, or raise ``CacheDecodeError``."""
    envelope = _decode(_mapping_decoder, payload)
    if envelope.user != user_id:
        raise CacheIntegrityError("entry belongs to another user than its key")
    return envelope.state


def _decode(decoder: msgspec.json.Decoder[_E], payload: bytes) -> _E:
    if len(payload) > MAX_ENTRY_BYTES:
        raise CacheDecodeError("entry exceeds the size cap")
    try:
        envelope = decoder.decode(payload)
    except (msgspec.DecodeError, InvalidStateError, ValueError, RecursionError) as exc:
        raise CacheDecodeError(_describe_failure(payload, exc)) from exc
    if envelope.schema != ENVELOPE_SCHEMA:
        raise CacheDecodeError(f"entry has schema {envelope.schema}, expected {ENVELOPE_SCHEMA}")
    return envelope


def prefix_version(payload: bytes) -> int | None:
    """The version the Lua scripts read from ``payload``'s prefix (``lua.VERSION``), or
    None where they read none (they overwrite such an entry)."""
    if not payload.startswith(_PREFIX_BYTES):
        return None
    digits, comma, _ = payload[len(_PREFIX_BYTES) : len(_PREFIX_BYTES) + 17].partition(b",")
    if not comma or not digits.isdigit() or len(digits) > MAX_VERSION_DIGITS:
        return None
    if len(digits) > 1 and digits.startswith(b"0"):
        return None
    return int(digits)


def _check_prefix(payload: bytes, version: int) -> None:
    if prefix_version(payload) != version:
        raise CacheDecodeError("the version the scripts read is not the envelope's version")


def _describe_failure(payload: bytes, exc: Exception) -> str:
    try:
        schema = _header_decoder.decode(payload).schema
    except (msgspec.DecodeError, ValueError, RecursionError):
        return f"undecodable entry: {type(exc).__name__}"
    if schema != ENVELOPE_SCHEMA:
        return f"entry has schema {schema}, expected {ENVELOPE_SCHEMA}"
    # Where, not what: validation messages may quote the (untrusted, personal) values.
    _, at, path = str(exc).rpartition(" - at ")
    return f"invalid entry ({type(exc).__name__}{' at ' + path if at else ''})"
