"""Drive ASGI apps in-process (no sockets) and report the median time per request.

A case is an ASGI app plus one request (method, path, headers, body). The harness builds the
scope once, calls the app ``iterations`` times per round with a receive that yields the body and
a send that discards the response, and reports the median over rounds of the mean µs per request,
so one slow round (a GC pause, the other core busy) does not move the figure. Overhead is the
difference to a baseline case measured in the same run.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prodkit.asgi import ASGIApp, Message

AppFactory = Callable[[], ASGIApp]


@dataclass
class Case:
    """One thing to measure: an app factory and the request sent to it."""

    name: str
    app: AppFactory
    method: str = "GET"
    path: str = "/items/42"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    client: tuple[str, int] = ("127.0.0.1", 50000)
    baseline: str | None = None  #: name of the case this one's overhead is relative to
    expect_status: int | None = 200
    make_headers: Callable[[int], Sequence[tuple[str, str]]] | None = None  #: per-iteration headers


@dataclass
class Result:
    """The figures for one case."""

    name: str
    median_us: float
    p90_us: float
    baseline: str | None = None
    overhead_us: float | None = None
    rounds: list[float] = field(default_factory=list)


def _scope(case: Case, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    path, _, query = case.path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": case.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": case.client,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _run_case(
    case: Case, iterations: int, rounds: int, warmup: int, clock: Callable[[], float]
) -> list[float]:
    app = case.app()
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    body = case.body

    def make_receive() -> Callable[[], Any]:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        return receive

    counter = 0
    template = _scope(case, case.headers)

    async def one() -> None:
        nonlocal counter
        counter += 1
        if case.make_headers is not None:
            scope = _scope(case, case.make_headers(counter))
        else:
            # A fresh dict per request (apps write into the scope), headers encoded once.
            scope = {**template, "headers": list(template["headers"]), "state": {}}
        await app(scope, make_receive(), send)

    for _ in range(warmup):
        await one()
    if case.expect_status is not None and statuses and statuses[-1] != case.expect_status:
        raise RuntimeError(f"{case.name}: expected status {case.expect_status}, got {statuses[-1]}")
    per_round: list[float] = []
    gc.collect()
    for _ in range(rounds):
        start = clock()
        for _ in range(iterations):
            await one()
        per_round.append((clock() - start) / iterations * 1e6)
    return per_round


def run_cases(
    cases: Sequence[Case],
    *,
    iterations: int = 2000,
    rounds: int = 15,
    warmup: int = 300,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Result]:
    """Measure every case (interleaved is not needed: each gets the same rounds) and return results.

    ``clock`` times a round: wall time by default; :func:`time.process_time` counts only this
    process's CPU time, which other work on a shared machine disturbs less.
    """
    results: dict[str, Result] = {}
    for case in cases:
        per_round = asyncio.run(_run_case(case, iterations, rounds, warmup, clock))
        ordered = sorted(per_round)
        results[case.name] = Result(
            name=case.name,
            median_us=statistics.median(per_round),
            p90_us=ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))],
            baseline=case.baseline,
            rounds=per_round,
        )
    for result in results.values():
        if result.baseline is not None and result.baseline in results:
            result.overhead_us = result.median_us - results[result.baseline].median_us
    return list(results.values())


def run_fastest(
    cases: Sequence[Case],
    *,
    passes: int = 3,
    iterations: int = 2000,
    rounds: int = 9,
    clock: Callable[[], float] = time.process_time,
) -> list[Result]:
    """Each case's fastest round, by ``clock`` (default: this process's CPU time), over
    ``passes`` runs of every case.

    On a shared, busy machine one pass can put a burst of load on any one case; noise only
    adds time, so the minimum is the cost under the quietest conditions each case met. The
    ``median_us`` of each result holds that minimum; overheads are against it.
    """
    best: dict[str, Result] = {}
    for _ in range(passes):
        for result in run_cases(cases, iterations=iterations, rounds=rounds, clock=clock):
            result.median_us = min(result.rounds)
            kept = best.get(result.name)
            if kept is None or result.median_us < kept.median_us:
                best[result.name] = result
    for result in best.values():
        base = best.get(result.baseline or "")
        result.overhead_us = None if base is None else result.median_us - base.median_us
    return list(best.values())


def format_table(title: str, results: Sequence[Result]) -> str:
    """A plain-text table of results."""
    lines = [title, "-" * len(title)]
    width = max(len(r.name) for r in results) + 2
    lines.append(f"{'case':<{width}}{'median µs':>12}{'p90 µs':>10}{'added µs':>12}  vs")
    for r in results:
        added = "" if r.overhead_us is None else f"{r.overhead_us:+.1f}"
        lines.append(
            f"{r.name:<{width}}{r.median_us:>12.1f}{r.p90_us:>10.1f}{added:>12}  {r.baseline or ''}"
        )
    return "\n".join(lines)
