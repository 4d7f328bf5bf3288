"""What the HTTP API accepts and answers: pydantic models for validation and the OpenAPI
schema, and the msgspec encoder that writes the answers.

A personality answer is encoded once, by msgspec, straight from the cached
``PersonalityState`` (a msgspec ``Struct``): building a pydantic model only to have
FastAPI validate and serialise it again cost more than the near-cache read itself.
The pydantic ``PersonalityView`` stays as the documented ``response_model``; a test
checks that every encoded answer validates against it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from fastapi import Path, Query
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from penny_cache.state import PersonalityState
from penny_cache.tracking import MAX_CONTEXT_CHARS

__all__ = [
    "NO_SHARED_TOTALS",
    "CacheBlock",
    "CacheView",
    "DimensionUpdate",
    "MinVersion",
    "PersonalityView",
    "Problem",
    "ServerProblem",
    "UserId",
    "acceptable_user_id",
    "cache_block",
    "encode_personality",
    "json_kind",
    "plain_min_version",
    "refused_character",
]


# What the API accepts as a user id, stated in the OpenAPI schema: at most 64 characters
# (so at most 256 UTF-8 bytes, the library's limit), none of them a control or format
# character (Cc, Cf: zero-width, bidi overrides), a noncharacter or U+FFFD. The library
# (``state.validate_user_id``) also refuses ids not in NFC, which no pattern can say.
_MAX_USER_ID_CHARS: Final = 64
_FORMAT_CHARS: Final = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    r"\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    r"\U000e0020-\U000e007f"
)
_NONCHARACTERS: Final = r"\ufdd0-\ufdef\ufffd-\uffff" + "".join(
    rf"\U{plane:04x}fffe\U{plane:04x}ffff" for plane in range(1, 17)
)
_USER_ID_CHARS: Final = rf"[^\x00-\x1f\x7f-\x9f{_FORMAT_CHARS}{_NONCHARACTERS}]+"
_USER_ID: Final = re.compile(_USER_ID_CHARS)  # fullmatch: Python's $ allows a final \n
UserId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_MAX_USER_ID_CHARS,
        pattern=f"^{_USER_ID_CHARS}$",
        description="the user's id: 1-64 characters in Unicode NFC, no control or format "
        "characters, noncharacters or U+FFFD (refused: 422, never normalised)",
    ),
]
MinVersion = Annotated[
    int | None,
    Query(
        ge=0,
        description="the version a PUT returned (its `version`, or its ETag without the "
        "quotes): the answer is that version or a newer one, from any worker "
        "(read-your-writes across workers); omitted: the current version",
    ),
]
_MIN_VERSION: Final = b"min_version="


def plain_min_version(query: bytes) -> int | None:
    """0 for no query, N for exactly ``min_version=N`` (digits), else None: anything
    else (a bad value, other parameters) goes to the route, which validates it."""
    if not query:
        return 0
    digits = query[len(_MIN_VERSION) :]
    if query.startswith(_MIN_VERSION) and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None


def acceptable_user_id(user_id: str) -> bool:
    """What ``UserId`` accepts (and no ``/``: the route's segment). The near-hit path
    calls it on every GET: an ASCII id (the common case) is checked without the regex,
    whose class of ranges costs several microseconds on a 64-character id."""
    if len(user_id) > _MAX_USER_ID_CHARS or "/" in user_id:
        return False
    if user_id.isascii():  # only ASCII's control characters are refused, not space
        return bool(user_id) and user_id.isprintable()
    return _USER_ID.fullmatch(user_id) is not None


def refused_character(user_id: str) -> str | None:
    """The first character ``UserId`` refuses, as its code point and kind ("U+200B, a
    format character"): what to fix, without echoing the id or the pattern."""
    for char in user_id:
        if _USER_ID.fullmatch(char) is None:
            return f"U+{ord(char):04X}, {_kind_of(char)},"
    return None


def _kind_of(char: str) -> str:
    if char == "\ufffd":
        return "the replacement character"
    category = unicodedata.category(char)
    if category == "Cc":
        return "a control character"
    if category == "Cf":
        return "a format character"
    return "a noncharacter"


def json_kind(value: object) -> str:
    """What a decoded JSON value was, in JSON's words ("true", "an array")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    kinds = {type(None): "null", list: "an array", dict: "an object", str: "a string"}
    return kinds.get(type(value), "a number")


def _number_or_string(value: object) -> object:
    """``value`` is a JSON number or string; anything else is refused with one message
    (the handler names what the dimension accepts) rather than a union's three."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number or a string, not {json_kind(value)}")
    return value


def _json_number(value: object) -> object:
    """As strict as ``value``: a JSON number only (true is not 1.0, "0.5" is not 0.5)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a JSON number in [0, 1], not {type(value).__name__}")
    return value


_Confidence = Annotated[
    float, Field(ge=0, le=1, allow_inf_nan=False), BeforeValidator(_json_number)
]


class DimensionUpdate(BaseModel):
    """The body of ``PUT .../dimensions/{name}``."""

    model_config = ConfigDict(extra="forbid")
    value: Annotated[StrictFloat | StrictInt | StrictStr, BeforeValidator(_number_or_string)] = (
        Field(
            description="a number in the dimension's range ([0, 1] for Penny's) for a "
            "continuous dimension, else one of its options"
        )
    )
    confidence: _Confidence | None = Field(
        default=None, description="the new confidence, a JSON number; omitted: unchanged"
    )
    context: Annotated[str, Field(max_length=MAX_CONTEXT_CHARS)] | None = Field(
        default=None, description="what triggered the change (kept in the history)"
    )


class DimensionView(BaseModel):
    value: float | str
    confidence: float


class CacheView(BaseModel):
    """The shared cache's totals across every process on the namespace, as this worker
    last read them (at most once a second, in the background)."""

    hit_rate: float = Field(description="hits / (hits + misses), 0..1")
    hit_rate_percent: str = Field(description='the same as text, e.g. "90.0%"')
    hits: int
    misses: int
    shared: bool = Field(
        description="False: Redis unreadable (this process's counts only), or not read yet"
    )


class PersonalityView(BaseModel):
    user_id: str
    version: int
    updated_at: datetime
    dimensions: dict[str, DimensionView]
    overall_confidence: float
    vocabulary_count: int | None = Field(
        description="not tracked by the personality record: always null (kept for the "
        "original endpoint's shape)"
    )
    cache: CacheView


class Problem(BaseModel):
    detail: str


class ServerProblem(BaseModel):
    """A 500: what to quote when reporting it (the server's log line carries the id)."""

    detail: str
    error_id: str = Field(description="short random hex, also in the server's log line")


# -- the encoder: the same fields, in the same order, as the pydantic models ------------


class _Dimension(msgspec.Struct):
    value: float | str
    confidence: float


class CacheBlock(msgspec.Struct, frozen=True):
    """``CacheView`` as msgspec encodes it."""

    hit_rate: float
    hit_rate_percent: str
    hits: int
    misses: int
    shared: bool


class _Personality(msgspec.Struct):
    user_id: str
    version: int
    updated_at: datetime
    dimensions: dict[str, _Dimension]
    overall_confidence: float
    vocabulary_count: None
    cache: CacheBlock


NO_SHARED_TOTALS: Final = CacheBlock(0.0, f"{0.0:.1%}", 0, 0, shared=False)
_ENCODER: Final = msgspec.json.Encoder()


def cache_block(stats: Mapping[str, Any]) -> CacheBlock:
    """The cache block from ``get_stats()``'s answer."""
    rate = float(stats["hit_rate"])
    return CacheBlock(
        hit_rate=rate,
        hit_rate_percent=f"{rate:.1%}",
        hits=int(stats["hits"]),
        misses=int(stats["misses"]),
        shared=bool(stats["shared"]),
    )


def encode_personality(state: PersonalityState, cache: CacheBlock) -> bytes:
    """The JSON body of a personality answer, in one pass."""
    return _ENCODER.encode(
        _Personality(
            user_id=state.user_id,
            version=state.version,
            updated_at=state.updated_at,
            dimensions={
                name: _Dimension(dim.value, dim.confidence)
                for name, dim in state.dimensions.items()
            },
            overall_confidence=round(state.overall_confidence, 6),
            vocabulary_count=None,
            cache=cache,
        )
    )
