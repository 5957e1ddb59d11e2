"""Which responses the idempotency middleware records, what a record keeps, how it is replayed.

Pure helpers with no state: the header allow-list, the reasons a response is sent but not
recorded (so that a retry runs the handler again), and the replayed response itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from prodkit._core.headers import get_header, message_headers
from prodkit._core.types import Message, Send
from prodkit.idempotency._store import StoredResponse

#: Response headers recorded and replayed by default. ``Set-Cookie`` is never recorded.
DEFAULT_STORED_HEADERS = (
    "Cache-Control",
    "Content-Encoding",
    "Content-Language",
    "Content-Location",
    "Content-Type",
    "ETag",
    "Last-Modified",
    "Link",
    "Location",
    "Vary",
)
#: Lower-case header names that ``stored_headers`` may not name: cookies belong to one client,
#: and framing headers are recomputed on replay.
NEVER_STORED = frozenset(
    {"set-cookie", "set-cookie2", "content-length", "transfer-encoding", "idempotency-status"}
)

STATUS_HEADER = b"idempotency-status"
STORED_HEADER = b"idempotency-stored"
#: Statuses that ask the client to come back later, with or without ``Retry-After``.
TRANSIENT = frozenset({408, 429})
#: Statuses that answer the request's credentials, not its operation: a retry with other
#: credentials must run it.
AUTH_FAILURES = frozenset({401, 403})


def unstorable(
    status: int, headers: Iterable[tuple[bytes, bytes]], *, store_server_errors: bool
) -> str | None:
    """Why a response with this status and these headers is not recorded, or ``None``."""
    if status >= 500 and not store_server_errors:
        return "server errors are not recorded"
    if get_header(headers, b"retry-after") is not None:
        return "responses asking to retry (Retry-After) are not recorded"
    if status < 200:
        return "informational responses are not recorded"
    if status in TRANSIENT:
        return "responses asking to retry (408, 429) are not recorded"
    if status in AUTH_FAILURES:
        return "authentication and authorisation failures (401, 403) are not recorded"
    return None


def stored_response(
    start: Message, body: bytes, stored_headers: frozenset[bytes]
) -> StoredResponse:
    """The record of a complete response: its status, its allow-listed headers and its body."""
    headers = tuple(
        (name, value) for name, value in message_headers(start) if name in stored_headers
    )
    return StoredResponse(int(start["status"]), headers, body)


async def replay(send: Send, response: StoredResponse) -> None:
    """Send a recorded response with ``Idempotency-Status: replayed``."""
    headers = response.raw_headers()
    headers.append((b"content-length", str(len(response.body)).encode()))
    headers.append((STATUS_HEADER, b"replayed"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


__all__ = [
    "AUTH_FAILURES",
    "DEFAULT_STORED_HEADERS",
    "NEVER_STORED",
    "STATUS_HEADER",
    "STORED_HEADER",
    "replay",
    "stored_response",
    "unstorable",
]
