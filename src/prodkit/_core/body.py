"""The request body: read it once (up to a limit), then give the app exactly the same bytes."""

from __future__ import annotations

from prodkit._core.types import Message, Receive


class BufferedBody:
    """A request body read ahead of the app, and how the reading ended.

    Attributes:
        body: the bytes read (all of them when ``complete``).
        complete: the last part arrived (``more_body`` false).
        disconnected: the client went away before it did.
        too_large: the body grew past the limit (then reading stopped).
    """

    __slots__ = ("body", "complete", "disconnected", "too_large")

    def __init__(
        self, body: bytes, *, complete: bool, disconnected: bool = False, too_large: bool = False
    ) -> None:
        self.body = body
        self.complete = complete
        self.disconnected = disconnected
        self.too_large = too_large

    def replay(self, receive: Receive) -> Receive:
        """A ``receive`` for the app: what was read, as one message, then ``receive`` itself.

        A body the client abandoned comes as the bytes that arrived (``more_body`` true),
        if any, then ``http.disconnect``, as the server would have said.
        """
        pending: list[Message] = []
        if self.body or not self.disconnected:
            pending.append(
                {"type": "http.request", "body": self.body, "more_body": not self.complete}
            )
        if self.disconnected:
            pending.append({"type": "http.disconnect"})
        pending.reverse()

        async def replayed() -> Message:
            return pending.pop() if pending else await receive()

        return replayed


async def buffer_body(receive: Receive, limit: int | None = None) -> BufferedBody:
    """Read the whole request body, honouring ``more_body``, up to ``limit`` bytes.

    Reading stops at the last part, at ``http.disconnect``, or once the body is larger than
    ``limit`` (nothing more is read then).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return BufferedBody(b"".join(chunks), complete=False, disconnected=True)
        chunk: bytes = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                return BufferedBody(b"".join(chunks), complete=False, too_large=True)
        if not message.get("more_body", False):
            return BufferedBody(chunks[0] if len(chunks) == 1 else b"".join(chunks), complete=True)


async def read_body(receive: Receive, limit: int | None = None) -> tuple[bytes, bool]:
    """Read the whole request body, honouring ``more_body``.

    Returns ``(body, complete)``; ``complete`` is false when the client disconnected first or
    when the body grew past ``limit`` bytes (then reading stops and ``body`` holds what was read).
    """
    read = await buffer_body(receive, limit)
    return read.body, read.complete


def replay_receive(body: bytes, receive: Receive) -> Receive:
    """Return a ``receive`` that yields ``body`` as one message, then defers to ``receive``.

    Used after a middleware read the body itself, so the app still sees the exact bytes.
    """
    return BufferedBody(body, complete=True).replay(receive)


__all__ = ["BufferedBody", "buffer_body", "read_body", "replay_receive"]
