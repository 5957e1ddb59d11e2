"""What ``prodkit serve`` runs an app with: the options, their defaults, and the workers guard."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from prodkit._core.exceptions import ConfigurationError
from prodkit.settings import StackSettings

ServerName = Literal["uvicorn", "hypercorn", "granian"]
SERVERS: tuple[ServerName, ...] = ("uvicorn", "hypercorn", "granian")

#: The largest request head accepted, in bytes (request line, headers and the blank line).
DEFAULT_MAX_HEAD_BYTES = 32 * 1024
#: The most header fields a request may carry.
DEFAULT_MAX_HEADERS = 100
#: Seconds an idle keep-alive connection stays open.
DEFAULT_KEEP_ALIVE_SECONDS = 5
#: Connections (and requests) per worker past which the server answers 503 itself; kept above
#: the stack's ``MAX_CONCURRENCY`` so that an excess request gets prodkit's problem instead.
DEFAULT_MAX_CONNECTIONS = 2048

#: A request head over the limits: 431, before any ASGI scope exists.
REQUEST_HEAD_TOO_LARGE = "REQUEST_HEAD_TOO_LARGE"
#: A request the server's parser refused (both ``Content-Length`` and ``Transfer-Encoding``,
#: say): 400, and the connection is closed.
MALFORMED_REQUEST = "MALFORMED_REQUEST"

#: The environment variable that accepts per-process memory stores under several workers.
ALLOW_PER_WORKER_DATA = "ALLOW_PER_WORKER_DATA"
#: The exit status of a start that failed (uvicorn's own for a worker that could not start).
STARTUP_FAILURE = 3

_APP = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeOptions:
    """How ``prodkit serve`` runs an app; the rest comes from :class:`~prodkit.StackSettings`.

    Attributes:
        app: the app as ``module:attribute`` (``module:function`` with ``factory``).
        host: the interface to bind.
        port: the TCP port.
        workers: worker processes, default ``1`` (serve in this process).
        factory: ``app`` names a function that returns the app.
        server: ``"uvicorn"`` (bounded heads, see ``docs/deployment.md``), ``"hypercorn"``
            (one process only) or ``"granian"``; default ``"uvicorn"``.
        max_head_bytes: the largest request head, in bytes.
        max_headers: the most header fields in a request.
        keep_alive_seconds: how long an idle keep-alive connection stays open.
        max_connections: connections per worker before the server itself answers 503.
    """

    app: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    factory: bool = False
    server: ServerName = "uvicorn"
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    keep_alive_seconds: int = DEFAULT_KEEP_ALIVE_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not _APP.match(self.app):
            raise ConfigurationError(
                f"app {self.app!r} must be written module:attribute, e.g. myservice.main:app"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port {self.port} must be from 0 to 65535")
        if self.workers < 1:
            raise ConfigurationError("workers must be at least 1")
        if self.server not in SERVERS:
            raise ConfigurationError(f"server {self.server!r} is unknown; use {', '.join(SERVERS)}")
        if self.server == "hypercorn" and self.workers > 1:
            # Its master never signals its workers, so none of them could drain.
            raise ConfigurationError(
                "hypercorn's worker processes cannot drain on SIGTERM: serve one process per "
                "container with --server hypercorn, or use --server uvicorn or granian"
            )
        if self.max_head_bytes < 1024:
            raise ConfigurationError("max_head_bytes must be at least 1024")
        if self.max_headers < 1:
            raise ConfigurationError("max_headers must be at least 1")
        if self.keep_alive_seconds < 1:
            raise ConfigurationError("keep_alive_seconds must be at least 1")
        if self.max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")

    def connection_limit(self, settings: StackSettings) -> int:
        """Connections per worker: above the stack's own limit, so prodkit answers first."""
        return max(self.max_connections, 2 * (settings.max_concurrency or 0))


def check_workers(workers: int, settings: StackSettings, env: Mapping[str, str]) -> None:
    """Refuse several workers on per-process memory stores unless ``ALLOW_PER_WORKER_DATA=1``.

    Every worker would keep its own: idempotency records (one ``Idempotency-Key`` would run
    once per worker), cached responses (a ``DELETE`` on one worker leaves the entry served by
    the others) and rate-limit counters (each worker allows the whole quota). Raises
    :class:`~prodkit.ConfigurationError` saying what to set.
    """
    if workers <= 1 or env.get(ALLOW_PER_WORKER_DATA) == "1":
        return
    if settings.idempotency_store == "memory":
        raise ConfigurationError(
            f"--workers {workers} with idempotency records in memory would let one "
            "Idempotency-Key run once per worker: set DATABASE_URL (or IDEMPOTENCY_STORE=redis "
            f"with REDIS_URL), or {ALLOW_PER_WORKER_DATA}=1 to accept per-worker data"
        )
    if not settings.redis_url:
        raise ConfigurationError(
            f"--workers {workers} without REDIS_URL would give every worker its own response "
            "cache and rate-limit counters (a response invalidated on one worker is still "
            f"served from another's cache): set REDIS_URL, or {ALLOW_PER_WORKER_DATA}=1 to accept "
            "per-worker data"
        )


__all__ = [
    "ALLOW_PER_WORKER_DATA",
    "DEFAULT_KEEP_ALIVE_SECONDS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEAD_BYTES",
    "MALFORMED_REQUEST",
    "REQUEST_HEAD_TOO_LARGE",
    "SERVERS",
    "STARTUP_FAILURE",
    "ServeOptions",
    "ServerName",
    "check_workers",
]
