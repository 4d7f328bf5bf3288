"""Settings: typed defaults, PENNY_* parsing, and errors that name the bad variable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from penny_cache.config import DEFAULT_REDIS_URL, Settings
from penny_cache.errors import ConfigurationError

EXISTING_FILE = __file__  # TLS settings must name files that exist; any file will do here
ALL_VARIABLES = {
    "PENNY_REDIS_URL": "rediss://cache.internal:6380/2",
    "PENNY_DATABASE_URL": "postgresql+psycopg://u:p@db/penny",
    "PENNY_NAMESPACE": "penny-prod.v2",
    "PENNY_CACHE_TTL": "600",
    "PENNY_CACHE_TTL_JITTER": "0.25",
    "PENNY_REDIS_TIMEOUT": "0.05",
    "PENNY_REDIS_COOLDOWN": "2.5",
    "PENNY_STATS_FLUSH_INTERVAL": "5",
    "PENNY_ERROR_LOG_INTERVAL": "30",
    "PENNY_NEAR_CACHE": "off",
    "PENNY_NEAR_CACHE_SIZE": "500",
    "PENNY_NEAR_CACHE_TTL": "3",
    "PENNY_MAX_STALENESS": "0.25",
    "PENNY_LEASE_TTL": "0.5",
    "PENNY_REDIS_USERNAME": "penny-svc",
    "PENNY_REDIS_PASSWORD": "s3cret",
    "PENNY_REDIS_SENTINELS": "s1:26379,[::1]:26380",
    "PENNY_REDIS_MASTER_NAME": "penny-main",
    "PENNY_REDIS_CLUSTER": "true",
    "PENNY_HTTP_PORT": "8080",
    "PENNY_HTTP_WORKERS": "8",
    "PENNY_EXPORTER_PORT": "9100",
    "PENNY_BREAKER_FAILURES": "5",
    "PENNY_REDIS_TLS_CA_FILE": EXISTING_FILE,
    "PENNY_REDIS_TLS_CERT_FILE": EXISTING_FILE,
    "PENNY_REDIS_TLS_KEY_FILE": EXISTING_FILE,
    "PENNY_REDIS_TLS_INSECURE": "yes",
    "PENNY_SERVE_STALE": "on",
    "PENNY_OUTBOX_INTERVAL": "10",
    "PENNY_OUTBOX_GRACE": "3",
    "PENNY_WRITE_MODE": "strict",
    "PENNY_VALUE_KEY": "k" * 32,
    "PENNY_VALUE_KEY_PREVIOUS": "p" * 32,
    "PENNY_LOG_ID_KEY": "l" * 32,
    "PENNY_HISTORY_DAYS": "90",
    "PENNY_SHADOW_SAMPLE": "0.5",
}
# Sentinel and Cluster exclude each other: the all-variables case uses Sentinel.
SENTINEL_VARIABLES = {k: v for k, v in ALL_VARIABLES.items() if k != "PENNY_REDIS_CLUSTER"}


def test_defaults() -> None:
    """Settings() carries the documented defaults."""
    settings = Settings()
    assert settings.redis_url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "sqlite:///penny.db"
    assert settings.namespace == "penny"
    assert settings.cache_ttl == 300.0
    assert settings.ttl_jitter == 0.0
    assert settings.redis_timeout == 0.1
    assert settings.redis_cooldown == 1.0
    assert settings.stats_flush_interval == 1.0
    assert settings.error_log_interval == 60.0


def test_empty_environment_gives_defaults() -> None:
    """from_env of an environment without PENNY_* variables equals Settings()."""
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"HOME": "/root", "REDIS_URL": "http://ignored"}) == Settings()


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Used to be: ``Settings.from_env()``, as the README names it, raised TypeError (a
    required ``environ``). Now: with no argument it reads ``os.environ``; a mapping
    given still wins, and an empty one still means every default."""
    for name in [n for n in os.environ if n.startswith("PENNY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PENNY_NAMESPACE", "from-the-environment")
    monkeypatch.setenv("PENNY_CACHE_TTL", "42")
    settings = Settings.from_env()
    assert settings.namespace == "from-the-environment"
    assert settings.cache_ttl == 42
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"PENNY_NAMESPACE": "given"}).namespace == "given"


