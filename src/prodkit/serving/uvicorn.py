"""uvicorn's httptools protocol with a bounded request head and a gentle close at shutdown.

uvicorn takes an HTTP protocol class, or its import path, as ``Config(http=...)`` and
``--http``; ``prodkit serve`` gives it :class:`HttpProtocol`, and so can plain uvicorn::

    uvicorn myservice.main:app --workers 4 --http prodkit.serving.uvicorn:HttpProtocol

(gunicorn: ``-k prodkit.serving.gunicorn.Worker``). Two things change, nothing else:

* **The request head is bounded where it arrives.** httptools has no head limit at all, and
  h11's ``max_incomplete_event_size`` applies only to a head that arrives in pieces: a 40 KB
  header, or 10,000 headers, sent in one write are parsed whole and turned into an ASGI scope.
  Here every read is measured before the parser sees it: the bytes of the head up to its blank
  line, and its line ends (one per header). Past ``max_bytes`` or ``max_headers`` the client
  gets a 431 problem ``REQUEST_HEAD_TOO_LARGE`` with ``Connection: close``, the connection is
  closed, and the app never hears of it (a warning line, at most one per
  :data:`REFUSAL_LOG_INTERVAL` per worker). Heads that follow another request in the same read
  (pipelining) are measured by the parser's callbacks instead, with the same limits.
* **Shutdown answers what is already on its way.** At shutdown uvicorn closes every connection
  that is between requests at once, so a request written just before (a keep-alive client's
  next request, or the first one on a connection accepted a moment ago) is cut without an
  answer. Here such a connection stays open for :data:`CLOSE_GRACE` seconds: a request that
  arrives is served with ``Connection: close``, then the connection closes.

llhttp (httptools' parser) refuses a request with both ``Content-Length`` and
``Transfer-Encoding`` itself (RFC 9112 section 6.3); its 400 is a problem too, and the
connection is closed after it, so bytes smuggled after the body never run.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from prodkit._core.logs import safe_logger
from prodkit.asgi import encode_problem, problem_dict
from prodkit.requestid import generate_request_id
from prodkit.serving._head import HeadMeter
from prodkit.serving._options import (
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_HEADERS,
    MALFORMED_REQUEST,
    REQUEST_HEAD_TOO_LARGE,
)

#: Seconds a connection that is between requests stays open once the server shuts down.
CLOSE_GRACE = 1.0

#: Seconds between two refusal lines (400, 431) of one process; the refusals in between are
#: counted, and the next line carries that count as ``suppressed``.
REFUSAL_LOG_INTERVAL = 1.0

_logger = safe_logger("prodkit.serving")


class _RefusalLog:
    """The warning lines of refused requests, at most one per :data:`REFUSAL_LOG_INTERVAL`.

    A refusal costs the server little, so a client can send thousands a second; a line for each
    would let it fill the disk and bury every other line. One process (one worker) writes at
    most one such line per interval; the refusals of either kind left out since the previous
    line are counted, and the next line carries the count as ``suppressed``.
    """

    def __init__(self) -> None:
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < REFUSAL_LOG_INTERVAL:
            self._suppressed += 1
            return
        self._last = now
        if self._suppressed:
            fields["suppressed"], self._suppressed = self._suppressed, 0
        _logger.warning(event, **fields)


_refusals = _RefusalLog()


class _HeadTooLarge(Exception):
    """Raised from a parser callback: stops httptools in the middle of a pipelined head."""


def _response(status: int, code: str, detail: str, default_headers: Any) -> tuple[bytes, str]:
    """A complete ``Connection: close`` problem response, and the request id it carries."""
    request_id = generate_request_id()
    body = encode_problem(problem_dict(status, code, detail, request_id=request_id))
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/problem+json",
        b"content-length: %d" % len(body),
        b"cache-control: no-store",
        b"x-request-id: " + request_id.encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body, request_id


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bounded request head and a gentle close at shutdown.

    The limits come from the config's ``head_limits`` (``(max_bytes, max_headers)``, set by
    ``prodkit serve``), else :data:`DEFAULT_MAX_HEAD_BYTES` and :data:`DEFAULT_MAX_HEADERS`.
    ``max_bytes`` counts the head as sent, from the request line's first byte to the blank line
    that ends it, both included.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits: tuple[int, int] | None = getattr(self.config, "head_limits", None)
        self.max_bytes, self.max_headers = limits or (DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADERS)
        # The head being received, as measured before the parser sees it.
        self._meter = HeadMeter(self.max_bytes, self.max_headers)
        self._in_body = False
        # The same head as the parser's callbacks see it (name, value and request target).
        self._parsed_bytes = 0
        self._parsed_headers = 0
        self._refused = False
        self._closing = False

    # -- reads ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body and self._meter.over_limit(data):
            self._refuse_head()
            return
        super().data_received(data)

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsed_bytes = 0
        self._parsed_headers = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        if self._parsed_bytes > self.max_bytes:
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and the line end
        self._parsed_headers += 1
        if self._parsed_bytes > self.max_bytes or self._parsed_headers > self.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._meter.reset()
        super().on_headers_complete()
        if self._closing and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    # -- refusals ---------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """Answer what the parser refused: a 431 past a limit, else a 400; then close."""
        if self._parsed_bytes > self.max_bytes or self._parsed_headers > self.max_headers:
            self._refuse_head()
            return
        self._refused = True
        response, request_id = _response(
            400,
            MALFORMED_REQUEST,
            "the request is not valid HTTP/1.1; the connection is closed",
            self.server_state.default_headers,
        )
        _refusals.warning("malformed request refused", client=self._client(), request_id=request_id)
        self._write_and_close(response)

    def _refuse_head(self) -> None:
        self._refused = True
        detail = (
            f"the request head must be at most {self.max_bytes} bytes "
            f"with at most {self.max_headers} header fields"
        )
        response, request_id = _response(
            431, REQUEST_HEAD_TOO_LARGE, detail, self.server_state.default_headers
        )
        _refusals.warning(
            "request head too large",
            client=self._client(),
            request_id=request_id,
            max_bytes=self.max_bytes,
            max_headers=self.max_headers,
        )
        self._write_and_close(response)

    def _write_and_close(self, response: bytes) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier request on this connection (pipelined) is still being answered: the
            # refusal cannot be written in the middle of its response. It is finished, then
            # the connection closes; nothing more is read.
            self.cycle.keep_alive = False
            return
        self.transport.write(response)
        self.transport.close()

    def _client(self) -> str | None:
        return self.client[0] if self.client else None

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop after the request in progress, or after one more that is already on its way."""
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # answered with Connection: close, then closed
            return
        self._closing = True
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False


__all__ = ["CLOSE_GRACE", "REFUSAL_LOG_INTERVAL", "HttpProtocol"]
