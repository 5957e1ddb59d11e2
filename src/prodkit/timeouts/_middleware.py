"""A request body must arrive within a deadline; until it has, the request is not let further in.

A client that sends its headers and then dribbles or stalls its body would otherwise hold
whatever the layers below hand out per request (a concurrency slot, a database connection, an
idempotency claim) for as long as it likes. This layer reads the whole body first, bounded in
time, and only then calls the app with the same bytes; past the deadline it answers 408.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prodkit._core import options as valid
from prodkit._core.body import buffer_body
from prodkit._core.options import build_options
from prodkit._core.outcome import PathFilter
from prodkit._core.problems import Problem
from prodkit._core.state import REQUEST_STATE_KEY, request_state
from prodkit._core.types import ASGIApp, Receive, Scope, Send

REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
BODY_TOO_LARGE = "REQUEST_BODY_TOO_LARGE"

#: Seconds a request body may take to arrive when nothing else is said.
DEFAULT_BODY_TIMEOUT = 10.0
#: The largest request body buffered when nothing else is said (nginx's default too).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

# HTTP/1.x says when there is no body (RFC 9112 §6.3): neither header, or a length of 0.
# HTTP/2 and 3 may send a body without Content-Length, so those are always read.
_HTTP1 = frozenset({"1.0", "1.1"})


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestTimeoutOptions:
    """The options of :class:`RequestTimeoutMiddleware`, checked when made.

    Attributes:
        body_timeout: seconds the whole body may take to arrive, counted from when the layer
            first sees the request (its headers have arrived by then) (default
            :data:`DEFAULT_BODY_TIMEOUT`, 10 s).
        max_body_bytes: the largest body read and buffered (default
            :data:`DEFAULT_MAX_BODY_BYTES`, 1 MiB); larger is a 413.
        exclude_paths: paths left alone (``/uploads/*`` for a prefix), kept as a tuple.

    Raises:
        ConfigurationError: a ``body_timeout`` that is not positive seconds, a
            ``max_body_bytes`` that is not an integer of at least 1, or paths that are not.
    """

    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    exclude_paths: Iterable[str] = ()

    def __post_init__(self) -> None:
        valid.positive_seconds("body_timeout", self.body_timeout, example=10)
        valid.positive_int("max_body_bytes", self.max_body_bytes, example=1048576)
        paths = valid.path_list("exclude_paths", self.exclude_paths)
        object.__setattr__(self, "exclude_paths", paths)


class RequestTimeoutKeywords(TypedDict, total=False):
    """:class:`RequestTimeoutOptions`'s fields as keywords of :class:`RequestTimeoutMiddleware`."""

    body_timeout: float
    max_body_bytes: int
    exclude_paths: Iterable[str]


class RequestTimeoutMiddleware:
    """Answer 408 when the request body has not arrived ``body_timeout`` seconds after its headers.

    The body is read in full (honouring ``more_body``) before the app is called, and replayed to
    the app as one message; the app's later ``receive`` calls go to the server, so it still
    learns of a disconnect. Placed outside :class:`~prodkit.ConcurrencyLimitMiddleware` (as the
    recommended stack does), a request counts against the concurrency limit only once its body
    has arrived: slow uploads wait here, bounded by the deadline, and cannot take every slot.
    Past the deadline the client gets a 408 ``application/problem+json`` with ``code``
    ``REQUEST_TIMEOUT`` and ``Connection: close`` (the rest of its body is never read), and the
    app is not called (RFC 9110 §15.5.9). A body larger than ``max_body_bytes`` (declared by
    ``Content-Length`` or found while reading) is never buffered: the client gets a 413 problem
    ``REQUEST_BODY_TOO_LARGE`` with ``Connection: close`` at once (RFC 9110 §15.5.14), so that
    slow or large uploads cost at most that much memory each.

    Requests that carry no body (HTTP/1.x without ``Content-Length`` or ``Transfer-Encoding``)
    pass straight through, as do WebSocket connections and ``lifespan``. Buffering means the app
    no longer streams uploads as they arrive: list streaming upload routes in ``exclude_paths``
    (they are then neither buffered nor bounded here).

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import RequestTimeoutMiddleware

        async def upload(request):
            return JSONResponse({"received": len(await request.body())})

        app = RequestTimeoutMiddleware(
            Starlette(routes=[Route("/upload", upload, methods=["POST"])]),
            body_timeout=0.5,  # default 10 s
            max_body_bytes=1024,  # default 1 MiB
        )

        async def stalled():
            yield b"the first part"
            await asyncio.sleep(60)  # the rest does not come in time
            yield b"the rest"

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://files") as client:
                small = await client.post("/upload", content=b"x" * 100)
                large = await client.post("/upload", content=b"x" * 2000)
                slow = await client.post("/upload", content=stalled())
            assert small.json() == {"received": 100}
            assert large.status_code == 413
            assert large.json()["code"] == "REQUEST_BODY_TOO_LARGE"
            assert slow.status_code == 408  # the app never saw it
            assert slow.json()["code"] == "REQUEST_TIMEOUT"
            assert slow.headers["Connection"] == "close"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`RequestTimeoutOptions`'s fields by name, instead of ``options``:
            ``RequestTimeoutMiddleware(app, body_timeout=5)``.

    Raises:
        ConfigurationError: an invalid option (see :class:`RequestTimeoutOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: RequestTimeoutOptions | None = None,
        **keywords: Unpack[RequestTimeoutKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(RequestTimeoutOptions, options, keywords)
        self.body_timeout = float(options.body_timeout)
        self.max_body_bytes = max_body_bytes = options.max_body_bytes
        self._excluded = PathFilter(options.exclude_paths)
        self._excluding = bool(self._excluded)  # PathFilter's truth is a Python call
        seconds = f"{self.body_timeout:g}"
        self._timeout_problem = Problem(
            408,
            REQUEST_TIMEOUT,
            f"the request body did not arrive within {seconds} seconds; send it faster or retry",
            headers={"Connection": "close"},
        )
        self._too_large_problem = Problem(
            413,
            BODY_TOO_LARGE,
            f"the request body is larger than {max_body_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._excluding and self._excluded.excludes(scope)):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared == 0:
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large_problem.send(send)
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                read = await buffer_body(receive, self.max_body_bytes)
        except TimeoutError:
            await self._timeout_problem.send(send)
            return
        if read.too_large:
            await self._too_large_problem.send(send)
            return
        # A client that went away mid-body: the app sees what came, then the disconnect.
        await self.app(scope, read.replay(receive), send)


def _declared_length(scope: Scope) -> int | None:
    """The body's declared length: 0 for none, ``None`` when unknown until it is read."""
    headers = (scope.get(REQUEST_STATE_KEY) or request_state(scope)).headers(scope)
    if b"transfer-encoding" in headers:
        return None
    value = headers.get(b"content-length")
    if value is not None:
        # The server has validated Content-Length; a value it let through that is not a
        # number is read like a body of unknown length.
        return int(value) if value.strip().isdigit() else None
    # HTTP/1.x without either header has no body (RFC 9112 §6.3); HTTP/2 and 3 may have one.
    return 0 if scope.get("http_version", "1.1") in _HTTP1 else None


__all__ = [
    "BODY_TOO_LARGE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "REQUEST_TIMEOUT",
    "RequestTimeoutKeywords",
    "RequestTimeoutMiddleware",
    "RequestTimeoutOptions",
]