def test_every_variable_is_parsed() -> None:
    """Each PENNY_* variable sets its field, numbers parsed as float."""
    settings = Settings.from_env(SENTINEL_VARIABLES)
    assert settings == Settings(
        redis_url="rediss://cache.internal:6380/2",
        database_url="postgresql+psycopg://u:p@db/penny",
        namespace="penny-prod.v2",
        cache_ttl=600.0,
        ttl_jitter=0.25,
        redis_timeout=0.05,
        redis_cooldown=2.5,
        stats_flush_interval=5.0,
        error_log_interval=30.0,
        near_cache=False,
        near_cache_size=500,
        near_cache_ttl=3.0,
        max_staleness=0.25,
        lease_ttl=0.5,
        redis_username="penny-svc",
        redis_password="s3cret",
        redis_sentinels=(("s1", 26379), ("::1", 26380)),
        redis_master_name="penny-main",
        http_port=8080,
        http_workers=8,
        exporter_port=9100,
        breaker_failures=5,
        redis_tls_ca_file=EXISTING_FILE,
        redis_tls_cert_file=EXISTING_FILE,
        redis_tls_key_file=EXISTING_FILE,
        redis_tls_insecure=True,
        serve_stale=True,
        outbox_interval=10.0,
        outbox_grace=3.0,
        write_mode="strict",
        value_key="k" * 32,
        value_key_previous="p" * 32,
        log_id_key="l" * 32,
        history_days=90.0,
        shadow_sample=0.5,
    )
    assert isinstance(settings.cache_ttl, float)
    assert settings.redis_topology == "sentinel"
    assert Settings.from_env({"PENNY_REDIS_CLUSTER": "yes"}).redis_topology == "cluster"


def test_the_password_never_appears_in_the_repr() -> None:
    """A Settings printed or logged does not show the Redis password."""
    assert "s3cret" not in repr(Settings.from_env(ALL_VARIABLES | {"PENNY_REDIS_CLUSTER": "off"}))


def test_secrets_come_from_files(tmp_path: Path) -> None:
    """PENNY_X_FILE reads X from a file (trailing newline dropped), for any variable."""
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    url = tmp_path / "url"
    url.write_text("redis://cache:6379/1")
    settings = Settings.from_env(
        {"PENNY_REDIS_PASSWORD_FILE": str(secret), "PENNY_REDIS_URL_FILE": str(url)}
    )
    assert settings.redis_password == "from-a-file"
    assert settings.redis_url == "redis://cache:6379/1"


def test_secrets_keep_their_spaces(tmp_path: Path) -> None:
    """A password is taken verbatim (only a file's final newline goes): spaces are part
    of it, while other settings are trimmed."""
    secret = tmp_path / "password"
    secret.write_text(" pass word \n")
    settings = Settings.from_env(
        {"PENNY_REDIS_PASSWORD_FILE": str(secret), "PENNY_NAMESPACE": " penny "}
    )
    assert settings.redis_password == " pass word "
    assert settings.namespace == "penny"


def test_a_secret_file_problem_names_the_variable(tmp_path: Path) -> None:
    """An unreadable file, or a variable set both ways, fails naming the variable."""
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigurationError, match="PENNY_REDIS_PASSWORD_FILE"):
        Settings.from_env({"PENNY_REDIS_PASSWORD_FILE": missing})
    (tmp_path / "pw").write_text("x")
    both = {"PENNY_REDIS_PASSWORD": "y", "PENNY_REDIS_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_env(both)


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"PENNY_REDIS_SENTINELS": "hostonly"}, "PENNY_REDIS_SENTINELS"),
        ({"PENNY_REDIS_SENTINELS": "h:0"}, "PENNY_REDIS_SENTINELS"),
        ({"PENNY_REDIS_SENTINELS": "h:1", "PENNY_REDIS_CLUSTER": "1"}, "exclude"),
        ({"PENNY_HTTP_PORT": "0"}, "PENNY_HTTP_PORT"),
        ({"PENNY_HTTP_WORKERS": "1000"}, "PENNY_HTTP_WORKERS"),
        ({"PENNY_EXPORTER_PORT": "x"}, "PENNY_EXPORTER_PORT"),
        ({"PENNY_REDIS_URL": "rediss://h:6380/0?ssl_cert_reqs=none"}, "PENNY_REDIS_TLS_INSECURE"),
        ({"PENNY_REDIS_URL": "rediss://h/0?ssl_check_hostname=false"}, "PENNY_REDIS_TLS_INSECURE"),
        ({"PENNY_REDIS_TLS_CERT_FILE": EXISTING_FILE}, "go together"),
        ({"PENNY_REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "PENNY_REDIS_TLS_CA_FILE"),
    ],
)
def test_bad_topology_and_ports_name_the_variable(variables: dict[str, str], words: str) -> None:
    """Malformed sentinel lists, Sentinel plus Cluster, and bad ports are refused at start."""
    with pytest.raises(ConfigurationError, match=words):
        Settings.from_env(variables)


