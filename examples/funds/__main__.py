"""``python -m examples.funds [--host 127.0.0.1] [--port 8000] [--workers 1]``.

The configuration is checked before any worker starts: a wrong variable stops the start with one
line naming it and exit status 3, as does a worker that fails its start-up (a database that is
down, say), whatever the number of workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

import uvicorn
from prometheus_client import CollectorRegistry
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from prodkit import ConfigurationError, StackSettings

#: The opt-in to several workers on per-process memory storage (a demo, never production).
ALLOW_PER_WORKER_DATA = "ALLOW_PER_WORKER_DATA"

# Bounds on what a client may cost the server before prodkit sees the request (see
# docs/deployment.md): h11 rejects a request head over this size (httptools has no limit),
# idle keep-alive connections are closed, and connections plus requests per worker are capped.
MAX_HEADER_BYTES = 32 * 1024
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 2048


def check_configuration(workers: int, env: Mapping[str, str]) -> StackSettings:
    """The settings, once the service could be built from them; else ``ConfigurationError``."""
    from examples.funds.app import create_app  # the app's modules, only once arguments parsed

    settings = StackSettings.from_env(env)
    if workers > 1 and env.get(ALLOW_PER_WORKER_DATA) != "1":
        if not settings.database_url:
            raise ConfigurationError(
                f"--workers {workers} without DATABASE_URL would give every worker its own "
                "funds and idempotency records: set DATABASE_URL to a shared PostgreSQL, "
                f"or {ALLOW_PER_WORKER_DATA}=1 to accept per-worker data"
            )
        if settings.idempotency_store == "memory":
            raise ConfigurationError(
                f"--workers {workers} with IDEMPOTENCY_STORE=memory would let one "
                "Idempotency-Key run once per worker: use postgres or redis, "
                f"or {ALLOW_PER_WORKER_DATA}=1 to accept per-worker data"
            )
    # Building the stack validates every layer's options (CORS origins, say); nothing connects,
    # and a registry of its own keeps this trial build out of the served metrics.
    create_app(settings, registry=CollectorRegistry())
    return settings


def serve(config: uvicorn.Config) -> int:
    """Serve until told to stop; the exit status (``STARTUP_FAILURE`` if a worker failed to start)."""
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    # uvicorn's supervisor stops every worker when one fails its start-up, but exits 0.
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def main(argv: list[str] | None = None) -> None:
    """Check the configuration, then serve the example with uvicorn; exit non-zero on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.funds",
        description="Serve the prodkit funds example (configuration from the environment; see docs/example.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = check_configuration(args.workers, os.environ)
    except ConfigurationError as exc:
        print(f"python -m examples.funds: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: each writes its metrics to files that /metrics aggregates. The
        # directory must be fresh and set before the workers start, so they all inherit it.
        metrics_dir = tempfile.mkdtemp(prefix="prodkit-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = uvicorn.Config(
        "examples.funds.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        # TRUSTED_PROXIES alone decides whether forwarding headers are believed (the stack's
        # rate limiter and access log read them); uvicorn's own handling would trust 127.0.0.1.
        proxy_headers=False,
        timeout_graceful_shutdown=None,
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # Above the stack's own limit, so an excess request gets prodkit's 503 problem rather
        # than uvicorn's plain-text one; idle connections count here too.
        limit_concurrency=max(MAX_CONNECTIONS, 2 * (settings.max_concurrency or 0)),
    )
    try:
        status = serve(config)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
