"""Graceful shutdown under real servers: SIGTERM to the server's own PID, nothing dropped.

Each server runs ``tests/servers/lifecycle_app.py`` (lifespan → health → graceful shutdown → endpoints).
Server-specific notes (see ``docs/shutdown.md``):

* uvicorn re-raises the signal after its graceful shutdown (since 0.29), so a single uvicorn
  process ends with status -SIGTERM (143 in a shell) by design; its masters (``--workers``,
  gunicorn) exit 0.
* hypercorn's worker processes never receive the signal (the master sets a shared event), so
  hypercorn runs with ``--workers 0`` (serve in the master process, asyncio loop handlers).
* granian runs with its default loop (uvloop when installed, as here); its worker's handler
  is a loop signal handler, held through the signal wakeup descriptor, which uvloop registers
  afresh when granian starts the loop again to serve (the first request claims it back).

This suite asserts what happens, never how fast: how soon readiness turns 503 after the
signal is measured by ``python -m benchmarks.shutdown_servers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import HOST, ServerProcess, free_port, run_server

pytestmark = pytest.mark.server

SIGTERM_STATUS = -signal.SIGTERM


def _server_args(name: str, port: int) -> tuple[list[str], set[int]]:
    """``python -m`` arguments for ``name``, and the exit statuses a graceful stop may have."""
    app = "tests.servers.lifecycle_app:app"
    if name in ("uvicorn", "uvicorn-starlette"):
        args = ["uvicorn", app, "--host", HOST, "--port", str(port), "--no-access-log"]
        return args, {0, SIGTERM_STATUS}
    if name == "uvicorn-workers":
        args = ["uvicorn", app, "--host", HOST, "--port", str(port), "--workers", "2"]
        return [*args, "--no-access-log"], {0}
    if name == "hypercorn":
        return ["hypercorn", app, "--workers", "0", "--bind", f"{HOST}:{port}"], {0}
    if name == "granian":
        args = ["granian", "--interface", "asgi", "--workers", "1"]
        return [*args, "--host", HOST, "--port", str(port), app], {0}
    if name == "gunicorn":
        args = ["gunicorn", app, "--worker-class", "uvicorn_worker.UvicornWorker"]
        args += ["--workers", "2", "--bind", f"{HOST}:{port}", "--no-control-socket"]
        return args, {0}
    raise AssertionError(name)


SERVERS = ["uvicorn", "uvicorn-workers", "hypercorn", "granian", "gunicorn"]
#: The app's own lifespan (Starlette) inside LifespanMiddleware, under a real server.
APP_ENV = {"uvicorn-starlette": {"SHUTDOWN_APP_FRAMEWORK": "starlette"}}
MULTI_WORKER = {"uvicorn-workers", "gunicorn"}


def _events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log entries named ``event``.

    Two workers share one output file and print() writes a line and its newline separately,
    so entries are found as flat JSON objects anywhere in the text, not line by line.
    """
    entries = []
    for found in re.findall(r"\{[^{}]*\}", server.output()):
        with contextlib.suppress(json.JSONDecodeError):  # a server's own text with braces
            entries.append(json.loads(found))
    return [entry for entry in entries if entry.get("event") == event]


async def _wait_until_ready(client: httpx.AsyncClient, server: ServerProcess, name: str) -> None:
    """Wait for ``/readyz`` and, on a multi-worker server, for both workers' start-up."""
    workers = 2 if name in MULTI_WORKER else 0
    for _ in range(400):
        ready = (await client.get("/readyz")).status_code == 200
        if ready and server.output().count("Application startup complete") >= workers:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not become ready:\n{server.output()}")


