"""A tiny TCP fault-injection proxy for tests (toxiproxy's server cannot be installed here).

Put it between redis-py clients and a private ``redis-server`` to make the network slow,
silent or hostile on demand, without touching the server (``RedisServerProcess.pause``
freezes *every* connection, a proxy per client lets one client suffer alone)::

    with FaultProxy(server.port) as proxy:
        client = redis.Redis.from_url(proxy.url, socket_timeout=0.2)
        proxy.blackhole()   # PING now times out; the TCP connection stays up
        proxy.normal()      # new connections work again

The proxy runs its own asyncio loop in a daemon thread so that synchronous tests can drive
it. Every mode switch is executed *on* that loop and waited for, so when ``normal()`` (or
any other switch) returns, the new mode already applies to every existing and new
connection: tests can act on the next line without sleeping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

__all__ = ["FaultProxy", "Mode"]

log = logging.getLogger(__name__)

_CHUNK: Final = 65536
# Chunks buffered per direction before the reader stops reading: backpressure reaches
# the sender (as it would through a real slow link) instead of memory growing unbounded.
_QUEUE_CHUNKS: Final = 64
_LOOP_CALL_TIMEOUT: Final = 10.0


class Mode(enum.Enum):
    """What the proxy currently does to the bytes and connections passing through it."""

    NORMAL = "normal"
    LATENCY = "latency"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


class _Eof:
    """Queued after the last chunk of a direction: its peer half-closed (FIN)."""


_EOF: Final = _Eof()
_Item = tuple[float, bytes] | _Eof


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Abort ``writer``'s socket so that the peer gets a TCP RST, not a polite FIN.

    SO_LINGER (on, 0 s) makes ``close()`` discard unsent data and send RST, which is how a
    crashed middlebox or a restarted load balancer looks to a client.
    """
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the accepted client side and (once connected) upstream."""

    client: asyncio.StreamWriter
    handler: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self, *, rst: bool) -> None:
        """Drop both sides now (with RST if ``rst``) and stop every task of this link."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                _rst(writer)
            else:
                writer.transport.abort()
        for task in self.pumps:
            task.cancel()
        if self.handler is not asyncio.current_task():  # never cancel our own cleanup
            self.handler.cancel()


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host``:``upstream_port``, with faults.

    Modes (switchable from any thread at any time; they apply to existing and new
    connections alike):

    * ``normal()``: forward both ways.
    * ``latency(s)``: hold every chunk ``s`` seconds before forwarding it (per chunk, from
      when it was read, order kept per direction), like a long but wide link.
    * ``blackhole()``: connections are accepted and kept open but nothing gets through.
      Bytes read meanwhile are *dropped*, not buffered: a black hole loses packets, and a
      client that timed out must not later receive a stale answer. ``normal()`` therefore
      does not replay them: an old connection is desynchronised, and clients must time
      out and reconnect, exactly as after a real outage. A half-close (FIN) is the one
      thing held rather than dropped: it is delivered once the hole closes, as a kernel's
      retransmitted FIN would be. So a client that gave up still counts as open until
      then, which is what the server would see too.
    * ``reset()``: one-shot: abort every current connection with TCP RST and go back to
      ``normal()`` for new ones.
    * ``refuse()``: reset current connections, and accept-then-reset every new one, like a
      host whose service is down behind a load balancer.

    ``connections`` counts connections ever accepted, ``open_connections`` those not yet
    closed; ``wait_open()`` waits for the latter without polling.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.connect_timeout = connect_timeout
        self._state = threading.Condition()  # guards the fields below; notified on change
        self._mode = Mode.NORMAL
        self._delay = 0.0
        self._accepted = 0
        self._links: set[_Link] = set()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        # replaced on every mode switch after being set: lets held EOFs wait without polling
        self._mode_changed: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start listening (on a port the OS picks, so no race with other tests)."""
        with self._state:
            if self._thread is not None:
                raise RuntimeError("FaultProxy already started")
            ready = threading.Event()
            self._startup_error = None
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name="faultproxy", daemon=True
            )
            self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"FaultProxy did not start within {timeout}s")
        if self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise RuntimeError("FaultProxy failed to start") from error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, and join the thread. Idempotent."""
        with self._state:
            thread, loop, stop_event = self._thread, self._loop, self._stop_event
            self._thread = None
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed: thread is ending
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"FaultProxy thread did not stop within {timeout}s")

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it listens and what it has seen ------------------------------------------

    @property
    def port(self) -> int:
        """The loopback port clients should connect to."""
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def url(self) -> str:
        """A redis-py URL (db 0) that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def mode(self) -> Mode:
        with self._state:
            return self._mode

    @property
    def delay(self) -> float:
        """Seconds each chunk is held in ``Mode.LATENCY`` (0 otherwise)."""
        with self._state:
            return self._delay

    @property
    def connections(self) -> int:
        """Connections accepted since start (refused ones included)."""
        with self._state:
            return self._accepted

    @property
    def open_connections(self) -> int:
        """Accepted connections the proxy has not closed yet."""
        with self._state:
            return len(self._links)

    def wait_open(self, count: int, timeout: float = 5.0) -> None:
        """Block until exactly ``count`` connections are open, else ``TimeoutError``.

        Connection bookkeeping happens on the proxy's thread a moment after the kernel
        accepted or closed a socket: tests wait on this instead of sleeping.
        """
        with self._state:
            if not self._state.wait_for(lambda: len(self._links) == count, timeout):
                raise TimeoutError(
                    f"{len(self._links)} connections open after {timeout}s, wanted {count}"
                )

    # -- modes ---------------------------------------------------------------------------

    def normal(self) -> None:
        """Forward both ways, immediately."""
        self._switch(Mode.NORMAL)

    def latency(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, in both directions."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self._switch(Mode.LATENCY, seconds)

    def blackhole(self) -> None:
        """Accept and keep connections, but drop every byte both ways (see class doc)."""
        self._switch(Mode.BLACKHOLE)

    def refuse(self) -> None:
        """Reset existing connections and accept-then-reset new ones until switched back."""
        self._switch(Mode.REFUSE, abort=True)

    def reset(self) -> None:
        """Abort every current connection with RST, then forward new ones normally."""
        self._switch(Mode.NORMAL, abort=True)

    def _switch(self, mode: Mode, delay: float = 0.0, *, abort: bool = False) -> None:
        def apply() -> None:
            with self._state:
                self._mode, self._delay = mode, delay
                links = list(self._links) if abort else []
                self._state.notify_all()
            for link in links:
                link.abort(rst=True)
            if self._mode_changed is not None:
                self._mode_changed.set()
                self._mode_changed = asyncio.Event()

        self._on_loop(apply)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the proxy's loop and wait for it, or inline if there is no loop.

        Waiting is what makes switches synchronous for the caller; running on the loop is
        what makes them atomic with respect to the pumps (no lock held across awaits).
        """
        with self._state:
            loop = self._loop if self._thread is not None else None
        if loop is None:
            fn()
            return
        try:
            if asyncio.get_running_loop() is loop:
                fn()
                return
        except RuntimeError:
            pass  # no running loop in this thread: the normal case
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                fn()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop closed under us (stop() raced): apply to the state
            fn()
            return
        done.result(_LOOP_CALL_TIMEOUT)

    # -- the loop thread -------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # never let anything escape the thread
            log.exception("FaultProxy loop crashed")
            self._startup_error = self._startup_error or exc
        finally:
            with self._state:
                self._loop = None
                self._stop_event = None
                self._mode_changed = None
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_log_loop_exception)
        stop_event = asyncio.Event()
        self._mode_changed = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        except OSError as exc:
            self._startup_error = exc
            return
        with self._state:
            self._loop, self._stop_event = loop, stop_event
            self._port = int(server.sockets[0].getsockname()[1])
        ready.set()
        try:
            await stop_event.wait()
        finally:
            server.close()
            with self._state:
                links = list(self._links)
            for link in links:
                link.abort(rst=False)
            handlers = [link.handler for link in links]
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()
            # asyncio.run() then cancels any handler task that was accepted but had not
            # started yet; _handle cleans up after itself when cancelled.

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        link = _Link(client=writer, handler=task)
        with self._state:
            self._accepted += 1
            self._links.add(link)
            stopping = self._stop_event is None or self._stop_event.is_set()
            refused = self._mode is Mode.REFUSE or stopping
            self._state.notify_all()
        try:
            try:
                if refused:
                    _rst(writer)
                    return
                await self._proxy(link, reader)
            finally:
                await self._finish(link)
        except asyncio.CancelledError:
            # Aborted by reset()/refuse()/stop(). End normally instead of cancelled: the
            # streams callback of Python 3.11.7 calls task.exception() on this finished
            # task, which raises for a cancelled one and gets logged as a loop error.
            pass
        except Exception:
            log.exception("FaultProxy connection handler failed")

    async def _proxy(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.info(
                "FaultProxy: upstream %s:%s unreachable (%r); closing client",
                self.upstream_host,
                self.upstream_port,
                exc,
            )
            link.client.close()
            return
        link.upstream = up_writer
        with self._state:
            refused = self._mode is Mode.REFUSE
        if refused:  # refuse() was called while we were connecting
            link.abort(rst=True)
            return
        up_queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        down_queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        link.pumps = [
            asyncio.create_task(self._read_side(client_reader, up_queue)),
            asyncio.create_task(self._write_side(up_queue, up_writer)),
            asyncio.create_task(self._read_side(up_reader, down_queue)),
            asyncio.create_task(self._write_side(down_queue, link.client)),
        ]
        done, _ = await asyncio.wait(link.pumps, return_when=asyncio.FIRST_EXCEPTION)
        failures = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if failures:
            # a peer reset (or a write failed): pass the RST on, as a dead path would
            log.debug("FaultProxy: connection failed (%r); resetting both sides", failures[0])
            link.abort(rst=True)
        else:
            link.client.close()
            up_writer.close()

    async def _finish(self, link: _Link) -> None:
        """Close whatever is still open and forget the link.

        The bookkeeping is done before the only ``await`` so that a second cancellation
        (``stop()`` right after ``reset()``) cannot skip it.
        """
        for writer in (link.client, link.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
        for task in link.pumps:
            task.cancel()
        with self._state:
            self._links.discard(link)
            self._state.notify_all()
        if link.pumps:
            await asyncio.gather(*link.pumps, return_exceptions=True)

    async def _read_side(self, src: asyncio.StreamReader, queue: asyncio.Queue[_Item]) -> None:
        """Read chunks, drop them in a black hole, else queue them with their due time."""
        loop = asyncio.get_running_loop()
        while True:
            data = await src.read(_CHUNK)
            if not data:
                await queue.put(_EOF)
                return
            with self._state:
                mode, delay = self._mode, self._delay
            if mode is Mode.BLACKHOLE:
                continue
            await queue.put((loop.time() + delay, data))

    async def _write_side(self, queue: asyncio.Queue[_Item], dst: asyncio.StreamWriter) -> None:
        """Forward queued chunks when due; a black hole at write time drops them too."""
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if isinstance(item, _Eof):
                await self._while_blackholed()
                if dst.can_write_eof():
                    dst.write_eof()
                return
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if self.mode is Mode.BLACKHOLE:
                continue
            dst.write(data)
            await dst.drain()

    async def _while_blackholed(self) -> None:
        while self.mode is Mode.BLACKHOLE and self._mode_changed is not None:
            await self._mode_changed.wait()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log, never raise: a test must see its own failure, not a proxy traceback on stderr."""
    log.error("FaultProxy loop: %s", context.get("message"), exc_info=context.get("exception"))
