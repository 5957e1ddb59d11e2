"""A TCP proxy on 127.0.0.1 that tests cut and restore, to play a network partition.

``cut()`` stops relaying in both directions, but closes nothing: connections already open stay
open and silent, new connections are accepted and never answered — what a client sees when a
firewall drops its packets, not what it sees when a server stops (a refused or reset
connection, which drivers notice at once). ``restore()`` relays again, bytes held during the
cut included, like a healed partition. ``reset()`` aborts every open connection, as a server
restart does: with a cut around it, clients see the server go away and stay away. The proxy runs its own event loop in a thread, so tests
drive it from sync or async code alike; every call is bounded and ``close()`` (or leaving the
``with`` block) aborts every connection and stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tests.servers import HOST

T = TypeVar("T")
#: Bound of every call into the proxy's thread (start, cut, restore, close).
CALL_TIMEOUT = 10.0


class TcpProxy:
    """Relay 127.0.0.1:``port`` to ``target``; :meth:`cut` it to play a partition.

    Arguments:
        target: the ``(host, port)`` relayed to (a loopback server: tests never reach out).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy")
        self._server: asyncio.Server | None = None
        self._open: asyncio.Event | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the test's side: every call runs in the proxy's loop and is bounded ------------------

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and relay; returns the proxy."""
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Stop relaying: open connections go silent, new ones are accepted and held."""
        self._call(self._set_open(False))

    def restore(self) -> None:
        """Relay again, including what arrived during the cut."""
        self._call(self._set_open(True))

    def reset(self) -> None:
        """Abort every open connection, as a server restart does; new ones are still accepted
        (and held during a cut). Bytes held for an aborted connection are dropped."""
        self._call(self._abort_all())

    def close(self) -> None:
        """Abort every connection, stop listening and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(CALL_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a ``postgresql://`` or ``redis://`` URL) pointed at this proxy instead."""
        parts = urlsplit(dsn)
        auth = parts.netloc.rpartition("@")[0]
        address = f"{HOST}:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{auth}@{address}" if auth else address))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT)

    # -- the proxy's loop ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set_open(self, value: bool) -> None:
        assert self._open is not None
        if value:
            self._open.set()
        else:
            self._open.clear()

    async def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CALL_TIMEOUT)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        assert self._open is not None
        self._tasks.add(task)
        self._transports.add(writer.transport)
        upstream: asyncio.StreamWriter | None = None
        try:
            # Accepted during a cut: held, unanswered, until the cut ends or the client leaves.
            await self._open.wait()
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._transports.add(upstream.transport)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.transport.abort()
                    self._transports.discard(side.transport)
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._open is not None
        with contextlib.suppress(OSError):
            while True:
                data = await source.read(65536)
                # During a cut nothing passes, not even the end of the stream: the other side
                # learns nothing until the cut ends.
                await self._open.wait()
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


__all__ = ["CALL_TIMEOUT", "TcpProxy"]