def test_every_field_has_a_variable() -> None:
    """No field is unreachable from the environment: changing each variable changes a field."""
    assert len(ALL_VARIABLES) == len(dataclasses.fields(Settings))
    assert Settings.from_env(SENTINEL_VARIABLES) != Settings()
    defaults = dataclasses.asdict(Settings())
    pair = ("PENNY_REDIS_TLS_CERT_FILE", "PENNY_REDIS_TLS_KEY_FILE")  # valid only together
    for name, value in ALL_VARIABLES.items():
        environ = {n: ALL_VARIABLES[n] for n in pair} if name in pair else {name: value}
        changed = dataclasses.asdict(Settings.from_env(environ))
        differing = [field for field in defaults if defaults[field] != changed[field]]
        assert len(differing) == len(environ), name


@pytest.mark.parametrize("name", list(ALL_VARIABLES))
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_values_are_errors_naming_the_variable(name: str, blank: str) -> None:
    """Used to happen: a set-but-blank variable was taken as unset, so
    ``PENNY_DATABASE_URL=""`` (a secret that rendered empty) made the service write to
    ``./penny.db``. Now it is an error naming the variable and the default it refused."""
    with pytest.raises(ConfigurationError, match=f"{name} is set but empty; unset it"):
        Settings.from_env({name: blank})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PENNY_NEAR_CACHE", "maybe"),
        ("PENNY_NEAR_CACHE_SIZE", "0"),
        ("PENNY_NEAR_CACHE_SIZE", "1.5"),
        ("PENNY_NEAR_CACHE_TTL", "900"),
        ("PENNY_MAX_STALENESS", "0"),
        ("PENNY_LEASE_TTL", "-1"),
    ],
)
def test_bad_near_cache_settings_name_the_variable(variable: str, value: str) -> None:
    """Near-cache settings are validated like the rest, naming the variable."""
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})


def test_near_ttl_defaults_well_below_the_redis_ttl() -> None:
    """Without PENNY_NEAR_CACHE_TTL the near TTL is min(10 s, cache TTL / 10)."""
    assert Settings().near_ttl == 10.0
    assert Settings(cache_ttl=20).near_ttl == 2.0


def test_values_are_stripped() -> None:
    """Surrounding whitespace is ignored."""
    settings = Settings.from_env({"PENNY_CACHE_TTL": " 12.5 ", "PENNY_NAMESPACE": "\tns\n"})
    assert (settings.cache_ttl, settings.namespace) == (12.5, "ns")


