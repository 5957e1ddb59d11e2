"""What a dying Redis costs a rate-limited request: ``python -m benchmarks.ratelimit_servers``.

Starts a private ``redis-server`` on 127.0.0.1, limits a raw ASGI app with
``RateLimitMiddleware`` on it, and times requests (in-process, through httpx's ASGI
transport) in three phases:

* Redis up: every decision is one round trip to Redis;
* Redis just killed: the calls that fail until the circuit breaker opens (each bounded by the
  breaker's 0.5 s call timeout; a refused connection fails much sooner);
* breaker open: decided by the per-process fallback store without touching the network.

The tests assert the behaviour behind these figures (the breaker stops calling Redis after
five failures); the figures themselves depend on the machine and are reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import httpx
from prometheus_client import CollectorRegistry

from prodkit.asgi import Receive, Scope, Send
from prodkit.ratelimit import RateLimitMiddleware, RedisRateLimitStore

HOST = "127.0.0.1"


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest app: 200 with an empty body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start within 10 s")


async def _timed(client: httpx.AsyncClient, count: int) -> list[float]:
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        await client.get("/items/1")
        durations.append(time.perf_counter() - start)
    return durations


def _row(name: str, durations: list[float]) -> str:
    ms = sorted(d * 1000 for d in durations)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{name:<34}{len(ms):>6}{statistics.median(ms):>12.3f}{p90:>10.3f}{max(ms):>10.3f}"


async def run(requests: int) -> list[str]:
    """Run the three phases; return the table's rows."""
    with tempfile.TemporaryDirectory() as directory:
        process, port = _start_redis(directory)
        try:
            store = RedisRateLimitStore.from_url(f"redis://{HOST}:{port}/0")
            app = RateLimitMiddleware(
                ok, policy="1000000/minute", store=store, registry=CollectorRegistry()
            )
            transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                up = await _timed(client, requests)
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                failing = await _timed(client, 5)  # the breaker's failure_threshold
                open_ = await _timed(client, requests)
            await store.aclose()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return [
        _row("Redis up", up),
        _row("Redis killed, breaker closing", failing),
        _row("breaker open (fallback store)", open_),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the table; ``--requests`` sets the size of the first and last phases."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ratelimit_servers", description=__doc__
    )
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.requests))
    print(f"{'phase':<34}{'n':>6}{'median ms':>12}{'p90 ms':>10}{'max ms':>10}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
