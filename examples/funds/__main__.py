"""``python -m examples.funds [--host 127.0.0.1] [--port 8000] [--workers 1]``."""

from __future__ import annotations

import argparse
import os
import tempfile

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.funds",
        description="Serve the prodkit funds example (configuration from the environment; see docs/example.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: each writes its metrics to files that /metrics aggregates. The
        # directory must be fresh and set before the workers start, so they all inherit it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prodkit-metrics-")
    uvicorn.run(
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
    )


if __name__ == "__main__":
    main()
