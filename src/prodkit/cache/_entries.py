"""What is stored: a response as an entry's bytes, its ETag, and an entry read, written and sent.

:class:`~prodkit.cache.CachedResponse` is a stored response and its encoding; :class:`Entries`
looks a read's entry up (variants resolved, stale ones dropped) and stores one through the
:class:`~prodkit.cache.ResponseCache`; :func:`send_entry` answers a read from an entry (a
304 when ``If-None-Match`` matches) and :func:`fetch` captures the app's response as one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prodkit._core.exceptions import BackendError
from prodkit._core.headers import (
    get_all_headers,
    get_header,
    get_list_header,
    message_headers,
    set_header,
)
from prodkit._core.routing import UNMATCHED_ROUTE, route_template
from prodkit._core.types import ASGIApp, Message, RawHeaders, Receive, Scope, Send
from prodkit.cache._cache import ResponseCache, fenced
from prodkit.cache._rules import (
    CacheRequest,
    etag_matches,
    freshness_lifetime,
    parse_cache_control,
)

_RESPONSE = b"R"
_VARY = b"V"

#: Stored briefly under a key whose last response could not be stored (a 404, ``private``...),
#: so that workers stop queueing on the single-flight lease for it.
UNSTORABLE_MARKER = b"N"

#: Response headers that describe one delivery, not the stored representation.
_NOT_STORED = frozenset(
    {
        b"age",
        b"connection",
        b"content-length",
        b"etag",
        b"keep-alive",
        b"proxy-connection",
        b"set-cookie",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-cache",
        b"x-request-id",
    }
)

#: Headers a 304 repeats from the stored 200 (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"expires", b"vary"}
)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response.

    Attributes:
        status: the HTTP status.
        headers: the response headers worth replaying (no ``Content-Length``, ``Set-Cookie``,
            ``Age``, hop-by-hop or per-request headers).
        body: the complete body.
        etag: the entity tag, quoted (the app's own, or computed by :func:`compute_etag`).
        stored_at: wall-clock time (``time.time()``) when the response was generated, for ``Age``.
        versions: the versions of the entry's tags when the request was looked up; the entry is
            stale as soon as any tag has another version.
        vary: lower-case request header names the response varies on.
        route: the route template the app matched when it produced the response, if it
            recorded one; a hit names it to the metrics and the access log, which otherwise
            match the request against the app's router again.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: bytes
    stored_at: float
    versions: tuple[str, ...] = ()
    vary: tuple[str, ...] = ()
    route: str | None = None

    def encode(self) -> bytes:
        """Serialise to bytes: a type byte, a JSON line of metadata, then the raw body."""
        meta = {
            "s": self.status,
            "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "e": self.etag.decode("latin-1"),
            "t": self.stored_at,
            "v": list(self.versions),
            "y": list(self.vary),
        }
        if self.route is not None:
            meta["r"] = self.route
        return _RESPONSE + json.dumps(meta, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse:
        """Inverse of :meth:`encode`; raises ``ValueError`` on anything else."""
        if data[:1] != _RESPONSE:
            raise ValueError("not a cached response")
        end = data.find(b"\n", 1)
        if end < 0:
            raise ValueError("truncated cached response")
        meta = json.loads(data[1:end])
        route = meta.get("r")  # absent from entries of earlier versions
        return cls(
            status=int(meta["s"]),
            headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"]),
            body=data[end + 1 :],
            etag=meta["e"].encode("latin-1"),
            stored_at=float(meta["t"]),
            versions=tuple(meta["v"]),
            vary=tuple(meta["y"]),
            route=route if isinstance(route, str) else None,
        )


class DecodedEntries:
    """The entries decoded lately, by store key, so that a hit neither parses nor copies.

    Each is kept with the exact bytes it was decoded from and is reused only while the store
    returns those bytes again (the same object from the memory store, equal bytes from Redis);
    anything else is decoded afresh. Least recently used entries go first, to stay within
    ``max_entries`` and ``max_bytes`` (the stored values' sizes).
    """

    __slots__ = ("_bytes", "_items", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int = 1024, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, CachedResponse]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def decode(self, key: str, value: bytes) -> CachedResponse:
        """:meth:`CachedResponse.decode` of ``value``, the one stored under ``key``."""
        known = self._items.get(key)
        if known is not None:
            if known[0] is value or known[0] == value:
                self._items.move_to_end(key)
                return known[1]
            del self._items[key]
            self._bytes -= len(known[0])
        entry = CachedResponse.decode(value)
        if len(value) <= self.max_bytes:
            while self._items and (
                len(self._items) >= self.max_entries or self._bytes + len(value) > self.max_bytes
            ):
                self._bytes -= len(self._items.popitem(last=False)[1][0])
            self._items[key] = (value, entry)
            self._bytes += len(value)
        return entry


def encode_vary_record(names: Sequence[str]) -> bytes:
    """The record stored under a base key whose responses vary on request headers ``names``."""
    return _VARY + ",".join(names).encode("latin-1")


def decode_vary_record(data: bytes) -> tuple[str, ...] | None:
    """The header names of a vary record, or ``None`` when ``data`` is not one."""
    if data[:1] != _VARY:
        return None
    text = data[1:].decode("latin-1")
    return tuple(text.split(",")) if text else ()


def compute_etag(body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A strong entity tag (RFC 9110 section 8.8.3) from the body and its representation headers.

    sha256 over ``Content-Type``, ``Content-Encoding`` and the body, truncated to 128 bits: the
    same bytes give the same tag in every process and on every host, unlike tags built from
    ``id()``, ``hash()`` or timestamps.
    """
    headers = list(headers)
    digest = hashlib.sha256()
    for name in (b"content-type", b"content-encoding"):
        digest.update(get_header(headers, name) or b"")
        digest.update(b"\0")
    digest.update(body)
    return b'"' + digest.hexdigest()[:32].encode() + b'"'


def stored_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers kept in a cache entry."""
    return tuple((k, v) for k, v in headers if k not in _NOT_STORED)


# -- a read's entry, looked up and stored through the cache -------------------------------------


Values = tuple[list[tuple[str, bytes]], float]


class Entries:
    """A request's entry: looked up (variants resolved, stale ones dropped) and stored.

    Remembers the last entries it decoded (see :class:`DecodedEntries`), so a repeated hit
    neither parses nor copies the body. ``wall_clock`` dates entries and tells their age.
    """

    __slots__ = ("cache", "decoded", "wall_clock")

    def __init__(self, cache: ResponseCache, wall_clock: Callable[[], float]) -> None:
        self.cache = cache
        self.wall_clock = wall_clock
        self.decoded = DecodedEntries()

    def age(self, entry: CachedResponse) -> int:
        """Whole seconds since ``entry`` was generated (its ``Age``, RFC 9111 section 5.1)."""
        return max(0, int(self.wall_clock() - entry.stored_at))

    def usable(self, entry: CachedResponse | None, max_age: int | None) -> CachedResponse | None:
        """``entry`` unless it is older than the request's ``max-age``."""
        if entry is None or (max_age is not None and self.age(entry) > max_age):
            return None
        return entry

    async def lookup(self, request: CacheRequest) -> CachedResponse | None:
        """The fresh entry for ``request``, or ``None`` (raises ``BackendError``).

        Records the tags' current versions on ``request`` (a computed entry is stamped with
        them), whether they say a write is under way (then nothing is stored), and whether the
        last answer for the key could not be stored.
        """
        found = await self.cache.get(request.entry_key, request.tags)
        request.versions = found.versions
        entry = await self._decode(request, found.value)
        if entry is not None and entry.versions == found.versions:
            return entry
        # A miss (or an entry a write made stale): the one place that looks for a fence, as
        # only an entry computed now could be stored. A hit never carries a live fence.
        request.fenced = fenced(found.versions, self.cache.wall_clock())
        return None

    def held(self, request: CacheRequest) -> CachedResponse | None:
        """The fresh entry for ``request`` if a near cache holds it, found without suspending;
        ``None``: ask :meth:`lookup` (which also reads variants and the unstorable marker)."""
        near = self.cache._near
        if near is None or self.cache.pending_invalidations:
            return None
        found = near.held(request.entry_key, request.tags)
        value = None if found is None else found.value
        if value is None or value == UNSTORABLE_MARKER or decode_vary_record(value) is not None:
            return None
        try:
            entry = self.decoded.decode(request.entry_key, value)
        except (ValueError, KeyError, TypeError):
            return None
        if found is None or entry.versions != found.versions:
            return None  # counted by the lookup that follows, if that one answers
        near.count_hit()
        request.versions = found.versions
        return entry

    async def _decode(self, request: CacheRequest, value: bytes | None) -> CachedResponse | None:
        """The entry stored under the request's key (its variant, for a vary record)."""
        if value is None:
            return None
        if value == UNSTORABLE_MARKER:
            request.unstorable = True
            return None
        key = request.entry_key
        names = decode_vary_record(value)
        if names is not None:
            key = request.variant_key(names)
            value = (await self.cache.get(key, ())).value
            if value is None:
                return None
        try:
            return self.decoded.decode(key, value)
        except (ValueError, KeyError, TypeError):
            return None  # written by an incompatible version: treat as a miss

    async def versions_before(self, request: CacheRequest) -> tuple[str, ...]:
        """The tags' versions *before* the app runs: a write during the call leaves the entry stale."""
        if request.versions is not None:
            return request.versions
        try:
            versions = (await self.cache.get(request.entry_key, request.tags)).versions
        except BackendError:
            return unreadable_versions(request)
        request.fenced = fenced(versions, self.cache.wall_clock())
        return versions

    async def store(self, request: CacheRequest, entry: CachedResponse | None) -> None:
        """Store what the app answered (see :func:`values`); store failures are ignored."""
        stored, ttl = values(request, entry)
        with contextlib.suppress(BackendError):
            for key, value in stored:
                await self.cache.set(key, value, ttl)

    async def complete(
        self, request: CacheRequest, entry: CachedResponse | None, token: str
    ) -> None:
        """Store what the app answered and release the lease ``token`` holds, in one round trip.

        Waiters then find the entry as soon as the lease is gone. Store failures are ignored.
        """
        stored, ttl = values(request, entry)
        with contextlib.suppress(BackendError):
            await self.cache.complete(stored, ttl, request.lock_key, token)


def unreadable_versions(request: CacheRequest) -> tuple[str, ...]:
    """Tag versions for a store that did not answer: never equal to real ones, so not reusable."""
    return ("?",) * len(request.tags)


def values(request: CacheRequest, entry: CachedResponse | None) -> Values:
    """What to store for a computed response, and for how long.

    Nothing for an unstorable response, or one computed while a write to its tags was under
    way, except, briefly, a marker that tells workers waiting on this key's lease not to wait
    for an entry next time.
    """
    if entry is None or request.fenced:
        return [(request.entry_key, UNSTORABLE_MARKER)], min(request.ttl, 1.0)
    ttl = request.ttl
    # The response's own freshness (Cache-Control, else Expires) can shorten the rule's TTL,
    # never lengthen it.
    lifetime = freshness_lifetime(entry.headers, entry.stored_at)
    if lifetime is not None:
        ttl = min(ttl, lifetime)
    if ttl <= 0:
        return [], 0.0
    data = entry.encode()
    if entry.vary:
        return [
            (request.entry_key, encode_vary_record(entry.vary)),
            (request.variant_key(entry.vary), data),
        ], ttl
    return [(request.entry_key, data)], ttl


# -- answering from an entry, and capturing the app's answer as one -----------------------------


#: Response directives that let a shared cache store the answer to a request with credentials
#: (RFC 9111 section 3.5).
_SHAREABLE = frozenset({"public", "s-maxage", "must-revalidate"})


async def send_entry(
    send: Send,
    request: CacheRequest,
    entry: CachedResponse,
    *,
    age: int | None,
    routed: bool = False,
) -> None:
    """Answer from ``entry``: 200 with body (none for HEAD), or 304 for a matching ETag.

    ``age``: the entry's ``Age`` on a hit (``X-Cache: HIT``); ``None`` for an entry the app
    computed for this very request or for the read it followed (``X-Cache: MISS``).
    ``routed``: the app ran for this request (and recorded its route on the scope).
    """
    if not routed and entry.route is not None:
        # The app's route for this response, as if it had routed the request: the metrics
        # and the access log outside need not match it against the router again.
        request.scope.setdefault("path_template", entry.route)
    headers: RawHeaders
    if (
        request.if_none_match is not None
        and 200 <= entry.status < 300
        and etag_matches(request.if_none_match, entry.etag)
    ):
        headers = [(k, v) for k, v in entry.headers if k in NOT_MODIFIED_HEADERS]
        headers.append((b"etag", entry.etag))
        status = 304
        body = b""
    else:
        headers = [
            *entry.headers,
            (b"etag", entry.etag),
            (b"content-length", b"%d" % len(entry.body)),
        ]
        status = entry.status
        body = b"" if request.head else entry.body
    if age is None:
        headers.append((b"x-cache", b"MISS"))
    else:
        headers.append((b"x-cache", b"HIT"))
        headers.append((b"age", b"%d" % age))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def miss_send(send: Send) -> Send:
    """``send`` that marks the response ``X-Cache: MISS`` (an app's answer the cache keeps out of)."""

    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            set_header(message_headers(message), b"x-cache", b"MISS")
        await send(message)

    return marked


def storable(request: CacheRequest, status: int, headers: RawHeaders, now: float) -> bool:
    """Whether RFC 9111 lets a shared cache store this response (section 3).

    A response already stale when it is generated (``max-age=0``, an ``Expires`` in the past
    or not a date; :func:`freshness_lifetime`) is not stored: without revalidation it could
    never be used, and neither is one whose ``Cache-Control`` is malformed (what it meant to
    forbid cannot be known). The response to a request with credentials on a shared route
    (``allow_credentials`` without ``per_caller``) is stored only when it says ``public``,
    ``s-maxage`` or ``must-revalidate`` (section 3.5).
    """
    if status not in request.statuses:
        return False
    if get_header(headers, b"set-cookie") is not None:
        return False
    directives, well_formed = parse_cache_control(get_all_headers(headers, b"cache-control"))
    if not well_formed or {"no-store", "private", "no-cache"} & directives.keys():
        return False
    if request.shared_credentials and not _SHAREABLE & directives.keys():
        return False
    lifetime = freshness_lifetime(headers, now, directives)
    if lifetime is not None and lifetime <= 0:
        return False
    if "*" in get_list_header(headers, b"vary"):
        return False
    return get_header(headers, b"content-range") is None


async def fetch(
    app: ASGIApp,
    request: CacheRequest,
    receive: Receive,
    send: Send,
    *,
    max_body_bytes: int,
    versions: tuple[str, ...],
    wall_clock: Callable[[], float],
    on_entry: Callable[[CachedResponse], None] | None = None,
) -> CachedResponse | None:
    """Run the app for ``request``; return its response as an entry if a cache may store it.

    ``versions`` are the tag versions read before the app ran (a write during the call leaves
    the entry stale); ``wall_clock`` dates the entry; ``on_entry`` sees the entry before the
    client does.
    """
    responder = _Responder(request, send, max_body_bytes, versions, wall_clock, on_entry)
    await app(request.scope, receive, responder.send)
    return responder.entry


class _Responder:
    """One miss's ``send``: buffers a storable response to ETag it, streams anything else."""

    __slots__ = (
        "chunks",
        "downstream",
        "entry",
        "max_body_bytes",
        "on_entry",
        "request",
        "size",
        "start",
        "streaming",
        "versions",
        "wall_clock",
    )

    def __init__(
        self,
        request: CacheRequest,
        send: Send,
        max_body_bytes: int,
        versions: tuple[str, ...],
        wall_clock: Callable[[], float],
        on_entry: Callable[[CachedResponse], None] | None,
    ) -> None:
        self.request = request
        self.downstream = send
        self.max_body_bytes = max_body_bytes
        self.versions = versions
        self.wall_clock = wall_clock
        self.on_entry = on_entry
        self.start: Message | None = None  # held back until the body is complete
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False  # not storable: every message goes straight through
        self.entry: CachedResponse | None = None

    async def send(self, message: Message) -> None:
        if self.streaming:
            await self.downstream(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            headers = message_headers(message)
            if storable(self.request, int(message["status"]), headers, self.wall_clock()):
                self.start = message
            else:
                self.streaming = True
                set_header(headers, b"x-cache", b"MISS")
                await self.downstream(message)
        elif kind != "http.response.body" or self.start is None:
            await self.downstream(message)
        else:
            await self._body(self.start, message)

    async def _body(self, start: Message, message: Message) -> None:
        body: bytes = message.get("body", b"")
        self.chunks.append(body)
        self.size += len(body)
        more = bool(message.get("more_body", False))
        if self.size > self.max_body_bytes:
            # Too big to keep: send what was held back and stream the rest through.
            self.streaming = True
            set_header(message_headers(start), b"x-cache", b"MISS")
            await self.downstream(start)
            await self.downstream(
                {"type": "http.response.body", "body": b"".join(self.chunks), "more_body": more}
            )
        elif not more:
            self.entry = self._entry(start, b"".join(self.chunks))
            if self.on_entry is not None:
                self.on_entry(self.entry)
            await send_entry(self.downstream, self.request, self.entry, age=None, routed=True)

    def _entry(self, start: Message, body: bytes) -> CachedResponse:
        headers = message_headers(start)
        return CachedResponse(
            status=int(start["status"]),
            headers=stored_headers(headers),
            body=body,
            etag=get_header(headers, b"etag") or compute_etag(body, headers),
            stored_at=self.wall_clock(),
            versions=self.versions,
            vary=tuple(sorted({n.lower() for n in get_list_header(headers, b"vary")})),
            route=_app_route(self.request.scope),
        )


def _app_route(scope: Scope) -> str | None:
    """The route template the app recorded on ``scope`` while it routed, if any."""
    template = route_template(scope)
    return None if template == UNMATCHED_ROUTE else template


__all__ = [
    "NOT_MODIFIED_HEADERS",
    "UNSTORABLE_MARKER",
    "CachedResponse",
    "DecodedEntries",
    "Entries",
    "compute_etag",
    "decode_vary_record",
    "encode_vary_record",
    "fetch",
    "miss_send",
    "send_entry",
    "storable",
    "stored_headers",
    "unreadable_versions",
    "values",
]
