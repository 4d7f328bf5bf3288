"""The Redis envelope: exact round trips, the Lua-visible prefix, and total decoding."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny_cache.codec import (
    ENVELOPE_SCHEMA,
    MAX_ENTRY_BYTES,
    decode_mapping,
    decode_state,
    encode_mapping,
    encode_state,
    version_prefix,
)
from penny_cache.errors import CacheDecodeError, CacheIntegrityError, InvalidStateError
from penny_cache.state import CATALOGUE, PersonalityState, apply_update, default_state
from tests.user_ids import valid_user_ids

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state_at(user: str, version: int) -> PersonalityState:
    """A valid state of ``user`` at exactly ``version``."""
    data = default_state(user, T0).to_dict()
    data["version"] = version
    return PersonalityState.from_dict(data)


def envelope(**overrides: Any) -> bytes:
    """A JSON envelope for alice at version 3, with fields overridden."""
    body: dict[str, Any] = {
        "schema": ENVELOPE_SCHEMA,
        "version": 3,
        "user": "alice",
        "state": state_at("alice", 3).to_dict(),
    }
    body.update(overrides)
    return json.dumps(body, separators=(",", ":")).encode()


@st.composite
def states(draw: st.DrawFn) -> PersonalityState:
    """States reached from the defaults by a few random valid updates."""
    user = draw(valid_user_ids)
    state = default_state(user, draw(st.datetimes(timezones=st.just(UTC))))
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(list(CATALOGUE)))
        spec = CATALOGUE[name]
        value: float | str = (
            draw(st.floats(0.0, 1.0))
            if spec.value_type == "continuous"
            else draw(st.sampled_from(spec.options))
        )
        change = draw(st.floats(-2.0, 2.0))
        state = apply_update(state, name, value, change, draw(st.datetimes(timezones=st.just(UTC))))
    return state


# Round trips ------------------------------------------------------------------------------


def test_state_round_trip() -> None:
    """decode_state(encode_state(s), s.user_id) equals s."""
    state = apply_update(default_state("alice", T0), "humor_style_preference", "dry", 0.2, T0)
    assert decode_state(encode_state(state), "alice") == state


@settings(max_examples=100)
@given(states())
def test_state_round_trip_property(state: PersonalityState) -> None:
    """For any reachable state the envelope round trip is exact."""
    back = decode_state(encode_state(state), state.user_id)
    assert back == state
    assert back.to_dict() == state.to_dict()


@pytest.mark.parametrize("version", [0, 1, 7, 10, 99, 123456, 10**12])
def test_encoding_starts_with_prefix_then_version_digits(version: int) -> None:
    """Encoded bytes are version_prefix() + str(version) + ',' (SET_IF_NEWER parses this)."""
    payload = encode_state(state_at("alice", version))
    assert payload.startswith(f"{version_prefix()}{version},".encode())


def test_version_prefix_names_the_current_schema() -> None:
    """The prefix is the literal JSON start of a schema-1 envelope, up to the version."""
    assert version_prefix() == f'{{"schema":{ENVELOPE_SCHEMA},"version":'
    assert ENVELOPE_SCHEMA == 1


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 1, "b": [1, 2.5, "x"], "c": {"d": None, "e": True}},
        {"unicode": "日本語 \U0001f600", "nested": [[{}], []]},
    ],
)
def test_mapping_round_trip(value: dict[str, Any]) -> None:
    """decode_mapping(encode_mapping(u, m), u) equals m for JSON-ready mappings."""
    payload = encode_mapping("alice", value)
    assert payload.startswith(f"{version_prefix()}0,".encode())
    assert decode_mapping(payload, "alice") == value


def test_mapping_encoding_accepts_read_only_mappings() -> None:
    """encode_mapping takes any Mapping, not only dict."""
    from types import MappingProxyType

    value = MappingProxyType({"k": MappingProxyType({"inner": 1})})
    assert decode_mapping(encode_mapping("alice", value), "alice") == {"k": {"inner": 1}}


# Corrupted payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"null",
        b"true",
        b"42",
        b'"a string"',
        b"[]",
        b"{}",
        b'{"unrelated":"shape"}',
        b'{"schema":1,"version":3',  # truncated
        encode_state(state_at("alice", 3))[:-10],  # truncated real entry
        envelope(schema="1"),
        envelope(version="3"),
        envelope(user=None),
        envelope(state=None),
        envelope(state=[]),
        envelope(state={"user_id": "alice"}),
    ],
)
def test_corrupted_payloads_raise_decode_error(payload: bytes) -> None:
    """Random bytes, truncation, null and wrong shapes or types raise CacheDecodeError."""
    with pytest.raises(CacheDecodeError):
        decode_state(payload, "alice")


@pytest.mark.parametrize("payload", [b"null", b"[]", b"{", envelope(state=[]), envelope(user=1)])
def test_corrupted_mapping_payloads_raise_decode_error(payload: bytes) -> None:
    """decode_mapping is just as total as decode_state."""
    with pytest.raises(CacheDecodeError):
        decode_mapping(payload, "alice")


def test_invalid_state_inside_envelope_raises_decode_error() -> None:
    """A well-formed envelope holding an invalid state (value 1.5) is a decode error."""
    data = state_at("alice", 3).to_dict()
    data["dimensions"]["communication_formality"]["value"] = 1.5
    with pytest.raises(CacheDecodeError):
        decode_state(envelope(state=data), "alice")


@pytest.mark.parametrize("decode", [decode_state, decode_mapping])
def test_other_schema_is_rejected_naming_it(decode: Callable[[bytes, str], object]) -> None:
    """An envelope of schema 2 raises CacheDecodeError whose message names the schema."""
    with pytest.raises(CacheDecodeError, match="schema 2"):
        decode(envelope(schema=2), "alice")


def test_other_schema_with_unknown_state_shape_names_the_schema() -> None:
    """A future schema whose state we cannot parse is still reported as a schema mismatch."""
    with pytest.raises(CacheDecodeError, match="schema 2"):
        decode_state(envelope(schema=2, state={"new": "layout"}), "alice")


def test_entry_of_another_user_is_an_integrity_error() -> None:
    """An envelope read under another user's key raises CacheIntegrityError."""
    payload = encode_state(state_at("alice", 3))
    with pytest.raises(CacheIntegrityError):
        decode_state(payload, "bob")
    with pytest.raises(CacheIntegrityError):
        decode_mapping(encode_mapping("alice", {"a": 1}), "bob")


