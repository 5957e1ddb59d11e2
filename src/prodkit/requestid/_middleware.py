"""Request ids and W3C trace context for every request, echoed on every response."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prodkit._core import options as valid
from prodkit._core.context import request_id_var, span_id_var, trace_id_var
from prodkit._core.headers import message_headers, set_header
from prodkit._core.observer import on_response_start
from prodkit._core.options import build_options
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send

#: Deprecated: the scope key the request id is also stored under. Read it from the request's
#: state instead (``request_state(scope).request_id``, :mod:`prodkit.asgi`).
SCOPE_KEY = "prodkit.request_id"

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]*\Z")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")


class _RandomPool:
    """Random bytes read from the OS a block at a time, handed out in slices.

    One system call per request id would cost more than everything else the middleware does.
    A forked worker must not hand out its parent's bytes: it starts with an empty pool.
    """

    __slots__ = ("_data", "_offset")

    def __init__(self) -> None:
        self._data = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._data, self._offset = b"", 0

    def take(self, size: int) -> bytes:
        offset = self._offset
        if offset + size > len(self._data):
            self._data, offset = os.urandom(max(4096, size)), 0
        self._offset = offset + size
        return self._data[offset : offset + size]


_random = _RandomPool()


def generate_request_id() -> str:
    """Return a new random request id: 32 lower-case hex digits (128 bits from the OS)."""
    return _random.take(16).hex()


def is_valid_request_id(value: str, max_length: int = 128) -> bool:
    """Whether an inbound request id is safe to adopt, echo and log.

    It must be 1 to ``max_length`` characters from ``A-Z a-z 0-9 . _ : / + = @ -`` and start
    with a letter or digit: no spaces, control characters (log injection), quotes or non-ASCII.
    """
    return 0 < len(value) <= max_length and _SAFE_ID.match(value) is not None


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """Return ``(trace_id, parent_id)`` of a valid W3C ``traceparent`` header, or ``None``.

    Follows W3C Trace Context: version ``ff`` is invalid, version ``00`` has exactly four
    fields, all-zero trace or parent ids are invalid, and later versions may append fields.
    """
    found = _TRACEPARENT.match(value.strip())
    if found is None:
        return None
    version, trace_id, parent_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestIdOptions:
    """The options of :class:`RequestIdMiddleware`, checked when made.

    Attributes:
        header_name: the request and response header (default ``"X-Request-ID"``).
        generator: returns a new id (default :func:`generate_request_id`).
        validator: decides whether an inbound id is adopted (default:
            :func:`is_valid_request_id`, up to ``max_length`` characters); return ``False`` for
            all to never trust clients.
        max_length: the longest inbound id the built-in validator adopts (default ``128``).

    Raises:
        ConfigurationError: ``header_name`` is not a header name, or ``max_length`` is not an
            integer of at least 1.
    """

    header_name: str = "X-Request-ID"
    generator: Callable[[], str] = generate_request_id
    validator: Callable[[str], bool] | None = None
    max_length: int = 128

    def __post_init__(self) -> None:
        valid.header_name("header_name", self.header_name)
        valid.positive_int("max_length", self.max_length, example=128)


class RequestIdKeywords(TypedDict, total=False):
    """:class:`RequestIdOptions`'s fields as keywords of :class:`RequestIdMiddleware`."""

    header_name: str
    generator: Callable[[], str]
    validator: Callable[[str], bool] | None
    max_length: int


class RequestIdMiddleware:
    """Give every HTTP and WebSocket request an id, and put it on every response.

    An inbound id is adopted only if ``validator`` accepts it; otherwise (missing, too long,
    unsafe characters) a new one is generated, so hostile values are never echoed or logged.
    The id (and the trace id of a valid ``traceparent``) is available through
    :func:`prodkit.get_request_id` / :func:`prodkit.get_trace_id` while the request runs, and
    reset afterwards. The response header is set on every response that passes through this
    middleware, including problems generated by other prodkit middlewares and unhandled 500s,
    and on a WebSocket handshake's answer (``websocket.accept`` or a denial response). Wrapped
    twice, the inner middleware keeps the outer one's id.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import RequestIdMiddleware, get_request_id

        async def checkout(request):
            return JSONResponse({"request_id": get_request_id()})  # for logs, errors, calls

        app = RequestIdMiddleware(Starlette(routes=[Route("/checkout", checkout)]))

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                adopted = await client.get("/checkout", headers={"X-Request-ID": "web-7f3a"})
                replaced = await client.get("/checkout", headers={"X-Request-ID": "<script>"})
            assert adopted.headers["X-Request-ID"] == adopted.json()["request_id"] == "web-7f3a"
            assert len(replaced.headers["X-Request-ID"]) == 32  # unsafe: a new id instead

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`RequestIdOptions`'s fields by name, instead of ``options``:
            ``RequestIdMiddleware(app, header_name="X-Correlation-ID")``.

    Raises:
        ConfigurationError: an invalid option (see :class:`RequestIdOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: RequestIdOptions | None = None,
        **keywords: Unpack[RequestIdKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(RequestIdOptions, options, keywords)
        self.header_name = options.header_name
        self._header = options.header_name.lower().encode("latin-1")
        self.generator = options.generator
        max_length = options.max_length
        self.validator = options.validator or (lambda value: is_valid_request_id(value, max_length))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        state = request_state(scope)
        headers = state.headers(scope)
        traceparent = headers.get(b"traceparent")
        if state.request_id is not None:
            # Wrapped twice (the stack's layer and the app's own): one request, one id, or the
            # problem body would quote an id that the outer layer's header then replaces.
            request_id = state.request_id
        else:
            inbound = headers.get(self._header)
            request_id = self.generator() if inbound is None else self._accept(inbound)
            state.request_id = request_id
        scope[SCOPE_KEY] = request_id  # deprecated, still there for code that reads it
        trace = None
        if traceparent is not None:
            trace = parse_traceparent(traceparent.decode("latin-1"))
        downstream = self._downstream(scope, send, request_id.encode("latin-1"))

        token = request_id_var.set(request_id)
        trace_tokens = None
        if trace is not None:
            trace_tokens = (trace_id_var.set(trace[0]), span_id_var.set(trace[1]))
        try:
            await self.app(scope, receive, downstream)
        finally:
            if trace_tokens is not None:
                span_id_var.reset(trace_tokens[1])
                trace_id_var.reset(trace_tokens[0])
            request_id_var.reset(token)

    def _accept(self, inbound: bytes) -> str:
        """The inbound id if it is ASCII and valid, else a new one."""
        try:
            candidate = inbound.decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        if candidate and self.validator(candidate):
            return candidate
        return self.generator()

    def _downstream(self, scope: Scope, send: Send, header_value: bytes) -> Send:
        """``send`` with the id put on the response's start message."""
        name = self._header

        def put_id(message: Message) -> None:
            set_header(message_headers(message), name, header_value)

        if scope["type"] == "http":
            # An observer rather than a plain wrapper: the access log and metrics middlewares
            # inside record the response through it, the layers inside hook into it.
            return on_response_start(send, put_id)

        async def send_with_id(message: Message) -> None:
            # The handshake's answer is the WebSocket's one HTTP response: an accept, or a
            # denial sent as an HTTP response (the WebSocket Denial Response extension).
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                put_id(message)
            await send(message)

        return send_with_id


__all__ = [
    "RequestIdKeywords",
    "RequestIdMiddleware",
    "RequestIdOptions",
    "generate_request_id",
    "is_valid_request_id",
    "parse_traceparent",
]
