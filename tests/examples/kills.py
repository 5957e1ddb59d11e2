"""Kill the example's worker at random instants of keyed creates, and count what retries did.

Used by ``tests/examples/test_crashes.py`` (a bounded run in CI) and by
``python -m benchmarks.crashes`` (the figures in docs/idempotency.md). Each round starts a
worker of ``python -m examples.funds``, times one keyed ``POST /api/funds`` on it, sends another
with a key of its own and kills the worker with SIGKILL at a uniformly random instant of that
request's expected span (0 to the timed request's duration, measured from the moment its last
byte was sent). Then a client retries with the same key on a standby worker until the answer is
not a 409 (the dead worker's lease must end first), and the database says how many times the
handler ran: once (died before the commit, or replayed) or twice (the fund created again).

Loopback only; every process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.servers import HOST, ServerProcess, free_port, run_server
from tests.servers.proxy import TcpProxy

FUND: dict[str, Any] = {
    "name": "Crash Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 12, "graduate": 0.5, "exit": 0.1}],
}


class Example:
    """Starts (and restarts) the example on ``env``; every process stopped by its PID."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.stack = contextlib.ExitStack()

    async def start(self) -> ServerProcess:
        """A new worker process, once it answers ``/readyz`` with 200."""
        port = free_port()
        args = ["examples.funds", "--port", str(port), "--workers", "1"]
        server = self.stack.enter_context(
            run_server(args, port=port, tmp_path=self.tmp_path, env=self.env)
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            for _ in range(100):  # bounded: 10 s
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return server
                await asyncio.sleep(0.1)
        raise AssertionError(f"the example did not become ready:\n{server.output()}")

    def close(self) -> None:
        self.stack.close()


@dataclass(frozen=True)
class Keyed:
    """One keyed request of a caller of its own, sent as often as a client retries it."""

    method: str
    path: str
    body: Any
    user: str = field(default_factory=lambda: f"crash-{uuid.uuid4().hex[:8]}")
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def send(self, server: ServerProcess) -> httpx.Response:
        headers = {"X-User-Id": self.user, "Idempotency-Key": self.key}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            return await client.request(self.method, self.path, json=self.body, headers=headers)

    def raw(self) -> bytes:
        """The request as bytes on the wire (HTTP/1.1, the connection closed after it)."""
        body = json.dumps(self.body).encode()
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-User-Id: {self.user}\r\nIdempotency-Key: {self.key}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    async def retry_until_run(
        self, server: ServerProcess, *, lease: float, conflicts: int | None = None
    ) -> httpx.Response:
        """Retry as a client would: 409 while a dead worker's lease lasts, then the answer.

        ``conflicts=1`` asserts that the first retry got a 409 (sent while the lease lasts).
        """
        started = time.monotonic()
        for attempt in range(int(lease / 0.1) + 100):  # bounded: a lease of 409s, then some
            response = await self.send(server)
            if response.status_code != 409:
                assert conflicts is None or attempt >= conflicts, "no 409 while the lease lasted"
                return response
            assert response.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
            assert 1 <= int(response.headers["retry-after"]) <= max(1, lease)
            await asyncio.sleep(0.1)
        raise AssertionError(f"still 409 after {time.monotonic() - started:.1f} s")

    def in_flight(self, server: ServerProcess) -> asyncio.Task[httpx.Response | None]:
        """Sent in the background; it may never be answered (the worker dies)."""

        async def attempt() -> httpx.Response | None:
            with contextlib.suppress(httpx.TransportError):
                return await self.send(server)
            return None

        return asyncio.create_task(attempt())


def create() -> Keyed:
    return Keyed("POST", "/api/funds", FUND)


async def sent(
    server: ServerProcess, request: Keyed
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """Send ``request`` on a new connection; its streams and when its last byte was written."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(request.raw())
    await writer.drain()
    return reader, writer, time.monotonic()


async def timed(server: ServerProcess, request: Keyed) -> float:
    """Seconds from ``request``'s last byte sent to its whole answer read; checks it is a 201."""
    reader, writer, start = await sent(server, request)
    answer = await reader.read()  # Connection: close: the answer ends with the stream
    elapsed = time.monotonic() - start
    writer.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    return elapsed


@dataclass
class Tally:
    """What the retries after the kills found."""

    kills: int = 0
    #: Killed before its fund was committed: the retry created the fund (one).
    ran_once: int = 0
    #: The record was written before the kill: the retry replayed (one fund).
    replayed: int = 0
    #: The fund committed without its record: the retry created a second fund.
    ran_twice: int = 0
    #: Durations of the timed requests (seconds), which set each round's kill span.
    spans: list[float] = field(default_factory=list)

    def line(self) -> str:
        median = sorted(self.spans)[len(self.spans) // 2] * 1000 if self.spans else 0.0
        return (
            f"{self.kills} kills: {self.ran_twice} ran twice, {self.replayed} replayed, "
            f"{self.ran_once} died before the commit (median request {median:.1f} ms)"
        )


async def kill_at_random(
    example: Example,
    funds_of: Callable[[str], Any],
    *,
    kills: int,
    lease: float,
    rng: random.Random,
    report: Callable[[Tally], None] = lambda tally: None,
) -> Tally:
    """Run ``kills`` rounds (see the module docstring); ``funds_of(user)`` counts a user's funds.

    The next victim starts while the previous round's retries wait out the lease.
    """
    tally = Tally()
    standby = await example.start()
    victim = asyncio.create_task(example.start())
    for _ in range(kills):
        server = await victim
        # Twice: the first keyed request of a worker opens its pools and loads its scripts.
        await timed(server, create())
        span = await timed(server, create())
        tally.spans.append(span)
        request = create()
        _, writer, start = await sent(server, request)
        await asyncio.sleep(max(0.0, start + rng.uniform(0.0, span) - time.monotonic()))
        server.signal(signal.SIGKILL)
        server.wait(timeout=10)
        writer.close()
        victim = asyncio.create_task(example.start())
        answer = await request.retry_until_run(standby, lease=lease)
        count = await funds_of(request.user)
        tally.kills += 1
        if count == 2:
            tally.ran_twice += 1
        elif count == 1 and answer.headers.get("idempotency-status") == "replayed":
            tally.replayed += 1
        elif count == 1 and answer.status_code == 201:
            tally.ran_once += 1
        else:
            raise AssertionError(f"{count} funds, then {answer.status_code} {answer.text}")
        report(tally)
    (await victim).signal(signal.SIGTERM)
    return tally


class LatencyProxy(TcpProxy):
    """A :class:`TcpProxy` that delivers every chunk ``delay`` seconds after it arrived (each
    direction: a round trip through it takes ``2 * delay`` more). It is never cut."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        super().__init__(target)
        self.delay = delay

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            with contextlib.suppress(OSError):
                while True:
                    due, data = await queue.get()
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    if not data:
                        break
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        delivery = asyncio.create_task(deliver())
        try:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))
            await delivery
        finally:
            delivery.cancel()


__all__ = ["FUND", "Example", "Keyed", "LatencyProxy", "Tally", "create", "kill_at_random"]