def test_envelope_user_differing_from_state_user_is_an_integrity_error() -> None:
    """An envelope naming alice around bob's state is rejected under either key."""
    payload = envelope(state=state_at("bob", 3).to_dict())
    for user in ("alice", "bob"):
        with pytest.raises(CacheIntegrityError):
            decode_state(payload, user)


def test_envelope_version_must_match_state_version() -> None:
    """An envelope whose version differs from its state's raises CacheDecodeError."""
    with pytest.raises(CacheDecodeError) as info:
        decode_state(envelope(version=4), "alice")
    assert not isinstance(info.value, CacheIntegrityError)


def test_oversized_payload_is_refused_on_decode() -> None:
    """A payload over MAX_ENTRY_BYTES is rejected before parsing."""
    real = encode_state(state_at("alice", 3))
    padded = real[:-1] + b" " * (MAX_ENTRY_BYTES - len(real) + 1) + b"}"
    assert len(padded) == MAX_ENTRY_BYTES + 1
    json.loads(padded)  # still valid JSON: only the size is wrong
    with pytest.raises(CacheDecodeError):
        decode_state(padded, "alice")
    with pytest.raises(CacheDecodeError):
        decode_mapping(b"x" * (MAX_ENTRY_BYTES + 1), "alice")


def test_oversized_mapping_is_refused_on_encode() -> None:
    """encode_mapping of a value larger than MAX_ENTRY_BYTES raises InvalidStateError."""
    with pytest.raises(InvalidStateError):
        encode_mapping("alice", {"big": "x" * MAX_ENTRY_BYTES})


