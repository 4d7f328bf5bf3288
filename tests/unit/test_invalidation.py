"""The invalidation protocol and the listener's rules, without threads or sockets."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny_cache.errors import CacheUnavailableError
from penny_cache.keys import encode_user_id
from penny_cache.policy.near import NearCache
from penny_cache.redis.listener import InvalidationListener, Message, format_message, parse_message
from penny_cache.state import default_state
from tests.conftest import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_messages_round_trip() -> None:
    """What the Lua scripts publish parses back to the same user, version and sequence."""
    user = "ü:{*}? x"
    data = format_message(7, 3, encode_user_id(user), 1_700_000_000_123_456)
    assert parse_message(data) == Message(7, user, 3, 1_700_000_000_123_456)
    assert parse_message(format_message(8, "*", encode_user_id(user))) == Message(8, user, None)
    assert parse_message(b"9|flush|5|") == Message(9, None, None, 5)


@pytest.mark.parametrize(
    "forged",
    [
        b"",
        b"x|1|0|u",
        b"1|x|0|u",
        b"1|1|0|",
        b"1|1|0|a%0Ab",
        b"1|flush|0|u",
        b"-1|1|0|u",
        b"\xff|1|0|u",
        b"1|1|0",
        b"1|1|t|u",
        b"1|1|u",
    ],
)
def test_malformed_messages_are_refused(forged: bytes) -> None:
    """Anything that is not exactly a valid message raises ValueError."""
    with pytest.raises((ValueError, UnicodeDecodeError)):
        parse_message(forged)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    """Forged bytes on the channel either parse or raise ValueError, nothing else."""
    with contextlib.suppress(ValueError):
        parse_message(data)


def make_listener(clock: FakeClock, near: NearCache) -> tuple[InvalidationListener, list[str]]:
    events: list[str] = []

    def no_client() -> Any:
        raise AssertionError("these tests never connect")

    listener = InvalidationListener(
        no_client, "ch", near, max_staleness=0.5, monotonic=clock, on_event=events.append
    )
    return listener, events


def message(seq: int, version: int | str, user: str) -> dict[str, Any]:
    return {"type": "message", "data": format_message(seq, version, encode_user_id(user))}


def filled(near: NearCache, *users: str) -> NearCache:
    for user in users:
        near.put(default_state(user, T0), near.ticket())
    return near


def test_in_order_messages_drop_only_their_user(clock: FakeClock) -> None:
    """Consecutive sequence numbers are applied one user at a time."""
    near = filled(NearCache(10, 60, monotonic=clock), "a", "b")
    listener, events = make_listener(clock, near)
    listener._handle(message(1, 1, "a"))
    listener._handle(message(2, 1, "x"))
    assert near.get("a", clock()) is None and near.get("b", clock()) is not None
    assert events == ["applied", "applied"]


def test_applied_messages_report_their_lag(clock: FakeClock) -> None:
    """The lag from Redis's publish time to applying the message is reported."""
    near = filled(NearCache(10, 60, monotonic=clock), "a")
    lags: list[float] = []

    def no_client() -> Any:
        raise AssertionError("never connects")

    listener = InvalidationListener(
        no_client, "ch", near, on_applied=lags.append, wall_clock=lambda: 100.25
    )
    data = format_message(1, 1, encode_user_id("a"), published_us=100_000_000)
    listener._handle({"type": "message", "data": data})
    assert lags == [pytest.approx(0.25)]


def test_sequence_gap_flushes(clock: FakeClock) -> None:
    """A skipped sequence number (a lost message) flushes the whole near cache."""
    near = filled(NearCache(10, 60, monotonic=clock), "a", "b")
    listener, events = make_listener(clock, near)
    listener._handle(message(1, 1, "x"))
    listener._handle(message(3, 1, "y"))
    assert len(near) == 0 and "gap" in events


def test_sequence_reset_flushes(clock: FakeClock) -> None:
    """A counter that went backwards (Redis restarted empty) counts as a gap."""
    near = filled(NearCache(10, 60, monotonic=clock), "a")
    listener, events = make_listener(clock, near)
    listener._handle(message(41, 1, "x"))
    listener._handle(message(1, 1, "y"))
    assert len(near) == 0 and events[-1] == "gap"


def test_forged_message_flushes(clock: FakeClock) -> None:
    """A malformed message is counted and flushes: safe whatever it meant."""
    near = filled(NearCache(10, 60, monotonic=clock), "a")
    listener, events = make_listener(clock, near)
    listener._handle({"type": "message", "data": b"1|1|bad\nuser"})
    assert len(near) == 0 and events == ["malformed"]


def test_subscribe_confirmation_flushes_and_resets_the_sequence(clock: FakeClock) -> None:
    """Only once subscribed is every later publish sure to arrive: start over then."""
    near = filled(NearCache(10, 60, monotonic=clock), "a")
    listener, _ = make_listener(clock, near)
    listener._handle(message(5, 1, "x"))
    listener._handle({"type": "subscribe", "data": 1})
    assert len(near) == 0
    listener._handle(message(99, 1, "y"))  # first after subscribe: any number is fine
    assert near.flushes == 1


