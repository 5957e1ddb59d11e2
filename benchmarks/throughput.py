"""Throughput over real sockets: wrk against uvicorn (one worker, uvloop, httptools).

    python -m benchmarks.throughput [--seconds 10] [--connections 50] [--skip-postgres]

Cases: a bare Starlette endpoint, without and with uvicorn's own access log (its default); the
same endpoint behind the typical peer packages; the same endpoint inside the whole recommended stack (in-memory stores, one JSON access line per
request), uncached and cached; the funds example's cached ``GET /api/funds/{id}`` on memory
and on PostgreSQL + Redis (with its near cache, the default, and without: ``NEAR_CACHE=off``),
and its uncached listing on PostgreSQL. Loopback only; each run is bounded by ``--seconds``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, run_server

DATABASE_URL = os.environ.get(
    "PRODKIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FUND = {
    "name": "Bench Fund",
    "size": 1_000_000,
    "stages": [{"name": "seed", "months": 18, "graduate": 0.4, "exit": 0.1}],
}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Figures:
    """One wrk run."""

    case: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    cpu_us: float | None = None  #: the server process's CPU time per request (Linux)


#: One uvicorn worker as every over-the-wire figure runs it: uvloop, httptools, no access log.
UVICORN = [
    "uvicorn",
    "--factory",
    "--log-level",
    "warning",
    "--no-access-log",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
]


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not found:
        raise ValueError(text)
    return float(found.group(1)) * UNITS[found.group(2)]


#: With two or more CPUs the server runs on CPU 1 and wrk (one thread) on CPU 0, so the two
#: never take turns on a core: the figures measure the server, and vary less between runs.
PIN = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, LOAD_CPU = 1, 0


def _pin_load_generator() -> None:
    os.sched_setaffinity(0, {LOAD_CPU})


def run_wrk(
    url: str, seconds: int, connections: int, headers: dict[str, str]
) -> tuple[float, float, float, int]:
    threads = "1" if PIN else "2"
    args = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
        preexec_fn=_pin_load_generator if PIN else None,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc``; ``None`` without it).

    Less disturbed than requests per second by other work on a shared machine: what the server
    spends per request, however long it waited for a CPU.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _post_fund(base_url: str, user: str) -> str:
    request = urllib.request.Request(  # noqa: S310 - loopback URL built above
        f"{base_url}/api/funds",
        data=json.dumps(FUND).encode(),
        headers={"Content-Type": "application/json", "X-User-Id": user},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(json.load(response)["id"])


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def measure(
    case: str,
    args: list[str],
    path: str | None,
    seconds: int,
    connections: int,
    tmp: Path,
    env: dict[str, str] | None = None,
    example_path: str | None = None,
) -> Figures:
    port = free_port()
    env = {"LOG_LEVEL": "WARNING", **(env or {})}
    with run_server([*args, "--port", str(port)], port=port, tmp_path=tmp, env=env) as server:
        if PIN:
            os.sched_setaffinity(server.process.pid, {SERVER_CPU})
        headers = {"X-User-Id": "bench-user"}
        if example_path is not None:
            fund_id = _post_fund(server.base_url, "bench-user")
            path = example_path.format(fund_id=fund_id)
        assert path is not None
        run_wrk(server.base_url + path, 2, connections, headers)  # warm-up
        before = cpu_seconds(server.pid)
        rps, p50, p99, bad = run_wrk(server.base_url + path, seconds, connections, headers)
        after = cpu_seconds(server.pid)
    cpu = None if before is None or after is None else (after - before) / (rps * seconds) * 1e6
    return Figures(case, rps, p50, p99, bad, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    uvicorn = UVICORN
    tmp = Path(tempfile.mkdtemp(prefix="prodkit-throughput-"))
    # uvicorn as it starts by default: its access log writes one line per request.
    uvicorn_logging = [arg for arg in uvicorn if arg != "--no-access-log"]
    uvicorn_logging[uvicorn_logging.index("warning")] = "info"
    results = [
        measure(
            "bare Starlette",
            [*uvicorn, "benchmarks.apps:bare"],
            "/items/42",
            args.seconds,
            args.connections,
            tmp,
        ),
        measure(
            "bare Starlette, uvicorn's access log on (its default)",
            [*uvicorn_logging, "benchmarks.apps:bare"],
            "/items/42",
            args.seconds,
            args.connections,
            tmp,
        ),
        measure(
            "peer stack (asgi-correlation-id, structlog on BaseHTTPMiddleware, "
            "starlette-exporter, slowapi, CORS)",
            [*uvicorn, "benchmarks.apps:peer_stack"],
            "/items/42",
            args.seconds,
            args.connections,
            tmp,
        ),
        measure(
            "full stack (memory)",
            [*uvicorn, "benchmarks.apps:full_stack"],
            "/items/42",
            args.seconds,
            args.connections,
            tmp,
        ),
        measure(
            "full stack (memory), cached",
            [*uvicorn, "benchmarks.apps:full_stack"],
            "/items/42",
            args.seconds,
            args.connections,
            tmp,
            env={"BENCH_CACHE": "1"},
        ),
        measure(
            "example GET /api/funds/{id} (memory)",
            ["examples.funds"],
            None,
            args.seconds,
            args.connections,
            tmp,
            env={"RATE_LIMIT": "1000000/second"},
            example_path="/api/funds/{fund_id}",
        ),
    ]
    if not args.skip_postgres:
        database = f"prodkit_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
        env = {
            "DATABASE_URL": f"{DATABASE_URL.rpartition('/')[0]}/{database}",
            "REDIS_URL": REDIS_URL,
            "RATE_LIMIT": "1000000/second",
        }
        try:
            for label, path, near in (
                ("GET /api/funds/{id}, cached", "/api/funds/{fund_id}", "on"),
                ("GET /api/funds/{id}, cached, NEAR_CACHE=off", "/api/funds/{fund_id}", "off"),
                ("GET /api/funds (list)", "/api/funds", "on"),
            ):
                results.append(
                    measure(
                        f"example {label} (Postgres + Redis)",
                        ["examples.funds"],
                        None,
                        args.seconds,
                        args.connections,
                        tmp,
                        env={**env, "NEAR_CACHE": near},
                        example_path=path,
                    )
                )
        finally:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    bare, logged = results[0].rps, results[1].rps
    setup = f"server on CPU {SERVER_CPU}, wrk -t1 on CPU {LOAD_CPU}" if PIN else "wrk -t2, unpinned"
    print(
        f"wrk -c{args.connections} -d{args.seconds}s ({setup}), "
        "one uvicorn worker (uvloop, httptools)\n"
    )
    print(
        "| case | req/s | vs bare | vs bare + access log | p50 ms | p99 ms | non-2xx "
        "| server CPU µs/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cpu = "" if r.cpu_us is None else f"{r.cpu_us:.0f}"
        print(
            f"| {r.case} | {r.rps:,.0f} | {r.rps / bare:.0%} | {r.rps / logged:.0%} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} | {cpu} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
