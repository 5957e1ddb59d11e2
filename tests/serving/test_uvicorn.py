"""HttpProtocol in process, on real sockets: what it changes in uvicorn's httptools protocol.

The server here is an asyncio server speaking uvicorn's protocol classes; ``shutdown()`` is
called on its connections as ``uvicorn.Server.shutdown`` does once the listener is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from prodkit.asgi import Receive, Scope, Send
from prodkit.serving import uvicorn as serving_uvicorn
from prodkit.serving.uvicorn import HttpProtocol
from prodkit.testing import capture_logs

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class LimitsConfig(Config):
    """uvicorn's Config with the head limits prodkit serve passes (see _run_uvicorn)."""

    def __init__(self, head_limits: tuple[int, int] | None, **kwargs: Any) -> None:
        if head_limits is not None:
            self.head_limits = head_limits
        super().__init__(**kwargs)


@asynccontextmanager
async def served(
    protocol: Callable[..., asyncio.Protocol], head_limits: tuple[int, int] | None = None
) -> AsyncIterator[tuple[int, ServerState]]:
    config = LimitsConfig(head_limits, app=app, lifespan="off", log_config=None, access_log=False)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], state
    finally:
        server.close()
        for connection in list(state.connections):
            connection.transport.close()
        await server.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def shut_down(state: ServerState) -> None:
    """What uvicorn.Server.shutdown does to every connection once its listener is closed."""
    for connection in list(state.connections):
        connection.shutdown()


@pytest.mark.parametrize("used", ["after a request", "fresh"])
async def test_a_request_already_on_its_way_at_shutdown_is_answered(used: str) -> None:
    async with served(HttpProtocol) as (port, state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if used == "after a request":
            writer.write(GET)
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        else:
            for _ in range(100):  # the server has accepted it (bounded)
                if state.connections:
                    break
                await asyncio.sleep(0.01)
        shut_down(state)
        writer.write(GET)  # sent as the server shuts down: on its way
        response = await read_response(reader)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" in response.lower()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then closed
        writer.close()


async def test_uvicorns_own_protocol_cuts_that_request() -> None:
    # The behaviour HttpProtocol changes: the connection is closed under the request.
    async with served(HttpToolsProtocol) as (port, state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await read_response(reader)
        shut_down(state)
        writer.write(GET)
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:  # closed with the request unread: a reset
            rest = b""
        assert rest == b""  # no answer
        writer.close()


async def test_an_idle_connection_closes_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_uvicorn, "CLOSE_GRACE", 0.05)
    async with served(HttpProtocol) as (port, state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await read_response(reader)
        shut_down(state)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


@pytest.mark.parametrize(("size", "status"), [(2048, b"200"), (2049, b"431")])
async def test_the_limits_come_from_the_config(size: int, status: bytes) -> None:
    start = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    async with served(HttpProtocol, head_limits=(2048, 10)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        assert (await read_response(reader))[9:12] == status
        writer.close()


MALFORMED = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"
TOO_LARGE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n"
REFUSALS = {"malformed request refused", "request head too large"}


async def refused(port: int, head: bytes) -> bytes:
    """The status a head gets, on its own connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    status = (await read_response(reader))[9:12]
    writer.close()
    return status


async def test_a_burst_of_refusals_writes_few_lines() -> None:
    # A client can send refusals as fast as the network allows: each one is answered, but
    # one worker writes at most one line a second (by default) for them.
    async with served(HttpProtocol) as (port, _):
        with capture_logs() as logs:
            statuses = [await refused(port, MALFORMED) for _ in range(20)]
    assert statuses == [b"400"] * 20
    lines = [entry for entry in logs if entry["event"] in REFUSALS]
    assert len(lines) < 5


async def test_the_next_refusal_line_counts_the_ones_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(HttpProtocol, head_limits=(2048, 10)) as (port, _):
        with capture_logs() as logs:
            monkeypatch.setattr(serving_uvicorn, "REFUSAL_LOG_INTERVAL", 0.0)
            assert await refused(port, MALFORMED) == b"400"  # written
            monkeypatch.setattr(serving_uvicorn, "REFUSAL_LOG_INTERVAL", 3600.0)
            # Either kind: answered, left out of the log, counted.
            for head, status in ((MALFORMED, b"400"), (TOO_LARGE, b"431"), (MALFORMED, b"400")):
                assert await refused(port, head) == status
            monkeypatch.setattr(serving_uvicorn, "REFUSAL_LOG_INTERVAL", 0.0)
            assert await refused(port, TOO_LARGE) == b"431"  # written, with the count
            assert await refused(port, MALFORMED) == b"400"  # written, nothing left out
    lines = [entry for entry in logs if entry["event"] in REFUSALS]
    assert lines[0]["event"] == "malformed request refused"
    assert [(line["event"], line.get("suppressed")) for line in lines[1:]] == [
        ("request head too large", 3),
        ("malformed request refused", None),
    ]
    assert lines[1]["max_bytes"] == 2048
