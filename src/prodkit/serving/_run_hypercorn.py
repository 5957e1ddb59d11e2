"""``prodkit serve --server hypercorn``: one process (hypercorn's workers never get a signal)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from prodkit._core.exceptions import ProdkitError
from prodkit._core.logs import safe_logger
from prodkit.serving._framing import refuse_ambiguous_length
from prodkit.serving._loading import load_app
from prodkit.serving._options import STARTUP_FAILURE, ServeOptions
from prodkit.settings import StackSettings

_logger = safe_logger("prodkit.serving")


def config_for(options: ServeOptions, settings: StackSettings) -> Config:
    """The hypercorn configuration ``prodkit serve --server hypercorn`` runs with."""
    config = Config()
    config.bind = [f"{options.host}:{options.port}"]
    # h11 applies this only to a head that arrives in pieces (docs/deployment.md).
    config.h11_max_incomplete_size = options.max_head_bytes
    config.keep_alive_timeout = options.keep_alive_seconds
    config.graceful_timeout = settings.shutdown_timeout_seconds + 1
    # Its lines go through the root logger, which prodkit's configure_logging renders.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    return config


def run(options: ServeOptions, settings: StackSettings) -> int:
    """Serve until told to stop; the exit status (:data:`STARTUP_FAILURE` if the start failed)."""
    try:
        app = load_app(options.app, factory=options.factory)
    except ProdkitError as exc:
        _logger.error("the app could not be loaded", app=options.app, error=str(exc))
        return STARTUP_FAILURE
    except Exception:
        _logger.exception("the app could not be loaded", app=options.app)
        return STARTUP_FAILURE
    config = config_for(options, settings)
    try:
        # hypercorn types the app with its own message dicts; any ASGI callable is served.
        guarded: Any = refuse_ambiguous_length(app)
        asyncio.run(serve(guarded, config, mode="asgi"))
    except Exception:  # a lifespan start-up that failed, a port already taken
        _logger.exception("the server stopped on an error", app=options.app)
        return STARTUP_FAILURE
    return 0


__all__ = ["config_for", "run"]
