"""The access log's fast path: write a line without structlog's per-call wrapper.

:func:`~prodkit.logging.configure_logging` records what it gave structlog as an
:class:`Installation`. While structlog's configuration (read with the public
:func:`structlog.get_config`) is still one of those, :func:`direct_writer` hands out a function
that runs the same processors and writes the same line as the bound logger would. When the
configuration was replaced or captured (``capture_logs`` edits the processors list in place),
the caller logs the usual way.
"""

from __future__ import annotations

from typing import Any

import structlog
from structlog.typing import Processor

from prodkit._core.logs import LineWriter, unconfigured_writer

#: ``write(event, fields)``: puts the event through the configured processors and writes it.
DirectWriter = LineWriter

#: How many recent installations are remembered (an earlier one comes back into force when
#: ``prodkit.testing.capture_log_output`` puts the previous configuration back).
_REMEMBERED = 8


class Installation:
    """What one :func:`~prodkit.logging.configure_logging` call gave structlog.

    Arguments:
        processors: the processors list given to :func:`structlog.configure`.
        wrapper: the wrapper class given to it.
        factory: the logger factory given to it (called with the logger's name).
        enabled: the level names the wrapper class lets through.
    """

    __slots__ = ("contents", "enabled", "factory", "processors", "wrapper", "writers")

    def __init__(
        self, processors: list[Processor], wrapper: Any, factory: Any, enabled: frozenset[str]
    ) -> None:
        self.processors = processors
        self.contents = tuple(processors)
        self.wrapper = wrapper
        self.factory = factory
        self.enabled = enabled
        self.writers: dict[tuple[str, str], DirectWriter | bool] = {}

    def is_current(self, config: dict[str, Any]) -> bool:
        """Whether ``config`` (from :func:`structlog.get_config`) is still this installation."""
        # structlog.configure() swaps these objects; capture_logs() edits the list in place.
        processors = self.processors
        return (
            config["processors"] is processors
            and config["wrapper_class"] is self.wrapper
            and config["logger_factory"] is self.factory
            and len(processors) == len(self.contents)
            and processors[-1] is self.contents[-1]
            and processors[0] is self.contents[0]
        )

    def writer(self, name: str, level: str) -> DirectWriter | bool:
        """The writer for ``get_logger(name)`` at ``level``, or False if that level is off."""
        if level not in self.enabled:
            return False  # what the filtering bound logger would drop
        logger = self.factory(name)
        emit = getattr(logger, level)
        processors = self.contents

        def write(event: str, fields: dict[str, Any]) -> None:
            # What a bound logger does for ``get_logger(name).<level>(event, **fields)``: its
            # context is empty, so the event dict is the fields and the event; each processor
            # gets the wrapped logger, the method name and the event dict; a processor may
            # drop the event with DropEvent; the last one's text goes to the method of the
            # same name on the wrapped logger.
            fields["event"] = event
            line: Any = fields
            try:
                for processor in processors:
                    line = processor(logger, level, line)
            except structlog.DropEvent:
                return
            emit(line)

        return write


#: Recent installations by the id of their processors list (which they keep alive).
_INSTALLATIONS: dict[int, Installation] = {}


def remember(installation: Installation) -> None:
    """Record an installation that has just been given to :func:`structlog.configure`."""
    while len(_INSTALLATIONS) >= _REMEMBERED:
        del _INSTALLATIONS[next(iter(_INSTALLATIONS))]
    _INSTALLATIONS[id(installation.processors)] = installation


def direct_writer(name: str, level: str) -> DirectWriter | bool:
    """How to write an event of ``level`` from ``get_logger(name)`` without a bound logger.

    Only while the structlog configuration is one that :func:`~prodkit.configure_logging` installed
    (not replaced, not captured by ``capture_logs``) is there such a way: a function
    ``write(event, fields)`` that puts ``fields`` and ``event`` through the configured
    processors and writes the line exactly as ``get_logger(name).<level>(event, **fields)``
    would, minus structlog's per-call wrapper (a context copy and keyword repacking, which
    cost about as much as the processors). ``fields`` is consumed. While structlog is not
    configured at all, the writer of prodkit's default JSON lines
    (:func:`prodkit._core.logs.unconfigured_writer`). Otherwise this returns ``True`` (log the
    usual way), or ``False`` when the configuration filters ``level`` out.
    """
    if not structlog.is_configured():
        # Nobody configured structlog: prodkit's lines are JSON all the same (``_core.logs``).
        return unconfigured_writer(name, level) or False
    config = structlog.get_config()
    installation = _INSTALLATIONS.get(id(config["processors"]))
    if installation is None or not installation.is_current(config):
        return True
    found = installation.writers.get((name, level))
    if found is None:
        found = installation.writers[(name, level)] = installation.writer(name, level)
    return found


__all__ = ["DirectWriter", "Installation", "direct_writer", "remember"]
