"""The ``prodkit`` command line.

    prodkit serve MODULE:APP [--host 127.0.0.1] [--port 8000] [--workers 1] [--factory]
                  [--server uvicorn|hypercorn|granian] ...
    prodkit rollout --baseline URL --canary URL (--haproxy-socket PATH --haproxy-backend NAME
                    | --command TEMPLATE) [--steps 25,50,75,100] [--bake-seconds 120] ...
                    [--prometheus URL --baseline-selector MATCHERS --canary-selector MATCHERS]
    prodkit rollout-timeline deployments.jsonl --output timeline.png [--id ID]

``prodkit serve`` exits 0 after a clean stop and 3 when the start failed (a wrong setting, an
app that cannot be imported, a worker whose start-up failed), with one line saying why.
``prodkit rollout`` exits 0 when the canary was promoted, 1 when it was rolled back and 2 on an
error (bad options, failed pre-flight, an unreachable router) or when it was interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import structlog

from prodkit.__about__ import __version__
from prodkit._core.exceptions import ConfigurationError, ProdkitError
from prodkit.rollout.controller import (
    MetricsReader,
    RolloutController,
    RolloutPolicy,
    Target,
    read_records,
)
from prodkit.rollout.prometheus import PrometheusReader
from prodkit.rollout.routers import CommandRouter, HAProxyRouter, TrafficRouter
from prodkit.serving import (
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_HEADERS,
    SERVERS,
    STARTUP_FAILURE,
    ServeOptions,
    serve,
)


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"steps must be comma-separated integers: {text!r}"
        ) from exc


def _target_args(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        f"--{name}",
        required=True,
        metavar="URL",
        help=f"base URL of the {name}, whose /metrics and /readyz are probed (required)",
    )
    parser.add_argument(
        f"--{name}-metrics-url",
        metavar="URL",
        help=f"the {name}'s metrics page (default: the base URL + /metrics)",
    )
    parser.add_argument(
        f"--{name}-ready-url",
        metavar="URL",
        help=f"the {name}'s readiness probe (default: the base URL + /readyz)",
    )


def _target(args: argparse.Namespace, name: str) -> Target:
    base = getattr(args, name).rstrip("/")
    metrics = getattr(args, f"{name}_metrics_url") or f"{base}/metrics"
    ready = getattr(args, f"{name}_ready_url") or f"{base}/readyz"
    return Target(name, metrics, ready)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prodkit`` (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="prodkit", description="prodkit operations tools")
    parser.add_argument(
        "--version", action="version", version=f"prodkit {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    _rollout_parser(commands)
    timeline = commands.add_parser(
        "rollout-timeline",
        help="draw a deployment record as a PNG (needs matplotlib)",
        description="Draw a deployment record of prodkit rollout --record as a PNG.",
    )
    timeline.add_argument("record", help="JSON-lines file written by prodkit rollout --record")
    timeline.add_argument("--output", required=True, help="PNG file to write (required)")
    timeline.add_argument("--id", help="deployment id to draw (default: the last record)")
    return parser


_SERVE_EPILOG = """\
environment (read by the stack's StackSettings as well):
  LOG_LEVEL, LOG_FORMAT       the parent's and the workers' log lines (default INFO, json)
  MAX_CONCURRENCY             the stack's in-flight limit; --max-connections stays above twice it
  SHUTDOWN_TIMEOUT_SECONDS    the server's graceful-stop bound (default 30)
  DATABASE_URL, REDIS_URL, IDEMPOTENCY_STORE
                              with --workers N > 1: shared stores are required ...
  ALLOW_PER_WORKER_DATA       ... unless this is 1 (each worker keeps its own data)
  TRUSTED_PROXIES             the only thing that decides whether forwarding headers count

A start that fails exits with status 3 and one line. See docs/deployment.md.
"""


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an ASGI app with prodkit's server settings",
        description=(
            "Serve an ASGI app with the settings the example runs with: forwarding headers\n"
            "decided only by TRUSTED_PROXIES, a bounded request head (431 past it), idle\n"
            "connections closed, JSON logs in every process, a graceful drain on SIGTERM."
        ),
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("app", metavar="MODULE:APP", help="the ASGI app, e.g. myservice.main:app")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; 1 serves in this process (default: %(default)s)",
    )
    serve.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:APP names a function that returns the app (default: off)",
    )
    serve.add_argument(
        "--server",
        choices=SERVERS,
        default="uvicorn",
        help="the ASGI server; hypercorn serves one process only (default: %(default)s)",
    )
    limits = serve.add_argument_group("bounds")
    limits.add_argument(
        "--max-head-bytes",
        type=int,
        default=DEFAULT_MAX_HEAD_BYTES,
        metavar="BYTES",
        help="largest request head, request line to blank line; 431 past it (default: %(default)s)",
    )
    limits.add_argument(
        "--max-headers",
        type=int,
        default=DEFAULT_MAX_HEADERS,
        metavar="N",
        help="most header fields in a request; 431 past it (default: %(default)s)",
    )
    limits.add_argument(
        "--keep-alive",
        type=int,
        default=DEFAULT_KEEP_ALIVE_SECONDS,
        metavar="SECONDS",
        help="idle keep-alive connections are closed after this (default: %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections per worker before the server answers 503 itself "
        "(default: %(default)s, or twice MAX_CONCURRENCY when that is more)",
    )


def _rollout_parser(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="shift traffic to a canary step by step; promote it or roll it back",
        description=(
            "Shift traffic to a canary step by step, judging its 5xx ratio and latency against "
            "the baseline from their /metrics at each step. Exit 0: promoted, 1: rolled back, "
            "2: error."
        ),
    )
    _target_args(rollout, "baseline")
    _target_args(rollout, "canary")
    router = rollout.add_argument_group("traffic router (one of)")
    router.add_argument(
        "--haproxy-socket", metavar="PATH", help="HAProxy admin stats socket (default: none)"
    )
    router.add_argument(
        "--haproxy-backend",
        metavar="NAME",
        help="HAProxy backend holding both servers (default: none; needed with the socket)",
    )
    router.add_argument(
        "--haproxy-canary-server",
        default="canary",
        metavar="NAME",
        help="the canary's server name in that backend (default: %(default)s)",
    )
    router.add_argument(
        "--haproxy-baseline-server",
        default="baseline",
        metavar="NAME",
        help="the baseline's server name in that backend (default: %(default)s)",
    )
    router.add_argument(
        "--command",
        dest="router_command",
        metavar="TEMPLATE",
        help="command run to set the split, with {canary_weight} and {baseline_weight} "
        "(default: none)",
    )
    router.add_argument(
        "--check-command",
        metavar="COMMAND",
        help="pre-flight command run once before --command (default: none)",
    )
    source = rollout.add_argument_group(
        "metrics from Prometheus (instead of each target's /metrics page)"
    )
    source.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus server, e.g. http://prometheus:9090 (default: none: scrape the pages)",
    )
    for name in ("baseline", "canary"):
        source.add_argument(
            f"--{name}-selector",
            metavar="MATCHERS",
            help=f'label matchers of every target of the {name}, e.g. job="funds",track="{name}" '
            "(default: none; needed with --prometheus)",
        )
    defaults = RolloutPolicy()
    policy = rollout.add_argument_group("policy")
    policy.add_argument(
        "--steps",
        type=_steps,
        default=defaults.steps,
        metavar="25,50,75,100",
        help="canary percentages, increasing, ending at 100 "
        f"(default: {','.join(map(str, defaults.steps))})",
    )
    policy.add_argument(
        "--bake-seconds",
        type=float,
        default=defaults.bake_seconds,
        help="how long each step runs before it is judged (default: %(default)s)",
    )
    policy.add_argument(
        "--check-interval",
        type=float,
        default=defaults.check_interval,
        help="seconds between checks during a bake, for an early roll-back (default: %(default)s)",
    )
    policy.add_argument(
        "--min-requests",
        type=int,
        default=defaults.min_requests,
        help="canary requests in a window before it is judged (default: %(default)s)",
    )
    policy.add_argument(
        "--max-bake-extensions",
        type=int,
        default=defaults.max_bake_extensions,
        help="extra bake windows when the canary saw too little traffic (default: %(default)s)",
    )
    policy.add_argument(
        "--max-error-ratio",
        type=float,
        default=defaults.max_error_ratio,
        help="highest acceptable canary 5xx ratio (default: %(default)s)",
    )
    policy.add_argument(
        "--max-error-ratio-increase",
        type=float,
        default=defaults.max_error_ratio_increase,
        help="highest acceptable canary 5xx ratio above the baseline's (default: %(default)s)",
    )
    policy.add_argument(
        "--latency-quantile",
        type=float,
        default=defaults.latency_quantile,
        help="the latency quantile compared, 0.99 for p99 (default: %(default)s)",
    )
    policy.add_argument(
        "--max-latency-ratio",
        type=float,
        default=defaults.max_latency_ratio,
        help="highest acceptable canary/baseline latency ratio (default: %(default)s)",
    )
    policy.add_argument(
        "--latency-tolerance-seconds",
        type=float,
        default=defaults.latency_tolerance_seconds,
        help="latency differences smaller than this always pass (default: %(default)s)",
    )
    policy.add_argument(
        "--max-latency-seconds",
        type=float,
        default=None,
        help="a ceiling on the canary's latency quantile (default: none)",
    )
    policy.add_argument(
        "--exclude-route",
        action="append",
        metavar="TEMPLATE",
        help="route left out of the verdict, repeatable "
        f"(default: {', '.join(defaults.excluded_routes)})",
    )
    policy.add_argument(
        "--histogram",
        default=defaults.histogram,
        metavar="NAME",
        help="the request-duration histogram read from /metrics (default: %(default)s)",
    )
    policy.add_argument(
        "--http-timeout",
        type=float,
        default=defaults.http_timeout,
        help="seconds for each scrape and probe (default: %(default)s)",
    )
    rollout.add_argument(
        "--version",
        dest="release",
        default="",
        help="the canary's version, recorded in the deployment record (default: none)",
    )
    rollout.add_argument(
        "--record",
        metavar="PATH",
        help="append the deployment record to this JSON-lines file (default: none)",
    )
    rollout.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="progress log on stderr; stdout gets the one-line JSON summary (default: %(default)s)",
    )


def _router(args: argparse.Namespace) -> TrafficRouter:
    if bool(args.haproxy_socket) == bool(args.router_command):
        raise ConfigurationError("give exactly one traffic router: --haproxy-socket or --command")
    if args.router_command:
        return CommandRouter(args.router_command, check_command=args.check_command)
    if not args.haproxy_backend:
        raise ConfigurationError("--haproxy-socket needs --haproxy-backend")
    return HAProxyRouter(
        args.haproxy_socket,
        backend=args.haproxy_backend,
        canary_server=args.haproxy_canary_server,
        baseline_server=args.haproxy_baseline_server,
        timeout=args.http_timeout,
    )


def _metrics(args: argparse.Namespace) -> MetricsReader | None:
    selectors = {"baseline": args.baseline_selector, "canary": args.canary_selector}
    if not args.prometheus:
        if any(selectors.values()):
            raise ConfigurationError("--baseline-selector and --canary-selector need --prometheus")
        return None
    if not all(selectors.values()):
        raise ConfigurationError("--prometheus needs --baseline-selector and --canary-selector")
    return PrometheusReader(
        args.prometheus, selectors, histogram=args.histogram, timeout=args.http_timeout
    )


def _logger(log_format: str) -> Any:
    """A structlog logger that writes to stderr, leaving stdout to the summary line."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
    ).bind(logger="prodkit.rollout")


