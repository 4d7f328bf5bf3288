"""Optional authenticity of what penny_cache puts in Redis: entries and invalidation messages.

Without it, whoever holds the service's Redis credential can serve any state: entries
are validated, never authenticated. With ``Settings.value_key`` (``PENNY_VALUE_KEY``) set,
every entry and every invalidation message carries an HMAC-SHA256 (as cashews signs its
values), and one that does not verify is a miss (entries: deleted, refilled from SQL) or
a flush (messages: the listener treats it as malformed). Without the key a ``Signer`` is
the identity: the same bytes on the wire as an unsigned release, at the same speed.

Entry wire form: the unsigned bytes, then a fixed-length suffix, so the envelope's prefix
(``codec.version_prefix``, where the Lua compare-and-set reads the version) is untouched::

    <unsigned bytes>~<key id: 8 hex><HMAC: 64 hex>

The MAC covers the namespace and the *key name* as well as the bytes: an entry copied under
another user's key (or namespace, or store scope) does not verify. ``scripts._CAS`` finds
a strict-mode tombstone's marker in front of the suffix.

Message wire form: the encoded user (percent-encoded, so never a raw ``|``) gains
``|<key id><HMAC>`` over the namespace, the version field and the user. The sequence number
and the publish time are chosen inside the Lua script and are not covered: a replayed
message can only make a listener drop an entry again, or see a gap and flush. A ``flush``
message needs no signature: every message that fails verification is a flush already.

Rotation: sign with ``value_key``; verify with it or ``value_key_previous``. The key id (a
hash of the key, not the key) says which one signed, so verifying costs one HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from penny_cache.codec import MAX_ENTRY_BYTES
from penny_cache.config import Settings
from penny_cache.errors import CacheIntegrityError

__all__ = [
    "KEY_ID_CHARS",
    "MAC_CHARS",
    "MAX_STORED_BYTES",
    "SIGNATURE_BYTES",
    "SIGNATURE_MARK",
    "UNSIGNED",
    "Signer",
    "key_id",
]

SIGNATURE_MARK: Final = b"~"
KEY_ID_CHARS: Final = 8
MAC_CHARS: Final = 64
SIGNATURE_BYTES: Final = len(SIGNATURE_MARK) + KEY_ID_CHARS + MAC_CHARS
# The most an entry may occupy in Redis: the envelope cap and a signature. Redis-side
# guards (``penny_cache.redis.lua``) drop anything longer unread.
MAX_STORED_BYTES: Final = MAX_ENTRY_BYTES + SIGNATURE_BYTES
_MESSAGE_TAG_CHARS: Final = KEY_ID_CHARS + MAC_CHARS
_MARK: Final = SIGNATURE_MARK[0]
_ENTRY_DOMAIN: Final = b"penny-cache entry v1\x00"
_MESSAGE_DOMAIN: Final = b"penny-cache message v1\x00"
_BLOCK: Final = 64  # SHA-256's block size


def key_id(secret: bytes) -> bytes:
    """A short public name of a key: which key signed, without saying anything of it."""
    return hashlib.sha256(b"penny-cache key id\x00" + secret).hexdigest()[:KEY_ID_CHARS].encode()


class _Mac:
    """HMAC-SHA256 (RFC 2104) with its two padded-key states computed once: ``hmac.digest``
    sets them up on every call, which costs as much again as the hashing (measured in
    ``bench.bench_sign``). Same output as ``hmac.digest(secret, data, "sha256")``."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > _BLOCK:
            secret = hashlib.sha256(secret).digest()
        padded = secret.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def hex(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class Signer:
    """Seals and opens entries and tags messages of one namespace (see the module)."""

    __slots__ = ("_domain", "_key", "_key_id", "_keys", "_message_domain")

    def __init__(
        self, key: str | None = None, previous: str | None = None, *, namespace: str = "penny"
    ) -> None:
        secret = key.encode() if key else None
        self._key_id = key_id(secret) if secret else b""
        self._key = _Mac(secret) if secret else None
        self._keys: dict[bytes, _Mac] = {}
        for each in (previous.encode() if previous else None, secret):
            if each:
                self._keys[key_id(each)] = _Mac(each)
        scope = namespace.encode() + b"\x00"
        self._domain = _ENTRY_DOMAIN + scope
        self._message_domain = _MESSAGE_DOMAIN + scope

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        return cls(settings.value_key, settings.value_key_previous, namespace=settings.namespace)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never the key
        return f"Signer(enabled={self.enabled}, key_id={self._key_id.decode() or None})"

    # -- entries --------------------------------------------------------------------------

    def seal(self, key: str, payload: bytes) -> bytes:
        """``payload`` as stored under ``key``: signed when a key is set, else unchanged."""
        if self._key is None:
            return payload
        mac = self._key.hex(self._entry_input(key, payload))
        return b"%s~%s%s" % (payload, self._key_id, mac.encode())

    def open(self, key: str, payload: bytes) -> bytes:
        """The unsigned bytes of an entry read from ``key``, or ``CacheIntegrityError``
        (not signed, signed by an unknown key, or signed for another key). Without a key
        the payload as it is: an unsigned worker cannot tell, and never could."""
        if self._key is None:
            return payload
        if len(payload) <= SIGNATURE_BYTES or payload[-SIGNATURE_BYTES] != _MARK:
            raise CacheIntegrityError("entry is not signed")
        body = payload[:-SIGNATURE_BYTES]
        secret = self._keys.get(payload[-_MESSAGE_TAG_CHARS:-MAC_CHARS])
        if secret is None:
            raise CacheIntegrityError("entry is signed by an unknown key")
        mac = secret.hex(self._entry_input(key, body)).encode()
        if not hmac.compare_digest(mac, payload[-MAC_CHARS:]):
            raise CacheIntegrityError("entry signature does not verify")
        return body

    def _entry_input(self, key: str, body: bytes) -> bytes:
        return b"%s%s\x00%s" % (self._domain, key.encode(), body)

    # -- invalidation messages ------------------------------------------------------------

    def tag(self, version: str, encoded_user: str) -> str:
        """The user field of a message announcing ``version`` (``*``) of ``encoded_user``."""
        if self._key is None:
            return encoded_user
        return f"{encoded_user}|{self._message_tag(self._key, self._key_id, version, encoded_user)}"

    def untag(self, version: str, user_field: str) -> str:
        """The encoded user of a received message's user field, or ``CacheIntegrityError``.
        Without a key, a tag (from a signed worker, during a roll) is dropped unchecked:
        it must not be read as part of the user id."""
        encoded_user, bar, tag = user_field.partition("|")
        if self._key is None:
            return encoded_user
        if not bar or len(tag) != _MESSAGE_TAG_CHARS:
            raise CacheIntegrityError("message is not signed")
        kid = tag[:KEY_ID_CHARS].encode()
        secret = self._keys.get(kid)
        if secret is None:
            raise CacheIntegrityError("message is signed by an unknown key")
        expected = self._message_tag(secret, kid, version, encoded_user)
        if not hmac.compare_digest(expected.encode(), tag.encode()):
            raise CacheIntegrityError("message signature does not verify")
        return encoded_user

    def _message_tag(self, secret: _Mac, kid: bytes, version: str, encoded_user: str) -> str:
        data = b"%s%s\x00%s" % (self._message_domain, version.encode(), encoded_user.encode())
        return kid.decode() + secret.hex(data)


UNSIGNED: Final = Signer()
