"""What the HTTP service checks before routing, and the pages it serves to people.

Starlette decodes a percent-encoded path with replacement characters, so ``%FF%FE``,
``%FE%FF`` and ``%EF%BF%BD%EF%BF%BD`` all became the same user id ``"\\ufffd\\ufffd"``:
three clients, one record. The raw bytes are checked here, before any route sees the
decoded text. FastAPI reads a body sent without a JSON Content-Type as bytes and answers
"Input should be a valid dictionary"; a body route here answers 415 instead, naming
the header to send.

The landing page and ``/docs`` are for a person with a browser: ``/docs`` loads Swagger
UI from the service itself (the assets the ``fastapi-offline`` package ships), so it
works on a machine with no route to a CDN.
"""

from __future__ import annotations

import email.message
import html
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse
from starlette.routing import Match

__all__ = [
    "ASSETS_URL",
    "JSON_REQUIRED",
    "install_pages",
    "needs_json_content_type",
    "undecodable_path",
]

ASSETS_URL: Final = "/static/docs"
JSON_REQUIRED: Final = "send Content-Type: application/json"
_ASSETS_DIR: Final = Path(fastapi_offline.__file__).parent / "static"
_PERSONALITY: Final = b"/personality/"
_SEGMENTS: Final = ("user id", "dimension name")
_BODILESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def undecodable_path(scope: Any) -> str | None:
    """What is wrong with a ``/personality/...`` path whose raw bytes are not UTF-8
    ("user id is not valid UTF-8"), else None. Without ``raw_path`` (a server that
    does not pass it) the path is taken as decoded."""
    raw: bytes | None = scope.get("raw_path")
    if not raw or (b"%" not in raw and raw.isascii()):
        return None  # nothing to decode: the hot path, 0.3 us
    root = scope.get("root_path", "").encode()
    if root and raw.startswith(root):  # uvicorn's raw_path carries --root-path
        raw = raw[len(root) :]
    if not raw.startswith(_PERSONALITY):
        return None
    segments = raw[len(_PERSONALITY) :].split(b"/")
    # /personality/{user_id}[/dimensions/{name}]: the id, then (index 2) the name
    for label, segment in zip(_SEGMENTS, segments[0:3:2], strict=False):
        try:
            unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            return f"{label} is not valid UTF-8"
    return None


def needs_json_content_type(scope: Any) -> bool:
    """Whether this request is for a route that takes a JSON body and does not say
    ``Content-Type: application/json`` (or ``application/*+json``)."""
    if scope.get("method") in _BODILESS or _is_json(scope):
        return False
    for route in scope["app"].routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return True
    return False


def _is_json(scope: Any) -> bool:
    value = dict(scope.get("headers", [])).get(b"content-type")
    if not value:
        return False
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


_LANDING: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.5}}
code{{background:#eee;padding:0 .2em}}</style></head>
<body><h1>{title}</h1>
<p>Penny's per-user personality state over HTTP. Every worker shares one Redis cache;
SQL is the source of truth. Version {version}.</p>
<ul>
<li><a href="docs">docs</a>: the API, to read and try (works offline)</li>
<li><a href="healthz">healthz</a>: the process is alive</li>
<li><a href="readyz">readyz</a>: it can read, write and count (SQL, Redis)</li>
<li><a href="metrics">metrics</a>: Prometheus metrics</li>
</ul>
<p>Try <a href="personality/alice"><code>GET /personality/alice</code></a>.</p>
</body></html>
"""


def install_pages(app: FastAPI) -> None:
    """``GET /`` (a landing page), ``/docs`` and ``/redoc`` on local assets. Build the app
    with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not installed."""
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")
    page = _LANDING.format(title=html.escape(app.title), version=html.escape(app.version))

    async def landing(_: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from swagger.io
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route("/", landing, methods=["GET"], include_in_schema=False)
    app.add_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
