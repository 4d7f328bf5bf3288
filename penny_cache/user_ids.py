"""What a user id may be: one id per person, safe to key a cache entry and a SQL row.

An id is a string of 1 to ``MAX_USER_ID_BYTES`` UTF-8 bytes, in Unicode NFC, with no
control or format characters (category Cc, Cf), noncharacters or U+FFFD. Spellings that
render alike would split one person's state in two, or let a look-alike pass for
someone else; they are refused, never normalised, since normalising would silently
alias ids already stored under another spelling.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Final

from penny_cache.errors import InvalidUserIdError

__all__ = ["MAX_USER_ID_BYTES", "is_noncharacter", "validate_user_id"]

MAX_USER_ID_BYTES: Final = 256


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is safe to key a cache entry and a SQL row with.

    Memoised for strings: every read validates its id, and ids repeat.
    """
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user id must be a string, got {type(user_id).__name__}")
    return _valid_user_id(user_id)


@lru_cache(maxsize=65536)
def _valid_user_id(user_id: str) -> str:
    if not user_id:
        raise InvalidUserIdError("user id must not be empty")
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidUserIdError("user id is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_USER_ID_BYTES:
        raise InvalidUserIdError(f"user id is {size} bytes; the limit is {MAX_USER_ID_BYTES}")
    if any(unicodedata.category(ch) == "Cc" for ch in user_id):
        raise InvalidUserIdError("user id must not contain control characters")
    _refuse_invisible_and_aliases(user_id)
    return user_id


def is_noncharacter(ch: str) -> bool:
    """U+FDD0..U+FDEF and the last two code points of every plane (U+xFFFE, U+xFFFF)."""
    point = ord(ch)
    return 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE


def _refuse_invisible_and_aliases(user_id: str) -> None:
    """Format characters render as nothing (or reorder what follows), noncharacters and
    U+FFFD stand in for what could not be decoded: each lets two ids look like one."""
    if user_id.isascii():  # no ASCII character is a format or noncharacter; ASCII is NFC
        return
    for ch in user_id:
        if unicodedata.category(ch) == "Cf":
            raise InvalidUserIdError(
                f"user id must not contain format characters (U+{ord(ch):04X}: zero-width, "
                "bidirectional or other invisible characters)"
            )
        if ch == "\ufffd" or is_noncharacter(ch):
            raise InvalidUserIdError(
                f"user id must not contain U+{ord(ch):04X} (a noncharacter or the "
                "replacement character)"
            )
    if not unicodedata.is_normalized("NFC", user_id):
        raise InvalidUserIdError(
            "user id is not in Unicode NFC: normalise it first "
            "(unicodedata.normalize('NFC', user_id)) so one person has one id"
        )
