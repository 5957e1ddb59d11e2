"""Where the time goes over real sockets: the full stack against bare Starlette, and a flame graph.

    python -m benchmarks.wire [--seconds 5] [--pairs 5] [--connections 50]
                              [--flamegraph docs/img/wire-full-stack.svg] [--top 15]

Two uvicorn workers (uvloop, httptools, no uvicorn access log) serve ``GET /items/42``: the
bare Starlette app and the same app in the whole recommended stack, which writes its JSON
access line per request to the server's output (a file, as the throughput benchmark does).
Both run at once, pinned to CPU 1; wrk (one thread, pinned to CPU 0) measures them in turn,
``--pairs`` times, so every full-stack figure has a bare figure taken seconds before it. The
report gives the median GET/s of each, the median of the pairs' ratios, and the server's CPU
time per request (from ``/proc``; wrk's own share of the machine does not count in it).

With ``--flamegraph PATH`` the full-stack worker is then sampled by py-spy under the same load
(``py-spy record --format flamegraph``; a second recording, ``--nonblocking`` in py-spy's raw
format, gives the table of the functions that cost most in themselves, as a share of the
samples and in µs per request). ``--case NAME=MODULE:FACTORY`` adds an app to the runs. Needs ``wrk`` and, for the flame graph, ``py-spy``. Loopback only; every run is
bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks.throughput import LOAD_CPU, PIN, SERVER_CPU, UVICORN, _pin_load_generator
from tests.servers import ServerProcess, free_port, run_server

PATH = "/items/42"
HEADERS = ("-H", "X-User-Id: bench-user")
CASES = {"bare": "benchmarks.apps:bare", "full stack": "benchmarks.apps:full_stack"}
_TICKS = os.sysconf("SC_CLK_TCK")
# py-spy installed with pip lands beside this Python, which may not be on PATH.
_BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@dataclass
class Run:
    """One wrk run against one server."""

    case: str
    rps: float
    requests: int
    cpu_us: float  # the server's CPU time per request


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _wrk(url: str, seconds: float, connections: int) -> tuple[float, int]:
    args = ["wrk", "-t1", "-c", str(connections), "-d", f"{seconds:g}s", *HEADERS, url]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
        preexec_fn=_pin_load_generator if PIN else None,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"wrk saw error responses from {url}:\n{out}")
    return rps, total


def measure(case: str, server: ServerProcess, seconds: float, connections: int) -> Run:
    """One wrk run against ``server``, with the server's CPU time spent meanwhile."""
    before = _cpu_seconds(server.pid)
    rps, total = _wrk(server.base_url + PATH, seconds, connections)
    spent = _cpu_seconds(server.pid) - before
    return Run(case, rps, total, spent / total * 1e6)


def _serve(stack: ExitStack, app: str, tmp: Path) -> ServerProcess:
    port = free_port()
    server = stack.enter_context(
        run_server([*UVICORN, app, "--port", str(port)], port=port, tmp_path=tmp)
    )
    if PIN:
        os.sched_setaffinity(server.pid, {SERVER_CPU})
    return server


# -- the flame graph and the table ------------------------------------------------------------


