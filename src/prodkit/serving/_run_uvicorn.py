"""``prodkit serve --server uvicorn`` (the default): one process, or uvicorn's supervisor."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from prodkit._core.exceptions import ProdkitError
from prodkit._core.logs import safe_logger
from prodkit.logging import configure_logging
from prodkit.serving._options import STARTUP_FAILURE, ServeOptions
from prodkit.settings import StackSettings

#: uvicorn imports the protocol by this path in every worker (:mod:`prodkit.serving.uvicorn`).
PROTOCOL = "prodkit.serving.uvicorn:HttpProtocol"

_logger = safe_logger("prodkit.serving")


class ServeConfig(uvicorn.Config):
    """uvicorn's ``Config``, with prodkit's logging in every process and one line on a bad app.

    uvicorn calls :meth:`configure_logging` in the parent and again in each worker it spawns
    (they share nothing else), so the supervisor's lines and the workers' are the same JSON.
    :meth:`load` turns a failure to import or build the app into one log line and the exit
    status :data:`STARTUP_FAILURE`, which makes uvicorn's supervisor stop instead of starting
    the worker again forever.
    """

    def __init__(
        self,
        app: str,
        *,
        log: tuple[str, str],
        head_limits: tuple[int, int],
        **kwargs: Any,
    ) -> None:
        # Set before uvicorn's __init__, which calls configure_logging().
        self.log = log
        self.head_limits = head_limits
        super().__init__(app, **kwargs)

    def configure_logging(self) -> None:
        level, format = self.log
        configure_logging(level, format)  # type: ignore[arg-type]  # checked by StackSettings

    def load(self) -> None:
        try:
            super().load()
        except SystemExit:  # uvicorn logged why (a module or attribute that is not there)
            sys.exit(STARTUP_FAILURE)
        except ProdkitError as exc:  # a configuration error says what to change
            _logger.error("the app could not be loaded", app=self.app, error=str(exc))
            sys.exit(STARTUP_FAILURE)
        except Exception:
            _logger.exception("the app could not be loaded", app=self.app)
            sys.exit(STARTUP_FAILURE)


def config_for(options: ServeOptions, settings: StackSettings) -> ServeConfig:
    """The uvicorn configuration ``prodkit serve`` runs ``options.app`` with."""
    return ServeConfig(
        options.app,
        log=(settings.log_level, settings.log_format),
        head_limits=(options.max_head_bytes, options.max_headers),
        factory=options.factory,
        host=options.host,
        port=options.port,
        workers=options.workers,
        http=PROTOCOL,
        log_config=None,
        # AccessLogMiddleware writes the access log; uvicorn's would repeat every request.
        access_log=False,
        # TRUSTED_PROXIES alone decides whether forwarding headers are believed (the stack
        # reads them); uvicorn's own handling would trust any client on 127.0.0.1.
        proxy_headers=False,
        timeout_keep_alive=options.keep_alive_seconds,
        limit_concurrency=options.connection_limit(settings),
        # The shutdown coordinator cancels what still runs at SHUTDOWN_TIMEOUT_SECONDS; this
        # bounds an app without one the same way.
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds) + 1,
    )


def run(options: ServeOptions, settings: StackSettings) -> int:
    """Serve until told to stop; the exit status (:data:`STARTUP_FAILURE` if a start failed)."""
    config = config_for(options, settings)
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    # uvicorn's supervisor stops every worker when one fails its start-up, but exits 0.
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


__all__ = ["PROTOCOL", "ServeConfig", "config_for", "run"]
