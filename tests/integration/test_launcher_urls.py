"""The URLs ``make run`` prints answer: ``penny-cache run`` as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from penny_cache.app.embedded import free_port

pytestmark = pytest.mark.integration


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_printed_url_answers_200() -> None:
    """``make run`` printed ``service http://127.0.0.1:8000/`` (a 404) and only the
    exporter's ``/metrics``, with its live page unnamed. Now every URL it prints after
    the self-check (the service's landing page, docs, probes and metrics, the exporter's
    page and metrics) answers 200 while the stack runs, and Ctrl-C stops it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    environ.update(PENNY_HTTP_PORT=str(free_port()), PENNY_EXPORTER_PORT=str(free_port()))
    command = [sys.executable, "-m", "penny_cache.app.cli", "run", "--workers", "2"]
    proc = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    printed: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(line)
            if "Ctrl-C stops everything." in line:
                break
        text = "".join(printed)
        assert "Ctrl-C stops everything." in text, text
        listed = text.split("self-check", 1)[1].split("try:", 1)[0]
        urls = re.findall(r"http://127\.0\.0\.1:\d+/[\w./-]*", listed)
        service_root = re.search(r"^service\s+(http://\S+/)\s", listed, re.MULTILINE)
        assert service_root is not None
        exporter = [u for u in urls if u.rstrip("/").count("/") == 2 and u not in service_root[1]]
        assert exporter, f"the exporter's page is not among {urls}"
        assert service_root[1] in urls
        assert len(urls) >= 7, urls
        for url in urls:
            assert status(url) == 200, url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130)
        proc.stdout.close()
