"""The key schema: exact SCAN patterns, proper Cluster hash tags, reversible user encoding."""

from __future__ import annotations

import zlib
from fnmatch import fnmatchcase
from typing import cast

import pytest
from hypothesis import given, settings

from penny_cache.errors import ConfigurationError, InvalidUserIdError
from penny_cache.keys import (
    COUNTER_SHARDS,
    INVALIDATION_SHARDS,
    KEY_SCHEMA,
    UNBOUND_SCOPE,
    KeySchema,
    decode_user_id,
    encode_user_id,
    invalidation_shard,
    shard_channel,
    shard_sequence,
)
from penny_cache.state import MAX_USER_ID_BYTES
from tests.user_ids import valid_user_ids

GLOB_AND_BRACES = set("*?[]{}")
AWKWARD_IDS = [
    "alice",
    "user:*?[]{}",
    "{alice}",
    "}{",
    "a b  c",
    "x:y:z",
    "日本語",
    "\U0001f600 emoji",
    "percent%41",
    "back\\slash",
    "\u2028line-sep",
    "+plus=eq@at~tilde",
]


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_default_layout() -> None:
    """Keys follow the documented v1 layout for namespace 'penny' and the unbound scope."""
    keys = KeySchema("penny")
    assert keys.scope == UNBOUND_SCOPE == "_"
    assert KEY_SCHEMA == "v1"
    assert keys.state("alice") == "penny:v1:_:state:{alice}"
    assert keys.legacy("alice") == "penny:v1:legacy:{penny:v1:legacy}:entry:alice"
    assert keys.legacy_ticket("alice") == "penny:v1:legacy:{penny:v1:legacy}:ticket:alice"
    assert keys.legacy_index() == "penny:v1:legacy:{penny:v1:legacy}:index"
    assert keys.state_pattern() == "penny:v1:_:state:*"
    assert keys.legacy_pattern() == "penny:v1:legacy:*"
    shard = zlib.crc32(b"p1") % COUNTER_SHARDS
    assert keys.counters("p1") == f"{{penny:stats:{shard}}}:v1:counters"
    assert keys.retired_marker("p1") == f"{{penny:stats:{shard}}}:v1:retired:p1"
    assert keys.counters("p1") in keys.all_counters()
    assert len(set(keys.all_counters())) == COUNTER_SHARDS
    assert keys.with_scope("abc").state("alice") == "penny:v1:abc:state:{alice}"


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_keys_carry_one_clean_hash_tag(user_id: str) -> None:
    """Each key has exactly one '{' and one '}', and no glob/brace/colon/space inside the tag."""
    keys = KeySchema("penny", "s1")
    for key in (keys.state(user_id),):
        assert key.count("{") == 1
        assert key.count("}") == 1
        assert key.endswith("}")
        tag = hash_tag(key)
        assert tag == encode_user_id(user_id)
        assert not GLOB_AND_BRACES & set(tag)
        assert ":" not in tag
        assert not any(ch.isspace() for ch in tag)
        assert decode_user_id(tag) == user_id


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_drop_in_keys_share_one_slot_per_namespace(user_id: str) -> None:
    """The drop-in's entry, ticket and index keys carry one hash tag per namespace (its
    scripts touch all three at once), the user's encoded id after it, outside the tag."""
    keys = KeySchema("penny", "s1")
    drop_in = (keys.legacy(user_id), keys.legacy_ticket(user_id), keys.legacy_index())
    assert {hash_tag(key) for key in drop_in} == {"penny:v1:legacy"}
    for key in drop_in:
        assert (key.count("{"), key.count("}")) == (1, 1)
    assert keys.legacy(user_id).endswith(":entry:" + encode_user_id(user_id))
    assert hash_tag(KeySchema("other").legacy(user_id)) == "other:v1:legacy"


@settings(max_examples=200)
@given(valid_user_ids)
def test_encoding_round_trips_and_is_key_safe(user_id: str) -> None:
    """For any valid id, decode(encode(id)) == id and the encoded form is glob- and brace-free."""
    encoded = encode_user_id(user_id)
    assert decode_user_id(encoded) == user_id
    assert not (GLOB_AND_BRACES | {":"}) & set(encoded)
    assert encoded.isascii()
    assert not any(ch.isspace() for ch in encoded)
    key = KeySchema("penny").state(user_id)
    assert (key.count("{"), key.count("}")) == (1, 1)
    assert hash_tag(key) == encoded


@settings(max_examples=100)
@given(valid_user_ids, valid_user_ids)
def test_distinct_ids_give_distinct_keys(first: str, second: str) -> None:
    """The encoding is injective: two different ids never share a key."""
    keys = KeySchema("penny")
    assert (keys.state(first) == keys.state(second)) == (first == second)


@pytest.mark.parametrize("user_id", ["a" * MAX_USER_ID_BYTES, "日" * 85, "\U0001f600" * 64])
def test_longest_ids_give_bounded_keys(user_id: str) -> None:
    """A maximal (256-byte) id encodes to <= 768 chars; its key stays under ~800 chars."""
    assert len(encode_user_id(user_id)) <= 3 * MAX_USER_ID_BYTES
    keys = KeySchema("penny")
    assert len(keys.state(user_id)) < 800
    assert len(keys.legacy(user_id)) < 850  # its hash tag is the namespace's
    widest = KeySchema("n" * 64, "s" * 64)  # the longest namespace and scope allowed
    assert len(widest.state(user_id)) <= 64 + 64 + 3 * MAX_USER_ID_BYTES + 20