def test_trust_lasts_max_staleness_after_the_answered_ping(clock: FakeClock) -> None:
    """A PONG makes the near cache trusted until its PING's send time + max_staleness."""
    near = NearCache(10, 60, monotonic=clock)
    listener, _ = make_listener(clock, near)

    class Wire:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def ping(self, token: str) -> None:
            self.sent.append(token)

    wire = Wire()
    listener._send_ping(wire, clock())  # type: ignore[arg-type]
    assert listener.trusted_until == 0.0
    clock.advance(0.1)
    listener._handle({"type": "pong", "data": wire.sent[0].encode()})
    assert listener.trusted_until == pytest.approx(1000.0 + 0.5)
    listener._handle({"type": "pong", "data": b"unknown-token"})
    assert listener.trusted_until == pytest.approx(1000.5)


def test_unanswered_pings_become_overdue(clock: FakeClock) -> None:
    """With no PONG for three staleness windows the listener gives up the connection."""
    listener, _ = make_listener(clock, NearCache(10, 60, monotonic=clock))

    class Wire:
        def ping(self, token: str) -> None:
            pass

    listener._send_ping(Wire(), clock())  # type: ignore[arg-type]
    clock.advance(1.4)
    assert not listener._overdue(clock())
    clock.advance(0.2)
    assert listener._overdue(clock())


class _Wire:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ping(self, token: str) -> None:
        self.sent.append(token)


def _probed_listener(
    clock: FakeClock, published: list[int | None]
) -> tuple[InvalidationListener, _Wire]:
    """A listener whose sequence probe answers the last value of ``published``."""

    def probe() -> int:
        value = published[-1]
        if value is None:
            raise CacheUnavailableError("down")
        return value

    def no_client() -> Any:
        raise AssertionError("these tests never connect")

    near = NearCache(10, 60, monotonic=clock)
    listener = InvalidationListener(
        no_client, "ch", near, max_staleness=0.5, monotonic=clock, sequence_probe=probe
    )
    return listener, _Wire()


def _ping_pong(listener: InvalidationListener, wire: _Wire, clock: FakeClock) -> None:
    listener._send_ping(wire, clock())  # type: ignore[arg-type]
    listener._handle({"type": "pong", "data": wire.sent[-1].encode()})


def test_a_pong_trusts_only_if_every_published_message_was_applied(clock: FakeClock) -> None:
    """Behind Sentinel, a PONG extends trust only when the messages the primary had
    published before the PING have all arrived; one missing means a deaf subscription
    (e.g. on a demoted primary), and the listener drops it."""
    published: list[int | None] = [7]
    listener, wire = _probed_listener(clock, published)
    listener._handle({"type": "subscribe", "data": 1})  # floor: 7 already published
    _ping_pong(listener, wire, clock)
    assert listener.trusted_until > clock()
    listener._handle(message(8, 1, "a"))
    published.append(8)
    clock.advance(0.2)
    _ping_pong(listener, wire, clock)  # 8 published, 8 applied: trusted on
    assert listener.trusted_until == pytest.approx(clock() + 0.5)
    published.append(9)  # published on the real primary, never heard here
    with pytest.raises(ValueError, match="deaf"):
        _ping_pong(listener, wire, clock)


def test_no_proof_no_trust_when_the_sequence_cannot_be_read(clock: FakeClock) -> None:
    """A PONG whose PING could not read the primary's sequence proves nothing; a
    subscription that cannot read it at all is dropped."""
    published: list[int | None] = [3]
    listener, wire = _probed_listener(clock, published)
    listener._handle({"type": "subscribe", "data": 1})
    published.append(None)
    _ping_pong(listener, wire, clock)
    assert listener.trusted_until == 0.0
    with pytest.raises(ValueError, match="sequence"):
        listener._handle({"type": "subscribe", "data": 1})


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.builds(
                format_message,
                st.integers(0, 10**6),
                st.one_of(st.integers(0, 10**6), st.just("*"), st.just("flush")),
                st.text(max_size=20),
            ),
        ),
        max_size=30,
    )
)
def test_forged_or_random_messages_never_crash_and_only_ever_drop(messages: list[bytes]) -> None:
    """Any sequence of bytes on the channel (forged, truncated, valid) is applied without an
    exception escaping, and each one that does not parse as ours empties the near cache:
    a forged message can make caches drop entries, never keep or add one."""
    clock = FakeClock()
    near = filled(NearCache(10, 60, monotonic=clock), "a", "b")
    listener, events = make_listener(clock, near)
    for data in messages:
        before = near.flushes
        listener._handle({"type": "message", "data": data})
        try:
            parse_message(data)
        except (ValueError, UnicodeDecodeError):
            assert near.flushes == before + 1
            assert events[-1] == "malformed"
    assert len(near) <= 2
