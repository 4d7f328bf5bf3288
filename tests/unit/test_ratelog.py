"""RateLimitedLog: one line per kind of failure per interval, counting what it held back."""

from __future__ import annotations

import logging

import pytest

from penny_cache.observe.ratelog import RateLimitedLog
from tests.conftest import FakeClock

LOGGER_NAME = "penny_cache.tests.ratelog"
INTERVAL = 60.0


@pytest.fixture
def limiter(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> RateLimitedLog:
    """A rate-limited log on the fake clock, captured by caplog at WARNING."""
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    return RateLimitedLog(logging.getLogger(LOGGER_NAME), INTERVAL, monotonic=clock)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages our logger emitted, in order."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]


def test_first_warning_is_logged(limiter: RateLimitedLog, caplog: pytest.LogCaptureFixture) -> None:
    """The first warning of a kind is logged at WARNING level, without a suffix."""
    assert limiter.warning("redis", "Redis is down") is True
    assert messages(caplog) == ["Redis is down"]
    assert caplog.records[0].levelno == logging.WARNING


def test_repeats_within_the_interval_are_suppressed(
    limiter: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeats of a kind within the interval return False and log nothing."""
    assert limiter.warning("redis", "Redis is down")
    for _ in range(3):
        clock.advance(INTERVAL / 4 - 0.001)
        assert limiter.warning("redis", "Redis is down") is False
    assert messages(caplog) == ["Redis is down"]


def test_after_the_interval_it_logs_again_with_the_count(
    limiter: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the interval the next warning is logged, saying how many were held back."""
    limiter.warning("redis", "Redis is down")
    for _ in range(5):
        limiter.warning("redis", "Redis is down")
    clock.advance(INTERVAL + 1)
    assert limiter.warning("redis", "Redis is still down") is True
    assert messages(caplog) == [
        "Redis is down",
        "Redis is still down (5 more since the last report)",
    ]


def test_the_count_restarts_after_each_report(
    limiter: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each report counts only the repeats since the previous one; none means no suffix."""
    limiter.warning("redis", "down")
    limiter.warning("redis", "down")
    clock.advance(INTERVAL)  # exactly one interval later: due again
    assert limiter.warning("redis", "down")
    limiter.warning("redis", "down")
    limiter.warning("redis", "down")
    clock.advance(INTERVAL)
    assert limiter.warning("redis", "down")
    clock.advance(INTERVAL)
    assert limiter.warning("redis", "down")
    assert messages(caplog) == [
        "down",
        "down (1 more since the last report)",
        "down (2 more since the last report)",
        "down",
    ]


def test_the_interval_runs_from_the_last_report(
    limiter: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Suppressed repeats do not push the next report back: the window starts at a report."""
    limiter.warning("redis", "down")
    clock.advance(INTERVAL - 1)
    assert not limiter.warning("redis", "down")
    clock.advance(1)
    assert limiter.warning("redis", "down")
    assert len(messages(caplog)) == 2


def test_kinds_are_independent(
    limiter: RateLimitedLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Suppressing one kind never suppresses, or counts against, another kind."""
    assert limiter.warning("redis", "Redis is down")
    assert limiter.warning("decode", "bad entry")
    assert not limiter.warning("redis", "Redis is down")
    assert not limiter.warning("redis", "Redis is down")
    assert not limiter.warning("decode", "bad entry")
    clock.advance(INTERVAL)
    assert limiter.warning("decode", "bad entry again")
    assert limiter.warning("redis", "Redis is back?")
    assert messages(caplog) == [
        "Redis is down",
        "bad entry",
        "bad entry again (1 more since the last report)",
        "Redis is back? (2 more since the last report)",
    ]


def test_message_is_not_treated_as_a_format_string(
    limiter: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A message holding '%' characters is logged verbatim (no %-formatting errors)."""
    assert limiter.warning("odd", "user 100%s %d done")
    assert messages(caplog) == ["user 100%s %d done"]
