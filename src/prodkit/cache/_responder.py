"""Answering reads: a stored entry sent as a response, and an app's response captured as one."""

from __future__ import annotations

from collections.abc import Callable

from prodkit._core.headers import (
    get_all_headers,
    get_header,
    get_list_header,
    message_headers,
    set_header,
)
from prodkit._core.routing import UNMATCHED_ROUTE, route_template
from prodkit._core.types import ASGIApp, Message, RawHeaders, Receive, Scope, Send
from prodkit.cache._entry import (
    NOT_MODIFIED_HEADERS,
    CachedResponse,
    compute_etag,
    etag_matches,
    freshness_lifetime,
    parse_cache_control,
    stored_headers,
)
from prodkit.cache._request import CacheRequest

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


__all__ = ["fetch", "miss_send", "send_entry", "storable"]
