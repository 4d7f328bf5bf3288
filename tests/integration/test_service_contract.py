"""The HTTP contract of issue #16 (items 7 and 9): errors say what happened and no more,
body errors are 422, every status an operation can answer is in the OpenAPI document,
``confidence`` is as strict as ``value``, and -0.0 is stored as 0.0.

In-process (FastAPI TestClient: a keep-alive client over the real app) on a real
redis-server and SQLite, and PostgreSQL where the finding is about the database.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.problems import MAX_BODY_BYTES
from penny_cache.app.service import create_app
from penny_cache.config import Settings
from penny_cache.errors import (
    CacheUnavailableError,
    InvalidInputError,
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
    UnknownDimensionError,
)
from penny_cache.store.database import PersonalityStore

pytestmark = pytest.mark.integration

FORMALITY = "/personality/{user}/dimensions/communication_formality"
SECRET_CONTEXT = "secret-context-4711"
USER = "carol@example.com"
# What a failure's answer must never carry: SQL, the schema, the driver, a parameter.
_LEAKS = ("penny_personality", "INSERT", "SELECT", "UPDATE", "FROM", "psycopg", "sqlalchemy")


def _settings(redis_url: str, database_url: str, namespace: str, **extra: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        namespace=namespace,
        stats_flush_interval=0.05,
        **extra,
    )


@pytest.fixture
def client(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(redis_url, sqlite_url, namespace))) as test_client:
        yield test_client


def _history_rows(database_url: str, user: str = "alice") -> list[Any]:
    store = PersonalityStore(database_url)
    try:
        return store.history(user, None, 30)
    finally:
        store.close()


def _assert_says_no_more(text: str, *words: str) -> None:
    for leak in (*_LEAKS, SECRET_CONTEXT):  # SQL keywords as SQL writes them
        assert leak not in text, (leak, text)
    for word in words:
        assert word.lower() not in text.lower(), (word, text)


# -- item 7: errors say what happened and no more -------------------------------------


def test_a_statement_failure_on_postgresql_is_a_500_with_an_id_and_no_sql(
    redis_url: str, postgres_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Used to be: a StoreError that was not about availability answered 503 "the
    database is unavailable: ..." with the statement and its bound parameters, a user's
    ``context`` included. Now: a 500 whose body is a plain sentence and an 8-hex-digit
    error_id, naming no table, statement, parameter, host or port; the server's log line
    carries the same id and the full exception."""
    with TestClient(create_app(_settings(redis_url, postgres_url, namespace))) as client:
        assert client.get(f"/personality/{USER}").status_code == 200  # the tables exist
        engine = sa.create_engine(postgres_url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION penny_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER penny_refuse BEFORE INSERT ON penny_personality_history "
                    "FOR EACH ROW EXECUTE FUNCTION penny_refuse()"
                )
            )
        engine.dispose()
        with caplog.at_level(logging.ERROR, logger="penny_cache"):
            put = client.put(
                FORMALITY.format(user=USER), json={"value": 0.9, "context": SECRET_CONTEXT}
            )
    assert put.status_code == 500, put.text
    body = put.json()
    assert set(body) == {"detail", "error_id"}
    assert re.fullmatch(r"[0-9a-f]{8}", body["error_id"])
    _assert_says_no_more(put.text, "127.0.0.1", "5432", "postgres", "refused by the test", USER)
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    logged_text = str(logged[0].exc_info[1])
    assert "refused by the test" in logged_text
    assert SECRET_CONTEXT not in logged_text and USER not in logged_text  # parameters hidden
    assert "/personality/{user_id}" in logged[0].getMessage()  # the route, not the id


