"""``prodkit serve`` with real server processes: the settings it promises, under each server.

Issue #22: plain ``uvicorn app:app`` believes ``X-Forwarded-For`` from 127.0.0.1, so a rate
limit per client was never enforced against a client on the same host that rotated the header;
with ``--workers 2`` the parent logged plain text while the workers logged JSON.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, ServerProcess, free_port, run_server, server_env

pytestmark = pytest.mark.server

APP = ["examples.funds.app:create_app", "--factory"]
SERVERS = ["uvicorn", "hypercorn", "granian"]


def serve_args(port: int, *extra: str) -> list[str]:
    return ["prodkit.cli", "serve", *APP, "--port", str(port), *extra]


@pytest.fixture(scope="module", params=SERVERS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The example under ``prodkit serve --server <name>``: 3 requests a minute per client."""
    port = free_port()
    env = {"RATE_LIMIT": "3/minute", "TRUSTED_PROXIES": "", "LOG_LEVEL": "WARNING"}
    with run_server(
        serve_args(port, "--server", request.param),
        port=port,
        tmp_path=tmp_path_factory.mktemp(request.param),
        env=env,
    ) as server:
        yield server


async def test_a_rotating_forwarded_for_from_loopback_is_still_rate_limited(
    served: ServerProcess,
) -> None:
    # TRUSTED_PROXIES is empty: no forwarding header picks the client address, neither the
    # stack's resolver nor the server's own proxy-header handling (off under prodkit serve).
    async with httpx.AsyncClient(base_url=served.base_url, timeout=20) as client:
        statuses = []
        for n in range(1, 6):
            headers = {"X-User-Id": "rotating", "X-Forwarded-For": f"203.0.113.{n}"}
            statuses.append((await client.get("/api/summary", headers=headers)).status_code)
    assert statuses == [200, 200, 200, 429, 429]


def test_a_request_with_both_length_headers_never_smuggles_a_second_one(
    served: ServerProcess,
) -> None:
    smuggled = b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: victim\r\n\r\n"
    request = (
        b"POST /api/funds HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: hostile\r\n"
        b"Content-Type: application/json\r\nContent-Length: 60\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smuggled
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            data += chunk
    # uvicorn's parser and prodkit's guard under hypercorn refuse it (400); granian's hyper
    # reads it by Transfer-Encoding alone and closes the connection after answering.
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", data)) == 1, data[:500]
    assert b"total_funds" not in data


def _all_json(output: str) -> list[dict[str, object]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_the_parent_and_every_worker_log_json(server: str, tmp_path: Path) -> None:
    port = free_port()
    # Two workers on memory stores: accepted here, to see the workers' lines.
    env = {"ALLOW_PER_WORKER_DATA": "1", "LOG_LEVEL": "INFO"}
    args = serve_args(port, "--server", server, "--workers", "2")
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as client:
            for _ in range(100):  # both workers up (bounded: 10 s)
                if running.output().count('"shutdown signals held for the drain"') >= 2:
                    break
                await client.get("/livez")
            for _ in range(10):
                assert (await client.get("/livez")).status_code == 200
        running.signal(signal.SIGTERM)
        assert running.wait(timeout=30) == 0
    entries = _all_json(running.output())
    pids = {entry["pid"] for entry in entries}
    workers = {entry["pid"] for entry in entries if entry["event"] == "request completed"}
    assert len(pids) == 3, pids  # the parent and both workers
    assert workers
    assert workers < pids
    parent = pids - {e["pid"] for e in entries if e["logger"] == "prodkit.shutdown"}
    assert len(parent) == 1  # the parent has lines of its own, in JSON too
    # prodkit writes the access log; the server's own is off.
    assert not [e for e in entries if e["logger"] in ("uvicorn.access", "granian.access")]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "app", ["tests.serving.no_such_module:app", "examples.funds.app:no_such_factory"]
)
def test_an_app_that_cannot_be_loaded_stops_the_start_with_status_3(
    tmp_path: Path, app: str, workers: str
) -> None:
    # Before, uvicorn's supervisor restarted a worker that could not import the app forever.
    args = [app, "--factory", "--port", str(free_port()), "--workers", workers]
    completed = subprocess.run(
        [sys.executable, "-m", "prodkit.cli", "serve", *args],
        cwd=ROOT,
        env=server_env({"ALLOW_PER_WORKER_DATA": "1", "LOG_LEVEL": "WARNING"}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 3
    errors = [e for e in _all_json(completed.stdout.decode()) if e["level"] == "error"]
    assert errors, completed.stdout
