"""TLS: `rediss://` with certificate verification against a local redis-server started with
``--tls-port`` and a self-signed CA the test makes (openssl)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from penny_cache.app.embedded import RedisServerProcess, free_port
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.errors import ConfigurationError
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.security]


@dataclass(frozen=True)
class TLSServer:
    tls_port: int
    ca: Path
    other_ca: Path

    def url(self, query: str = "") -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0{query}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A redis-server with a TLS port, its certificate signed by a CA made here (and a
    second, unrelated CA that must not be trusted)."""
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    _make_ca(directory, "ca")
    _make_ca(directory, "other")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1", cwd=directory,
    )  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf",
        cwd=directory,
    )  # fmt: skip
    port = free_port()
    tls_args = (
        "--tls-port", str(port),
        "--tls-cert-file", str(directory / "server.crt"),
        "--tls-key-file", str(directory / "server.key"),
        "--tls-ca-cert-file", str(directory / "ca.crt"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        server = RedisServerProcess(None, *tls_args).start()
    except (RuntimeError, TimeoutError) as exc:
        unavailable(f"redis-server cannot serve TLS here: {exc}")
        raise
    try:
        yield TLSServer(port, directory / "ca.crt", directory / "other.crt")
    finally:
        server.stop()


def test_the_cache_works_over_verified_tls(
    tls_server: TLSServer, sqlite_url: str, namespace: str
) -> None:
    """With the CA that signed the server's certificate, every path works over TLS:
    fills, hits, write-through and the invalidation listener."""
    settings = Settings(
        redis_url=tls_server.url(),
        redis_tls_ca_file=str(tls_server.ca),
        database_url=sqlite_url,
        namespace=namespace,
    )
    with PersonalityCache.from_settings(settings) as cache:
        tracker = PersonalityTracker(PersonalityStore(sqlite_url), cache, outbox_interval=None)
        assert cache.check() is None
        tracker.get_current_personality_state("tia")
        tracker.update_personality_dimension("tia", "communication_formality", 0.4)
        assert tracker.get_current_personality_state("tia").version == 1
        assert cache.local_stats()["redis_errors"] == 0
        assert cache.local_stats()["hits"] >= 1


def test_a_server_signed_by_another_ca_is_refused(
    tls_server: TLSServer, sqlite_url: str, namespace: str
) -> None:
    """Trusting another CA, the handshake fails: Redis is unreachable (SQL answers), no
    byte is exchanged with an unverified server."""
    settings = Settings(
        redis_url=tls_server.url(),
        redis_tls_ca_file=str(tls_server.other_ca),
        database_url=sqlite_url,
        namespace=namespace,
    )
    with PersonalityCache.from_settings(settings) as cache:
        problem = cache.check()
        assert problem is not None and "certificate verify failed" in problem
        tracker = PersonalityTracker(PersonalityStore(sqlite_url), cache, outbox_interval=None)
        assert tracker.get_current_personality_state("ugo").version == 0  # from SQL


def test_turning_verification_off_needs_its_own_setting(tls_server: TLSServer) -> None:
    """A URL that disables verification is refused at start unless
    PENNY_REDIS_TLS_INSECURE says so, and then it connects without a CA."""
    url = tls_server.url("?ssl_cert_reqs=none")
    with pytest.raises(ConfigurationError, match="PENNY_REDIS_TLS_INSECURE"):
        Settings.from_env({"PENNY_REDIS_URL": url})
    settings = Settings.from_env({"PENNY_REDIS_URL": url, "PENNY_REDIS_TLS_INSECURE": "1"})
    with PersonalityCache.from_settings(settings) as cache:
        assert cache.check() is None
