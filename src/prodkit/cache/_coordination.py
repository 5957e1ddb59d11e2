"""Concurrent requests for one entry: single flight for missing entries, fences for writes.

In this process, the first read of a missing key *leads* a flight and later reads of the key
*follow* it: they wait for the leader's answer instead of calling the app. Across processes,
the leader takes a lease in the store (``SET NX PX`` with an owner token) and computes, while
leaders in other processes poll for the entry it stores; one still waiting when the lease runs
out computes itself rather than hang (:class:`SingleFlight`).

A write to a path that cached routes match is fenced on that path's and the routes' tags while
it runs, and invalidates them again when it returns (:class:`Invalidation`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prodkit._core.callers import Caller
from prodkit._core.exceptions import BackendError
from prodkit._core.routing import RouteTable
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.cache._cache import ResponseCache
from prodkit.cache._entries import (
    CachedResponse,
    Entries,
    fetch,
    miss_send,
    send_entry,
    unreadable_versions,
)
from prodkit.cache._memory import MemoryCacheStore
from prodkit.cache._rules import CacheRequest, Outcome, Route

# -- reads: one computation per missing entry ---------------------------------------------------


Flight = asyncio.Future["_Shared | None"]

_FIRST_POLL = 0.005  # seconds before a worker waiting on a lease looks for the entry
_MAX_POLL = 0.05


@dataclass(frozen=True, slots=True)
class _Shared:
    """What a leader hands the reads that follow it."""

    entry: CachedResponse
    fetched: bool  # computed by the app now (followers: "coalesced"), or read from the store
    vary_digest: str  # the leader's digest of the entry's Vary headers

    def fits(self, request: CacheRequest) -> bool:
        """Whether the entry is the variant ``request`` selects."""
        vary = self.entry.vary
        return not vary or request.vary_digest(vary) == self.vary_digest


@dataclass(slots=True)
class _Lease:
    """A leader's hold on its key's lease in the store; ``held``: it must be given back."""

    token: str = ""  # drawn only once a read has missed
    held: bool = False


class SingleFlight:
    """Answers ``GET`` reads of cached routes: from the store, a leader, or the app.

    Arguments:
        app: the wrapped ASGI app.
        entries: reads and writes entries.
        count: counts a read's outcome, by route template.
        lock_lease: seconds a leader may compute before others stop waiting for it.
        max_body_bytes: larger responses are streamed through and not stored.
    """

    __slots__ = (
        "_flights",
        "_inline",
        "_near",
        "app",
        "cache",
        "count",
        "entries",
        "lock_lease",
        "max_body_bytes",
    )

    def __init__(
        self,
        app: ASGIApp,
        entries: Entries,
        count: Callable[[str, Outcome], None],
        *,
        lock_lease: float,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.entries = entries
        self.cache: ResponseCache = entries.cache
        self.count = count
        self.lock_lease = lock_lease
        self.max_body_bytes = max_body_bytes
        # The memory store answers without suspending (and, without a breaker, cannot fail).
        self._inline = isinstance(self.cache.store, MemoryCacheStore) and self.cache.breaker is None
        self._near = self.cache._near is not None  # it answers what it holds without suspending
        # Flights in progress by entry key, with the cache generation each one started at.
        self._flights: dict[str, tuple[Flight, int]] = {}

    async def serve(
        self, request: CacheRequest, receive: Receive, send: Send, max_age: int | None
    ) -> None:
        """Answer ``request``, following the flight for its key if there is one, else leading."""
        joined = self._flights.get(request.base)
        if joined is not None:
            await self._follow(request, receive, send, max_age, joined)
            return
        if self._near:
            entry = self.entries.usable(self.entries.held(request), max_age)
            if entry is not None:  # no flight either: nothing suspended
                self.count(request.route.template, "hit")
                await send_entry(send, request, entry, age=self.entries.age(entry))
                return
        if self._inline:
            # The lookup cannot suspend, so no read can join a flight before it answers:
            # a flight is only needed once it has missed.
            entry = self.entries.usable(await self.entries.lookup(request), max_age)
            if entry is not None:
                self.count(request.route.template, "hit")
                await send_entry(send, request, entry, age=self.entries.age(entry))
                return
        flight: Flight = asyncio.get_running_loop().create_future()
        self._flights[request.base] = (flight, self.cache.generation)
        try:
            await self._lead(request, receive, send, max_age, flight, looked_up=self._inline)
        finally:
            if not flight.done():
                flight.set_result(None)  # followers of a failed leader ask the app themselves
            current = self._flights.get(request.base)
            if current is not None and current[0] is flight:
                del self._flights[request.base]

    async def _follow(
        self,
        request: CacheRequest,
        receive: Receive,
        send: Send,
        max_age: int | None,
        joined: tuple[Flight, int],
    ) -> None:
        """Wait for the leader's answer and serve it, or ask the app when it does not fit."""
        template = request.route.template
        flight, generation = joined
        # A write since the flight started may postdate the leader's answer: this read must
        # see the write, so it does not wait for that answer.
        if generation == self.cache.generation:
            try:
                shared = await asyncio.wait_for(asyncio.shield(flight), self.lock_lease)
            except TimeoutError:
                shared = None  # the leader outlived the lease: compute rather than hang
            if (
                shared is not None
                and shared.fits(request)
                and self.entries.usable(shared.entry, max_age) is not None
            ):
                if shared.fetched:
                    self.count(template, "coalesced")
                    await send_entry(send, request, shared.entry, age=None)
                else:
                    self.count(template, "hit")
                    await send_entry(
                        send, request, shared.entry, age=self.entries.age(shared.entry)
                    )
                return
        # Ask the app, and store nothing: the leader stores this key's entry.
        self.count(template, "miss")
        await self.app(request.scope, receive, miss_send(send))

    async def _lead(
        self,
        request: CacheRequest,
        receive: Receive,
        send: Send,
        max_age: int | None,
        flight: Flight,
        *,
        looked_up: bool,
    ) -> None:
        """Answer as the only read of its key in this process, and hand the answer on.

        ``looked_up``: the caller already looked the key up and found nothing usable.
        """
        template = request.route.template
        lease = _Lease()
        try:
            try:
                entry = None
                if not looked_up:
                    entry = self.entries.usable(await self.entries.lookup(request), max_age)
                outcome: Outcome = "hit"
                if entry is None:
                    entry = await self._wait_for_lease(request, lease, max_age)
                    outcome = "coalesced"
            except BackendError:
                # Compute without the store; versions that match nothing keep the answer out
                # of it and spare a second doomed round trip to read them.
                request.versions = unreadable_versions(request)
                self.count(template, "error")
                await self._compute(request, receive, send, flight)
                return
            if entry is not None:
                self._share(flight, request, entry, fetched=outcome == "coalesced")
                self.count(template, outcome)
                age = self.entries.age(entry) if outcome == "hit" else None
                await send_entry(send, request, entry, age=age)
                return
            self.count(template, "miss")
            computed = await self._compute(request, receive, send, flight)
            if lease.held:
                lease.held = False
                await self.entries.complete(request, computed, lease.token)
            else:
                await self.entries.store(request, computed)
        finally:
            if lease.held:
                await self.cache.release(request.lock_key, lease.token)

    async def _wait_for_lease(
        self, request: CacheRequest, lease: _Lease, max_age: int | None
    ) -> CachedResponse | None:
        """Hold the key's lease, or wait for whoever holds it (raises ``BackendError``).

        Returns the entry another worker stored meanwhile, or ``None`` when this read must
        compute it: it holds the lease, the lease outlived the wait, or waiting is pointless.
        """
        # Not when the last answer for the key could not be stored: waiting would only queue
        # the workers behind one another.
        lease.token = os.urandom(16).hex()
        deadline = time.monotonic() + self.lock_lease
        delay = _FIRST_POLL
        while not request.unstorable:
            if await self.cache.claim(request.lock_key, lease.token, self.lock_lease):
                lease.held = True
                # After waiting, the holder before us may have stored the entry just before
                # releasing. (On a first-try claim that window is one round trip wide; a
                # second computation there is harmless and not worth a read.)
                if delay == _FIRST_POLL:
                    return None
                return self.entries.usable(await self.entries.lookup(request), max_age)
            if time.monotonic() >= deadline:
                return None  # the lease outlived us: compute rather than hang
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_POLL)
            entry = self.entries.usable(await self.entries.lookup(request), max_age)
            if entry is not None:
                return entry
        return None

    async def _compute(
        self, request: CacheRequest, receive: Receive, send: Send, flight: Flight
    ) -> CachedResponse | None:
        """Run the app; its storable answer goes to the followers before the client."""
        return await fetch(
            self.app,
            request,
            receive,
            send,
            max_body_bytes=self.max_body_bytes,
            versions=await self.entries.versions_before(request),
            wall_clock=self.entries.wall_clock,
            on_entry=lambda entry: self._share(flight, request, entry, fetched=True),
        )

    def _share(
        self, flight: Flight, request: CacheRequest, entry: CachedResponse, *, fetched: bool
    ) -> None:
        """Hand the leader's answer to the reads that joined its flight, and close the flight.

        Closed as soon as it has its answer, not once the leader has stored it: a read arriving
        in between may have started after a write committed, and the answer may be from before
        it. Such a read looks the key up itself, and meets the write's fence.
        """
        if not flight.done():
            digest = request.vary_digest(entry.vary) if entry.vary else ""
            flight.set_result(_Shared(entry, fetched, digest))
        current = self._flights.get(request.base)
        if current is not None and current[0] is flight:
            del self._flights[request.base]


