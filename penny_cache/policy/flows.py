"""Flows: generators that yield typed operations, and the two drivers that run them.

A flow yields an operation of ``penny_cache.policy.ops`` (``payload = yield Get(key)``),
receives its result (or has the operation's exception thrown in at that ``yield``: a
``CacheError`` is the flow's to answer), and returns its
answer; ``drive`` runs one with plain calls and ``adrive`` with ``await``, so the policy is
written once for both APIs. The two drivers are the one sync/asyncio twin the design
keeps: everything they run is written once. (The transports drive their plans with
them too.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from penny_cache.policy.ops import CacheOp, Op

__all__ = ["Flow", "TrackerFlow", "adrive", "drive"]

_T = TypeVar("_T")
_O = TypeVar("_O")  # what a generator yields: an Op, or a transport's step
Flow = Generator[CacheOp, Any, _T]  # the cache policy's flows: Redis operations only
TrackerFlow = Generator[Op, Any, _T]  # the tracker's: also Blocking, Sleep, Shared


def drive(flow: Generator[_O, Any, _T], call: Callable[[_O], Any]) -> _T:
    """Run a flow to its end with synchronous calls (``adrive`` is its asyncio twin)."""
    try:
        op = next(flow)
        while True:
            try:
                result = call(op)
            except Exception as exc:  # the flow decides: a CacheError is a miss
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()


async def adrive(flow: Generator[_O, Any, _T], call: Callable[[_O], Awaitable[Any]]) -> _T:
    """Run a flow to its end, awaiting each operation (the twin of ``drive``)."""
    try:
        op = next(flow)
        while True:
            try:
                result = await call(op)
            except Exception as exc:  # the flow decides: a CacheError is a miss
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()