async def _first_503(base_url: str) -> httpx.Response:
    """Poll ``/readyz`` on fresh connections until it answers 503 (gives up after 2000 tries)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        for _ in range(2000):
            response = await client.get("/readyz", headers={"Connection": "close"})
            if response.status_code == 503:
                return response
            await asyncio.sleep(0.01)
    raise AssertionError("/readyz never answered 503")


@pytest.mark.parametrize("name", [*SERVERS, "uvicorn-starlette"])
async def test_drain_serves_every_in_flight_request(name: str, tmp_path: Path) -> None:
    port = free_port()
    args, exit_statuses = _server_args(name, port)
    env = {
        "SHUTDOWN_DRAIN_SECONDS": "1.5",
        "SHUTDOWN_TIMEOUT_SECONDS": "8",
        **APP_ENV.get(name, {}),
    }
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10, limits=limits) as client:
            await _wait_until_ready(client, server, name)
            slow = [
                asyncio.create_task(client.get("/slow", params={"seconds": "1.2"}))
                for _ in range(20)
            ]
            await asyncio.sleep(0.3)  # every request reached the app
            server.signal(signal.SIGTERM)

            ready = await _first_503(server.base_url)
            assert ready.headers["content-type"] == "application/json"
            assert ready.headers["cache-control"] == "no-store"
            assert ready.json()["draining"] is True
            assert _events(server, "shutdown signal received, draining"), server.output()

            # Readiness is 503 and the listener still open: served during the drain, on new
            # connections, and closing keep-alive ones.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as fresh:
                ok = await fresh.get("/ok")
            assert ok.status_code == 200
            assert ok.text == "ok"

            responses = await asyncio.gather(*slow)
            assert [r.status_code for r in responses] == [200] * 20
            assert {r.text for r in responses} == {"slept"}

            status = await asyncio.to_thread(server.wait, 15)
        assert status in exit_statuses, server.output()
        # Stopped before the hard deadline: it never fired, nothing was cancelled.
        assert not _events(server, "shutdown deadline reached"), server.output()
        assert not _events(server, "request cancelled at shutdown deadline")
        assert _events(server, "drain finished, stopping the server")


@pytest.mark.parametrize("name", SERVERS)
async def test_request_past_the_deadline_is_cancelled_and_logged(name: str, tmp_path: Path) -> None:
    port = free_port()
    args, exit_statuses = _server_args(name, port)
    env = {"SHUTDOWN_DRAIN_SECONDS": "0.5", "SHUTDOWN_TIMEOUT_SECONDS": "1.5"}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as client:
            await _wait_until_ready(client, server, name)
            stuck = asyncio.create_task(client.get("/slow", params={"seconds": "60"}))
            await asyncio.sleep(0.3)
            server.signal(signal.SIGTERM)
            response = await stuck
            status = await asyncio.to_thread(server.wait, 15)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "SHUTTING_DOWN"
        assert "retry-after" in response.headers
        assert status in exit_statuses, server.output()
        cancelled = _events(server, "request cancelled at shutdown deadline")
        assert [(e["method"], e["path"], e["level"]) for e in cancelled] == [
            ("GET", "/slow", "warning")
        ], server.output()


async def test_hypercorn_worker_processes_cannot_drain(tmp_path: Path) -> None:
    """What hypercorn with worker processes can do: finish in-flight requests, no drain.

    Its master catches SIGTERM and sets a shared event that the worker polls; the worker never
    receives a signal, so there is nothing to chain to, and hypercorn stops accepting at once.
    In-flight requests still complete within hypercorn's own graceful timeout, and
    ``lifespan.shutdown`` marks the coordinator stopping.
    """
    port = free_port()
    args = [
        "hypercorn",
        "tests.servers.lifecycle_app:app",
        "--workers",
        "1",
        "--bind",
        f"{HOST}:{port}",
    ]
    env = {"SHUTDOWN_DRAIN_SECONDS": "1", "SHUTDOWN_TIMEOUT_SECONDS": "4"}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            await _wait_until_ready(client, server, "hypercorn")
            slow = [
                asyncio.create_task(client.get("/slow", params={"seconds": "1"})) for _ in range(5)
            ]
            await asyncio.sleep(0.3)
            server.signal(signal.SIGTERM)
            responses = await asyncio.gather(*slow)
            status = await asyncio.to_thread(server.wait, 15)
        assert [r.status_code for r in responses] == [200] * 5
        assert status == 0, server.output()
        assert not _events(server, "shutdown signal received, draining")
