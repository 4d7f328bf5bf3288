"""Single-flight: concurrent misses of one key in a process run one load, not many.

One rule for both APIs: callers that arrive while a load of their key runs wait for it
and share its outcome, its result or its exception (a failing database is asked once, not
once per waiter). A leader that is interrupted rather than failing (its coroutine
cancelled because its request went away, a ``KeyboardInterrupt``) has no outcome to
share, and a leader that hangs past ``wait_timeout`` has none yet: in both cases each
waiter loads for itself.

Hand-written because each is a dozen lines around ``threading.Event`` or an
``asyncio.Future``, and no maintained library offers the sync version with exceptions
shared to the waiters.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["AsyncSingleFlight", "SingleFlight"]

_T = TypeVar("_T")


class _LeaderGoneError(Exception):
    """What waiters see when the leader was interrupted: load for yourself."""


class _Call(Generic[_T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[_T]):
    """``run(key, load)``: the first caller loads; callers arriving meanwhile share it."""

    def __init__(self, wait_timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[_T]] = {}
        self._wait_timeout = wait_timeout

    def run(self, key: str, load: Callable[[], _T], *, wait: bool = True) -> _T:
        """``wait=False``: lead a new flight, or load alone if one is running (a caller
        that must never wait on others: the holder of the cross-process lease)."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader and not wait:
            return load()
        if not leader:
            if not call.done.wait(self._wait_timeout) or isinstance(call.error, _LeaderGoneError):
                return load()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        try:
            call.result = load()
            return call.result
        except Exception as exc:
            call.error = exc
            raise
        except BaseException:
            call.error = _LeaderGoneError()
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class AsyncSingleFlight(Generic[_T]):
    """``await run(key, load)``: as ``SingleFlight``, for coroutines of one event loop."""

    def __init__(self, wait_timeout: float = 30.0) -> None:
        self._calls: dict[str, asyncio.Future[_T]] = {}
        self._wait_timeout = wait_timeout

    async def run(self, key: str, load: Callable[[], Awaitable[_T]], *, wait: bool = True) -> _T:
        """As ``SingleFlight.run``."""
        running = self._calls.get(key)
        if running is not None and not wait:
            return await load()
        if running is not None:
            # asyncio.wait neither cancels ``running`` on timeout nor when this waiter
            # is cancelled
            done, _ = await asyncio.wait({running}, timeout=self._wait_timeout)
            if not done or isinstance(running.exception(), _LeaderGoneError):
                return await load()
            return running.result()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            result = await load()
            future.set_result(result)
            return result
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.set_exception(_LeaderGoneError())
            raise
        finally:
            del self._calls[key]
            if not future.cancelled() and future.exception() is not None:
                pass  # retrieved: waiters re-raise it, nobody logs it as lost