def test_an_unreachable_postgresql_is_a_503_naming_no_host_or_port(
    redis_url: str, namespace: str
) -> None:
    """Used to be: the 503 quoted the driver ("connection to server at "127.0.0.1", port
    1 failed: ..."). Now: the 503 says the database is unavailable and to retry after
    Retry-After, naming no host, port, user or database, on a read and on a write."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere?connect_timeout=1"
    with TestClient(create_app(_settings(redis_url, url, namespace))) as client:
        answers = [
            client.get("/personality/alice"),
            client.put(FORMALITY.format(user="alice"), json={"value": 0.5}),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert answer.json() == {
            "detail": "the database is unavailable; retry after Retry-After seconds"
        }
        _assert_says_no_more(answer.text, "127.0.0.1", "nobody", "nowhere", "port")
        assert not any(ch.isdigit() for ch in answer.text)  # no port, address or errno


def test_a_missing_table_on_sqlite_is_answered_without_naming_it(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to be: on SQLite the 503 said "no such table: penny_personality_history".
    Now: the answer (503 or a 500 with an error_id) names no table and quotes no SQL."""
    with TestClient(create_app(_settings(redis_url, sqlite_url, namespace))) as client:
        assert client.get("/personality/alice").status_code == 200
        engine = sa.create_engine(sqlite_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE penny_personality_history"))
        engine.dispose()
        put = client.put(
            FORMALITY.format(user="alice"), json={"value": 0.9, "context": SECRET_CONTEXT}
        )
    assert put.status_code in (500, 503), put.text
    if put.status_code == 500:
        assert re.fullmatch(r"[0-9a-f]{8}", put.json()["error_id"])
    database_file = sqlite_url.rsplit("/", 1)[1]
    _assert_says_no_more(put.text, "no such table", "history", "sqlite", database_file)


def test_a_strict_refusal_names_no_redis_host_or_port(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """Used to be: strict mode's 503 quoted redis-py ("Error 111 connecting to
    127.0.0.1:<port>"). Now: it says strict write mode refused the update and to retry,
    with Retry-After, and names no host or port."""
    settings = _settings(own_redis.url, sqlite_url, namespace, write_mode="strict")
    port = own_redis.url.rsplit(":", 1)[1].split("/")[0]
    with TestClient(create_app(settings)) as client:
        assert client.get("/personality/ann").status_code == 200
        own_redis.stop()
        put = client.put(FORMALITY.format(user="ann"), json={"value": 0.9})
    assert put.status_code == 503, put.text
    assert "strict write mode refused" in put.json()["detail"]
    assert "Retry-After" in put.headers
    _assert_says_no_more(put.text, "127.0.0.1", "localhost", port, "connect")


# -- item 9: body errors are 422; confidence is strict; -0.0 is 0.0 -------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"value": "\xff\xfe"}',
        b'{"value": ' + b"1" * 5000 + b"}",
        b'{"value": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["not-utf8", "5000-digits", "nested-5000"],
)
def test_an_unreadable_body_is_422_not_400(client: TestClient, sqlite_url: str, raw: bytes) -> None:
    """Used to be: a non-UTF-8 body, a 5,000-digit number or deeply nested JSON answered
    400 "There was an error parsing the body" while the README says 422. Now: 422 with a
    plain ``detail`` naming the body, and nothing is written."""
    assert len(raw) <= MAX_BODY_BYTES
    response = client.put(
        FORMALITY.format(user="alice"),
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("body: ")
    assert _history_rows(sqlite_url) == []


@pytest.mark.parametrize("confidence", [True, False, "0.5", "1", [0.5], {"x": 1}])
def test_confidence_takes_a_json_number_only(
    client: TestClient, sqlite_url: str, confidence: object
) -> None:
    """Used to be: ``confidence: true`` was taken as 1.0 and ``"0.5"`` as 0.5 while
    ``value`` refused both. Now: 422 with a plain message ("must be a JSON number"),
    and nothing is written."""
    response = client.put(
        FORMALITY.format(user="alice"), json={"value": 0.5, "confidence": confidence}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        f"body.confidence: must be a JSON number in [0, 1], not {type(confidence).__name__}"
    )
    assert _history_rows(sqlite_url) == []


def _positive(number: float) -> bool:
    return number == 0.0 and math.copysign(1.0, number) == 1.0


def test_negative_zero_is_stored_as_zero_over_http(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to be: a value and confidence of -0.0 were committed and served as -0.0.
    Now: the answer, a later GET on another worker (Redis), and the SQL history all
    say 0.0."""
    settings = _settings(redis_url, sqlite_url, namespace)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        put = first.put(
            FORMALITY.format(user="alice"),
            content=b'{"value": -0.0, "confidence": -0.0}',
            headers={"Content-Type": "application/json"},
        )
        assert put.status_code == 200, put.text
        got = second.get("/personality/alice", params={"min_version": put.json()["version"]})
    for answer in (put, got):
        assert b":-0" not in answer.content
        assert answer.json()["dimensions"]["communication_formality"] == {
            "value": 0.0,
            "confidence": 0.0,
        }
    (record,) = _history_rows(sqlite_url)
    assert _positive(record.new_value)


# -- item 9: every status an operation can answer is documented ------------------------

_PATH_VALUES = {"user_id": "alice", "name": "communication_formality"}
# What each tracker call can raise past the tracker (reads never raise Redis trouble,
# an unknown dimension or a lost race; an update in strict mode may raise the first).
_READ_RAISES = [InvalidInputError("x"), StoreUnavailableError("x"), StoreError("x"), RuntimeError()]
_RAISES = {
    "get_current_personality_state": _READ_RAISES,
    "update_personality_dimension": [
        *_READ_RAISES,
        UnknownDimensionError("x"),
        StoreConflictError("x"),
        CacheUnavailableError("x"),
    ],
}


def _call(client: TestClient, method: str, path: str, **kwargs: Any) -> int:
    body = kwargs.pop("body", b'{"value": 0.5}' if method == "PUT" else None)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return client.request(method, path, content=body, headers=headers, **kwargs).status_code


def _bad_bodies(client: TestClient, method: str, path: str) -> set[int]:
    """What a body route answers to bodies it cannot take, and to a body without a JSON
    Content-Type (415: not JSON, or none at all)."""
    bodies = [b"\xff", b'{"value": "loud"}', b'{"value": true}', b'{"value": 0.5 "x"}']
    seen = {_call(client, method, path, body=body) for body in bodies}
    for content_type in ("text/plain", ""):
        seen.add(_call(client, method, path, headers={"Content-Type": content_type}))
    return seen


def _provoked(client: TestClient, app: FastAPI, route: APIRoute, method: str) -> set[int]:
    """Every status this operation answered: plain, with a bad parameter or body, over
    the body limit, and with each exception the handlers map raised underneath."""
    path = route.path.format(**_PATH_VALUES)
    seen = {_call(client, method, path)}
    seen.add(_call(client, method, path, headers={"Content-Length": str(MAX_BODY_BYTES + 1)}))
    if "{user_id}" in route.path:
        bad = [  # a refused character; not UTF-8
            route.path.format(**{**_PATH_VALUES, "user_id": user_id})
            for user_id in ("a\u200bb", "%FF%FE")
        ]
        seen |= {_call(client, method, bad_path) for bad_path in bad}
    if any(param.name == "min_version" for param in route.dependant.query_params):
        seen.add(_call(client, method, path, params={"min_version": "-1"}))
    if route.body_field is not None:
        seen.add(_call(client, method, path, body=b"\xff"))
        seen.add(_call(client, method, path, body=b'{"value": "loud"}'))
        seen.add(_call(client, method, path, body=b'{"value": true}'))
        seen.add(_call(client, method, path, body=b'{"value": 0.5 "x"}'))
        for content_type in ("text/plain", ""):  # 415: not JSON, or none at all
            seen.add(_call(client, method, path, headers={"Content-Type": content_type}))
    tracker = app.state.service.tracker
    for method_name, raised in _RAISES.items():
        for exc in raised:

            async def raising(*_: Any, exc: Exception = exc, **__: Any) -> Any:
                raise exc

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(tracker, method_name, raising)
                seen.add(_call(client, method, path))
    for exc in (StoreUnavailableError("x"), StoreError("x")):  # what /readyz's ping meets

        def ping(exc: Exception = exc) -> None:
            raise exc

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tracker.store, "ping", ping)
            seen.add(_call(client, method, path))
    return seen


def test_every_status_an_operation_answers_is_in_the_openapi_document(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to be: 400 (an unparseable body) and 413 (the body limit) could be answered
    but were in no operation of the OpenAPI document (and, since issue #15, 415 for a
    body without a JSON Content-Type). Now: for every route and method, each status it
    answers (plain, a bad parameter, a path that is not UTF-8, a bad body or
    Content-Type, over the body limit, each exception the handlers map) is declared
    for that operation, an error with a JSON
    schema (``Problem``, or ``ServerProblem`` with its error_id for 500), and no
    operation answers 400."""
    settings = _settings(redis_url, sqlite_url, namespace, near_cache=False)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        document = client.get("/openapi.json").json()
        routes = [route for route in app.routes if isinstance(route, APIRoute)]
        assert len(routes) >= 5
        seen_anywhere: set[int] = set()
        for route in routes:
            for method in sorted(route.methods or ()):
                statuses = _provoked(client, app, route, method)
                seen_anywhere |= statuses
                declared = document["paths"][route.path][method.lower()]["responses"]
                assert 400 not in statuses, (route.path, method)
                for status in statuses:
                    assert str(status) in declared, (route.path, method, status, statuses)
                    if status >= 400 and (route.path, status) != ("/readyz", 503):
                        schema = declared[str(status)]["content"]["application/json"]
                        assert "$ref" in schema["schema"], (route.path, method, status)
    assert {413, 415, 422, 503} <= seen_anywhere  # the cases above provoke what they mean to
    assert document["components"]["schemas"]["ServerProblem"]["required"] == [
        "detail",
        "error_id",
    ]
