"""The processors every line goes through under ``configure_logging``, structlog's and stdlib's.

structlog's and the standard library's lines share :func:`shared_processors`: context-local
values, the standard fields, the user's extra processors and the redactor, so that both
kinds of line have the same fields. The fields and the JSON renderer are the core's
(``_core.logs``): prodkit's own lines have that shape even before logging is configured.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from prodkit._core.logs import add_standard_fields
from prodkit._core.redaction import Redactor, exception_text


def drop_color_message(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor removing uvicorn's ``color_message``.

    uvicorn attaches a second, ANSI-coloured copy of its message to every record.
    """
    event_dict.pop("color_message", None)
    return event_dict


def render_exception(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor replacing ``exc_info`` by ``exception``: the plain traceback text.

    What :class:`~prodkit.logging.Redactor` does to an exception, without the redaction (for
    ``configure_logging(redact=False)``): local variables are never rendered either way.
    """
    if "exc_info" in event_dict:
        text = exception_text(event_dict.pop("exc_info"))
        if text is not None:
            event_dict["exception"] = text
    return event_dict


def shared_processors(
    redactor: Redactor | None = None, extra: Sequence[Processor] = ()
) -> list[Processor]:
    """The processors every line goes through before rendering, structlog's and stdlib's alike.

    Context-local values (structlog's own
    :func:`~structlog.contextvars.merge_contextvars`), ``add_standard_fields``, the
    ``extra`` processors, then the ``redactor`` last, so that it also sees what the extra
    processors added; it renders exceptions as redacted text (without it,
    :func:`render_exception` does, unredacted).
    """
    return [
        structlog.contextvars.merge_contextvars,
        add_standard_fields,
        *extra,
        render_exception if redactor is None else redactor,
    ]


__all__ = [
    "drop_color_message",
    "render_exception",
    "shared_processors",
]
