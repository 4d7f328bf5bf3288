"""Log ids are a keyed hash (issue #16, item 8), and the HTTP user-id pattern refuses
every character the library refuses."""

from __future__ import annotations

import hashlib
import logging
import math
import sys

import fakeredis
import pytest

from penny_cache.app.schema import acceptable_user_id
from penny_cache.cache import PersonalityCache
from penny_cache.catalogue import PENNY
from penny_cache.codec import encode_state
from penny_cache.config import Settings
from penny_cache.errors import InvalidUserIdError
from penny_cache.keys import LogIds
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import default_state, validate_confidence, validate_user_id
from penny_cache.wiring import sync_parts
from tests.unit.test_cache import T0

pytestmark = pytest.mark.security

EMAIL = "alice@example.com"


def _unkeyed(user_id: str) -> str:
    """What log_id used to write: BLAKE2s, 48 bits, no key."""
    return "user#" + hashlib.blake2s(user_id.encode(), digest_size=6).hexdigest()


def test_the_log_id_of_an_email_is_not_the_unkeyed_hash() -> None:
    """Used to be: ``log_id`` was an unkeyed 48-bit hash, so hashing a list of candidate
    emails recovered the id from a log line. Now: the id is an HMAC under a key; without
    the key the candidate's hash does not match."""
    log_id = LogIds(b"deployment secret")(EMAIL)
    assert log_id != _unkeyed(EMAIL)
    assert log_id.startswith("user#") and len(log_id) == len("user#") + 12
    assert EMAIL not in log_id and "alice" not in log_id


def test_log_ids_differ_between_keys_and_are_stable_for_one() -> None:
    """Two deployments' keys give two log ids; one key always gives the same one, in any
    object built with it (lines from every worker of a deployment still match)."""
    first, second = LogIds(b"key one"), LogIds(b"key two")
    assert first(EMAIL) != second(EMAIL)
    assert first(EMAIL) == first(EMAIL) == LogIds(b"key one")(EMAIL)
    assert first(EMAIL) != first("bob@example.com")


def test_the_key_comes_from_settings() -> None:
    """PENNY_LOG_ID_KEY decides; without it a key derived from PENNY_VALUE_KEY (not the
    value key itself); without either, this process's random key."""
    assert LogIds.for_settings(Settings(log_id_key="k1")) == LogIds(b"k1")
    assert LogIds.for_settings(Settings(log_id_key="k1", value_key="v")) == LogIds(b"k1")
    derived = LogIds.for_settings(Settings(value_key="v"))
    assert derived == LogIds.for_settings(Settings(value_key="v"))
    assert derived not in (LogIds(b"v"), LogIds.per_process())
    assert LogIds.for_settings(Settings()) == LogIds.per_process()
    assert "k1" not in repr(LogIds(b"k1"))


def test_wiring_hands_the_settings_log_ids_to_the_cache(
    fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The policy options built from settings carry that key's ``LogIds``; a cache given
    them names a user in its log lines by that keyed id."""
    _, options = sync_parts(Settings(log_id_key="k1"), stats_flush_interval=None)
    assert options["log_ids"] == LogIds(b"k1")
    with PersonalityCache(
        RedisBackend(fake_redis),
        namespace="logids",
        stats_flush_interval=None,
        log_ids=LogIds(b"k1"),
    ) as cache:
        payload = encode_state(default_state(EMAIL, T0)).replace(b'"value":0.5', b'"value":7', 1)
        fake_redis.set(cache.keys.state(EMAIL), payload)
        with caplog.at_level(logging.WARNING, logger="penny_cache"):
            assert cache.get(EMAIL) is None
    assert LogIds(b"k1")(EMAIL) in caplog.text
    assert _unkeyed(EMAIL) not in caplog.text and EMAIL not in caplog.text


@pytest.mark.parametrize(
    ("user_id", "words"),
    [
        ("rene\u0301", "NFC"),
        ("\u212b", "NFC"),  # ANGSTROM SIGN: NFC is U+00C5
        ("a\u200bb", "format"),
        ("a\u202eb", "format"),
        ("\u00ad", "format"),
        ("a\uffffb", "U+FFFF"),
        ("a\ufdefb", "U+FDEF"),
        ("a\U0001fffeb", "U+1FFFE"),
        ("a\ufffdb", "U+FFFD"),
    ],
)
def test_ids_that_alias_or_hide_are_refused(user_id: str, words: str) -> None:
    """Used to be accepted; now InvalidUserIdError, naming what to do or the code point."""
    with pytest.raises(InvalidUserIdError) as caught:
        validate_user_id(user_id)
    assert words in str(caught.value)


def test_nfc_ids_with_combining_marks_are_accepted() -> None:
    """NFC is not "no combining marks": ids already in NFC pass unchanged."""
    for user_id in ("ren\u00e9", "q\u0301", "\u0928\u092e\u0938\u094d\u0924\u0947", "\uac00"):
        assert validate_user_id(user_id) == user_id


def test_the_http_pattern_refuses_every_character_the_library_refuses() -> None:
    """The OpenAPI pattern lists control and format characters, noncharacters and U+FFFD
    by range: every code point the library refuses as a single character (other than
    surrogates, which no URL can carry, and non-NFC singletons, which no pattern says)
    the pattern refuses too, so the document does not promise what the library refuses."""
    missed = []
    for point in range(sys.maxunicode + 1):
        ch = chr(point)
        if 0xD800 <= point <= 0xDFFF:
            continue
        try:
            validate_user_id(ch)
        except InvalidUserIdError as exc:
            if "NFC" not in str(exc) and acceptable_user_id(ch):
                missed.append(f"U+{point:04X}")
    assert missed == []


def test_negative_zero_is_zero_where_the_library_validates() -> None:
    """Used to be: -0.0 passed through as -0.0. Now the validators return 0.0."""
    value = PENNY.validate_value("communication_formality", -0.0)
    confidence = validate_confidence(-0.0)
    assert confidence is not None
    for number in (value, confidence):
        assert isinstance(number, float) and math.copysign(1.0, number) == 1.0
