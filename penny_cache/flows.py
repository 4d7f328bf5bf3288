"""Flows: generators that yield backend operations, and the sync driver that runs them.

A flow yields ``(operation, arguments)`` (``payload = yield ("get", (key,))``), receives
the result (or has a ``CacheError`` thrown in at that ``yield``), and returns its answer;
``drive`` runs one with plain calls and ``aio.adrive`` with ``await``, so the policy is
written once for both APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol, TypeVar

from penny_cache.errors import CacheError
from penny_cache.near import NearCache

__all__ = ["Flow", "Listener", "ListenerFactory", "Op", "drive", "stats_view"]

_T = TypeVar("_T")
Op = tuple[str, tuple[Any, ...]]
Flow = Generator[Op, Any, _T]


def drive(flow: Flow[_T], call: Callable[[str, tuple[Any, ...]], Any]) -> _T:
    """Run a flow to its end with synchronous calls (the async twin is in ``aio.py``)."""
    try:
        op = next(flow)
        while True:
            try:
                result = call(*op)
            except CacheError as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()


class Listener(Protocol):
    """What the policy needs from the invalidation listener."""

    trusted_until: float

    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def after_fork(self) -> None: ...


# (near cache, channel, on_event, on_tick, on_applied(lag seconds)) -> listener
ListenerFactory = Callable[
    [NearCache, str, Callable[[str], None], Callable[[], None], Callable[[float], None]],
    Listener,
]


def stats_view(totals: Mapping[str, int], *, shared: bool) -> dict[str, Any]:
    """The ``get_stats()`` mapping: totals plus requests and a 0..1 hit rate."""
    requests = totals["hits"] + totals["misses"]
    view: dict[str, Any] = dict(totals)
    view["requests"] = requests
    view["hit_rate"] = totals["hits"] / requests if requests else 0.0
    view["shared"] = shared
    return view
