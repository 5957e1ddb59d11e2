"""Observability: request id + access log + metrics against the usual peer stack.

The peer stack is what a team assembles without prodkit: asgi-correlation-id,
starlette-exporter, prometheus-fastapi-instrumentator and a structlog access logger written the
common way, as Starlette ``BaseHTTPMiddleware`` (below, with the same logging as a pure ASGI
middleware for comparison). Every logger writes real JSON lines through the same
:func:`prodkit.logging.configure_logging` setup, to ``os.devnull``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from benchmarks.bench_core import starlette_app
from benchmarks.harness import Case
from prodkit import RequestIdMiddleware
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send
from prodkit.logging import AccessLogMiddleware, configure_logging
from prodkit.metrics import HTTPMetricsMiddleware

BASELINE = "starlette: bare"


def _configure_logging() -> None:
    sink = open(os.devnull, "w")  # noqa: SIM115 - stays open for the whole benchmark run
    configure_logging("info", "json", stream=sink)


# -- the peer logger, written the way it usually is -------------------------------------------


def peer_logger_base_http(app: Any) -> None:
    """Add a structlog access logger as ``BaseHTTPMiddleware`` (the common recipe)."""
    from asgi_correlation_id import correlation_id
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import Response

    logger = structlog.get_logger("api.access")

    class StructlogMiddleware(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=correlation_id.get())
            start = time.perf_counter_ns()
            response = await call_next(request)
            client = request.client
            logger.info(
                "request completed",
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                duration=(time.perf_counter_ns() - start) / 1e9,
                client=client.host if client else None,
            )
            return response

    app.add_middleware(StructlogMiddleware)


def peer_logger_pure_asgi(app: ASGIApp) -> ASGIApp:
    """The same logging as a pure ASGI middleware."""
    logger = structlog.get_logger("api.access")

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        status = 500
        start = time.perf_counter_ns()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            logger.info(
                "request completed",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration=(time.perf_counter_ns() - start) / 1e9,
                client=client[0] if client else None,
            )

    return middleware


# -- peers -------------------------------------------------------------------------------------


def peer_correlation_id() -> ASGIApp:
    from asgi_correlation_id import CorrelationIdMiddleware

    app = starlette_app()
    app.add_middleware(CorrelationIdMiddleware)  # type: ignore[attr-defined]
    return app


def peer_starlette_exporter() -> ASGIApp:
    from starlette_exporter import PrometheusMiddleware as ExporterMiddleware

    app = starlette_app()
    app.add_middleware(ExporterMiddleware, app_name="bench")  # type: ignore[attr-defined]
    return app


def peer_instrumentator() -> ASGIApp:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = starlette_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)  # type: ignore[arg-type]
    return app


def peer_logger() -> ASGIApp:
    from asgi_correlation_id import CorrelationIdMiddleware

    app = starlette_app()
    peer_logger_base_http(app)
    app.add_middleware(CorrelationIdMiddleware)  # type: ignore[attr-defined]
    return app


def peer_logger_asgi() -> ASGIApp:
    return peer_logger_pure_asgi(starlette_app())


def peer_stack() -> ASGIApp:
    """asgi-correlation-id → structlog logger → starlette-exporter → instrumentator → app."""
    from asgi_correlation_id import CorrelationIdMiddleware
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware as ExporterMiddleware

    app = starlette_app()
    Instrumentator(registry=CollectorRegistry()).instrument(app)  # type: ignore[arg-type]
    app.add_middleware(ExporterMiddleware, app_name="bench")  # type: ignore[attr-defined]
    peer_logger_base_http(app)
    app.add_middleware(CorrelationIdMiddleware)  # type: ignore[attr-defined]
    return app


# -- prodkit -----------------------------------------------------------------------------------


def prodkit_access_log() -> ASGIApp:
    return AccessLogMiddleware(starlette_app())


def prodkit_metrics() -> ASGIApp:
    return HTTPMetricsMiddleware(starlette_app(), registry=CollectorRegistry())


def prodkit_stack() -> ASGIApp:
    """Request id → access log → metrics → app (the recommended order)."""
    return RequestIdMiddleware(
        AccessLogMiddleware(HTTPMetricsMiddleware(starlette_app(), registry=CollectorRegistry()))
    )


def cases() -> list[Case]:
    """Bare Starlette, prodkit's observability parts and stack, the peers and their stack."""
    _configure_logging()
    return [
        Case(BASELINE, starlette_app),
        Case(
            "prodkit: request id", lambda: RequestIdMiddleware(starlette_app()), baseline=BASELINE
        ),
        Case("prodkit: access log", prodkit_access_log, baseline=BASELINE),
        Case("prodkit: metrics", prodkit_metrics, baseline=BASELINE),
        Case("prodkit: request id + access log + metrics", prodkit_stack, baseline=BASELINE),
        Case("peer: asgi-correlation-id", peer_correlation_id, baseline=BASELINE),
        Case("peer: starlette-exporter", peer_starlette_exporter, baseline=BASELINE),
        Case("peer: prometheus-fastapi-instrumentator", peer_instrumentator, baseline=BASELINE),
        Case("peer: correlation id + BaseHTTPMiddleware logger", peer_logger, baseline=BASELINE),
        Case("peer: structlog logger as pure ASGI", peer_logger_asgi, baseline=BASELINE),
        Case("peer stack: all four", peer_stack, baseline=BASELINE),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the cases several times and keep each case's fastest round (noise only adds time).

    ``python -m benchmarks.bench_observability [--passes N] [--rounds R] [--wall] [-k TEXT]``:
    on a shared, busy machine one pass of ``python -m benchmarks observability`` can put a
    burst of load on any one case. Each round is timed in this process's CPU time (``--wall``
    for wall time) and each case keeps its minimum over every round of every pass: the cost
    under the quietest conditions it met. ``-k`` keeps the cases whose name contains TEXT
    (and the baseline).
    """
    import argparse

    from benchmarks.harness import format_table, run_fastest

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_observability")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--wall", action="store_true", help="time rounds in wall time")
    parser.add_argument("-k", dest="keep", action="append", default=[], help="name contains")
    args = parser.parse_args(argv)
    chosen = [
        case
        for case in cases()
        if case.name == BASELINE or not args.keep or any(text in case.name for text in args.keep)
    ]
    clock = time.perf_counter if args.wall else time.process_time
    best = run_fastest(
        chosen, passes=args.passes, iterations=args.iterations, rounds=args.rounds, clock=clock
    )
    kind = "wall" if args.wall else "CPU"
    title = (
        f"observability (fastest {kind}-time round of {args.passes} passes x {args.rounds} "
        f"rounds x {args.iterations}; the 'median' column holds that minimum)"
    )
    print(format_table(title, best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
