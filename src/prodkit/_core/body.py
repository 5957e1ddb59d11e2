"""The request body: read it once (up to a limit), then give the app exactly the same bytes."""

from __future__ import annotations

from prodkit._core.types import Message, Receive


async def read_body(receive: Receive, limit: int | None = None) -> tuple[bytes, bool]:
    """Read the whole request body, honouring ``more_body``.

    Returns ``(body, complete)``; ``complete`` is false when the client disconnected first or
    when the body grew past ``limit`` bytes (then reading stops and ``body`` holds what was read).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk: bytes = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def replay_receive(body: bytes, receive: Receive) -> Receive:
    """Return a ``receive`` that yields ``body`` as one message, then defers to ``receive``.

    Used after a middleware read the body itself, so the app still sees the exact bytes.
    """
    sent = False

    async def _receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive


__all__ = ["read_body", "replay_receive"]
