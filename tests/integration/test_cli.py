"""The ``penny-cache`` command as a user runs it: demo, stats, check, bad settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from penny_cache.app.embedded import free_port
from penny_cache.cache import PersonalityCache

pytestmark = pytest.mark.integration


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "penny_cache.app.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


def test_demo_runs_workers_on_an_embedded_redis() -> None:
    """With no PENNY_REDIS_URL the demo starts its own Redis, and the shared counters
    equal the lookups the worker processes made."""
    result = run_cli("demo", "--workers", "2", "--duration", "1", "--users", "50")
    assert result.returncode == 0, result.stderr
    assert "embedded redis-server" in result.stdout
    assert "counted in Redis: exact" in result.stdout
    assert "shared hit rate" in result.stdout


def test_run_serves_several_workers_sharing_one_cache() -> None:
    """`penny-cache run` (the `make run` job) starts Redis, the HTTP service on two
    workers and the exporter; its self-check reads through both workers, sees an update
    from every worker with no stale read, and finds the lookups counted exactly in Redis."""
    result = run_cli(
        "run", "--workers", "2", "--duration", "0.5",
        PENNY_HTTP_PORT=str(free_port()), PENNY_EXPORTER_PORT=str(free_port()),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "answered by 2 workers" in result.stdout
    assert "0 stale reads" in result.stdout
    assert re.search(r"exact: (\d+) lookups made, \1 counted in Redis", result.stdout)
    assert "curl -s http://127.0.0.1:" in result.stdout


def test_serve_refuses_a_bad_port_setting() -> None:
    """A bad PENNY_HTTP_PORT stops `serve` at start with exit 2, naming the variable."""
    result = run_cli("serve", PENNY_HTTP_PORT="70000")
    assert result.returncode == 2
    assert "PENNY_HTTP_PORT" in result.stderr


def test_demo_runs_on_fakeredis_when_asked() -> None:
    """The embedded fallback for machines without redis-server (fakeredis' TCP server)
    runs the same demo with exact counts."""
    result = run_cli(
        "demo", "--workers", "2", "--duration", "1", "--users", "50", PENNY_EMBEDDED_FAKEREDIS="1"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fakeredis TCP server" in result.stdout
    assert "counted in Redis: exact" in result.stdout


def test_stats_refuses_to_print_zeros_when_redis_is_down() -> None:
    """With Redis unreachable, stats says so (rc 1) instead of printing a table of zeros,
    and never prints a password."""
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = run_cli("stats", PENNY_REDIS_URL=dead)
    assert result.returncode == 1
    assert "cannot read the counters" in result.stderr and "s3cret" not in result.stderr
    assert result.stdout == ""


def test_stats_json_and_check(redis_url: str, namespace: str, sqlite_url: str) -> None:
    """stats --json prints the cross-process totals; check exits 0 when all answer."""
    with PersonalityCache.from_url(redis_url, namespace=namespace) as cache:
        cache.get("somebody")
    env = {"PENNY_REDIS_URL": redis_url, "PENNY_NAMESPACE": namespace}
    stats = run_cli("stats", "--json", **env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["misses"] == 1
    check = run_cli("check", **env, PENNY_DATABASE_URL=sqlite_url)
    assert check.returncode == 0, check.stdout


def test_check_fails_when_redis_is_unreachable(sqlite_url: str) -> None:
    """check exits non-zero and names Redis when nothing listens at PENNY_REDIS_URL."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("check", PENNY_REDIS_URL=dead, PENNY_DATABASE_URL=sqlite_url)
    assert result.returncode == 1
    assert "redis   UNREACHABLE" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PENNY_CACHE_TTL", "abc"), ("PENNY_REDIS_URL", "http://x"), ("PENNY_NAMESPACE", "a b")],
)
def test_bad_settings_fail_at_start_naming_the_variable(variable: str, value: str) -> None:
    """A bad PENNY_* value exits 2 with a message that names the variable."""
    result = run_cli("stats", **{variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


@pytest.mark.parametrize("command", ["serve", "run", "exporter", "check", "stats"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PENNY_REDIS_URL", "redis://host:notaport"),
        ("PENNY_REDIS_URL", "redis://[::1"),
        ("PENNY_DATABASE_URL", "postgresql://db:notaport/x"),
    ],
)
def test_a_malformed_url_is_one_line_naming_the_variable(
    command: str, variable: str, value: str
) -> None:
    """Used to happen: a malformed PENNY_REDIS_URL printed a traceback. Now every command
    exits non-zero with one line on stderr that names the variable."""
    result = run_cli(command, **{variable: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


@pytest.mark.parametrize("command", ["serve", "run"])
def test_serve_refuses_a_database_url_sqlalchemy_cannot_use(command: str) -> None:
    """A URL of an unknown dialect is refused by ``serve`` (and ``run``) before any worker
    starts, in one line naming PENNY_DATABASE_URL (not a traceback from each worker)."""
    result = run_cli(
        command, PENNY_DATABASE_URL="nosuchdialect://x/y", PENNY_REDIS_URL="redis://127.0.0.1:1"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PENNY_DATABASE_URL" in lines[0], result.stderr


def test_an_empty_database_url_file_refuses_to_start(tmp_path: Path) -> None:
    """Used to happen: an empty PENNY_DATABASE_URL_FILE (or PENNY_DATABASE_URL="") made
    the service use ./penny.db, say ready and lose the writes with the pod. Now the
    command refuses to start, naming the variable."""
    empty = tmp_path / "database_url"
    empty.write_text("\n")
    for env in ({"PENNY_DATABASE_URL_FILE": str(empty)}, {"PENNY_DATABASE_URL": ""}):
        result = run_cli("serve", **env)
        assert result.returncode == 2
        assert "PENNY_DATABASE_URL" in result.stderr and "empty" in result.stderr
        assert not (tmp_path / "penny.db").exists()


def test_a_misspelt_variable_is_warned_about_at_start(sqlite_url: str) -> None:
    """Used to happen: ``PENNY_CACH_TTL`` was ignored without a word. Now the CLI warns
    at start and suggests the setting it probably meant."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli(
        "check", PENNY_REDIS_URL=dead, PENNY_DATABASE_URL=sqlite_url, PENNY_CACH_TTL="5"
    )
    assert "PENNY_CACH_TTL" in result.stderr
    assert "did you mean PENNY_CACHE_TTL?" in result.stderr
