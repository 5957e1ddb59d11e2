"""Slow clients against a real uvicorn process: twenty stalled uploads and MAX_CONCURRENCY=20.

Each slow client sends its headers and a tenth of its body, then nothing. They must get a 408
once the body deadline passes, and hold no concurrency slot meanwhile: a normal client is
served while they stall and after the deadline. The control run, without the
``request_timeout`` layer, shows the starvation the layer prevents (issue #16).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.servers import HOST, ServerProcess, free_port, run_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

SLOW_CLIENTS = 20
SLOW_HEAD = (
    b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 100\r\n\r\n" + b"x" * 10
)


@contextlib.asynccontextmanager
async def slow_clients(port: int) -> AsyncIterator[list[asyncio.StreamReader]]:
    """Twenty connections that sent their headers and part of their body, then stalled."""
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    try:
        for _ in range(SLOW_CLIENTS):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(SLOW_HEAD)
            await writer.drain()
            readers.append(reader)
            writers.append(writer)
        yield readers
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def serve(
    tmp_path: Path, port: int, *, with_layer: bool
) -> contextlib.AbstractContextManager[ServerProcess]:
    env = {
        "MAX_CONCURRENCY": str(SLOW_CLIENTS),
        "PRODKIT_TEST_BODY_TIMEOUT": "1.5",
        "PRODKIT_TEST_WITHOUT_REQUEST_TIMEOUT": "" if with_layer else "1",
        "LOG_LEVEL": "WARNING",
    }
    args = ["uvicorn", "tests.servers.timeouts_app:create_app", "--factory"]
    args += ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return run_server(args, port=port, tmp_path=tmp_path, env=env)


async def test_stalled_uploads_get_408_and_hold_no_concurrency_slot(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path, port, with_layer=True) as server:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as client,
            slow_clients(port) as stalled,
        ):
            # While all twenty stall, a normal client is served: none of them holds a slot.
            assert (await client.get("/work")).status_code == 200
            answers = await asyncio.gather(
                *(asyncio.wait_for(reader.read(), timeout=30) for reader in stalled)
            )
            # Sent after the deadline passed (every slow client has had its answer).
            upload = await client.post("/upload", content=b"y" * 100)
            work = await client.get("/work")
    assert (upload.status_code, upload.text) == (200, "100")
    assert work.status_code == 200
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"content-type: application/problem+json" in head.lower()
        assert b'"code":"REQUEST_TIMEOUT"' in body.replace(b" ", b"")


async def test_control_without_the_layer_stalled_uploads_take_every_slot(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path, port, with_layer=False) as server:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as client,
            slow_clients(port),
        ):
            status = 0
            for _ in range(100):  # until the twenty are inside the app (bounded: ~10 s)
                status = (await client.get("/work")).status_code
                if status == 503:
                    break
                await asyncio.sleep(0.1)
    assert status == 503
