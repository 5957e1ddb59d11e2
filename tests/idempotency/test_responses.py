"""Which responses are recorded, and how a record is replayed (``prodkit.idempotency._responses``)."""

from __future__ import annotations

import pytest

from prodkit.asgi import Message
from prodkit.idempotency import StoredResponse
from prodkit.idempotency._responses import (
    replay,
    stored_response,
    unstorable,
)


@pytest.mark.parametrize(
    ("status", "headers", "store_server_errors", "recorded"),
    [
        (201, [], False, True),
        (422, [], False, True),  # a final client error is an answer like any other
        (500, [], False, False),  # a retry may succeed: run it again
        (500, [], True, True),  # unless told to record server errors
        (429, [(b"retry-after", b"3")], False, False),  # the server asked for a retry
        (103, [], False, False),  # informational, not the answer
        (429, [], False, False),  # too many requests: come back later, even without Retry-After
        (408, [], False, False),  # the request timed out: it may well succeed when resent
        (409, [], False, True),  # a conflict the handler decided is its answer
    ],
)
def test_what_is_recorded(
    status: int,
    headers: list[tuple[bytes, bytes]],
    store_server_errors: bool,
    recorded: bool,
) -> None:
    reason = unstorable(status, headers, store_server_errors=store_server_errors)
    assert (reason is None) is recorded


async def test_a_record_keeps_allow_listed_headers_and_replays_with_framing() -> None:
    start: Message = {
        "type": "http.response.start",
        "status": 201,
        "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"s=1")],
    }
    record = stored_response(start, b'{"id":1}', frozenset({b"content-type"}))
    assert record == StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await replay(send, record)
    assert sent[0]["status"] == 201
    assert sent[0]["headers"] == [
        (b"content-type", b"application/json"),
        (b"content-length", b"8"),
        (b"idempotency-status", b"replayed"),
    ]
    assert sent[1] == {"type": "http.response.body", "body": b'{"id":1}', "more_body": False}
