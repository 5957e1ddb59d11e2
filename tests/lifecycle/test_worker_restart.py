"""SIGTERM to one of two workers under load, default settings: no request lost, no 503.

A worker restart (a deploy, gunicorn's ``--max-requests``, an operator) sends SIGTERM to one
worker while its siblings keep serving on the same socket. 50 keep-alive connections post and
read the example's funds all along. Issue #21: with the drain at 0 s, up to 191 requests got
503 ``SHUTTING_DOWN`` (keep-alive connections whose next request reached the stopping worker)
and up to 21 were cut without an answer (connections the server closed as a request arrived).

Each documented process manager runs the example with prodkit's HTTP protocol and nothing
else set: the default drain (readiness 503, responses with ``Connection: close`` so clients
reconnect to a sibling), requests that reach the app after the drain served, and connections
the server closes at shutdown answering a request that is already on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import HOST, ServerProcess, free_port, run_server

pytestmark = pytest.mark.server

APP = "examples.funds.app:create_app"
PROTOCOL = "prodkit.serving.uvicorn:HttpProtocol"
CONNECTIONS = 50
FUND = json.dumps(
    {
        "name": "Load",
        "size": 1000,
        "stages": [{"name": "s", "months": 12, "graduate": 0.5, "exit": 0.1}],
    }
).encode()
POST = (
    b"POST /api/funds HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: load\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(FUND), FUND)
)
GET = b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: load\r\n\r\n"


def _command(manager: str, port: int) -> list[str]:
    if manager == "prodkit-serve":
        return ["prodkit.cli", "serve", APP, "--factory", "--port", str(port), "--workers", "2"]
    if manager == "uvicorn":
        args = ["uvicorn", APP, "--factory", "--host", HOST, "--port", str(port)]
        return [*args, "--workers", "2", "--http", PROTOCOL]
    args = ["gunicorn", f"{APP}()", "--worker-class", "prodkit.serving.gunicorn.Worker"]
    return [*args, "--workers", "2", "--bind", f"{HOST}:{port}", "--no-control-socket"]


def _workers(server: ServerProcess) -> list[int]:
    """The server's worker processes (multiprocessing's resource tracker left out)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _sockets(pid: int) -> int:
    """How many sockets ``pid`` holds: the worker with the most serves the most connections."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class Load:
    """50 keep-alive clients against ``port``, and what they saw."""

    port: int
    statuses: Counter[int] = field(default_factory=Counter)
    cut: list[str] = field(default_factory=list)  # requests sent and never answered
    refused: int = 0
    closed_by_server: int = 0  # responses with Connection: close
    stop: bool = False

    async def client(self, n: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not self.stop:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(HOST, self.port)
                except OSError:
                    self.refused += 1
                    await asyncio.sleep(0.05)
                    continue
            assert reader is not None
            request = POST if n % 2 else GET
            n += 1
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            except (asyncio.IncompleteReadError, OSError):
                self.cut.append(request.split(b" ", 1)[0].decode())
                writer.close()
                writer = None
                continue
            self.statuses[int(head[9:12])] += 1
            if b"connection: close" in head.lower():
                self.closed_by_server += 1
                writer.close()
                writer = None
        if writer is not None:
            writer.close()


async def _ready(server: ServerProcess) -> None:
    """Both workers started their app (bounded: 30 s)."""
    for _ in range(300):
        with contextlib.suppress(OSError):
            if (
                len(_workers(server)) == 2
                and server.output().count("Application startup complete") >= 2
            ):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the workers did not start:\n{server.output()[-3000:]}")


@pytest.mark.parametrize("manager", ["prodkit-serve", "uvicorn", "gunicorn"])
async def test_stopping_one_worker_under_load_loses_nothing(manager: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        # Two workers on memory storage (each its own funds): what is counted here is answers.
        "ALLOW_PER_WORKER_DATA": "1",
        "RATE_LIMIT": "1000000/minute",
        "LOG_LEVEL": "INFO",
    }
    with run_server(_command(manager, port), port=port, tmp_path=tmp_path, env=env) as server:
        await _ready(server)
        load = Load(port=port)
        clients = [asyncio.create_task(load.client(n)) for n in range(CONNECTIONS)]
        try:
            await asyncio.sleep(1.5)
            victim = max(_workers(server), key=_sockets)
            os.kill(victim, signal.SIGTERM)
            for _ in range(600):  # bounded: 30 s
                if not _running(victim):
                    break
                await asyncio.sleep(0.05)
            assert not _running(victim), "the worker did not stop"
            await asyncio.sleep(1.0)  # and the clients carry on with its sibling
        finally:
            load.stop = True
            await asyncio.wait_for(asyncio.gather(*clients), 30)

    assert load.cut == [], load
    assert load.refused == 0
    assert set(load.statuses) <= {200, 201}, load.statuses
    assert sum(load.statuses.values()) > 500
    # The stopped worker drained: its keep-alive clients were told to reconnect elsewhere.
    assert load.closed_by_server > 0
    assert "drain finished, stopping the server" in server.output()
