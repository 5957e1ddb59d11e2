"""The ``prodkit`` command line.

    prodkit rollout --baseline URL --canary URL (--haproxy-socket PATH --haproxy-backend NAME
                    | --command TEMPLATE) [--steps 25,50,75,100] [--bake-seconds 120] ...
                    [--prometheus URL --baseline-selector MATCHERS --canary-selector MATCHERS]
    prodkit rollout-timeline deployments.jsonl --output timeline.png [--id ID]

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
        help=f"base URL of the {name} (its /metrics and /readyz are probed)",
    )
    parser.add_argument(f"--{name}-metrics-url", metavar="URL", help="override: metrics page")
    parser.add_argument(f"--{name}-ready-url", metavar="URL", help="override: readiness probe")


def _target(args: argparse.Namespace, name: str) -> Target:
    base = getattr(args, name).rstrip("/")
    metrics = getattr(args, f"{name}_metrics_url") or f"{base}/metrics"
    ready = getattr(args, f"{name}_ready_url") or f"{base}/readyz"
    return Target(name, metrics, ready)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prodkit`` (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="prodkit", description="prodkit operations tools")
    commands = parser.add_subparsers(dest="command", required=True)

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
    router.add_argument("--haproxy-socket", metavar="PATH", help="HAProxy admin stats socket")
    router.add_argument("--haproxy-backend", metavar="NAME", help="backend holding both servers")
    router.add_argument("--haproxy-canary-server", default="canary", metavar="NAME")
    router.add_argument("--haproxy-baseline-server", default="baseline", metavar="NAME")
    router.add_argument(
        "--command",
        dest="router_command",
        metavar="TEMPLATE",
        help="command run to set the split, with {canary_weight} and {baseline_weight}",
    )
    router.add_argument(
        "--check-command", metavar="COMMAND", help="pre-flight command for --command"
    )
    source = rollout.add_argument_group(
        "metrics from Prometheus (instead of each target's /metrics page)"
    )
    source.add_argument(
        "--prometheus", metavar="URL", help="Prometheus server, e.g. http://prometheus:9090"
    )
    for name in ("baseline", "canary"):
        source.add_argument(
            f"--{name}-selector",
            metavar="MATCHERS",
            help=f'label matchers of every target of the {name}, e.g. job="funds",track="{name}"',
        )
    defaults = RolloutPolicy()
    policy = rollout.add_argument_group("policy")
    policy.add_argument("--steps", type=_steps, default=defaults.steps, metavar="25,50,75,100")
    policy.add_argument("--bake-seconds", type=float, default=defaults.bake_seconds)
    policy.add_argument("--check-interval", type=float, default=defaults.check_interval)
    policy.add_argument("--min-requests", type=int, default=defaults.min_requests)
    policy.add_argument("--max-bake-extensions", type=int, default=defaults.max_bake_extensions)
    policy.add_argument("--max-error-ratio", type=float, default=defaults.max_error_ratio)
    policy.add_argument(
        "--max-error-ratio-increase", type=float, default=defaults.max_error_ratio_increase
    )
    policy.add_argument("--latency-quantile", type=float, default=defaults.latency_quantile)
    policy.add_argument("--max-latency-ratio", type=float, default=defaults.max_latency_ratio)
    policy.add_argument(
        "--latency-tolerance-seconds", type=float, default=defaults.latency_tolerance_seconds
    )
    policy.add_argument("--max-latency-seconds", type=float, default=None)
    policy.add_argument(
        "--exclude-route",
        action="append",
        metavar="TEMPLATE",
        help=f"route left out of the verdict (repeatable; default {', '.join(defaults.excluded_routes)})",
    )
    policy.add_argument("--histogram", default=defaults.histogram, metavar="NAME")
    policy.add_argument("--http-timeout", type=float, default=defaults.http_timeout)
    rollout.add_argument("--version", dest="release", default="", help="canary version (recorded)")
    rollout.add_argument(
        "--record", metavar="PATH", help="append the deployment record to this JSON-lines file"
    )
    rollout.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="progress log on stderr (stdout gets the one-line JSON summary)",
    )

    timeline = commands.add_parser(
        "rollout-timeline", help="draw a deployment record as a PNG (needs matplotlib)"
    )
    timeline.add_argument("record", help="JSON-lines file written by prodkit rollout --record")
    timeline.add_argument("--output", required=True, help="PNG file to write")
    timeline.add_argument("--id", help="deployment id (default: the last record)")
    return parser


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
        if args.command == "rollout":
            return _rollout(args)
        return _timeline(args)
    except (ProdkitError, OSError) as exc:
        sys.stderr.write(f"prodkit {args.command}: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
