"""An open-model load generator: requests arrive on a schedule, whatever the server does.

    python -m benchmarks.openload URL [--workload items|funds] [--rates 100,200 | --search]
                                      [--schedule 10@200,10@800,20@200] [--seconds 5] [--json FILE]

A closed model (wrk, Locust's users) sends the next request only when the previous one is
answered: when the server slows down, the load drops with it and the requests that would have
waited are never sent, so the latency it reports is the latency of a politer world ("coordinated
omission"). Here arrivals follow a Poisson process at the offered rate, fixed in advance; each
request's latency is counted from its *intended* send time, so a request that had to wait for a
free connection, or behind a generator that fell behind, carries that wait.

Requests go as raw HTTP/1.1 over a pool of keep-alive connections that grows when every
connection is busy (up to ``--max-connections``; past it requests queue in the generator, and the
queue counts in their latency). A request not answered ``--timeout`` seconds after its intended
time is an error (its connection is closed). Responses are parsed with httptools.

The generator reports its own cost per step: its CPU time over the step's wall time, and its lag
(how late it fired each request against the schedule). Latency counts from the intended time, so
a late generator can only make the server look slower, never faster: a step that held the SLO
held it. A step that missed it while the generator's lag p99 passed :data:`GENERATOR_LAG_LIMIT_MS`
or its CPU passed :data:`GENERATOR_CPU_LIMIT` (its core saturated, or shared with other work)
may have measured the generator, and says so (``generator_bound``). Loopback (or any address
given) only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

#: The roadmap's success metrics: a rate holds when its p99 stays under this ...
SLO_P99_MS = 200.0
#: ... and fewer than this share of its requests fail.
SLO_ERROR_RATIO = 0.001
#: A step that missed the SLO while the generator fired its p99 request later than this (a
#: tenth of the latency budget) may have measured the generator, not the server.
GENERATOR_LAG_LIMIT_MS = SLO_P99_MS / 10
#: ... or whose generator used more than this share of its core.
GENERATOR_CPU_LIMIT = 0.85
#: Seconds of quiet before a step that follows a missed one: a client that gave up left its
#: request in the server, which finishes it (at most the client timeout's worth of work).
COOL_DOWN = 6.0
#: The shortest sleep of the generator between arrivals (its lag is at most about this).
TICK = 0.001

# -- what is sent -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One request: its operation's name, its bytes on the wire, and what a right answer is.

    ``expect_header`` is a (lower-case name, value) pair the answer must carry; ``on_body``
    receives the body of a right answer (the funds workload learns the ids it creates).
    """

    operation: str
    data: bytes
    expect: int = 200
    expect_header: tuple[bytes, bytes] | None = None
    on_body: Callable[[bytes], None] | None = None


