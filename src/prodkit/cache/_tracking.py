"""The near cache's tracking connections: RESP3 links to each Redis node that read keys and
receive Redis's invalidation pushes (see :mod:`prodkit.cache._near`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prodkit.cache._resp import ErrorReply, Parser, ProtocolError, Push, command
from prodkit.cache._store import Lookup

if TYPE_CHECKING:
    from prodkit.cache._near import NearCacheStore

_OVERHEAD = 64  # bytes charged per entry on top of key and value, as the memory store does
_RECV = 256 * 1024
_PING = command("PING")
_LOST = ErrorReply("near cache: tracking connection lost")
_FIRST_RETRY = 0.1  # seconds before connecting again after a failure, doubling
_LAST_RETRY = 5.0
_SINGLE = ""  # the node name of a single server (or a Sentinel-managed primary)

Callback = Callable[[Any, float, "_Link"], None]


class _Unread(Exception):
    """A read on a tracking connection failed; the wrapped store reads instead."""


class _Read:
    """One read on the tracking connections: its replies, in the order they arrive."""

    __slots__ = ("entry_pushes", "future", "keys", "left", "near", "values", "writes")

    def __init__(self, near: NearCacheStore, keys: list[str], future: asyncio.Future[Lookup]):
        self.near = near
        self.keys = keys  # the entry's key, then the tag keys
        self.values: list[Any] = [None] * len(keys)
        self.left = len(keys) + 1  # a value per key, and the entry's TTL
        self.future = future
        self.writes = near._writes
        self.entry_pushes = -1  # the entry connection's push count when the entry arrived

    def _usable(self, reply: Any) -> bool:
        if isinstance(reply, ErrorReply):
            if not self.future.done():
                self.future.set_exception(_Unread(reply.message))
            return False
        return True

    def _got(self, index: int, value: Any, link: _Link) -> None:
        if index == 0:
            self.values[0] = value
            self.entry_pushes = link.pushes
        else:
            version = "" if value is None else bytes(value).decode("ascii", "replace")
            self.values[index] = version
            if self.near._writes == self.writes:
                self.near._keep_tag(self.keys[index], version)

    def many(self, reply: Any, sent: float, link: _Link) -> None:
        """The ``MGET`` of a single node."""
        if not self._usable(reply):
            return
        for index, value in enumerate(reply):
            self._got(index, value, link)
        self.left -= len(self.keys)
        self._done()

    def one(self, index: int) -> Callback:
        """The callback of one key's ``GET`` on a Cluster node."""

        def got(reply: Any, sent: float, link: _Link) -> None:
            if self._usable(reply):
                self._got(index, reply, link)
                self.left -= 1
                self._done()

        return got

    def ttl(self, reply: Any, sent: float, link: _Link) -> None:
        """The entry's ``PTTL``: keep the entry until then (counted from before Redis read it),
        unless an invalidation arrived between the two replies."""
        if not self._usable(reply):
            return
        value = self.values[0]
        near = self.near
        if (
            value is not None
            and isinstance(reply, int)
            and reply > 0
            and near._writes == self.writes
            and link.pushes == self.entry_pushes
        ):
            near._keep_entry(self.keys[0], bytes(value), sent + reply / 1000)
        self.left -= 1
        self._done()

    def _done(self) -> None:
        if self.left == 0 and not self.future.done():
            entry = self.values[0]
            self.future.set_result(
                Lookup(None if entry is None else bytes(entry), tuple(self.values[1:]))
            )


