"""``penny_cache.signing``: what a value key adds to entries and messages, and what it refuses.

Findings of issue #16 (item 4): values from Redis were validated but not authenticated, so
whoever held the Redis credential could serve any state. These are the pure, no-I/O halves
of the properties; ``tests/integration/test_signing_real.py`` shows them on a redis-server.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import pytest

from penny_cache.codec import Entry, encode_state, encode_tombstone, is_tombstone
from penny_cache.config import Settings
from penny_cache.errors import CacheIntegrityError
from penny_cache.keys import KeySchema, encode_user_id, invalidation_shard, shard_channel
from penny_cache.policy.ops import CacheOp, DropPublish, InvalidatePublish, Tombstone, WritePublish
from penny_cache.redis import scripts
from penny_cache.redis.commands import Call, ClusterCommands, Commands, Eval
from penny_cache.redis.listener import Message, format_message, parse_message
from penny_cache.signing import SIGNATURE_BYTES, UNSIGNED, Signer
from penny_cache.state import default_state

KEY = "unit-test-value-key-0123456789abcdef"
OLD = "unit-test-value-key-the-previous-one!"
KEYS = KeySchema("penny")
STATE = default_state("alice", datetime(2026, 1, 1, tzinfo=UTC))


def test_without_a_key_nothing_changes() -> None:
    """Without ``PENNY_VALUE_KEY`` the signer is the identity (the same object back: no
    copy, no HMAC), so the wire format and the speed are those of an unsigned release."""
    payload = encode_state(STATE)
    signer = Signer.from_settings(Settings())
    assert not signer.enabled
    assert signer.seal(KEYS.state("alice"), payload) is payload
    assert signer.open(KEYS.state("alice"), payload) is payload
    assert signer.tag("3", "alice") == "alice"
    assert parse_message(format_message(5, 3, "alice")) == Message(5, "alice", 3)


def test_a_signed_entry_opens_only_under_its_own_key() -> None:
    """Used to: an entry was taken as valid wherever it was found. Now the MAC covers the
    key name: the same bytes copied to another user's key (or another store scope or
    namespace) do not verify, and neither does any changed byte."""
    signer = Signer(KEY)
    key = KEYS.state("alice")
    sealed = signer.seal(key, encode_state(STATE))
    assert len(sealed) == len(encode_state(STATE)) + SIGNATURE_BYTES
    assert signer.open(key, sealed) == encode_state(STATE)
    for other_key in (
        KEYS.state("bob"),
        KEYS.with_scope("other-db").state("alice"),
        KeySchema("other").state("alice"),
    ):
        with pytest.raises(CacheIntegrityError):
            signer.open(other_key, sealed)
    with pytest.raises(CacheIntegrityError):
        Signer(KEY, namespace="other").open(key, sealed)
    tampered = sealed.replace(b'"version":0', b'"version":9')
    with pytest.raises(CacheIntegrityError):
        signer.open(key, tampered)


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda body: body, id="unsigned"),
        pytest.param(lambda body: body + b"~" + b"0" * 72, id="unknown-key-id"),
        pytest.param(lambda body: Signer(KEY).seal("x", body)[:-64] + b"0" * 64, id="wrong-mac"),
        pytest.param(lambda body: Signer("another-key-" * 3).seal("k", body), id="other-key"),
    ],
)
def test_forged_entries_do_not_open(forged: object) -> None:
    """Used to: valid JSON of the right user and version was served. Now an entry with no
    signature, an unknown key id, or a MAC that does not match raises
    ``CacheIntegrityError`` (the reads treat it as a miss and delete it)."""
    body = encode_state(STATE)
    assert callable(forged)
    with pytest.raises(CacheIntegrityError):
        Signer(KEY).open(KEYS.state("alice"), forged(body))


def test_rotation_verifies_the_previous_key_and_signs_with_the_new() -> None:
    """During a key rotation an entry signed with the previous key is still a hit; one
    signed with a key that is neither current nor previous is not. New entries are signed
    with the current key only."""
    key = KEYS.state("alice")
    body = encode_state(STATE)
    by_old = Signer(OLD).seal(key, body)
    rotating = Signer(KEY, OLD)
    assert rotating.open(key, by_old) == body
    assert rotating.seal(key, body) == Signer(KEY).seal(key, body)
    with pytest.raises(CacheIntegrityError):
        Signer(KEY).open(key, by_old)  # the previous key dropped: a miss
    with pytest.raises(CacheIntegrityError):
        rotating.open(key, Signer("a-third-key-nobody-configured!!").seal(key, body))


def test_a_signed_tombstone_keeps_the_marker_lua_reads() -> None:
    """The compare-and-set (``scripts._CAS``) lets a committed version replace its own
    tombstone by finding ``"tombstone":1}`` at the end, or just before a signature of
    ``SIGNATURE_BYTES`` (``lua.VERSION`` reads the last 14 + ``SIGNATURE_BYTES``): the
    offsets written in Lua must match the suffix's length, and
    the version prefix must stay where Lua reads it."""
    sealed = Signer(KEY).seal(KEYS.state("alice"), encode_tombstone(7))
    assert sealed[-SIGNATURE_BYTES : -SIGNATURE_BYTES + 1] == b"~"
    assert sealed[-SIGNATURE_BYTES - 14 : -SIGNATURE_BYTES] == b'"tombstone":1}'
    assert sealed.startswith(encode_tombstone(7)[:-15])
    lua = scripts.FILL.source
    assert f"redis.call('GETRANGE', key, -{SIGNATURE_BYTES + 14}, -1)" in lua
    assert f"string.sub(tail, -{SIGNATURE_BYTES}, -{SIGNATURE_BYTES}) == '~'" in lua
    assert not is_tombstone(sealed)  # readers open (verify) first, then look
    assert is_tombstone(Signer(KEY).open(KEYS.state("alice"), sealed))


def test_messages_are_tagged_and_checked() -> None:
    """Used to: any well-formed message on the channel was applied as a precise
    invalidation. Now, with a key, a user's message must carry a tag over the namespace,
    version field and user; an untagged, mis-tagged or replayed-for-another-version one
    raises ``CacheIntegrityError`` (the listener flushes). A flush needs no tag."""
    signer = Signer(KEY)
    user = encode_user_id("al|ce")
    tagged = signer.tag("3", user)
    assert parse_message(format_message(5, 3, tagged), signer) == Message(5, "al|ce", 3)
    assert parse_message(format_message(6, "*", signer.tag("*", user)), signer).version is None
    for forged in (
        format_message(5, 3, user),  # unsigned
        format_message(5, 4, tagged),  # the tag of another version
        format_message(5, 3, user + "|" + signer.tag("3", "bob").partition("|")[2]),
        format_message(5, 3, Signer(KEY, namespace="other").tag("3", user)),
    ):
        with pytest.raises((CacheIntegrityError, ValueError)):
            parse_message(forged, signer)
    assert parse_message(b"9|flush|5|", signer) == Message(9, None, None, 5)
    # rotation: a message tagged with the previous key still verifies
    assert parse_message(format_message(7, 3, Signer(OLD).tag("3", user)), Signer(KEY, OLD))


def test_an_unsigned_listener_reads_a_tagged_message_as_its_user() -> None:
    """While a fleet turns the key on, unsigned listeners receive tagged messages: the tag
    must not be read as part of the user id (that would invalidate a user who does not
    exist and keep the real one's stale copy). Encoded ids never hold a raw ``|``."""
    tagged = Signer(KEY).tag("3", encode_user_id("alice"))
    assert parse_message(format_message(5, 3, tagged), UNSIGNED) == Message(5, "alice", 3)


def test_the_signer_never_shows_its_key() -> None:
    """A signer in a log line or a traceback names the key id, never the key."""
    assert KEY not in repr(Signer(KEY, OLD)) and OLD not in repr(Signer(KEY, OLD))


@pytest.mark.parametrize("secret", [KEY, "k" * 64, "a-key-longer-than-one-block-" * 4])
def test_the_precomputed_mac_is_hmac_sha256(secret: str) -> None:
    """The signer keeps HMAC's two padded-key states instead of calling ``hmac.digest``
    (which rebuilds them on every call, doubling a verify's cost): the MAC must still be
    exactly HMAC-SHA256, for keys shorter than, equal to and longer than a block."""
    key = KEYS.state("alice")
    body = encode_state(STATE)
    sealed = Signer(secret).seal(key, body)
    data = b"penny-cache entry v1\x00penny\x00" + key.encode() + b"\x00" + body
    assert sealed[-64:] == hmac.new(secret.encode(), data, hashlib.sha256).hexdigest().encode()


def _publish_args(commands: Commands, op: CacheOp) -> list[list[Any]]:
    """The argument lists of every script or call a publishing plan sends."""
    plan, sent, answer = commands.plan(op), [], None
    try:
        while True:
            step = plan.send(answer)
            assert isinstance(step, Call | Eval), step
            sent.append(list(step.args))
            answer = [1, 1] if isinstance(step, Eval) and "PUBLISH" in step.script.name else 1
    except StopIteration:
        return sent


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_every_publisher_tags_the_user_and_a_cluster_shards_by_the_bare_user(
    cluster: bool,
) -> None:
    """The publishers (``Commands``, ``ClusterCommands``) add the tag to every message that
    names a user, over the version that message announces. On a Cluster the shard is still
    chosen by the bare user, so a user's messages stay on one channel with or without a
    key (the listener of that shard checks the tag)."""
    signer = Signer(KEY)
    commands = ClusterCommands(signer=signer) if cluster else Commands(signer=signer)
    user, channel = encode_user_id("alice"), KEYS.channel()
    entry = Entry(KEYS.state("alice"), 3, b"{}", 1000)
    cases: list[tuple[CacheOp, str]] = [
        (WritePublish(entry, KEYS.sequence(), channel, user), "3"),
        (Tombstone(entry, KEYS.sequence(), channel, user), "3"),
        (InvalidatePublish(KEYS.state("alice"), KEYS.sequence(), channel, user), "*"),
        (DropPublish(KEYS.state("alice"), channel, user), "*"),
    ]
    for op, version in cases:
        sent = [arg for args in _publish_args(commands, op) for arg in args]
        tagged = signer.tag(version, user)
        assert any(isinstance(a, str) and a.endswith(tagged) for a in sent), (op, sent)
        if cluster:
            shard = shard_channel(channel, invalidation_shard(user))
            assert shard in sent, (op, sent)