def request_bytes(
    method: str,
    path: str,
    host: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request as it goes on the wire (keep-alive, ``Content-Length`` for a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Workload(Protocol):
    """What to send: set up once, then one request per arrival."""

    async def setup(self, pool: Pool) -> None:
        """Prepare the server (data the requests refer to), through ``pool``."""

    def next(self) -> Planned:
        """The request of the next arrival."""


class Items:
    """``GET /items/{id}`` with an ``X-User-Id``: the endpoint of ``benchmarks.apps``."""

    def __init__(self, host: str, rng: random.Random, users: int = 200) -> None:
        self._rng = rng
        self._requests = [
            Planned(
                "GET /items/{id}",
                request_bytes("GET", f"/items/{n}", host, [("X-User-Id", f"user-{n % users}")]),
            )
            for n in range(1000)
        ]

    async def setup(self, pool: Pool) -> None:
        answer = await pool.fetch(self._requests[0])
        if answer is not None:
            raise RuntimeError(f"GET /items/0 failed before the run: {answer}")

    def next(self) -> Planned:
        return self._rng.choice(self._requests)


#: A fund as the load scenarios create it (tests/load/locustfile.py).
FUND: dict[str, Any] = {
    "name": "Load Fund",
    "size": 10_000_000,
    "description": "created by the load test",
    "stages": [
        {"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1},
        {"name": "series-a", "months": 24, "graduate": 0.5, "exit": 0.2},
    ],
}

#: The mix of the load scenarios (tests/load/locustfile.py), as weights per arrival: a user's
#: create 3, read 6, list 2, projection 1, summary 1, and one create in ten retried with its key.
FUNDS_MIX: dict[str, float] = {
    "POST /api/funds": 3.0,
    "POST /api/funds (retry)": 0.3,
    "GET /api/funds/{id}": 6.0,
    "GET /api/funds": 2.0,
    "GET /api/funds/{id}/projection": 1.0,
    "GET /api/summary": 1.0,
}


class Funds:
    """The load scenarios' realistic mix against the funds example, as independent arrivals.

    ``users`` callers (``X-User-Id``), each with ``funds_per_user`` funds created before the run;
    every arrival picks an operation by :data:`FUNDS_MIX` (or among ``operations`` alone, with
    the same weights) and a caller at random. A create
    carries a fresh ``Idempotency-Key`` and must answer 201; a retry re-sends a create that was
    answered, with its key, and must answer 201 with ``Idempotency-Status: replayed``; the reads
    must answer 200.
    """

    def __init__(
        self,
        host: str,
        rng: random.Random,
        users: int = 200,
        funds_per_user: int = 2,
        operations: Sequence[str] = (),
    ) -> None:
        self._host = host
        self._rng = rng
        run = uuid.uuid4().hex[:8]
        self._users = [f"load-{run}-{n}" for n in range(users)]
        self._funds_per_user = funds_per_user
        self._funds: dict[str, list[str]] = {user: [] for user in self._users}
        self._answered: deque[bytes] = deque(maxlen=1000)  # creates answered, as sent
        self._body = json.dumps(FUND).encode()
        unknown = set(operations) - set(FUNDS_MIX)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; choose from {list(FUNDS_MIX)}")
        self._operations = [name for name in FUNDS_MIX if not operations or name in operations]
        self._weights = [FUNDS_MIX[name] for name in self._operations]

    def _headers(self, user: str) -> list[tuple[str, str]]:
        return [("X-User-Id", user)]

    def _create(self, user: str) -> Planned:
        key = uuid.uuid4().hex
        data = request_bytes(
            "POST",
            "/api/funds",
            self._host,
            [*self._headers(user), ("Content-Type", "application/json"), ("Idempotency-Key", key)],
            self._body,
        )

        def learn(body: bytes) -> None:
            funds = self._funds[user]
            funds.append(str(json.loads(body)["id"]))
            if len(funds) > 50:
                del funds[0]
            self._answered.append(data)

        return Planned("POST /api/funds", data, expect=201, on_body=learn)

    async def setup(self, pool: Pool) -> None:
        creates = [self._create(user) for user in self._users for _ in range(self._funds_per_user)]

        async def create(planned: Planned) -> str | None:
            # A server with a small MAX_CONCURRENCY sheds some: the same key is safe to retry.
            for _ in range(10):
                error = await pool.fetch(planned)
                if error is None or not error.startswith(("status 503", "status 429")):
                    return error
                await asyncio.sleep(0.2)
            return error

        for start in range(0, len(creates), 8):
            answers = await asyncio.gather(*(create(p) for p in creates[start : start + 8]))
            failed = [answer for answer in answers if answer is not None]
            if failed:
                raise RuntimeError(f"creating the funds before the run failed: {failed[0]}")
        self._answered.clear()  # retries replay creates of the run itself

    def next(self) -> Planned:
        operation = self._rng.choices(self._operations, self._weights)[0]
        user = self._rng.choice(self._users)
        if operation == "POST /api/funds (retry)" and self._answered:
            return Planned(
                operation,
                self._rng.choice(self._answered),
                expect=201,
                expect_header=(b"idempotency-status", b"replayed"),
            )
        if operation.startswith("POST"):
            return self._create(user)
        path = {
            "GET /api/funds": "/api/funds?limit=20",
            "GET /api/summary": "/api/summary",
        }.get(operation)
        if path is None:
            fund = self._rng.choice(self._funds[user])
            path = f"/api/funds/{fund}"
            if operation == "GET /api/funds/{id}/projection":
                path += "/projection?simulations=2000&seed=1"
        return Planned(operation, request_bytes("GET", path, self._host, self._headers(user)))


WORKLOADS = ("funds", "items")

# -- connections --------------------------------------------------------------------------------


class Pending:
    """One arrival: when it was meant to go, when it went, and who waits for its outcome."""

    __slots__ = ("done", "fired", "intended", "planned", "step")

    def __init__(
        self,
        planned: Planned,
        intended: float,
        fired: float,
        step: int,
        done: Callable[[Pending, float, str | None], None],
    ) -> None:
        self.planned = planned
        self.intended = intended
        self.fired = fired
        self.step = step
        self.done = done


def problem_code(body: Sequence[bytes]) -> str:
    """`` CODE`` of an RFC 9457 problem body (prodkit's ``code`` member), else nothing."""
    try:
        code = json.loads(b"".join(body)).get("code")
    except (ValueError, AttributeError):
        return ""
    return f" {code}" if isinstance(code, str) else ""


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, parsed by httptools."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: Pending | None = None
        self.idle_since = 0.0
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._keep_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, pending: Pending) -> None:
        assert self.transport is not None
        self.pending = pending
        self.transport.write(pending.planned.data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close("malformed response")

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.pending is not None and self.pending.planned.expect_header is not None:
            self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # The body is kept when the workload reads it, or to name a wrong answer's problem code.
        planned = self.pending.planned if self.pending is not None else None
        self._keep_body = planned is not None and (
            planned.on_body is not None or self.parser.get_status_code() != planned.expect
        )

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            self.close("unexpected response")
            return
        planned = pending.planned
        status = self.parser.get_status_code()
        error = None if status == planned.expect else f"status {status}{problem_code(self._body)}"
        if error is None and planned.expect_header is not None:
            name, value = planned.expect_header
            if self._headers.get(name) != value:
                error = f"{name.decode()}: {self._headers.get(name, b'-').decode()}"
        if error is None and planned.on_body is not None:
            planned.on_body(b"".join(self._body))
        self._headers.clear()
        self._body.clear()
        pending.done(pending, time.perf_counter(), error)
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self.close(None)

    def close(self, error: str | None) -> None:
        """Close this connection; a request still on it fails with ``error``."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.done(pending, time.perf_counter(), error or "connection closed")
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("connection closed" if exc is None else f"connection {type(exc).__name__}")


class Pool:
    """Keep-alive connections to one server, opened on demand up to ``max_connections``.

    Idle connections are reused last-in first-out, so the busiest stay warm and the others age
    out (closed after ``idle_close`` seconds, before the server's keep-alive timeout could close
    one under a request). Arrivals that find no connection wait in a queue, in order.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 1000,
        timeout: float = 5.0,
        idle_close: float = 2.0,
    ) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.timeout = timeout
        self.idle_close = idle_close
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.opening = 0
        self.backlog: deque[Pending] = deque()
        self.most_connections = 0
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    def submit(self, pending: Pending) -> None:
        """Send ``pending`` on an idle connection, a new one, or when one frees up."""
        if self.idle:
            connection = self.idle.pop()
            self.busy.add(connection)
            connection.send(pending)
            return
        self.backlog.append(pending)
        if self.connections < self.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(self), self.host, self.port
            )
        except OSError as exc:
            self.opening -= 1
            if self.backlog:
                pending = self.backlog.popleft()
                pending.done(pending, time.perf_counter(), f"connect {type(exc).__name__}")
            return
        self.opening -= 1
        self.most_connections = max(self.most_connections, self.connections + 1)
        self.release(connection)

    def release(self, connection: Connection) -> None:
        """``connection`` is free: give it the oldest waiting request, or keep it idle."""
        self.busy.discard(connection)
        if self.backlog:
            self.busy.add(connection)
            connection.send(self.backlog.popleft())
        else:
            connection.idle_since = time.perf_counter()
            self.idle.append(connection)

    def forget(self, connection: Connection) -> None:
        self.busy.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)

    def sweep(self) -> None:
        """Fail requests past their deadline, close idle connections past ``idle_close``."""
        now = time.perf_counter()
        deadline = now - self.timeout
        while self.backlog and self.backlog[0].intended <= deadline:
            pending = self.backlog.popleft()
            pending.done(pending, now, "timeout")
        for connection in [c for c in self.busy if c.pending and c.pending.intended <= deadline]:
            connection.close("timeout")
        while self.idle and self.idle[0].idle_since <= now - self.idle_close:
            self.idle[0].close(None)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.sweep()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in [*self.idle, *self.busy]:
            connection.close(None)

    async def fetch(self, planned: Planned) -> str | None:
        """Send one request now and wait for it: ``None`` when answered right, else the error."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def done(pending: Pending, at: float, error: str | None) -> None:
            if not future.done():
                future.set_result(error)

        now = time.perf_counter()
        self.submit(Pending(planned, now, now, -1, done))
        return await future


# -- measuring ----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (0 when there are none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds used so far by ``pid`` and its descendants (a server and its workers)."""
    if pid is None:
        return 0.0
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # After the command's closing parenthesis: state, ppid, ...; utime and stime are the
        # 12th and 13th of those fields, in clock ticks.
        fields = stat.rpartition(")")[2].split()
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    total = 0
    for process, own in ticks.items():
        ancestor = process
        while ancestor > 1 and ancestor != pid:
            ancestor = parents.get(ancestor, 0)
        if ancestor == pid:
            total += own
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> list[tuple[int, int]]:
    """(busy, total) clock ticks per CPU since boot, from ``/proc/stat``."""
    times = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                idle = ticks[3] + ticks[4]  # idle + iowait
                times.append((sum(ticks) - idle, sum(ticks)))
    return times


