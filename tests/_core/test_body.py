"""read_body and replay_receive: the request body read once and given to the app unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prodkit.asgi import (
    Message,
    read_body,
    replay_receive,
)


@given(st.lists(st.binary(max_size=20), max_size=8))
async def test_read_body_joins_chunks_and_replay_gives_the_same_bytes(chunks: list[bytes]) -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": c, "more_body": True} for c in chunks
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        return messages.pop(0)

    body, complete = await read_body(receive)
    assert complete
    assert body == b"".join(chunks)
    replayed = await replay_receive(body, receive)()
    assert replayed == {"type": "http.request", "body": body, "more_body": False}


async def test_read_body_stops_at_the_limit_and_on_disconnect() -> None:
    queue: list[Message] = [
        {"type": "http.request", "body": b"12345", "more_body": True},
        {"type": "http.request", "body": b"67890", "more_body": True},
    ]

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    assert await read_body(receive, limit=8) == (b"1234567890", False)
    assert await read_body(receive) == (b"", False)
