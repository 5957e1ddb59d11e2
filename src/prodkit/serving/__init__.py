"""Serve any ASGI app the way the example runs: ``prodkit serve module:app``.

What a client costs before prodkit sees a request (its connection, its request head, the time
it takes) is the server's to bound, and a server's defaults are not what production needs:
uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1, its httptools parser has no head limit, its
supervisor logs in plain text. :func:`serve` runs an app with:

* forwarding headers decided only by ``TRUSTED_PROXIES`` (the server's own handling off);
* a bounded request head (``max_head_bytes``, ``max_headers``: 431 past them, before the app),
  idle keep-alive connections closed, connections per worker bounded;
* JSON logs (``LOG_LEVEL``, ``LOG_FORMAT``) in the parent process and every worker, and the
  server's own access log off (:class:`~prodkit.AccessLogMiddleware` writes one);
* several workers refused on per-process memory stores unless ``ALLOW_PER_WORKER_DATA=1``;
* a graceful drain on SIGTERM (:class:`~prodkit.lifecycle.ShutdownCoordinator`, with the
  requests already on their way answered);
* a start that fails exiting with status 3 and one line.

The servers are imported only when serving (``pip install 'prodkit-asgi[serve]'``). See
``docs/deployment.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping

from prodkit._core.drivers import require
from prodkit._core.exceptions import ConfigurationError
from prodkit.logging import configure_logging
from prodkit.serving._options import (
    ALLOW_PER_WORKER_DATA,
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_HEADERS,
    MALFORMED_REQUEST,
    REQUEST_HEAD_TOO_LARGE,
    SERVERS,
    STARTUP_FAILURE,
    ServeOptions,
    ServerName,
    check_workers,
)
from prodkit.settings import StackSettings

_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def serve(options: ServeOptions, env: Mapping[str, str] | None = None) -> int:
    """Run ``options.app`` until it is told to stop; returns the exit status.

    The settings are read from ``env`` (default ``os.environ``) and checked before anything
    starts: a wrong variable, or several workers on per-process memory stores, raises
    :class:`~prodkit.ConfigurationError`. A worker that fails its start-up (the app cannot be
    imported, its lifespan start-up fails) makes the whole start return
    :data:`STARTUP_FAILURE`. The app's module is imported from the current directory, as
    ``python -m`` would. With several workers and no ``PROMETHEUS_MULTIPROC_DIR``, a fresh
    one is made for the workers' metrics and removed at exit.
    """
    env = os.environ if env is None else env
    settings = StackSettings.from_env(env)
    check_workers(options.workers, settings, env)
    configure_logging(settings.log_level, settings.log_format)
    # The app's module is found from the current directory, as with ``python -m`` (workers
    # started by multiprocessing inherit the path).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _check_installed(options.server)
    with _metrics_directory(options.workers):
        if options.server == "hypercorn":
            from prodkit.serving import _run_hypercorn

            return _run_hypercorn.run(options, settings)
        if options.server == "granian":
            from prodkit.serving import _run_granian

            return _run_granian.run(options, settings)
        from prodkit.serving import _run_uvicorn

        return _run_uvicorn.run(options, settings)


def _check_installed(server: str) -> None:
    """The server's package, or an error that says what to install."""
    if server == "uvicorn":
        require("uvicorn", "serve")
        require("httptools", "serve")
    elif importlib.util.find_spec(server) is None:
        raise ConfigurationError(f"--server {server} needs {server}: pip install {server}")


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """Several workers write their metrics to files that ``/metrics`` adds up.

    The directory must be fresh and set before the workers start, so they all inherit it.
    """
    if workers == 1 or os.environ.get(_MULTIPROC_DIR):
        yield
        return
    directory = tempfile.mkdtemp(prefix="prodkit-metrics-")
    os.environ[_MULTIPROC_DIR] = directory
    try:
        yield
    finally:
        os.environ.pop(_MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


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
    "serve",
]
