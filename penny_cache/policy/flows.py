"""Flows: generators that yield typed operations, and the two drivers that run them.

A flow yields an operation of ``penny_cache.policy.ops`` (``payload = yield Get(key)``),
receives its result (or has the operation's exception thrown in at that ``yield``: a
``CacheError`` is the flow's to answer), and returns its
answer; ``drive`` runs one with plain calls and ``adrive`` with ``await``, so the policy is
written once for both APIs; the driving loop itself is written once too (``drive`` runs
``adrive`` to its end in one step). The transports drive their plans with them as well.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any, TypeVar

from penny_cache.policy.ops import CacheOp, Op

__all__ = ["Flow", "TrackerFlow", "adrive", "drive"]

_T = TypeVar("_T")
_O = TypeVar("_O")  # what a generator yields: an Op, or a transport's step
Flow = Generator[CacheOp, Any, _T]  # the cache policy's flows: Redis operations only
TrackerFlow = Generator[Op, Any, _T]  # the tracker's: also Blocking, Sleep, Shared


async def adrive(flow: Generator[_O, Any, _T], call: Callable[[_O], Awaitable[Any]]) -> _T:
    """Run a flow to its end, awaiting each operation: the one loop both drivers use."""
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


def drive(flow: Generator[_O, Any, _T], call: Callable[[_O], Any]) -> _T:
    """Run a flow to its end with synchronous calls.

    It runs ``adrive`` to its end in one step: with a call that never suspends, nothing
    in that coroutine awaits a real future, so it finishes on its first ``send``. So the
    loop (and its exception rule) exists once; the cost is ~0.5 us per flow, against a
    Redis round trip of ~60 us (near hits never enter a flow).
    """
    coroutine = adrive(flow, partial(_at_once, call))
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a synchronous flow suspended")  # unreachable with a sync call


async def _at_once(call: Callable[[_O], Any], op: _O) -> Any:
    return call(op)