def test_mapping_just_under_the_cap_is_accepted() -> None:
    """The cap is on the encoded size: an entry of exactly MAX_ENTRY_BYTES round trips."""
    overhead = len(encode_mapping("alice", {"big": ""}))
    value = {"big": "x" * (MAX_ENTRY_BYTES - overhead)}
    payload = encode_mapping("alice", value)
    assert len(payload) == MAX_ENTRY_BYTES
    assert decode_mapping(payload, "alice") == value


@pytest.mark.parametrize(
    "value",
    [{"o": object()}, {"nested": [1, {"deep": object()}]}, {"c": 1j}, {"f": len}],
)
def test_non_json_mapping_raises_invalid_state(value: dict[str, Any]) -> None:
    """A mapping holding something JSON cannot represent raises InvalidStateError."""
    with pytest.raises(InvalidStateError):
        encode_mapping("alice", value)


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    """decode_state on any bytes returns a state or raises CacheDecodeError, nothing else."""
    with contextlib.suppress(CacheDecodeError):
        decode_state(payload, "alice")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(json_values, st.sampled_from(["schema", "version", "user", "state", "extra"]))
def test_wrong_json_in_any_field_only_raises_decode_error(value: object, field: str) -> None:
    """Valid JSON of any shape in any envelope field never escapes as another exception."""
    payload = envelope(**{field: value})
    for decode in (decode_state, decode_mapping):
        with contextlib.suppress(CacheDecodeError):
            decode(payload, "alice")


@settings(max_examples=200)
@given(st.data())
def test_mutated_real_entries_only_raise_decode_error(data: st.DataObject) -> None:
    """Byte-level damage to a real entry yields a valid state or CacheDecodeError."""
    payload = bytearray(encode_state(state_at("alice", 3)))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(payload) - 1))
        payload[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        state = decode_state(bytes(payload[:cut]), "alice")
    except CacheDecodeError:
        return
    assert state.user_id == "alice"


def test_a_deeply_nested_entry_is_a_decode_error_not_a_recursion_error() -> None:
    """Used to happen: a 6 KB entry nested 1,000 levels deep raised ``RecursionError``
    past the decoder's guard (every read of that user a 500, the entry never deleted).
    Now it is a ``CacheDecodeError``, like every other undecodable entry."""
    nested = b"[" * 1000 + b"]" * 1000
    payload = version_prefix().encode() + b'3,"user":"alice","state":' + nested + b"}"
    with pytest.raises(CacheDecodeError):
        decode_state(payload, "alice")
    with pytest.raises(CacheDecodeError):
        decode_mapping(payload, "alice")
    with pytest.raises(CacheDecodeError):
        decode_state(b'{"schema":' + nested + b"}", "alice")


def test_a_duplicate_version_key_is_malformed() -> None:
    """Used to happen: ``{"version": 10^12, ..., "version": 3}`` was accepted as version 3
    while the Lua compare-and-set read 10^12 from the prefix and refused every write.
    Now the version the prefix shows must be the decoded one, or the entry is malformed."""
    good = encode_state(state_at("alice", 3))
    assert decode_state(good, "alice").version == 3
    body = good[len(version_prefix()) + 1 :]  # ',"user":...' after the digits
    forged = version_prefix().encode() + b"1000000000000" + body[:-1] + b',"version":3}'
    with pytest.raises(CacheDecodeError, match="version"):
        decode_state(forged, "alice")


@pytest.mark.parametrize(
    ("digits", "read"),
    [("7", 7), ("0", 0), ("007", None), ("4611686018427387904", None), ("1e3", None)],
)
def test_prefix_version_reads_what_the_scripts_read(digits: str, read: int | None) -> None:
    """``prefix_version`` follows ``lua.VERSION``: digits only, no leading zero, at most
    ``MAX_VERSION_DIGITS``; anything else is unreadable (None)."""
    from penny_cache.codec import prefix_version

    payload = f'{version_prefix()}{digits},"user":"alice"}}'.encode()
    assert prefix_version(payload) == read


def test_a_version_beyond_what_lua_reads_exactly_is_malformed() -> None:
    """Used to happen: a state at version 2^62 (inside and out) decoded and was served.
    Now a version the scripts cannot read exactly is malformed: a miss, deleted."""
    with pytest.raises(CacheDecodeError):
        decode_state(encode_state(state_at("alice", 2**62)), "alice")