@pytest.mark.parametrize("url", ["redis://h", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_accepted_redis_urls(url: str) -> None:
    """redis://, rediss:// and unix:// URLs are accepted verbatim."""
    assert Settings.from_env({"PENNY_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PENNY_CACHE_TTL", "abc"),
        ("PENNY_CACHE_TTL", "-1"),
        ("PENNY_CACHE_TTL", "0"),
        ("PENNY_CACHE_TTL", "nan"),
        ("PENNY_CACHE_TTL", "inf"),
        ("PENNY_CACHE_TTL", "-inf"),
        ("PENNY_CACHE_TTL_JITTER", "1.5"),
        ("PENNY_CACHE_TTL_JITTER", "1"),
        ("PENNY_CACHE_TTL_JITTER", "-0.1"),
        ("PENNY_CACHE_TTL_JITTER", "nan"),
        ("PENNY_CACHE_TTL_JITTER", "half"),
        ("PENNY_REDIS_URL", "http://x"),
        ("PENNY_REDIS_URL", "localhost:6379"),
        ("PENNY_NAMESPACE", "a b"),
        ("PENNY_NAMESPACE", "x" * 65),
        ("PENNY_NAMESPACE", "a:b"),
        ("PENNY_NAMESPACE", "a*"),
        ("PENNY_REDIS_TIMEOUT", "0"),
        ("PENNY_REDIS_TIMEOUT", "1s"),
        ("PENNY_REDIS_COOLDOWN", "-5"),
        ("PENNY_STATS_FLUSH_INTERVAL", "0"),
        ("PENNY_ERROR_LOG_INTERVAL", "inf"),
        ("PENNY_WRITE_MODE", "STRICT"),
        ("PENNY_WRITE_MODE", "safe"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """A bad value raises ConfigurationError (a ValueError) whose message names the variable."""
    with pytest.raises(ConfigurationError, match=rf"\b{name}\b") as info:
        Settings.from_env({name: value})
    assert isinstance(info.value, ValueError)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after construction, field by field."""
    settings = Settings()
    for field in dataclasses.fields(Settings):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field.name, getattr(settings, field.name))


def test_replace_revalidates() -> None:
    """dataclasses.replace goes through the same validation as construction."""
    with pytest.raises(ConfigurationError, match="PENNY_CACHE_TTL"):
        dataclasses.replace(Settings(), cache_ttl=-1.0)


def test_redis_database_must_be_a_number() -> None:
    """redis://host/abc is refused instead of silently using database 0."""
    with pytest.raises(ConfigurationError, match="PENNY_REDIS_URL"):
        Settings.from_env({"PENNY_REDIS_URL": "redis://127.0.0.1:6379/abc"})
    assert Settings(redis_url="redis://h:1/3").redis_url.endswith("/3")


def test_passwords_are_redacted_in_messages() -> None:
    """redact_url hides a password and leaves URLs without one untouched."""
    from penny_cache.config import redact_url

    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:pw@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    with pytest.raises(ConfigurationError) as caught:
        Settings(redis_url="http://:s3cret@h/0")
    assert "s3cret" not in str(caught.value)


def test_write_mode_defaults_to_available_and_names_the_choices() -> None:
    """PENNY_WRITE_MODE is "available" unless set; anything but "available" or "strict"
    is refused at start with a message naming the variable and both choices."""
    assert Settings().write_mode == "available"
    assert Settings.from_env({"PENNY_WRITE_MODE": " strict "}).write_mode == "strict"
    with pytest.raises(ConfigurationError, match=r"PENNY_WRITE_MODE.*'available' or 'strict'"):
        Settings(write_mode="eventual")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PENNY_CACHE_TTL", "1e300"),
        ("PENNY_CACHE_TTL", "2592001"),
        ("PENNY_STATS_FLUSH_INTERVAL", "1e-9"),
        ("PENNY_STATS_FLUSH_INTERVAL", "3601"),
        ("PENNY_LEASE_TTL", "1e9"),
        ("PENNY_LEASE_TTL", "61"),
        ("PENNY_REDIS_TIMEOUT", "61"),
        ("PENNY_REDIS_COOLDOWN", "3601"),
        ("PENNY_ERROR_LOG_INTERVAL", "86401"),
        ("PENNY_MAX_STALENESS", "601"),
        ("PENNY_OUTBOX_INTERVAL", "3601"),
        ("PENNY_OUTBOX_GRACE", "3601"),
        ("PENNY_HISTORY_DAYS", "0"),
        ("PENNY_HISTORY_DAYS", "36501"),
        ("PENNY_HISTORY_DAYS", "nan"),
        ("PENNY_SHADOW_SAMPLE", "-0.1"),
        ("PENNY_SHADOW_SAMPLE", "1.5"),
        ("PENNY_SHADOW_SAMPLE", "nan"),
        ("PENNY_VALUE_KEY", "short"),
        ("PENNY_VALUE_KEY_PREVIOUS", "x" * 31),
    ],
)
def test_every_numeric_setting_has_a_range(variable: str, value: str) -> None:
    """Used to happen: only a lower bound was checked, so ``PENNY_CACHE_TTL=1e300``
    started and then failed every write, ``PENNY_STATS_FLUSH_INTERVAL=1e-9`` busy-looped
    and ``PENNY_LEASE_TTL=1e9`` would make readers wait on a dead loader. Now a value
    outside the stated range is refused at start, naming the variable."""
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})


