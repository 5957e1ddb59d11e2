"""A raw ASGI app for cache tests: counts calls, and has one path per caching situation.

GET paths:

* ``/items/{id}``: 200 JSON ``{"id", "calls", "query"}``; waits for ``gate`` when one is set
* ``/funds/{id}``, ``/funds/{id}/projection``: like items (per-user routes in the tests)
* ``/cookie``: sets a cookie; ``/nostore``, ``/private``, ``/nocache``: those Cache-Control
  directives; ``/varystar``: ``Vary: *``; ``/missing``: 404; ``/big``: a 64 KiB body streamed
  in 16 chunks; ``/etag``: the app's own ETag
* ``/lang``: ``Vary: Accept-Language``, body is the header's value

Writes: ``PATCH``/``DELETE`` on any path answer 200 / 204; ``POST /fail`` answers 500.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from prodkit.asgi import Message, Receive, Scope, Send, get_header, read_body


class CountingApp:
    """The app; ``calls[path]`` counts GET/HEAD handler runs, ``gate`` holds them back."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()  # set when a GET/HEAD handler starts

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path: str = scope["path"]
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            await read_body(receive)
            status = 500 if path == "/fail" else 204 if method == "DELETE" else 200
            await _respond(send, status, b"" if status == 204 else b'{"ok":true}')
            return
        self.calls[path] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        headers: list[tuple[bytes, bytes]] = []
        status = 200
        body = json.dumps(
            {
                "id": path.rsplit("/", 1)[-1],
                "calls": self.calls[path],
                "query": scope.get("query_string", b"").decode(),
            }
        ).encode()
        if path == "/cookie":
            headers.append((b"set-cookie", b"session=abc; HttpOnly"))
        elif path == "/nostore":
            headers.append((b"cache-control", b"no-store"))
        elif path == "/private":
            headers.append((b"cache-control", b"private, max-age=60"))
        elif path == "/nocache":
            headers.append((b"cache-control", b"no-cache"))
        elif path == "/varystar":
            headers.append((b"vary", b"*"))
        elif path == "/missing":
            status = 404
        elif path == "/etag":
            headers.append((b"etag", b'W/"app-v1"'))
        elif path == "/lang":
            headers.append((b"vary", b"Accept-Language"))
            body = get_header(scope["headers"], b"accept-language") or b"none"
        elif path == "/big":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            for index in range(16):
                await send(
                    {
                        "type": "http.response.body",
                        "body": bytes([index]) * 4096,
                        "more_body": index < 15,
                    }
                )
            return
        await _respond(send, status, b"" if method == "HEAD" else body, headers, len(body))


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    length: int | None = None,
) -> None:
    message: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body) if length is None else length).encode()),
            *(headers or []),
        ],
    }
    await send(message)
    await send({"type": "http.response.body", "body": body})
