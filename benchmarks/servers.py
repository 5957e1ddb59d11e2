"""The example's server: GET/s over the wire under each server, and what each does to a hostile client.

    python -m benchmarks servers [--seconds 8] [--rounds 2] [--connections 50] [--no-probes]

Each server runs the funds example (the whole recommended stack, in-memory storage, one JSON
access line per request) pinned to the server CPU (``taskset``); wrk, pinned to the other CPU,
reads one cached ``GET /api/funds/{id}`` from 50 keep-alive connections. Servers: uvicorn with
httptools and prodkit's protocol (``prodkit serve``, the example's default), uvicorn with
httptools alone (no head limit), uvicorn with h11, granian and hypercorn (``prodkit serve
--server``). The rounds are interleaved, so a disturbance spreads over every server; each
figure is the best round, with the server's own CPU time per request beside it (requests per
server CPU-second hold better than requests per second on a shared machine).

Then each server meets hostile clients (loopback, bounded): a 40 KB header in one write, 10,000
headers in one write, a 40 KB header dribbled in 1 KB pieces, a head that never ends (one header
line a second), an idle keep-alive connection, and a request with both ``Content-Length`` and
``Transfer-Encoding`` followed by a second request in the same write. Needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.capacity import Pinning, wait_ready
from benchmarks.openload import cpu_seconds
from benchmarks.throughput import FUND, run_wrk
from tests.servers import HOST, free_port, run_server

#: uvicorn as ``prodkit serve`` configures it, for the variants prodkit serve does not run.
UVICORN = [
    "uvicorn", "benchmarks.apps:funds_example", "--factory", "--loop", "uvloop",
    "--log-level", "warning", "--no-access-log", "--no-proxy-headers",
    "--timeout-keep-alive", "5", "--limit-concurrency", "2048",
]  # fmt: skip
PRODKIT_SERVE = ["prodkit.cli", "serve", "examples.funds.app:create_app", "--factory"]


@dataclass
class Server:
    """One way to serve the example."""

    label: str
    args: list[str]
    runs: list[dict[str, float]] = field(default_factory=list)
    probes: dict[str, str] = field(default_factory=dict)


def servers() -> list[Server]:
    return [
        Server("uvicorn + httptools, prodkit's protocol (default)", ["examples.funds"]),
        Server("uvicorn + httptools, no head limit", [*UVICORN, "--http", "httptools"]),
        Server(
            "uvicorn + h11",
            [*UVICORN, "--http", "h11", "--h11-max-incomplete-event-size", "32768"],
        ),
        Server("granian", [*PRODKIT_SERVE, "--server", "granian"]),
        Server("hypercorn", [*PRODKIT_SERVE, "--server", "hypercorn"]),
    ]


# -- hostile clients ----------------------------------------------------------------------------

HEAD = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"


async def _answer(reader: asyncio.StreamReader, wait: float = 5.0) -> str:
    """The status of the answer, and whether the connection closed after it."""
    try:
        line = await asyncio.wait_for(reader.readline(), wait)
    except (TimeoutError, ConnectionError):
        return "no answer"
    if not line:
        return "closed, no answer"
    status = line.split()[1].decode() if len(line.split()) > 1 else "?"
    try:
        while await asyncio.wait_for(reader.read(65536), 2.0):
            pass
    except TimeoutError:
        return f"{status}, kept open"
    except ConnectionError:
        pass
    return f"{status}, closed"


async def _send(head: bytes, pieces: int = 1, port: int = 0) -> str:
    """Send ``head`` in ``pieces`` writes while reading: an early answer stops the writing
    (writing on would make the kernel reset the connection and drop the answer unread)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    answer = asyncio.create_task(_answer(reader))
    try:
        size = -(-len(head) // pieces)
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(head), size):
                if answer.done():
                    break
                writer.write(head[start : start + size])
                await writer.drain()
                if pieces > 1:
                    await asyncio.sleep(0.005)
        return await answer
    finally:
        writer.close()