def _rollout(args: argparse.Namespace) -> int:
    policy = RolloutPolicy(
        steps=args.steps,
        bake_seconds=args.bake_seconds,
        check_interval=args.check_interval,
        min_requests=args.min_requests,
        max_bake_extensions=args.max_bake_extensions,
        max_error_ratio=args.max_error_ratio,
        max_error_ratio_increase=args.max_error_ratio_increase,
        latency_quantile=args.latency_quantile,
        max_latency_ratio=args.max_latency_ratio,
        latency_tolerance_seconds=args.latency_tolerance_seconds,
        max_latency_seconds=args.max_latency_seconds,
        excluded_routes=tuple(args.exclude_route)
        if args.exclude_route
        else RolloutPolicy().excluded_routes,
        histogram=args.histogram,
        http_timeout=args.http_timeout,
    )
    controller = RolloutController(
        baseline=_target(args, "baseline"),
        canary=_target(args, "canary"),
        router=_router(args),
        policy=policy,
        version=args.release,
        record_path=args.record,
        logger=_logger(args.log_format),
        metrics=_metrics(args),
    )

    def cancel(signum: int, frame: FrameType | None) -> None:
        controller.cancel()

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        record = controller.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = {
        "id": record.id,
        "outcome": record.outcome,
        "reason": record.reason,
        "canary_weight": record.final_canary_weight,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return record.exit_status


def _serve(args: argparse.Namespace) -> int:
    options = ServeOptions(
        app=args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        factory=args.factory,
        server=args.server,
        max_head_bytes=args.max_head_bytes,
        max_headers=args.max_headers,
        keep_alive_seconds=args.keep_alive,
        max_connections=args.max_connections,
    )
    return serve(options)


def _timeline(args: argparse.Namespace) -> int:
    from prodkit.rollout.timeline import plot_timeline

    records = read_records(args.record)
    chosen = [r for r in records if r.get("id") == args.id] if args.id else records[-1:]
    if not chosen:
        raise ConfigurationError(f"no deployment record {args.id or ''} in {args.record}")
    plot_timeline(chosen[0], args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prodkit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "rollout":
            return _rollout(args)
        return _timeline(args)
    except (ProdkitError, OSError) as exc:
        sys.stderr.write(f"prodkit {args.command}: {exc}\n")
        return STARTUP_FAILURE if args.command == "serve" else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
