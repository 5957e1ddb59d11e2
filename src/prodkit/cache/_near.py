"""A near cache: the Redis store's entries and tag versions, served from this process's memory.

:class:`NearCacheStore` wraps a :class:`~prodkit.cache.RedisCacheStore`. It keeps what it
reads from Redis in a bounded table and answers a read it holds without a round trip; Redis
itself says when a value it holds changes, through server-assisted client-side caching
(``CLIENT TRACKING``, RESP3 push messages): each process has one connection per Redis node
(one server, each primary of a Cluster, the primary a Sentinel names), opened with
``HELLO 3`` and ``CLIENT TRACKING ON``, that does two jobs in one ordered stream:

* the reads the near table is filled from (a miss in the table: the entry, its remaining TTL
  and its tag versions, pipelined), so Redis tracks exactly the keys this process holds;
* the ``invalidate`` pushes Redis sends when one of those keys is written, deleted, expired or
  evicted (or the database flushed), each dropping what it names.

Why it is coherent (docs/caching.md, "Near cache", has the full argument):

1. Redis appends an invalidation to the tracking connection's output while it runs the write,
   before it answers the writer, and replies and pushes reach this process in the order Redis
   wrote them. A value read on the connection is therefore dropped by every later write's
   push, and a push processed before a reply was for a write the reply already reflects: no
   read can slip in between a write and its invalidation.
2. A hit first processes whatever the connection's socket holds (a zero-timeout ``poll``, then
   ``recv`` until empty), so an invalidation that has reached this host is never behind a hit.
3. A hit is served only while the connection is *current*: the reply to a command it sent at
   ``t`` has been processed, with ``t`` at most ``max_lag`` seconds ago (a ``PING`` is sent
   once the newest acknowledged command is half that old). Every invalidation Redis wrote
   before ``t`` came before that reply, so one still in flight was written less than
   ``max_lag`` ago: that is the whole window, even across hosts with a slow network.
4. Writes by this process (``bump``, ``set``, ``complete``) go through the wrapped store's
   connections; they drop their keys from the table before and after, and a read that was in
   flight across a ``bump`` keeps nothing, so the writer's own process never serves from
   before its write either. A ``bump`` that takes a fence or invalidates on its own then waits
   for Redis to answer a ``PING``: Redis writes other processes' invalidations in the same pass
   of its event loop as its reply to the bump, perhaps just after it, and answers nothing
   later before that pass is over; so they have left Redis before the write commits.
5. A lost connection (Redis killed, restarted, failed over, a reply later than ``timeout``)
   empties the whole table: until the connection is back, every read goes to Redis through the
   wrapped store, exactly as without a near cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, counter, gauge
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit.cache._redis import RedisCacheStore
from prodkit.cache._resp import command
from prodkit.cache._store import FenceChange, Lookup
from prodkit.cache._tracking import (
    _FIRST_RETRY,
    _LAST_RETRY,
    _OVERHEAD,
    _PING,
    _SINGLE,
    Callback,
    _Link,
    _nodes_of,
    _Read,
    _Unread,
    _unsupported,
)


class NearCacheStore:
    """A :class:`~prodkit.cache.CacheStore` that serves the Redis store's reads from memory.

    Wrap the :class:`~prodkit.cache.RedisCacheStore` every worker shares::

        cache = ResponseCache(NearCacheStore(RedisCacheStore.from_url("redis://localhost:6379/0")))

    A read this process made before is answered from memory, without a round trip; Redis tells
    every process when a key it read changes (``CLIENT TRACKING`` on one RESP3 connection per
    node), so a write in any worker or host drops the value everywhere. A hit first processes
    the invalidations already in that connection's socket, and is served only while the
    connection has answered a command sent at most ``max_lag`` seconds ago: an invalidation
    written by Redis more than ``max_lag`` before a read is never behind it, whatever the
    network does. Needs Redis 6 or later; works on one server, a Redis Cluster (one
    connection per primary) and a Sentinel-managed primary. A TLS (``rediss://``) client or a
    credential provider turns the near cache off (logged once): the store then only passes
    reads through.

    When the tracking connection is lost (Redis down, restarted or failed over, a reply later
    than ``timeout``), the table is emptied and reads go to Redis through ``store`` as if there
    were no near cache, until the connection is back (tried again after 0.1 s, doubling up to
    5 s). Writes (``set``, ``complete``, ``bump``) and leases always go to ``store``.

    Arguments:
        store: the Redis store shared by every worker; its client's connection settings
            (address, database, username and password) are used for the tracking connections.
        max_entries: most entries held at once (default ``10_000``).
        max_bytes: most bytes of entries held at once, keys and values and 64 bytes each
            (default ``33554432``, 32 MiB); the least recently used go first.
        max_tags: most tag versions held at once (default ``100_000``); the oldest go first.
        max_lag: seconds since the tracking connection last proved that nothing was pending,
            beyond which hits wait for it (they are read from Redis meanwhile); the bound on
            how late an invalidation can be (default ``0.01``).
        timeout: seconds a tracking connection may take to connect or to answer a command
            before it counts as lost (default ``0.5``).
        registry: the Prometheus registry of the ``{metric_prefix}cache_near_*`` metrics
            (default: prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of those metric names (default ``"prodkit_"``).
        logger: a structlog logger (default: structlog's ``prodkit.cache`` logger).
    """

    def __init__(
        self,
        store: RedisCacheStore,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        max_tags: int = 100_000,
        max_lag: float = 0.01,
        timeout: float = 0.5,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = DEFAULT_PREFIX,
        logger: object | None = None,
    ) -> None:
        if not isinstance(store, RedisCacheStore):
            raise ConfigurationError(
                f"NearCacheStore wraps a RedisCacheStore, not {type(store).__name__}: "
                "NearCacheStore(RedisCacheStore.from_url(url))"
            )
        self.store = store
        self.max_entries = valid.positive_int("max_entries", max_entries, example=10_000)
        self.max_bytes = valid.positive_int("max_bytes", max_bytes, example=32 * 1024 * 1024)
        self.max_tags = valid.positive_int("max_tags", max_tags, example=100_000)
        self.max_lag = valid.positive_seconds("max_lag", max_lag, example=0.01)
        self.timeout = valid.positive_seconds("timeout", timeout, example=0.5)
        self.logger = safe_logger("prodkit.cache", logger)
        self._prefix = store.key_prefix
        self._prefix_bytes = store.key_prefix.encode()
        self._half_lag = self.max_lag / 2
        self._nodes = _nodes_of(store.client)
        # key -> (value, deadline on the monotonic clock); least recently used first
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._tags: dict[str, str] = {}  # tag key -> version; oldest first
        self._bytes = 0
        self._links: dict[str, _Link] = {}  # by node name, open and tracking
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # node -> (not before, next delay)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0  # local writes so far: a read in flight across one keeps nothing
        self._down = False  # "near cache off" was logged, "near cache on" not yet
        self._closed = False
        reads = counter(
            f"{metric_prefix}cache_near_reads_total",
            "Reads of the response cache's store by the near cache, by outcome: hit (from "
            "this process's memory), miss (from Redis, kept), bypass (from Redis through the "
            "shared client: the tracking connection is down or lagging).",
            ["outcome"],
            registry=registry,
        )
        self._hit = reads.labels("hit")
        self._miss = reads.labels("miss")
        self._bypass = reads.labels("bypass")
        self._flushes = counter(
            f"{metric_prefix}cache_near_flushes_total",
            "Times the near cache emptied itself, by reason: disconnected (a tracking "
            "connection was lost), server (Redis was flushed), closed.",
            ["reason"],
            registry=registry,
        )
        self._entries_gauge = gauge(
            f"{metric_prefix}cache_near_entries",
            "Entries the near cache holds in this process's memory.",
            registry=registry,
        )
        self._bytes_gauge = gauge(
            f"{metric_prefix}cache_near_bytes",
            "Bytes of entries the near cache holds in this process's memory.",
            registry=registry,
        )
        self._counted = (0, 0)  # what the gauges were last moved by, from this store
        reason = _unsupported(store.client)
        if reason is not None:
            self._nodes = None
            self.logger.warning("near cache unavailable", reason=reason)

    # -- what tests and operators look at --------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes of entries held (keys, values and 64 bytes each), at most ``max_bytes``."""
        return self._bytes

    @property
    def tracking(self) -> bool:
        """Whether a tracking connection is open, so reads can be answered from memory."""
        return bool(self._links)

    async def connect(self) -> bool:
        """Open the tracking connections now rather than on the first reads (to every primary
        the client knows, on a Cluster); whether one is open. Failures are logged and tried
        again later, as on reads; nothing is raised."""
        if self._nodes is None or self._closed:
            return False
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._rebind(loop)
        if not self._nodes.single:
            with contextlib.suppress(Exception):  # unreachable: connecting fails below
                await self._nodes.client.initialize()
        names = [_SINGLE] if self._nodes.single else self._nodes.primaries()
        for name in names:
            if name not in self._links:
                self._retry.pop(name, None)
                self._connect(name)
        tasks = [self._connecting[name] for name in names if name in self._connecting]
        if tasks:
            await asyncio.wait(tasks)
        return self.tracking

    # -- reads ---------------------------------------------------------------------------

    def peek(self, key: str, tags: Sequence[str] = ()) -> Lookup | None:
        """What :meth:`get` would return, if it is held in memory and can be served now.

        Never suspends and never raises: ``None`` means "ask :meth:`get`". First processes
        the invalidations already received, and answers only while the tracking connections
        are current (see the class docstring).
        """
        found = self.held(key, tags)
        if found is not None:
            self._hit.inc()
        return found

    def held(self, key: str, tags: Sequence[str] = ()) -> Lookup | None:
        """:meth:`peek`, not counted as a read (call :meth:`count_hit` if it is used)."""
        if key not in self._entries or not self._current():
            return None
        found = self._entries.get(key)  # processing invalidations may have dropped it
        if found is None:
            return None
        value, deadline = found
        if deadline <= self._now:
            self._drop(key)
            return None
        versions = self._tags
        try:
            stamped = tuple([versions[tag] for tag in tags])
        except KeyError:
            return None
        self._entries.move_to_end(key)
        return Lookup(value, stamped)

    def count_hit(self) -> None:
        """Count a read answered from memory (:meth:`held`'s answer was used)."""
        self._hit.inc()

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        """From memory when held (see :meth:`peek`), else from Redis: on the tracking
        connection (and kept), or through ``store`` while that is down."""
        found = self.peek(key, tags)
        if found is not None:
            return found
        plan = self._plan(key, tags)
        if plan is not None:
            try:
                found = await self._read(plan, key, tags)
            except _Unread:
                pass
            else:
                self._miss.inc()
                return found
        self._bypass.inc()
        return await self.store.get(key, tags=tags)

    def _current(self) -> bool:
        """Process what the tracking connections hold; whether all of them are current."""
        links = self._links
        if not links:
            return False
        now = self._now = time.monotonic()
        poll = self._poll
        if poll is None or poll.poll(0):
            for link in list(links.values()):
                link.drain()  # a connection lost meanwhile empties the table
        current = bool(links)
        for link in links.values():
            lag = now - link.acked
            if lag > self._half_lag:
                if link.waiting and now - link.waiting[0][0] > self.timeout:
                    link.fail(f"no reply within {self.timeout}s")
                    return False
                if now - link.sent > self._half_lag:
                    link.send(_PING, (None,))
                if lag > self.max_lag:
                    current = False
        return current

    def _plan(self, key: str, tags: Sequence[str]) -> list[tuple[_Link, list[int]]] | None:
        """The tracking connections to read ``key`` and ``tags`` on, with the indexes of the
        keys each reads (0 the entry, then the tags); ``None`` when one is not open."""
        if self._nodes is None or self._closed:
            return None
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._rebind(loop)
        if self._nodes.single:
            link = self._links.get(_SINGLE)
            if link is None:
                self._connect(_SINGLE)
                return None
            return [(link, list(range(len(tags) + 1)))]
        plan: dict[str, tuple[_Link, list[int]]] = {}
        for index, name in enumerate(self._nodes.names([key, *tags], self._prefix)):
            found = plan.get(name)
            if found is None:
                link = self._links.get(name) if name else None
                if link is None:
                    if name:
                        self._connect(name)
                    return None
                found = plan[name] = (link, [])
            found[1].append(index)
        return list(plan.values())

    async def _read(
        self, plan: list[tuple[_Link, list[int]]], key: str, tags: Sequence[str]
    ) -> Lookup:
        """Read on the tracking connections, keeping what may be kept (raises ``_Unread``)."""
        read = _Read(self, [key, *tags], asyncio.get_running_loop().create_future())
        prefix = self._prefix
        for link, indexes in plan:
            if self._nodes is not None and self._nodes.single:  # one MGET (never across slots)
                names = [prefix + k for k in read.keys]
                data = command("MGET", *names) + command("PTTL", names[0])
                link.send(data, (read.many, read.ttl))
                continue
            parts: list[bytes] = []
            callbacks: list[Callback | None] = []
            for index in indexes:
                parts.append(command("GET", prefix + read.keys[index]))
                callbacks.append(read.one(index))
                if index == 0:
                    parts.append(command("PTTL", prefix + key))
                    callbacks.append(read.ttl)
            link.send(b"".join(parts), callbacks)
        try:
            async with asyncio.timeout(self.timeout):
                return await read.future
        except TimeoutError:
            for link, _ in plan:
                link.fail(f"no reply within {self.timeout}s")
            raise _Unread from None

    # -- writes go to Redis, and drop what they change from memory --------------------------

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """:meth:`RedisCacheStore.set`, the key dropped from memory first."""
        self._drop(key)
        await self.store.set(key, value, ttl)

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        """:meth:`RedisCacheStore.complete`, the keys dropped from memory first."""
        for key, _ in values:
            self._drop(key)
        await self.store.complete(values, ttl, lock, token)

    async def bump(
        self, tags: Sequence[str], ttl: float, change: FenceChange | None = None
    ) -> None:
        """:meth:`RedisCacheStore.bump`; the tags are dropped from memory before and after,
        and reads in flight across it keep nothing (they may have read the old versions)."""
        self._forget(tags)
        try:
            await self.store.bump(tags, ttl, change)
        finally:
            self._forget(tags)
        if change is None or change.writers > 0 or (change.writers == 0 and not change.at_least):
            # Redis writes the other processes' invalidations in the same pass of its event
            # loop as this reply, perhaps just after it: a command it answers after that pass
            # means they have left Redis when this returns, before a write's commit (a fence
            # taken) or its caller's next step (an invalidation on its own). Not for a fence
            # renewed or lifted: what matters reached the other processes when it was taken.
            await self._barrier(tags)

    async def _barrier(self, tags: Sequence[str]) -> None:
        """A ``PING`` answered by the node of each tag (best effort: the bump succeeded)."""
        client = self.store.client
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                if hasattr(client, "get_node_from_key"):
                    found = [client.get_node_from_key(self._prefix + tag) for tag in tags]
                    nodes = list({node.name: node for node in found}.values())
                    await client.execute_command("PING", target_nodes=nodes)
                else:
                    await client.ping()

    async def claim(self, key: str, token: str, lease: float) -> bool:
        """:meth:`RedisCacheStore.claim` (leases are never held in memory)."""
        return await self.store.claim(key, token, lease)

    async def release(self, key: str, token: str) -> bool:
        """:meth:`RedisCacheStore.release`."""
        return await self.store.release(key, token)

    async def aclose(self) -> None:
        """Close the tracking connections, forget everything, then close ``store``."""
        self._closed = True
        tasks = list(self._connecting.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        self._empty("closed")
        await self.store.aclose()

    # -- the table -------------------------------------------------------------------------

    def _keep_entry(self, key: str, value: bytes, deadline: float) -> None:
        cost = len(key) + len(value) + _OVERHEAD
        self._drop(key)
        if cost > self.max_bytes:
            return
        entries = self._entries
        while entries and (len(entries) >= self.max_entries or self._bytes + cost > self.max_bytes):
            self._drop(next(iter(entries)))
        entries[key] = (value, deadline)
        self._bytes += cost
        self._gauges()

    def _keep_tag(self, key: str, version: str) -> None:
        tags = self._tags
        tags.pop(key, None)
        if len(tags) >= self.max_tags:
            del tags[next(iter(tags))]
        tags[key] = version

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= len(key) + len(found[0]) + _OVERHEAD
            self._gauges()

    def _forget(self, keys: Sequence[str]) -> None:
        """A write by this process: drop ``keys``, and keep nothing read before now."""
        self._writes += 1
        for key in keys:
            self._tags.pop(key, None)
            self._drop(key)

    def _invalidated(self, keys: Any) -> None:
        """An ``invalidate`` push: ``keys`` changed in Redis (``None``: all of them)."""
        if keys is None:
            self._empty("server")
            return
        prefix, size = self._prefix_bytes, len(self._prefix_bytes)
        for name in keys:
            if isinstance(name, bytes) and name.startswith(prefix):
                key = name[size:].decode("utf-8", "surrogateescape")
                self._tags.pop(key, None)
                self._drop(key)

    def _empty(self, reason: str) -> None:
        if self._entries or self._tags:
            self._flushes.labels(reason).inc()
        self._entries.clear()
        self._tags.clear()
        self._bytes = 0
        self._gauges()

    def _gauges(self) -> None:
        entries, size = len(self._entries), self._bytes
        before = self._counted
        if (entries, size) != before:
            self._entries_gauge.inc(entries - before[0])
            self._bytes_gauge.inc(size - before[1])
            self._counted = (entries, size)

    # -- the tracking connections ----------------------------------------------------------

    def _connect(self, name: str) -> None:
        """Open the tracking connection to node ``name`` in the background, unless under way
        or too soon after a failure."""
        if name in self._connecting or self._closed:
            return
        not_before = self._retry.get(name, (0.0, 0.0))[0]
        if time.monotonic() < not_before:
            return
        loop = asyncio.get_running_loop()
        self._connecting[name] = loop.create_task(self._open(name))

    async def _open(self, name: str) -> None:
        nodes = self._nodes
        if nodes is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                address = await nodes.address(name)
                link = await _Link.open(self, name, address, nodes.handshake)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = self._retry.get(name, (0.0, _FIRST_RETRY))[1]
            self._retry[name] = (time.monotonic() + delay, min(delay * 2, _LAST_RETRY))
            if not self._down:
                self._down = True
                self.logger.warning(
                    "near cache off",
                    node=name or "primary",
                    reason=f"{type(exc).__name__}: {exc}",
                    retry_in_seconds=delay,
                )
            return
        finally:
            self._connecting.pop(name, None)
        if self._closed:
            link.close()
            return
        self._retry.pop(name, None)
        self._links[name] = link
        if self._poll is not None:
            self._poll.register(link.fd, select.POLLIN)
        if self._down:
            self._down = False
            self.logger.warning("near cache on", node=name or "primary")
        else:
            self.logger.debug("near cache on", node=name or "primary")

    def _lost(self, link: _Link, reason: str) -> None:
        """``link`` failed: forget it and everything held, and try again later."""
        if self._links.get(link.name) is link:
            del self._links[link.name]
        if self._poll is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(link.fd)
        flushed = len(self._entries)
        self._empty("disconnected")
        self._retry[link.name] = (time.monotonic() + _FIRST_RETRY, _FIRST_RETRY * 2)
        if not self._closed:
            self._down = True
            self.logger.warning(
                "near cache off",
                node=link.name or "primary",
                reason=reason,
                flushed=flushed,
                retry_in_seconds=_FIRST_RETRY,
            )

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new event loop (another ``asyncio.run``): connections of the old one are dropped."""
        if self._loop is not None:
            for link in list(self._links.values()):
                link.fail("the event loop changed")
            for task in self._connecting.values():
                task.cancel()
            self._connecting.clear()
            self._retry.clear()
        self._loop = loop


__all__ = ["NearCacheStore"]