@dataclass
class Meter:
    """CPU use over an interval: the generator's, the server's, each CPU's."""

    wall: float = field(default_factory=time.perf_counter)
    generator: float = field(default_factory=time.process_time)
    server: float = 0.0
    cpus: list[tuple[int, int]] = field(default_factory=_cpu_times)

    @classmethod
    def now(cls, server_pid: int | None) -> Meter:
        meter = cls()
        meter.server = cpu_seconds(server_pid)
        return meter

    def since(self, start: Meter) -> dict[str, Any]:
        wall = self.wall - start.wall
        busy = [
            round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
            for (b0, t0), (b1, t1) in zip(start.cpus, self.cpus, strict=False)
        ]
        return {
            "generator_cpu": round((self.generator - start.generator) / wall, 3),
            "server_cpu": round((self.server - start.server) / wall, 3),
            "cpu_busy": busy,
        }


@dataclass
class Outcome:
    """What became of one arrival."""

    step: int
    operation: str
    intended: float  #: seconds after the run started
    latency_ms: float
    lag_ms: float
    error: str | None


@dataclass
class StepReport:
    """One step of offered load and what the server made of it."""

    rate: float
    seconds: float
    offered: int
    ok: int
    errors: dict[str, int]
    error_ratio: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float | None  #: None when more than 1 % failed (a failure counts as infinitely slow)
    max_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    generator_cpu: float
    server_cpu: float
    cpu_busy: list[float]
    connections: int
    passed: bool
    generator_bound: bool
    operations: dict[str, dict[str, float]]

    @property
    def summary(self) -> str:
        verdict = "pass" if self.passed else "generator-bound" if self.generator_bound else "MISS"
        return (
            f"{self.rate:8.0f}/s offered {self.offered:6d}: p50 {self.p50_ms:7.1f} ms "
            f"p99 {_ms(self.p99_ms)} ms errors {self.error_ratio:6.2%} "
            f"throughput {self.throughput:7.0f}/s lag p99 {self.lag_p99_ms:5.1f} ms "
            f"generator cpu {self.generator_cpu:4.0%} server cpu {self.server_cpu:4.0%} "
            f"conns {self.connections:4d} cpus busy {'/'.join(f'{b:.0%}' for b in self.cpu_busy)}"
            f"  {verdict}" + (f" {self.errors}" if self.errors else "")
        )