def test_the_edges_of_the_ranges_are_accepted() -> None:
    """The bounds the README states are inclusive where it says so."""
    settings = Settings.from_env(
        {
            "PENNY_CACHE_TTL": "2592000",
            "PENNY_STATS_FLUSH_INTERVAL": "0.05",
            "PENNY_LEASE_TTL": "60",
            "PENNY_REDIS_TIMEOUT": "60",
            "PENNY_HISTORY_DAYS": "36500",
            "PENNY_VALUE_KEY": "k" * 32,
        }
    )
    assert settings.cache_ttl == 2592000 and settings.history_days == 36500


def test_a_lease_must_end_before_the_entry() -> None:
    """A lease at least as long as the cache TTL would outlive what it protects."""
    with pytest.raises(ConfigurationError, match="PENNY_LEASE_TTL"):
        Settings(cache_ttl=1.0, lease_ttl=1.0)


@pytest.mark.parametrize("content", ["", "\n", "\r\n", "  \n"])
def test_an_empty_file_is_an_error_not_the_default(tmp_path: Path, content: str) -> None:
    """Used to happen: ``PENNY_DATABASE_URL_FILE`` naming an empty file (what the
    Kubernetes and compose files mount) was taken as unset, so the service wrote to
    ./penny.db. Now it is an error naming the variable and the file."""
    secret = tmp_path / "database_url"
    secret.write_text(content)
    with pytest.raises(ConfigurationError, match=r"PENNY_DATABASE_URL_FILE names .* empty"):
        Settings.from_env({"PENNY_DATABASE_URL_FILE": str(secret)})
    with pytest.raises(ConfigurationError, match="PENNY_DATABASE_URL_FILE is set but empty"):
        Settings.from_env({"PENNY_DATABASE_URL_FILE": " "})


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("redis_url", "redis://host:notaport"),
        ("redis_url", "redis://[::1"),
        ("redis_url", "redis://host:99999"),
        ("database_url", "not a url"),
        ("database_url", "postgresql://host:notaport/db"),
        ("database_url", "postgresql://[::1/db"),
    ],
)
def test_a_malformed_url_is_a_configuration_error(field: str, url: str) -> None:
    """Used to happen: a malformed URL got as far as redis-py or SQLAlchemy and came out
    as a traceback. Now it is a ``ConfigurationError`` naming the variable."""
    with pytest.raises(ConfigurationError, match=r"PENNY_(REDIS|DATABASE)_URL"):
        Settings(**{field: url})  # type: ignore[arg-type]


def test_unknown_penny_variables_are_reported_with_a_suggestion() -> None:
    """Used to happen: a misspelt ``PENNY_*`` name was ignored silently. Now each name
    that nothing reads is reported, with the nearest known name; settings, their
    ``_FILE`` forms and the project's other variables are known."""
    environ = {
        "PENNY_CACHE_TTL": "60",
        "PENNY_DATABASE_URL_FILE": "/run/secrets/db",
        "PENNY_REQUIRE_SERVICES": "1",
        "PENNY_TEST_DATABASE_URL": "x",
        "PENNY_CATALOGUE": "a.b:C",
        "PENNY_REDIS_TLS_CA_FILE_FILE": "/x",
        "PENNY_CACH_TTL": "5",
        "PENNY_ZZZ": "1",
        "HOME": "/root",
    }
    lines = Settings.unknown_variables(environ)
    assert len(lines) == 2
    assert "PENNY_CACH_TTL" in lines[0] and "did you mean PENNY_CACHE_TTL?" in lines[0]
    assert "PENNY_ZZZ" in lines[1] and "did you mean" not in lines[1]
