"""Helpers for *your* tests: capture what prodkit (and your code) logs.

Two levels:

* :func:`capture_logs` yields the event dicts, like :func:`structlog.testing.capture_logs`,
  with contextvars, request id and (by default) redaction applied first, so a test can assert
  that a secret never reaches a log event;
* :func:`capture_log_output` runs the real :func:`~prodkit.logging.configure_logging` setup
  into memory and yields the rendered lines (structlog's and the standard library's), then
  puts the previous logging setup back.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from prodkit._core.logs import add_request_context
from prodkit.logging import LogFormat, Redactor, configure_logging

_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "hypercorn.error", "hypercorn.access")


@contextmanager
def capture_logs(
    *, redact: bool | Redactor = True, processors: tuple[Processor, ...] = ()
) -> Iterator[list[EventDict]]:
    """Collect structlog events (dicts, with ``log_level``) while the block runs.

    Context-local values, ``request_id``/``trace_id`` and, unless ``redact=False``, the
    :class:`~prodkit.logging.Redactor` are applied before an event is captured. Loggers cached
    by ``cache_logger_on_first_use`` before the block keep their processors list and are
    captured too (structlog changes that list in place).

    Arguments:
        redact: apply a :class:`~prodkit.logging.Redactor` with its standard lists (default
            ``True``), or the one given.
        processors: more processors to run before capturing.
    """
    chain: list[Processor] = [structlog.contextvars.merge_contextvars, add_request_context]
    if redact:
        chain.append(redact if isinstance(redact, Redactor) else Redactor())
    chain.extend(processors)
    # What structlog.testing.capture_logs(processors=...) does (structlog >= 25.5), for every
    # supported structlog: the configured list is changed in place, so that loggers that
    # cached it are captured too, and restored afterwards.
    capture = structlog.testing.LogCapture()
    configured = structlog.get_config()["processors"]
    saved = list(configured)
    configured[:] = [*chain, capture]
    structlog.configure(processors=configured)
    try:
        yield capture.entries
    finally:
        configured[:] = saved
        structlog.configure(processors=configured)


class LogOutput:
    """What :func:`capture_log_output` captured: the raw text and the parsed JSON lines."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        """Everything written so far."""
        return self._stream.getvalue()

    def lines(self) -> list[str]:
        """The non-empty lines written so far."""
        # Split on newlines only: JSON may hold U+2028 and friends, which splitlines() breaks on.
        return [line for line in self.text.split("\n") if line.strip()]

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines parsed (with format ``json``), optionally only those with ``event``."""
        parsed = [json.loads(line) for line in self.lines()]
        if event is None:
            return parsed
        return [entry for entry in parsed if entry.get("event") == event]


@contextmanager
def capture_log_output(
    level: str | int = "debug", format: LogFormat = "json", **options: Any
) -> Iterator[LogOutput]:
    """Run :func:`~prodkit.logging.configure_logging` into memory for the block, then undo it.

    Loggers are not cached during the block, so loggers created earlier are captured too.

    Arguments:
        level: minimum level captured (default ``"debug"``).
        format: ``"json"`` (default; parse with :meth:`LogOutput.events`) or ``"console"``.
        **options: passed to :func:`~prodkit.logging.configure_logging` (``redact`` ...).
    """
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_named = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in _LOGGERS
        for lg in [logging.getLogger(name)]
    }
    stream = io.StringIO()
    options.setdefault("cache_loggers", False)
    configure_logging(level, format, stream=stream, **options)
    try:
        yield LogOutput(stream)
    finally:
        structlog.configure(
            processors=saved_structlog["processors"],
            wrapper_class=saved_structlog["wrapper_class"],
            context_class=saved_structlog["context_class"],
            logger_factory=saved_structlog["logger_factory"],
            cache_logger_on_first_use=saved_structlog["cache_logger_on_first_use"],
        )
        root.handlers[:] = saved_root[0]  # without the handler configure_logging added
        root.setLevel(saved_root[1])
        for name, (handlers, lvl, propagate) in saved_named.items():
            named = logging.getLogger(name)
            named.handlers[:] = handlers
            named.setLevel(lvl)
            named.propagate = propagate


__all__ = ["LogOutput", "capture_log_output", "capture_logs"]
