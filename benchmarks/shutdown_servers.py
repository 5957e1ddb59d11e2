"""How fast readiness turns 503 after SIGTERM, and how long the stop takes, on real servers.

    python -m benchmarks.shutdown_servers [--runs 3] [--drain 1.0] [server ...]

Each run starts the server on ``tests/servers/lifecycle_app.py`` (the app of
``tests/lifecycle/test_servers.py``, which asserts the behaviour; this script only times it),
sends SIGTERM to the server's own PID and polls ``/readyz`` on fresh connections. "readiness"
counts from the signal reaching the process that serves: the moment it was sent for a single
process, the worker's own log of it when a master forwards the signal (uvicorn's master polls
its signal queue every 0.5 s). "exit" counts from the signal to the process's exit and includes
the drain. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.servers import HOST, ServerProcess, free_port, run_server

APP = "tests.servers.lifecycle_app:app"
#: ``python -m`` arguments per server, as in tests/lifecycle/test_servers.py.
SERVERS: dict[str, list[str]] = {
    "uvicorn": ["uvicorn", APP, "--no-access-log"],
    "uvicorn-workers": ["uvicorn", APP, "--workers", "2", "--no-access-log"],
    "hypercorn": ["hypercorn", APP, "--workers", "0"],
    "granian": ["granian", "--interface", "asgi", "--workers", "1", APP],
    "gunicorn": [
        *("gunicorn", APP, "--worker-class", "uvicorn_worker.UvicornWorker"),
        *("--workers", "2", "--no-control-socket"),
    ],
}
WORKERS = {"uvicorn-workers": 2, "gunicorn": 2}


def _args(name: str, port: int) -> list[str]:
    args = SERVERS[name]
    if name in ("hypercorn", "gunicorn"):
        return [*args, "--bind", f"{HOST}:{port}"]
    return [*args, "--host", HOST, "--port", str(port)]


def _signal_logged_at(server: ServerProcess) -> float | None:
    """When the first worker logged the signal (its JSON log line), as a Unix time."""
    for found in re.findall(r"\{[^{}]*\}", server.output()):
        if '"shutdown signal received, draining"' in found:
            return datetime.fromisoformat(json.loads(found)["timestamp"]).timestamp()
    return None


async def _wait_ready(client: httpx.AsyncClient, server: ServerProcess, workers: int) -> None:
    for _ in range(600):
        ready = (await client.get("/readyz")).status_code == 200
        if ready and server.output().count("Application startup complete") >= workers:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the server did not become ready:\n{server.output()}")


async def _one_run(name: str, drain: float, tmp: Path) -> tuple[float, float]:
    """One start, SIGTERM and stop: (readiness ms, exit s)."""
    port = free_port()
    env = {"SHUTDOWN_DRAIN_SECONDS": str(drain), "SHUTDOWN_TIMEOUT_SECONDS": str(drain + 10)}
    with run_server(_args(name, port), port=port, tmp_path=tmp, env=env) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            await _wait_ready(client, server, WORKERS.get(name, 0))
            sent_at = time.time()
            server.signal(signal.SIGTERM)
            while True:
                response = await client.get("/readyz", headers={"Connection": "close"})
                if response.status_code == 503:
                    flipped_at = time.time()
                    break
        await asyncio.to_thread(server.wait, drain + 30)
        exited_at = time.time()
        logged_at = _signal_logged_at(server) if name in WORKERS else None
    reference = sent_at if logged_at is None else logged_at
    return (flipped_at - reference) * 1000, exited_at - sent_at


def main(argv: list[str] | None = None) -> int:
    """Time every named server (all by default) and print one line per server."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shutdown_servers")
    parser.add_argument("servers", nargs="*", metavar="server", help=", ".join(SERVERS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--drain", type=float, default=1.0)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    print(f"{'server':<16} {'readiness p50 / max (ms)':>26} {'exit p50 (s)':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.servers or list(SERVERS):
            runs = [asyncio.run(_one_run(name, args.drain, Path(tmp))) for _ in range(args.runs)]
            ready = [r for r, _ in runs]
            exits = [e for _, e in runs]
            print(
                f"{name:<16} {statistics.median(ready):>15.1f} / {max(ready):>7.1f}"
                f" {statistics.median(exits):>13.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
