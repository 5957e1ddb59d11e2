"""``python -m examples.funds [--host 127.0.0.1] [--port 8000] [--workers 1]``.

The example is served by the machinery of ``prodkit serve`` (:func:`prodkit.serving.serve`):
forwarding headers decided only by ``TRUSTED_PROXIES``, a bounded request head, JSON logs in
every process, a graceful drain. The configuration is checked before any worker starts: a
wrong variable stops the start with one line naming it and exit status 3, as does a worker
that fails its start-up (a database that is down, say), whatever the number of workers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, StackSettings
from prodkit.serving import (
    ALLOW_PER_WORKER_DATA,
    STARTUP_FAILURE,
    ServeOptions,
    check_workers,
    serve,
)

#: The one table of the environment variables: the Configuration section of the example's page.
CONFIGURATION_PAGE = Path(__file__).resolve().parents[2] / "docs" / "example.md"


def environment_help(page: Path = CONFIGURATION_PAGE) -> str:
    """The variables of the page's ``## Configuration`` table, for ``--help``."""
    try:
        text = page.read_text(encoding="utf-8")
    except OSError:
        return "environment variables: see docs/example.md"
    section = text.partition("\n## Configuration\n")[2].partition("\n## ")[0]
    lines = ["environment variables (all optional; docs/example.md):"]
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue  # the header row, its rule, the prose around the table
        name, meaning = (re.sub(r"`([^`]*)`", r"\1", cell) for cell in cells)
        lines += [f"  {name}", f"      {meaning}"]
    return "\n".join(lines)


def check_configuration(workers: int, env: Mapping[str, str]) -> StackSettings:
    """The settings, once the service could be built from them; else ``ConfigurationError``."""
    from examples.funds.app import create_app  # the app's modules, only once arguments parsed

    settings = StackSettings.from_env(env)
    if workers > 1 and env.get(ALLOW_PER_WORKER_DATA) != "1" and not settings.database_url:
        raise ConfigurationError(
            f"--workers {workers} without DATABASE_URL would give every worker its own "
            "funds and idempotency records: set DATABASE_URL to a shared PostgreSQL, "
            f"or {ALLOW_PER_WORKER_DATA}=1 to accept per-worker data"
        )
    # Idempotency records, cached responses and rate-limit counters must be shared too.
    check_workers(workers, settings, env)
    # Building the stack validates every layer's options (CORS origins, say); nothing connects,
    # and a registry of its own keeps this trial build out of the served metrics.
    create_app(settings, registry=CollectorRegistry())
    return settings


def main(argv: list[str] | None = None) -> None:
    """Check the configuration, then serve the example; exit non-zero on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.funds",
        description="Serve the prodkit funds example with the settings of prodkit serve.",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    options = ServeOptions(
        app="examples.funds.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
    )
    try:
        check_configuration(args.workers, os.environ)
        status = serve(options)
    except ConfigurationError as exc:
        print(f"python -m examples.funds: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None
    raise SystemExit(status)


if __name__ == "__main__":
    main()
