"""One-call structlog + standard-library logging setup.

:func:`configure_logging` makes structlog and the standard library (uvicorn's loggers included)
write the same lines: JSON (or a console format) with an ISO-8601 UTC ``timestamp``, ``level``,
``logger``, ``pid``, ``hostname``, the current ``request_id`` and ``trace_id`` and whatever was
bound with :func:`structlog.contextvars.bind_contextvars`. Secrets are redacted by
:class:`~prodkit.logging.Redactor`. The processors live in ``_processors`` and the core
(``_core.logs``, ``_core.redaction``); this module only puts them together.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import Processor

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.logs import json_renderer
from prodkit._core.redaction import Redactor
from prodkit.logging._direct import Installation, remember
from prodkit.logging._processors import drop_color_message, shared_processors

LogFormat = Literal["json", "console"]

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "notset": logging.NOTSET,
}
#: Marks the handler that configure_logging installed, so that calling it again replaces it.
HANDLER_FLAG = "_prodkit_handler"
#: Servers' loggers whose records go to the root logger's handler, rendered like the rest.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "hypercorn.error")
_SERVER_ACCESS_LOGGERS = ("uvicorn.access", "hypercorn.access")


def parse_level(level: str | int) -> int:
    """Return the :mod:`logging` level number for a name (``"info"``) or number."""
    if isinstance(level, int):
        return level
    text = level.strip().lower()
    if text.isdigit():
        return int(text)
    if text not in LEVELS:
        raise ConfigurationError(
            f"log level {level!r} is unknown; use debug, info, warning, error or critical"
        )
    return LEVELS[text]


def get_logger(name: str, **initial_values: Any) -> Any:
    """Return a structlog logger whose lines carry ``logger=name`` (like a stdlib logger's)."""
    return structlog.get_logger(name, **initial_values)


class _NamedWriteLoggerFactory:
    """structlog's ``WriteLoggerFactory``, keeping ``get_logger(name)``'s name for the lines."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        logger = structlog.WriteLogger(self._file)
        logger.name = args[0] if args and isinstance(args[0], str) else None  # type: ignore[attr-defined]
        return logger


def configure_logging(
    level: str | int | None = None,
    format: LogFormat | None = None,
    *,
    stream: TextIO | None = None,
    redact: bool | Redactor = True,
    processors: Sequence[Processor] = (),
    uvicorn_access_log: bool = False,
    cache_loggers: bool = True,
) -> None:
    """Configure structlog and the standard library to write the same lines to one stream.

    Every line has ``timestamp`` (ISO 8601, UTC), ``level``, ``event``, ``logger``, ``pid``,
    ``hostname``, ``request_id`` and ``trace_id`` (when a request is in progress) and the
    values bound with :func:`structlog.contextvars.bind_contextvars`. Exceptions are rendered
    as ``exception``: the traceback as Python prints it, redacted, never with local variables.
    Standard-library records (uvicorn, asyncpg, your own ``logging`` calls) are rendered by the
    same processors through the root logger. Calling it again replaces the earlier setup.

    Arguments:
        level: minimum level, a name or a number (default: ``"info"``). prodkit reads no
            environment variable here: pass ``StackSettings.from_env().log_level`` to follow
            ``LOG_LEVEL``.
        format: ``"json"`` or ``"console"`` (default: ``"json"``; ``StackSettings.log_format``
            follows ``LOG_FORMAT``).
        stream: where lines go (default: ``sys.stdout``).
        redact: install a :class:`Redactor` (default ``True``), or pass a configured one.
            prodkit's own lines are redacted before they reach structlog whatever this says.
        processors: extra processors, run after the standard ones and before redaction.
        uvicorn_access_log: keep uvicorn's own access log (default ``False``:
            :class:`~prodkit.logging.AccessLogMiddleware` writes a better one, and uvicorn's
            includes raw query strings).
        cache_loggers: structlog's ``cache_logger_on_first_use`` (default ``True``: faster;
            loggers keep the configuration they first saw).
    """
    level_value = parse_level("info" if level is None else level)
    chosen = _parse_format(format)
    output = stream if stream is not None else sys.stdout
    redactor = redact if isinstance(redact, Redactor) else (Redactor() if redact else None)
    shared = shared_processors(redactor, processors)
    renderer = _renderer(chosen, output)
    _configure_structlog([*shared, renderer], level_value, output, cache_loggers)
    _install_root_handler(shared, renderer, level_value, output)
    _route_server_loggers(keep_access_log=uvicorn_access_log)


def _parse_format(format: str | None) -> LogFormat:
    chosen = (format or "json").strip().lower()
    if chosen == "json":
        return "json"
    if chosen == "console":
        return "console"
    raise ConfigurationError(f"log format {chosen!r} is unknown; use 'json' or 'console'")


def _renderer(chosen: LogFormat, output: TextIO) -> Processor:
    """The renderer that ends both chains (exceptions are text by then, see ``_processors``)."""
    if chosen == "console":
        return structlog.dev.ConsoleRenderer(
            colors=output.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    return json_renderer()


def _configure_structlog(
    chain: list[Processor], level: int, output: TextIO, cache_loggers: bool
) -> None:
    """Give structlog ``chain``, and record it so that the access log may skip the wrapper."""
    installation = Installation(
        chain,
        structlog.make_filtering_bound_logger(level),
        _NamedWriteLoggerFactory(output),
        frozenset(name for name, number in LEVELS.items() if number >= level),
    )
    structlog.configure(
        processors=chain,
        wrapper_class=installation.wrapper,
        context_class=dict,
        logger_factory=installation.factory,
        cache_logger_on_first_use=cache_loggers,
    )
    remember(installation)


def _install_root_handler(
    shared: list[Processor], renderer: Processor, level: int, output: TextIO
) -> None:
    """Render standard-library records with the same processors, replacing our old handler."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, drop_color_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    setattr(handler, HANDLER_FLAG, True)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, HANDLER_FLAG, False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


def _route_server_loggers(*, keep_access_log: bool) -> None:
    """Send the servers' records to the root handler; silence their access logs unless kept."""
    for name in _SERVER_LOGGERS:
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
        named.setLevel(logging.NOTSET)
    if not keep_access_log:
        for name in _SERVER_ACCESS_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


__all__ = [
    "HANDLER_FLAG",
    "LEVELS",
    "LogFormat",
    "configure_logging",
    "get_logger",
    "parse_level",
]