def _rounded(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


def _ms(value: float | None) -> str:
    return "      —" if value is None else f"{value:7.1f}"


def summarise(
    outcomes: Sequence[Outcome], rate: float, seconds: float, cpu: dict[str, Any], connections: int
) -> StepReport:
    """The figures of one step's arrivals."""
    latencies = sorted(o.latency_ms for o in outcomes if o.error is None)
    lags = sorted(o.lag_ms for o in outcomes)
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    # A request that failed counts as slow as the slowest: errors never improve a percentile.
    all_latencies = sorted(o.latency_ms if o.error is None else math.inf for o in outcomes) or [0.0]
    offered = len(outcomes)
    failed = sum(errors.values())
    operations: dict[str, dict[str, float]] = {}
    for name in sorted({o.operation for o in outcomes}):
        mine = sorted(o.latency_ms for o in outcomes if o.operation == name and o.error is None)
        operations[name] = {
            "count": sum(1 for o in outcomes if o.operation == name),
            "errors": sum(1 for o in outcomes if o.operation == name and o.error is not None),
            "p50_ms": round(percentile(mine, 0.5), 2),
            "p99_ms": round(percentile(mine, 0.99), 2),
        }
    p99 = percentile(all_latencies, 0.99)
    error_ratio = failed / offered if offered else 1.0
    lag_p99 = percentile(lags, 0.99)
    generator_bound = lag_p99 > GENERATOR_LAG_LIMIT_MS or cpu["generator_cpu"] > GENERATOR_CPU_LIMIT
    return StepReport(
        rate=rate,
        seconds=seconds,
        offered=offered,
        ok=offered - failed,
        errors=errors,
        error_ratio=round(error_ratio, 5),
        throughput=round((offered - failed) / seconds, 1),
        p50_ms=round(percentile(latencies, 0.5), 2),
        p90_ms=round(percentile(latencies, 0.9), 2),
        p99_ms=_rounded(p99),
        max_ms=round(latencies[-1], 2) if latencies else 0.0,
        lag_p50_ms=round(percentile(lags, 0.5), 3),
        lag_p99_ms=round(lag_p99, 3),
        lag_max_ms=round(lags[-1], 3) if lags else 0.0,
        connections=connections,
        passed=offered > 0 and p99 < SLO_P99_MS and error_ratio < SLO_ERROR_RATIO,
        generator_bound=generator_bound,
        operations=operations,
        **cpu,
    )


# -- running ------------------------------------------------------------------------------------


class Generator:
    """Fires a workload's requests at Poisson arrival times and records each outcome."""

    def __init__(
        self, pool: Pool, workload: Workload, rng: random.Random, server_pid: int | None = None
    ) -> None:
        self.pool = pool
        self.workload = workload
        self.rng = rng
        self.server_pid = server_pid
        self.outcomes: list[Outcome] = []
        self.outstanding = 0
        self._origin = time.perf_counter()
        self._settled: asyncio.Event | None = None

    def _done(self, pending: Pending, at: float, error: str | None) -> None:
        self.outstanding -= 1
        self.outcomes.append(
            Outcome(
                step=pending.step,
                operation=pending.planned.operation,
                intended=pending.intended - self._origin,
                latency_ms=(at - pending.intended) * 1000,
                lag_ms=(pending.fired - pending.intended) * 1000,
                error=error,
            )
        )
        if self.outstanding == 0 and self._settled is not None:
            self._settled.set()

    async def run(self, phases: Sequence[tuple[float, float]], step: int) -> None:
        """Offer ``(seconds, rate)`` phases back to back, then wait for every answer."""
        self._settled = asyncio.Event()  # set when nothing is outstanding
        intended = time.perf_counter() + 0.01
        submit, workload, expovariate = self.pool.submit, self.workload, self.rng.expovariate
        for seconds, rate in phases:
            end = intended + seconds
            intended += expovariate(rate)
            while intended < end:
                now = time.perf_counter()
                if intended > now:
                    # The event loop's timers tick in milliseconds: a shorter sleep would spin.
                    await asyncio.sleep(max(intended - now, TICK))
                    now = time.perf_counter()
                # Fire every arrival that is due; each keeps its own intended time.
                while intended <= now and intended < end:
                    self.outstanding += 1
                    submit(Pending(workload.next(), intended, now, step, self._done))
                    intended += expovariate(rate)
            intended = end
        # Every request left has a deadline, by which the pool answers or fails it.
        self._settled.clear()
        if self.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.pool.timeout + 2)

    async def step(self, rate: float, seconds: float, index: int) -> StepReport:
        """Offer ``rate`` requests per second for ``seconds``; the step's figures."""
        self.pool.most_connections = self.pool.connections
        start = Meter.now(self.server_pid)
        await self.run([(seconds, rate)], index)
        cpu = Meter.now(self.server_pid).since(start)
        mine = [o for o in self.outcomes if o.step == index]
        self.outcomes = [o for o in self.outcomes if o.step != index]  # a long search stays small
        return summarise(mine, rate, seconds, cpu, self.pool.most_connections)

    def timeline(self, step: int, width: float = 1.0) -> list[dict[str, Any]]:
        """Per ``width`` seconds of intended send time: offered, errors, p50 and p99."""
        mine = [o for o in self.outcomes if o.step == step]
        if not mine:
            return []
        first = min(o.intended for o in mine)
        buckets: dict[int, list[Outcome]] = {}
        for o in mine:
            buckets.setdefault(int((o.intended - first) // width), []).append(o)
        rows = []
        for n in range(max(buckets) + 1):
            bucket = buckets.get(n, [])
            latencies = sorted(o.latency_ms if o.error is None else math.inf for o in bucket)
            p99 = percentile(latencies, 0.99)
            rows.append(
                {
                    "second": round(n * width, 3),
                    "offered": len(bucket),
                    "errors": sum(1 for o in bucket if o.error is not None),
                    "p50_ms": _rounded(percentile(latencies, 0.5)),
                    "p99_ms": _rounded(p99),
                }
            )
        return rows


def ladder(start: float, factor: float, top: float) -> Iterator[float]:
    """``start``, ``start * factor``, … up to ``top``."""
    rate = start
    while rate <= top * 1.0001:
        yield round(rate, 1)
        rate *= factor


async def search(
    generator: Generator,
    *,
    start: float,
    factor: float,
    top: float,
    seconds: float,
    refine: int,
    report: Callable[[StepReport], None],
    cool_down: float = COOL_DOWN,
) -> dict[str, Any]:
    """Raise the rate step by step until a step misses the SLO, then bisect ``refine`` times
    (a miss at the first rate halves it instead, until one holds).

    The capacity is the highest rate measured that held (p99 < :data:`SLO_P99_MS`, errors <
    :data:`SLO_ERROR_RATIO`). A step that missed while the generator was late ends the search
    as ``generator_bound``: the server held at least the last rate before it.
    """
    steps: list[StepReport] = []
    held: float | None = None
    missed: float | None = None
    bound = False

    async def measure(rate: float) -> StepReport:
        if steps and not steps[-1].passed:
            await asyncio.sleep(cool_down)  # the server finishes what the clients gave up on
        result = await generator.step(rate, seconds, len(steps))
        steps.append(result)
        report(result)
        return result

    for rate in ladder(start, factor, top):
        result = await measure(rate)
        if not result.passed:
            missed, bound = rate, result.generator_bound
            break
        held = rate
    # Missed at the first rate: halve it until one holds (at most four times).
    for _ in range(4):
        if held is not None or bound or missed is None:
            break
        rate = round(missed / 2, 1)
        result = await measure(rate)
        if result.passed:
            held = rate
        elif result.generator_bound:
            bound = True
        else:
            missed = rate
    if missed is not None and held is not None and not bound:
        for _ in range(refine):
            rate = round(math.sqrt(held * missed), 1)
            result = await measure(rate)
            if result.passed:
                held = rate
            elif result.generator_bound:
                bound = True
                break
            else:
                missed = rate
    return {
        "capacity": held,
        "first_miss": missed,
        "generator_bound": bound,
        "steps": [asdict(s) for s in sorted(steps, key=lambda s: s.rate)],
    }


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """``"10@200,10@800"`` → ``[(10.0, 200.0), (10.0, 800.0)]`` (seconds @ rate)."""
    phases = []
    for part in text.split(","):
        seconds, _, rate = part.partition("@")
        phases.append((float(seconds), float(rate)))
    if not phases or any(s <= 0 or r <= 0 for s, r in phases):
        raise ValueError(f"schedule {text!r}: write seconds@rate,seconds@rate,...")
    return phases


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    rng = random.Random(args.seed)
    pool = Pool(host, port, max_connections=args.max_connections, timeout=args.timeout)
    pool.start()
    workload: Workload
    if args.workload == "funds":
        workload = Funds(f"{host}:{port}", rng, users=args.users, operations=args.operation or ())
    else:
        workload = Items(f"{host}:{port}", rng, users=args.users)
    generator = Generator(pool, workload, rng, args.server_pid)

    def report(step: StepReport) -> None:
        print(step.summary, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "workload": args.workload,
        "operations": args.operation,
        "url": args.url,
        "seed": args.seed,
        "timeout_s": args.timeout,
        "max_connections": args.max_connections,
        "slo": {"p99_ms": SLO_P99_MS, "error_ratio": SLO_ERROR_RATIO},
        "generator_cpus": sorted(os.sched_getaffinity(0)),
    }
    try:
        await workload.setup(pool)
        if args.warmup > 0:
            await generator.run([(args.warmup, args.warmup_rate)], -1)
        if args.schedule:
            phases = parse_schedule(args.schedule)
            meter = Meter.now(args.server_pid)
            await generator.run(phases, 0)
            mine = [o for o in generator.outcomes if o.step == 0]
            seconds = sum(s for s, _ in phases)
            rate = len(mine) / seconds
            whole = summarise(
                mine, rate, seconds, Meter.now(args.server_pid).since(meter), pool.most_connections
            )
            report(whole)
            result["schedule"] = [{"seconds": s, "rate": r} for s, r in phases]
            result["whole"] = asdict(whole)
            result["timeline"] = generator.timeline(0)
        elif args.search:
            result.update(
                await search(
                    generator,
                    start=args.start,
                    factor=args.factor,
                    top=args.max_rate,
                    seconds=args.seconds,
                    refine=args.refine,
                    report=report,
                )
            )
        else:
            steps = []
            for index, rate in enumerate(args.rates):
                step = await generator.step(rate, args.seconds, index)
                report(step)
                steps.append(asdict(step))
            result["steps"] = steps
    finally:
        pool.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openload", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--workload", choices=WORKLOADS, default="items")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[50.0, 100.0],
        help="offered requests per second, one step each (default 50,100)",
    )
    mode.add_argument(
        "--search",
        action="store_true",
        help="raise the rate until the SLO is missed, then bisect: the highest rate that holds",
    )
    mode.add_argument(
        "--schedule", help="phases seconds@rate,... back to back, reported per second"
    )
    parser.add_argument(
        "--operation",
        action="append",
        choices=list(FUNDS_MIX),
        help="funds: offer only this operation (repeat for several)",
    )
    parser.add_argument("--users", type=int, default=200, help="callers (X-User-Id)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per step (default 5)")
    parser.add_argument("--start", type=float, default=50.0, help="--search: first rate")
    parser.add_argument("--factor", type=float, default=1.5, help="--search: next rate *")
    parser.add_argument("--max-rate", type=float, default=50_000.0, help="--search: last rate")
    parser.add_argument("--refine", type=int, default=2, help="--search: bisections")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not reported")
    parser.add_argument("--warmup-rate", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds after intended")
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-pid", type=int, help="report this server session's CPU")
    parser.add_argument("--json", type=Path, help="write the figures here ('-': stdout)")
    args = parser.parse_args(argv)
    if args.operation:
        args.workload = "funds"
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(_main(args))
    else:
        result = uvloop.run(_main(args))
    text = json.dumps(result, indent=1)
    if args.json is None or str(args.json) == "-":
        print(text)
    else:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