async def big_header(port: int) -> str:
    return await _send(HEAD + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n", port=port)


async def many_headers(port: int) -> str:
    fields = b"".join(b"X-H%d: v\r\n" % n for n in range(10_000))
    return await _send(HEAD + fields + b"\r\n", port=port)


async def big_header_in_pieces(port: int) -> str:
    return await _send(HEAD + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n", pieces=40, port=port)


async def _until_closed(
    reader: asyncio.StreamReader, limit: float, tick: Callable[[], None]
) -> str:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        tick()
        try:
            data = await asyncio.wait_for(reader.read(65536), 1.0)
        except TimeoutError:
            continue
        except ConnectionError:
            data = b""
        if not data:
            return f"closed after {time.monotonic() - start:.0f} s"
        if data.startswith(b"HTTP/"):
            return f"answered {data.split()[1].decode()} after {time.monotonic() - start:.0f} s"
    return f"open after {limit:.0f} s"


async def slow_head(port: int, limit: float = 10.0) -> str:
    """A head that never ends: one more header line each second (within the size limits)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(HEAD)
    try:
        return await _until_closed(reader, limit, lambda: writer.write(b"X-Slow: 1\r\n"))
    finally:
        writer.close()


async def idle_keep_alive(port: int, limit: float = 10.0) -> str:
    """One request answered, then silence: when does the server close the connection?"""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(HEAD + b"\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return await _until_closed(reader, limit, lambda: None)
    finally:
        writer.close()


async def both_lengths(port: int) -> str:
    """``Content-Length`` and ``Transfer-Encoding``, and a second request behind the body."""
    smuggled = (
        b"POST /api/funds HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: hostile\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HEAD + b"\r\n"
    )
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(smuggled)
    received = b""
    try:
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 3.0):
                received += chunk
    finally:
        writer.close()
    answers = received.count(b"HTTP/1.1 ")
    first = received.split()[1].decode() if answers else "no answer"
    return f"{first}; the request behind it {'ran' if answers > 1 else 'never ran'}"


PROBES: dict[str, Callable[[int], Awaitable[str]]] = {
    "40 KB header, one write": big_header,
    "10,000 headers, one write": many_headers,
    "40 KB header in 1 KB pieces": big_header_in_pieces,
    "never-ending head": slow_head,
    "idle keep-alive": idle_keep_alive,
    "both length headers": both_lengths,
}


async def probe(port: int) -> dict[str, str]:
    """Every hostile client at once against the server on ``port``."""
    outcomes = await asyncio.gather(*(run(port) for run in PROBES.values()))
    return dict(zip(PROBES, outcomes, strict=True))


# -- throughput ---------------------------------------------------------------------------------


def _post_fund(base_url: str) -> str:
    request = urllib.request.Request(  # noqa: S310 - loopback URL
        f"{base_url}/api/funds",
        data=json.dumps(FUND).encode(),
        headers={"Content-Type": "application/json", "X-User-Id": "bench-user"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(json.load(response)["id"])


def measure(
    server: Server,
    seconds: int,
    connections: int,
    pinning: Pinning | None,
    tmp: Path,
    probes: bool,
) -> None:
    port = free_port()
    env = {"RATE_LIMIT": "1000000/second", "LOG_LEVEL": "INFO"}
    args = [*server.args, "--port", str(port)]
    if pinning is not None:
        args = ["benchmarks.pinned", pinning.server, *args]
    with run_server(args, port=port, tmp_path=tmp, env=env, startup_timeout=60) as running:
        wait_ready(running.base_url, "/readyz")
        url = f"{running.base_url}/api/funds/{_post_fund(running.base_url)}"
        headers = {"X-User-Id": "bench-user"}
        run_wrk(url, 2, connections, headers)  # warm-up
        before = cpu_seconds(running.pid)
        rps, p50, p99, bad = run_wrk(url, seconds, connections, headers)
        cpu = cpu_seconds(running.pid) - before
        requests = rps * seconds
        server.runs.append(
            {
                "rps": rps,
                "p50_ms": p50,
                "p99_ms": p99,
                "non_2xx": bad,
                "per_cpu_second": requests / cpu if cpu else 0.0,
                "cpu_us_per_request": cpu / requests * 1e6 if requests else 0.0,
            }
        )
        print(
            f"{server.label}: {rps:,.0f} GET/s, {requests / cpu if cpu else 0:,.0f} per server "
            f"CPU-second, p99 {p99:.1f} ms, non-2xx {bad}",
            file=sys.stderr,
        )
        if probes and not server.probes:
            server.probes = asyncio.run(probe(port))
            print(f"  {server.probes}", file=sys.stderr)


def report(measured: list[Server], seconds: int, connections: int, note: str) -> str:
    lines = [
        f"wrk -t1 -c{connections} -d{seconds}s on a cached `GET /api/funds/{{id}}` (in-memory "
        f"storage, the whole stack, JSON access line on), best of {len(measured[0].runs)} "
        f"interleaved rounds. {note}",
        "",
        "| server | GET/s | GET per server CPU-second | server CPU µs per GET | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for server in measured:
        best = max(server.runs, key=lambda run: run["rps"])
        most = max(run["per_cpu_second"] for run in server.runs)
        lines.append(
            f"| {server.label} | {best['rps']:,.0f} | {most:,.0f} | "
            f"{1e6 / most if most else 0:,.0f} | {best['p99_ms']:.1f} |"
        )
    if any(server.probes for server in measured):
        lines += [
            "",
            "| server | " + " | ".join(PROBES) + " |",
            "|---|" + "---|" * len(PROBES),
        ]
        for server in measured:
            lines.append(
                f"| {server.label} | "
                + " | ".join(server.probes.get(name, "") for name in PROBES)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks servers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--only", action="append", help="servers whose label contains this")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    pinning = Pinning.choose(None, None)
    if pinning is not None:
        os.sched_setaffinity(0, {int(pinning.generator)})  # wrk inherits it
    note = (
        f"{os.cpu_count()} CPUs, "
        + (
            f"wrk on CPU {pinning.generator}, server on CPU {pinning.server}"
            if pinning
            else "unpinned"
        )
        + "; load average at start "
        + " ".join(Path("/proc/loadavg").read_text().split()[:3])
        + "."
    )
    measured = [s for s in servers() if not args.only or any(o in s.label for o in args.only)]
    with tempfile.TemporaryDirectory(prefix="prodkit-servers-") as tmp:
        for _ in range(args.rounds):
            for server in measured:
                measure(
                    server, args.seconds, args.connections, pinning, Path(tmp), not args.no_probes
                )
    print(report(measured, args.seconds, args.connections, note))
    if args.json:
        args.json.write_text(
            json.dumps({s.label: {"runs": s.runs, "probes": s.probes} for s in measured}, indent=1)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
