"""``prodkit serve --server granian``: granian's own supervisor, with prodkit's logging."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import Server

from prodkit._core.exceptions import ProdkitError
from prodkit._core.logs import safe_logger
from prodkit.logging import configure_logging
from prodkit.serving._loading import load_app
from prodkit.serving._options import STARTUP_FAILURE, ServeOptions
from prodkit.settings import StackSettings

_logger = safe_logger("prodkit.serving")

#: Given to granian, which applies it with ``logging.config.dictConfig`` in its main process and
#: in every worker: the handler factory below then configures prodkit's logging there, and
#: granian's own logger goes through it. Its access log stays off (prodkit writes one).
LOG_CONFIG: dict[str, Any] = {
    "formatters": {},
    "handlers": {"prodkit": {"()": "prodkit.serving._run_granian.prodkit_logging"}},
    "loggers": {
        "_granian": {"handlers": ["prodkit"], "propagate": True},
        "granian.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
    },
}


def prodkit_logging() -> logging.Handler:
    """Configure prodkit's logging in this process (``LOG_LEVEL``, ``LOG_FORMAT``).

    A ``dictConfig`` handler factory: the lines go to the root logger's handler, which
    :func:`~prodkit.configure_logging` installs, so the handler returned does nothing itself.
    """
    settings = StackSettings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return logging.NullHandler()


def _level(name: str) -> LogLevels:
    try:
        return LogLevels(name.lower())
    except ValueError:  # a number: prodkit's own loggers follow it, granian's stay at info
        return LogLevels.info


def server_for(options: ServeOptions, settings: StackSettings) -> Any:
    """The granian server ``prodkit serve --server granian`` runs."""
    return Server(
        options.app,
        address=options.host,
        port=options.port,
        interface=Interfaces.ASGI,
        workers=options.workers,
        factory=options.factory,
        http1_settings=HTTP1Settings(
            # hyper refuses a head that does not fit its read buffer (431) and counts header
            # fields itself (at most 100); the buffer cannot be smaller than 8 KiB.
            max_buffer_size=max(options.max_head_bytes, 8192),
            # Milliseconds to send a whole head, an idle keep-alive connection included.
            header_read_timeout=options.keep_alive_seconds * 1000,
        ),
        backpressure=options.connection_limit(settings),
        log_dictconfig=LOG_CONFIG,
        log_level=_level(settings.log_level),
        log_access=False,
        # A worker stopped on its own (a SIGTERM to it, an out-of-memory kill) is replaced, as
        # uvicorn's supervisor does; granian stops when a worker fails again within seconds.
        respawn_failed_workers=True,
        workers_kill_timeout=int(settings.shutdown_timeout_seconds) + 1,
    )


def load_in_worker(path: str, factory: bool) -> Any:
    """Import the app in a granian worker; one log line and exit status 3 when that fails."""
    try:
        return load_app(path, factory=factory)
    except ProdkitError as exc:  # a module or attribute that is not there, a wrong setting
        _logger.error("the app could not be loaded", app=path, error=str(exc))
    except Exception:
        _logger.exception("the app could not be loaded", app=path)
    sys.exit(STARTUP_FAILURE)


def run(options: ServeOptions, settings: StackSettings) -> int:
    """Serve until told to stop; the exit status (granian exits 1 when a worker failed)."""
    loader = functools.partial(load_in_worker, options.app, options.factory)
    try:
        server_for(options, settings).serve(target_loader=loader, wrap_loader=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


__all__ = ["LOG_CONFIG", "load_in_worker", "prodkit_logging", "run", "server_for"]