def _record(pid: int, seconds: int, fmt: str, out: Path, rate: int, *, blocking: bool) -> None:
    subprocess.run(
        [
            shutil.which("py-spy", path=_BIN_PATH) or "py-spy",
            "record",
            *(() if blocking else ("--nonblocking",)),
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--format",
            fmt,
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
        preexec_fn=_pin_load_generator if PIN else None,
    )


def profile(
    server: ServerProcess, seconds: int, connections: int, svg: Path, raw: Path, rate: int
) -> None:
    """Sample ``server`` twice (flame graph, then raw stacks) under wrk's load."""
    load = subprocess.Popen(
        ["wrk", "-t1", "-c", str(connections), "-d", f"{2 * seconds + 4}s", *HEADERS,
         server.base_url + PATH],
        stdout=subprocess.DEVNULL,
        preexec_fn=_pin_load_generator if PIN else None,
    )  # fmt: skip
    try:
        time.sleep(1)
        # The flame graph from stopped threads (whole stacks); the table from running ones:
        # stopping a thread leans its samples to the lines where it can be stopped (a call into
        # C, asyncio.current_task), which runs measured apart do not find costly.
        _record(server.pid, seconds, "flamegraph", svg, rate, blocking=True)
        _record(server.pid, seconds, "raw", raw, rate, blocking=False)
    finally:
        load.wait(timeout=2 * seconds + 60)
    _scrub(svg)


def _scrub(svg: Path) -> None:
    """Keep file names relative to their package: no machine's paths in a committed file."""
    text = svg.read_text()
    text = re.sub(r"(?:/[\w.+-]+)+/(?:site-packages|src|lib/python3\.\d+)/", "", text)
    text = re.sub(r"(?:/[\w.+-]+)+/(py-spy)\b", r"\1", text)  # the command in the title
    text = re.sub(r"--pid \d+", "--pid PID", text)
    svg.write_text(text)


def _frames(raw: Path) -> Iterator[tuple[list[str], int]]:
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack.split(";"), int(count)


def _where(frame: str) -> str:
    """``function (file.py)`` without the line number."""
    return re.sub(r":\d+\)$", ")", frame)


def _package(frame: str) -> str:
    found = re.search(r"\(([^:/)]+)", frame)
    name = found.group(1) if found else "?"
    if name in ("<frozen runpy>", "asyncio", "contextlib", "typing", "json", "enum"):
        return "Python (asyncio and the standard library)"
    if name == "prodkit":
        found = re.search(r"\(prodkit/([^/:.]+)", frame)
        return f"prodkit.{found.group(1)}" if found else "prodkit"
    return name


def top_costs(raw: Path, cpu_us: float, top: int) -> str:
    """Markdown tables: the functions that cost most in themselves, and the cost by package."""
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _frames(raw):
        total += count
        own[_where(frames[-1])] += count
        packages[_package(frames[-1])] += count
    lines = [
        "| function (self time) | share | µs per request |",
        "|---|---:|---:|",
    ]
    for name, count in own.most_common(top):
        share = count / total
        lines.append(f"| `{name}` | {share:.1%} | {share * cpu_us:.1f} |")
    lines += ["", "| package (self time) | share | µs per request |", "|---|---:|---:|"]
    for name, count in packages.most_common(top):
        share = count / total
        lines.append(f"| {name} | {share:.1%} | {share * cpu_us:.1f} |")
    return "\n".join(lines)


# -- the report -------------------------------------------------------------------------------


def report(runs: Sequence[Run], cases: Sequence[str]) -> str:
    """The table of medians, and each case's ratio to the first (the bare app), pair by pair."""
    by_case = {case: [run for run in runs if run.case == case] for case in cases}
    lines = [
        "| case | GET/s | vs bare (median of pairs) | server CPU µs per request | added µs |",
        "|---|---:|---:|---:|---:|",
    ]
    bare = by_case[cases[0]]
    for case, found in by_case.items():
        rps = statistics.median(run.rps for run in found)
        cpu = statistics.median(run.cpu_us for run in found)
        pairs = list(zip(bare, found, strict=True))
        ratio = statistics.median(f.rps / b.rps for b, f in pairs)
        added = statistics.median(f.cpu_us - b.cpu_us for b, f in pairs)
        added_text = "" if case == cases[0] else f"{added:+.1f}"
        lines.append(f"| {case} | {rps:,.0f} | {ratio:.2f}x | {cpu:.1f} | {added_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wire", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--pairs", type=int, default=5, help="bare and full-stack runs in turn")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--flamegraph", type=Path, help="write the full stack's flame graph here")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--profile-case", default="full stack", metavar="NAME", help="the case to profile"
    )
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15, help="rows of the top-costs table")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="NAME=MODULE:FACTORY",
        help="measure this app factory too (after the bare app and the full stack)",
    )
    args = parser.parse_args(argv)
    cases = dict(CASES)
    for text in args.case:
        name, _, app = text.partition("=")
        if not app:
            parser.error(f"--case {text!r}: write NAME=MODULE:FACTORY")
        cases[name] = app
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    if args.flamegraph is not None and shutil.which("py-spy", path=_BIN_PATH) is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    tmp = Path(tempfile.mkdtemp(prefix="prodkit-wire-"))
    runs: list[Run] = []
    with ExitStack() as stack:
        servers = {case: _serve(stack, app, tmp) for case, app in cases.items()}
        for server in servers.values():  # warm-up: imports, caches, the first requests
            _wrk(server.base_url + PATH, 2, args.connections)
        for _ in range(args.pairs):
            for case, server in servers.items():
                runs.append(measure(case, server, args.seconds, args.connections))
        setup = f"servers on CPU {SERVER_CPU}, wrk -t1 on CPU {LOAD_CPU}" if PIN else "unpinned"
        print(
            f"wrk -c{args.connections} -d{args.seconds:g}s ({setup}), uvicorn, uvloop, httptools\n"
        )
        print(report(runs, list(cases)))
        if args.flamegraph is not None:
            raw = tmp / "profile.raw"
            args.flamegraph.parent.mkdir(parents=True, exist_ok=True)
            if args.profile_case not in servers:
                parser.error(f"--profile-case {args.profile_case!r}: no such case")
            profile(
                servers[args.profile_case],
                args.profile_seconds,
                args.connections,
                args.flamegraph,
                raw,
                args.rate,
            )
            cpu = statistics.median(run.cpu_us for run in runs if run.case == args.profile_case)
            print(f"\nflame graph: {args.flamegraph}\n")
            print(top_costs(raw, cpu, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