class _Link:
    """One RESP3 connection to one Redis node with ``CLIENT TRACKING`` on.

    Replies and ``invalidate`` pushes are processed in the order Redis wrote them, whenever the
    socket is readable (the event loop's reader) and whenever a hit asks (:meth:`drain`).
    ``acked`` is when the newest command whose reply has been processed was sent.
    """

    __slots__ = (
        "acked",
        "closed",
        "fd",
        "loop",
        "name",
        "near",
        "out",
        "parser",
        "pushes",
        "sent",
        "sock",
        "waiting",
    )

    def __init__(
        self,
        near: NearCacheStore,
        name: str,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        parser: Parser,
        sent: float,
    ) -> None:
        self.near = near
        self.name = name
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.parser = parser
        self.waiting: deque[tuple[float, Callback | None]] = deque()
        self.acked = sent  # the handshake's reply has been processed
        self.sent = sent
        self.out = b""  # what the socket would not take yet
        self.pushes = 0
        self.closed = False
        loop.add_reader(self.fd, self.drain)

    @classmethod
    async def open(
        cls,
        near: NearCacheStore,
        name: str,
        address: tuple[int, Any],
        handshake: tuple[bytes, int],
    ) -> _Link:
        """Connect, switch to RESP3, authenticate, select the database and turn tracking on."""
        loop = asyncio.get_running_loop()
        family, target = address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = Parser()
            await loop.sock_connect(sock, target)
            sent = time.monotonic()
            await loop.sock_sendall(sock, handshake[0])
            replies: list[Any] = []
            while len(replies) < handshake[1]:
                data = await loop.sock_recv(sock, _RECV)
                if not data:
                    raise ConnectionError("closed by the server during the handshake")
                parser.feed(data)
                while (frame := parser.next()) is not None:
                    if not frame[0]:
                        replies.append(frame[1])
            for reply in replies:
                if isinstance(reply, ErrorReply):
                    raise ConnectionError(f"Redis refused the tracking handshake: {reply.message}")
        except BaseException:
            sock.close()
            raise
        return cls(near, name, sock, loop, parser, sent)

    def send(self, data: bytes, callbacks: Sequence[Callback | None]) -> None:
        """Send commands; each callback gets its command's reply (``None``: ignored)."""
        if self.closed:
            for callback in callbacks:
                if callback is not None:
                    callback(_LOST, 0.0, self)
            return
        now = time.monotonic()
        self.sent = now
        self.waiting.extend((now, callback) for callback in callbacks)
        if self.out:
            self.out += data
            return
        try:
            written = self.sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            return
        if written < len(data):
            self.out = data[written:]
            self.loop.add_writer(self.fd, self._write)

    def _write(self) -> None:
        try:
            written = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            return
        self.out = self.out[written:]
        if not self.out:
            self.loop.remove_writer(self.fd)

    def drain(self) -> None:
        """Read what the socket holds now and process every whole frame, in order."""
        if self.closed:
            return
        sock, parser = self.sock, self.parser
        try:
            while True:
                data = sock.recv(_RECV)
                if not data:
                    self.fail("closed by the server")
                    return
                parser.feed(data)
                if len(data) < _RECV:
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            return
        self._process()

    def _process(self) -> None:
        parser, waiting, near = self.parser, self.waiting, self.near
        while not self.closed:
            try:
                frame = parser.next()
            except ProtocolError as exc:
                self.fail(str(exc))
                return
            if frame is None:
                return
            push, value = frame
            if push:
                if isinstance(value, Push) and value.kind == "invalidate":
                    self.pushes += 1
                    near._invalidated(value.data[0] if value.data else None)
                continue
            if not waiting:
                self.fail("a reply to no command")
                return
            sent, callback = waiting.popleft()
            if sent > self.acked:
                self.acked = sent
            if callback is not None:
                callback(value, sent, self)

    def fail(self, reason: str) -> None:
        """The connection cannot be trusted any longer: close it, empty the near cache."""
        if self.closed:
            return
        self.close()
        waiting, self.waiting = self.waiting, deque()
        for _, callback in waiting:
            if callback is not None:
                callback(_LOST, 0.0, self)
        self.near._lost(self, reason)

    def close(self) -> None:
        """Close the socket (the near cache is told by :meth:`fail`, not here)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # a closed loop has nothing left to remove
            self.loop.remove_reader(self.fd)
            if self.out:
                self.loop.remove_writer(self.fd)
        self.sock.close()


class _Nodes:
    """Where the tracking connections go, and what each says when it opens."""

    def __init__(self, client: Any, single: bool, handshake: tuple[bytes, int]) -> None:
        self.client = client
        self.single = single
        self.handshake = handshake

    def names(self, keys: Sequence[str], prefix: str) -> list[str]:
        """The Cluster node of each key (``""`` when the client cannot say yet)."""
        names = []
        for key in keys:
            try:
                node = self.client.get_node_from_key(prefix + key)
            except Exception:  # slots not known yet: the client learns them on its next call
                node = None
            names.append(node.name if node is not None else "")
        return names

    def primaries(self) -> list[str]:
        """The Cluster's primary nodes as the client knows them (none before its first call)."""
        try:
            return [node.name for node in self.client.get_primaries()]
        except Exception:  # not initialised yet
            return []

    async def address(self, name: str) -> tuple[int, Any]:
        """``(family, address)`` of node ``name`` for ``socket.connect``."""
        if self.single:
            pool = self.client.connection_pool
            found = pool.connection_kwargs
            if found.get("path"):
                return socket.AF_UNIX, found["path"]
            if hasattr(pool, "get_master_address"):  # a Sentinel-managed primary
                host, port = await pool.get_master_address()
            else:
                host, port = found.get("host", "localhost"), int(found.get("port", 6379))
        else:
            host, _, port_text = name.rpartition(":")
            port = int(port_text)
        infos = await asyncio.get_running_loop().getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )
        family, _, _, _, address = infos[0]
        return family, address


def _nodes_of(client: Any) -> _Nodes | None:
    if hasattr(client, "get_node_from_key"):  # a RedisCluster
        found = client.get_connection_kwargs()
        return _Nodes(client, False, _handshake(found, db=0))
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    found = pool.connection_kwargs
    return _Nodes(client, True, _handshake(found, db=int(found.get("db") or 0)))


def _handshake(found: dict[str, Any], *, db: int) -> tuple[bytes, int]:
    """``HELLO 3`` (with ``AUTH``), ``SELECT``, ``CLIENT TRACKING ON``, pipelined; and how
    many commands that is."""
    hello: list[str | bytes | int] = ["HELLO", 3]
    password = found.get("password")
    if password:
        hello += ["AUTH", found.get("username") or "default", password]
    hello += ["SETNAME", found.get("client_name") or "prodkit-near-cache"]
    parts = [command(*hello)]
    if db:
        parts.append(command("SELECT", db))
    parts.append(command("CLIENT", "TRACKING", "ON"))
    return b"".join(parts), len(parts)


def _unsupported(client: Any) -> str | None:
    """Why tracking connections cannot be opened for ``client``'s Redis, or ``None``."""
    if hasattr(client, "get_node_from_key"):
        found = client.get_connection_kwargs()
        tls = bool(found.get("ssl")) or "SSL" in str(found.get("connection_class", ""))
    else:
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return f"a {type(client).__name__} client has no connection pool to read"
        found = pool.connection_kwargs
        tls = "SSL" in getattr(pool.connection_class, "__name__", "")
    if tls:
        return "TLS (rediss://) tracking connections are not supported"
    if found.get("credential_provider") is not None:
        return "a credential_provider is not supported by the tracking connections"
    return None