def test_namespaces_and_scopes_separate_keys_and_patterns() -> None:
    """Different namespaces or scopes give different keys and different patterns."""
    schemas = [
        KeySchema("penny"),
        KeySchema("penny", "s1"),
        KeySchema("penny", "s2"),
        KeySchema("other"),
        KeySchema("other", "s1"),
    ]
    assert len({k.state("alice") for k in schemas}) == len(schemas)
    assert len({k.state_pattern() for k in schemas}) == len(schemas)
    assert len({k.legacy("alice") for k in schemas}) == 2  # legacy keys ignore the scope
    assert len({k.counters("p1") for k in schemas}) == 2
    assert KeySchema("penny").with_scope("s1") == KeySchema("penny", "s1")


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_state_pattern_matches_only_its_own_scope(user_id: str) -> None:
    """state_pattern() matches its scope's state keys, not other scopes, namespaces or legacy."""
    mine = KeySchema("penny", "s1")
    others = [KeySchema("penny"), KeySchema("penny", "s2"), KeySchema("penny", "s10")]
    others += [KeySchema("penny2", "s1"), KeySchema("pen", "s1")]
    pattern = mine.state_pattern()
    assert fnmatchcase(mine.state(user_id), pattern)
    for other in others:
        assert not fnmatchcase(other.state(user_id), pattern)
        assert not fnmatchcase(mine.state(user_id), other.state_pattern())
    assert not fnmatchcase(mine.legacy(user_id), pattern)
    assert not any(fnmatchcase(key, pattern) for key in mine.all_counters())


@pytest.mark.parametrize("user_id", AWKWARD_IDS)
def test_legacy_pattern_matches_only_legacy_keys(user_id: str) -> None:
    """legacy_pattern() matches legacy keys of its namespace and no state or stats key."""
    keys = KeySchema("penny", "s1")
    pattern = keys.legacy_pattern()
    assert fnmatchcase(keys.legacy(user_id), pattern)
    assert not fnmatchcase(keys.state(user_id), pattern)
    assert not fnmatchcase(KeySchema("penny2").legacy(user_id), pattern)
    assert not any(fnmatchcase(key, pattern) for key in keys.all_counters())


@pytest.mark.parametrize("namespace", ["", "a b", "a:b", "a*", "{a}", "a?", "x" * 65, "é", 5, None])
def test_invalid_namespace_or_scope_raises(namespace: object) -> None:
    """A namespace or scope outside [A-Za-z0-9_.-]{1,64} raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        KeySchema(namespace)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        KeySchema("penny", namespace)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        KeySchema("penny").with_scope(namespace)  # type: ignore[arg-type]


@pytest.mark.parametrize("namespace", ["p", "x" * 64, "Penny_test-1.2"])
def test_valid_namespaces_are_accepted(namespace: str) -> None:
    """Namespaces of 1-64 allowed characters are accepted and used verbatim."""
    assert KeySchema(namespace).state("a") == f"{namespace}:v1:_:state:{{a}}"


@pytest.mark.parametrize(
    "user_id", ["", "a\nb", "\x00", "\ud800", "a" * (MAX_USER_ID_BYTES + 1), 5, None]
)
def test_invalid_user_ids_raise(user_id: object) -> None:
    """An id validate_user_id rejects never becomes a key: InvalidUserIdError instead."""
    keys = KeySchema("penny")
    with pytest.raises(InvalidUserIdError):
        keys.state(user_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidUserIdError):
        keys.legacy(user_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidUserIdError):
        encode_user_id(cast(str, user_id))


@pytest.mark.parametrize("user_id", [["a"], {"a": 1}, bytearray(b"a")])
def test_unhashable_user_ids_raise_invalid_user_id(user_id: object) -> None:
    """Any non-string id, hashable or not, raises InvalidUserIdError from the key schema."""
    with pytest.raises(InvalidUserIdError):
        KeySchema("penny").state(user_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("namespace", ["penny", "other.ns"])
def test_stats_keys_share_one_hash_tag(namespace: str) -> None:
    """A process's counters hash and its retired marker share a hash tag (RETIRE_COUNTERS
    needs one slot), while processes spread over all counter shards (no single hot slot)."""
    keys = KeySchema(namespace, "s1")
    tags = set()
    for process in [f"host-{i}:{i * 7}" for i in range(200)]:
        tag = hash_tag(keys.counters(process))
        assert hash_tag(keys.retired_marker(process)) == tag
        assert tag.startswith(f"{namespace}:stats:")
        assert hash_tag(KeySchema(namespace).counters(process)) == tag  # scope-independent
        tags.add(tag)
    assert len(tags) == COUNTER_SHARDS


def test_sharded_invalidation_keys_share_their_channels_slot() -> None:
    """Each sharded channel and its sequence key share one hash tag (SHARD_PUBLISH touches
    both in one slot), and users spread over every shard."""
    channel = KeySchema("penny").channel()
    for shard in range(INVALIDATION_SHARDS):
        assert hash_tag(shard_channel(channel, shard)) == hash_tag(shard_sequence(channel, shard))
    shards = {invalidation_shard(encode_user_id(f"user-{i}")) for i in range(500)}
    assert shards == set(range(INVALIDATION_SHARDS))


def test_legacy_is_not_a_store_scope() -> None:
    """The scope name 'legacy' is refused: legacy_pattern() would match its state keys."""
    with pytest.raises(ConfigurationError):
        KeySchema("penny", "legacy")