# -- writes: fenced while they run, invalidated after -------------------------------------------


class Invalidation:
    """Runs writes to paths that cached routes (or ``invalidate`` templates) match.

    Arguments:
        cache: where tags are invalidated.
        caller: fills ``{caller}`` in tag templates.
        routes: ``(template, route)`` pairs whose tags a write to a matching path invalidates.
    """

    __slots__ = ("_routes", "_table", "cache", "caller")

    def __init__(
        self, cache: ResponseCache, caller: Caller | None, routes: Sequence[tuple[str, Route]]
    ) -> None:
        self.cache = cache
        self.caller = caller
        self._routes = [route for _, route in routes]
        self._table = RouteTable((template, None) for template, _ in routes)

    def covers(self, path: str) -> bool:
        """Whether a write to ``path`` invalidates anything."""
        return self._table.match(path) is not None

    def tags(self, scope: Scope, path: str) -> list[str]:
        """The tags a successful write to ``path`` invalidates: the path's, then the routes'."""
        caller_name = self.caller(scope) if self.caller is not None else None
        tags = ["path:" + path]
        for route in self._routes:
            rendered = route.render_tags(path, caller_name)
            if rendered is not None:
                tags.extend(rendered)
        return tags

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Call ``app`` for a write, its tags fenced from before it starts until it returns.

        Before: the entries are stale and none is stored or served while the write runs, so
        whatever instant its process dies at, a read that starts after its commit finds the
        committed data. After (whatever the status: a 404 retry of a DELETE that committed, or
        a 500 after a commit, changed data too): new versions again, the fence lifted.
        """
        tags = self.tags(scope, scope.get("path", "/"))
        async with self.cache.invalidating(tags):
            await app(scope, receive, send)


__all__ = ["Invalidation", "SingleFlight"]
