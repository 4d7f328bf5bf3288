"""The HTTP edge's pieces without a server (issue #15, item 4): which raw paths are not
UTF-8, how a refused character and a JSON value are named, where ``serve`` listens."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from penny_cache.app.edge import undecodable_path
from penny_cache.app.launcher import cannot_listen, listen_description
from penny_cache.app.problems import _json_error
from penny_cache.app.schema import json_kind, refused_character


def _scope(raw: bytes) -> dict[str, Any]:
    return {"type": "http", "raw_path": raw, "path": raw.decode("latin-1")}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/personality/%FF%FE", "user id is not valid UTF-8"),
        (b"/personality/%ED%A0%80", "user id is not valid UTF-8"),  # a surrogate
        (b"/personality/a/dimensions/%C0%AF", "dimension name is not valid UTF-8"),
        (b"/personality/%C3%A9lodie", None),
        (b"/personality/%EF%BF%BD", None),  # UTF-8 for U+FFFD: the route refuses it
        (b"/personality/alice/dimensions/communication_formality", None),
        (b"/healthz%FF", None),  # not a personality route: 404 as before
    ],
)
def test_only_a_personality_path_that_is_not_utf8_is_refused(
    raw: bytes, expected: str | None
) -> None:
    """Used to be: every undecodable byte became U+FFFD, so ``%FF%FE`` and ``%FE%FF``
    were one id. Now: the raw bytes of the id and the dimension name are decoded
    strictly, and the answer names which one is not UTF-8."""
    assert undecodable_path(_scope(raw)) == expected
    assert undecodable_path({"type": "http", "path": "/personality/x"}) is None


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("ok\x00", "U+0000, a control character,"),
        ("\u202eevil", "U+202E, a format character,"),
        ("a\ufffdb", "U+FFFD, the replacement character,"),
        ("a\U0001fffeb", "U+1FFFE, a noncharacter,"),
        ("caf\u00e9 ok", None),
    ],
)
def test_a_refused_character_is_named_by_code_point(user_id: str, expected: str | None) -> None:
    """Used to be: the 422 quoted the id's regex. Now: the first refused character is
    named by code point and kind."""
    assert refused_character(user_id) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "true"), (False, "false"), (None, "null"), ([], "an array"), ({}, "an object")],
)
def test_json_kinds_are_named_in_json_words(value: object, kind: str) -> None:
    """What a wrong ``value`` was, as a client wrote it (true, not bool)."""
    assert json_kind(value) == kind


def test_json_errors_count_lines_and_columns_from_one() -> None:
    """Used to be: "body.9: JSON decode error". Now: line and column, from 1."""
    error = {"loc": ("body", 12), "ctx": {"error": "Expecting value"}}
    assert _json_error(error, '{\n  "value": }') == (
        "body is not valid JSON: Expecting value at line 2, column 11"
    )


def test_listen_description_says_what_0000_means() -> None:
    """Used to be: nothing said 0.0.0.0 is every interface. Now: the start line does."""
    assert "every interface" in listen_description("0.0.0.0", 8000)
    assert listen_description("127.0.0.1", 8000) == "127.0.0.1:8000"


def test_cannot_listen_names_a_taken_port() -> None:
    """A port some socket listens on is named; a free one is None."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cannot_listen("127.0.0.1", port) == (
            f"port {port} is already in use on 127.0.0.1: stop its listener or pass --port"
        )
    assert cannot_listen("127.0.0.1", 0) is None


def test_the_check_sees_past_a_root_path() -> None:
    """uvicorn's ``raw_path`` starts with ``--root-path``: the id after it is checked."""
    scope = {"raw_path": b"/penny/personality/%FF", "root_path": "/penny"}
    assert undecodable_path(scope) == "user id is not valid UTF-8"
    assert undecodable_path({**scope, "raw_path": b"/penny/personality/ok"}) is None
