"""A request body must arrive within a deadline; until it has, the request is not let further in.

A client that sends its headers and then dribbles or stalls its body would otherwise hold
whatever the layers below hand out per request (a concurrency slot, a database connection, an
idempotency claim) for as long as it likes. This layer reads the whole body first, bounded in
time, and only then calls the app with the same bytes; past the deadline it answers 408.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.outcome import PathFilter
from prodkit._core.problems import Problem
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_TIMEOUT = "REQUEST_TIMEOUT"

#: Seconds a request body may take to arrive when nothing else is said.
DEFAULT_BODY_TIMEOUT = 10.0

# HTTP/1.x says when there is no body (RFC 9112 §6.3): neither header, or a length of 0.
# HTTP/2 and 3 may send a body without Content-Length, so those are always read.
_HTTP1 = frozenset({"1.0", "1.1"})


class RequestTimeoutMiddleware:
    """Answer 408 when the request body has not arrived ``body_timeout`` seconds after its headers.

    The body is read in full (honouring ``more_body``) before the app is called, and replayed to
    the app as one message; the app's later ``receive`` calls go to the server, so it still
    learns of a disconnect. Placed outside :class:`~prodkit.ConcurrencyLimitMiddleware` (as the
    recommended stack does), a request counts against the concurrency limit only once its body
    has arrived: slow uploads wait here, bounded by the deadline, and cannot take every slot.
    Past the deadline the client gets a 408 ``application/problem+json`` with ``code``
    ``REQUEST_TIMEOUT`` and ``Connection: close`` (the rest of its body is never read), and the
    app is not called (RFC 9110 §15.5.9).

    Requests that carry no body (HTTP/1.x without ``Content-Length`` or ``Transfer-Encoding``)
    pass straight through, as do WebSocket connections and ``lifespan``. Buffering means the app
    no longer streams uploads as they arrive: list streaming upload routes in ``exclude_paths``
    (they are then neither buffered nor bounded here).

    Arguments:
        app: the ASGI app to wrap.
        body_timeout: seconds the whole body may take to arrive, counted from when this layer
            first sees the request (its headers have arrived by then).
        exclude_paths: paths left alone (``/uploads/*`` for a prefix).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        exclude_paths: Iterable[str] = (),
    ) -> None:
        if isinstance(body_timeout, bool) or not isinstance(body_timeout, int | float):
            raise ConfigurationError("body_timeout must be a number of seconds (e.g. 10)")
        if not body_timeout > 0:
            raise ConfigurationError("body_timeout must be more than 0 seconds")
        self.app = app
        self.body_timeout = float(body_timeout)
        self._excluded = PathFilter(exclude_paths)
        seconds = f"{self.body_timeout:g}"
        self._timeout_problem = Problem(
            408,
            REQUEST_TIMEOUT,
            f"the request body did not arrive within {seconds} seconds; send it faster or retry",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _may_have_body(scope) or scope["path"] in self._excluded:
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                messages = await _read_messages(receive)
        except TimeoutError:
            await self._timeout_problem.send(send)
            return
        await self.app(scope, _replay(messages, receive), send)


def _may_have_body(scope: Scope) -> bool:
    if scope.get("http_version", "1.1") not in _HTTP1:
        return True
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0")):
            return True
    return False


async def _read_messages(receive: Receive) -> list[Message]:
    """The body's messages, up to the last one (``more_body`` false) or a disconnect."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the app what was read, as one message, then defers to the server."""
    if messages[-1]["type"] == "http.request":
        body = b"".join(m.get("body", b"") for m in messages)
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    else:  # the client went away mid-body: the app sees what came, then the disconnect
        pending = messages
    pending.reverse()

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


__all__ = ["DEFAULT_BODY_TIMEOUT", "REQUEST_TIMEOUT", "RequestTimeoutMiddleware"]
