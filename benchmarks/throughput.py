"""Throughput over real sockets: wrk against uvicorn (one worker, uvloop, httptools).

    python -m benchmarks.throughput [--seconds 10] [--connections 50] [--skip-postgres] [--rounds 1]

Cases: a bare Starlette endpoint, without and with uvicorn's own access log (its default); the
same endpoint behind the typical peer packages; the same endpoint inside the whole recommended stack (in-memory stores, one JSON access line per
request), uncached and cached; the funds example's cached ``GET /api/funds/{id}`` on memory
and on PostgreSQL + Redis (with its near cache, the default, and without: ``NEAR_CACHE=off``),
and its uncached listing on PostgreSQL. Loopback only; each run is bounded by ``--seconds``. Needs ``wrk``.

The cached read on PostgreSQL + Redis is measured twice. With one caller every connection reads
the same entry, and the cache's single flight already shares one Redis read between the reads
in flight at once (about one ``MGET`` per 20 requests with ``NEAR_CACHE=off``): what the near
cache saves there is small. With as many callers as connections, each with a fund of its own,
requested in turn, the reads in flight are of different entries, as in a service with many
users: each read without the near cache is a Redis round trip of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    url: str,
    seconds: int,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
) -> tuple[float, float, float, int]:
    """One wrk run against ``url`` (``script``: a wrk Lua script that makes the requests)."""
    threads = "1" if PIN else "2"
    args = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
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


def callers_script(targets: list[tuple[str, str]], path: Path) -> Path:
    """A wrk script that sends ``GET path`` as ``X-User-Id: user`` for each ``(path, user)`` of
    ``targets`` in turn, one request after the other: the reads in flight are of different
    entries."""
    rows = ",\n".join(f'  {{"{target}", "{user}"}}' for target, user in targets)
    path.write_text(
        f"local targets = {{\n{rows}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #targets + 1\n"
        "  local target = targets[i]\n"
        '  return wrk.format("GET", target[1], {["X-User-Id"] = target[2]})\n'
        "end\n"
    )
    return path


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
    callers: int = 1,
) -> Figures:
    """One case: a warm-up, then ``seconds`` of wrk; ``callers`` > 1 (with ``example_path``):
    that many callers, each with a fund of its own, requested in turn."""
    port = free_port()
    env = {"LOG_LEVEL": "WARNING", **(env or {})}
    with run_server([*args, "--port", str(port)], port=port, tmp_path=tmp, env=env) as server:
        if PIN:
            os.sched_setaffinity(server.process.pid, {SERVER_CPU})
        headers = {"X-User-Id": "bench-user"}
        script = None
        if example_path is not None:
            users = ["bench-user"] if callers == 1 else [f"bench-user-{i}" for i in range(callers)]
            targets = [
                (example_path.format(fund_id=_post_fund(server.base_url, user)), user)
                for user in users
            ]
            path = targets[0][0]
            if callers > 1:
                script = callers_script(targets, tmp / f"callers-{port}.lua")
        assert path is not None
        url = server.base_url + path
        run_wrk(url, 2, connections, headers, script)  # warm-up
        before = cpu_seconds(server.pid)
        rps, p50, p99, bad = run_wrk(url, seconds, connections, headers, script)
        after = cpu_seconds(server.pid)
    cpu = None if before is None or after is None else (after - before) / (rps * seconds) * 1e6
    return Figures(case, rps, p50, p99, bad, cpu)


def median_of(case: str, runs: list[Figures]) -> Figures:
    """One case's runs as one row: the median of each figure, the non-2xx answers added up."""
    cpu = [run.cpu_us for run in runs if run.cpu_us is not None]
    return Figures(
        case,
        statistics.median(run.rps for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.non_2xx for run in runs),
        statistics.median(cpu) if cpu else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every case this many times in turn and report each figure's median",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    uvicorn = UVICORN
    tmp = Path(tempfile.mkdtemp(prefix="prodkit-throughput-"))
    # uvicorn as it starts by default: its access log writes one line per request.
    uvicorn_logging = [arg for arg in uvicorn if arg != "--no-access-log"]
    uvicorn_logging[uvicorn_logging.index("warning")] = "info"
    # Each case as the keywords of ``measure`` after its label, run ``--rounds`` times in turn.
    cases: list[tuple[str, dict[str, Any]]] = [
        ("bare Starlette", {"args": [*uvicorn, "benchmarks.apps:bare"], "path": "/items/42"}),
        (
            "bare Starlette, uvicorn's access log on (its default)",
            {"args": [*uvicorn_logging, "benchmarks.apps:bare"], "path": "/items/42"},
        ),
        (
            "peer stack (asgi-correlation-id, structlog on BaseHTTPMiddleware, "
            "starlette-exporter, slowapi, CORS)",
            {"args": [*uvicorn, "benchmarks.apps:peer_stack"], "path": "/items/42"},
        ),
        (
            "full stack (memory)",
            {"args": [*uvicorn, "benchmarks.apps:full_stack"], "path": "/items/42"},
        ),
        (
            "full stack (memory), cached",
            {
                "args": [*uvicorn, "benchmarks.apps:full_stack"],
                "path": "/items/42",
                "env": {"BENCH_CACHE": "1"},
            },
        ),
        (
            "example GET /api/funds/{id} (memory)",
            {
                "args": ["examples.funds"],
                "path": None,
                "env": {"RATE_LIMIT": "1000000/second"},
                "example_path": "/api/funds/{fund_id}",
            },
        ),
    ]
    database = f"prodkit_bench_{uuid.uuid4().hex[:8]}"
    if not args.skip_postgres:
        env = {
            "DATABASE_URL": f"{DATABASE_URL.rpartition('/')[0]}/{database}",
            "REDIS_URL": REDIS_URL,
            "RATE_LIMIT": "1000000/second",
        }
        # One caller: the reads in flight share one entry. As many callers as connections:
        # each read in flight is of its own entry (see the module docstring).
        fund, many = "/api/funds/{fund_id}", args.connections
        for label, path, near, callers in (
            ("GET /api/funds/{id}, cached", fund, "on", 1),
            ("GET /api/funds/{id}, cached, NEAR_CACHE=off", fund, "off", 1),
            (f"GET /api/funds/{{id}}, cached, {many} callers", fund, "on", many),
            (
                f"GET /api/funds/{{id}}, cached, {many} callers, NEAR_CACHE=off",
                fund,
                "off",
                many,
            ),
            ("GET /api/funds (list)", "/api/funds", "on", 1),
        ):
            cases.append(
                (
                    f"example {label} (Postgres + Redis)",
                    {
                        "args": ["examples.funds"],
                        "path": None,
                        "env": {**env, "NEAR_CACHE": near},
                        "example_path": path,
                        "callers": callers,
                    },
                )
            )
        asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    runs: dict[str, list[Figures]] = {label: [] for label, _ in cases}
    try:
        for _ in range(args.rounds):
            for label, options in cases:
                runs[label].append(
                    measure(
                        label,
                        seconds=args.seconds,
                        connections=args.connections,
                        tmp=tmp,
                        **options,
                    )
                )
    finally:
        if not args.skip_postgres:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    results = [median_of(label, figures) for label, figures in runs.items()]
    bare, logged = results[0].rps, results[1].rps
    setup = f"server on CPU {SERVER_CPU}, wrk -t1 on CPU {LOAD_CPU}" if PIN else "wrk -t2, unpinned"
    rounds = "" if args.rounds == 1 else f", median of {args.rounds} rounds run in turn"
    print(
        f"wrk -c{args.connections} -d{args.seconds}s ({setup}), "
        f"one uvicorn worker (uvloop, httptools){rounds}\n"
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
