"""One-call structlog + standard-library logging setup, and the processors behind it.

:func:`configure_logging` makes structlog and the standard library (uvicorn's loggers included)
write the same lines: JSON (or a console format) with an ISO-8601 UTC ``timestamp``, ``level``,
``logger``, ``pid``, ``hostname``, the current ``request_id`` and ``trace_id`` and whatever was
bound with :func:`structlog.contextvars.bind_contextvars`. Secrets are redacted by
:class:`Redactor`, a processor that can also be used alone in any structlog chain.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from prodkit._core.context import get_request_id, get_trace_id
from prodkit._core.exceptions import ConfigurationError

LogFormat = Literal["json", "console"]

#: What a redacted value is replaced with.
REDACTED = "[REDACTED]"

#: Headers whose values are never logged (compared case-insensitively).
DEFAULT_REDACT_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-health-key",
)

#: Query parameters whose values are never logged (compared case-insensitively).
DEFAULT_REDACT_QUERY_PARAMS: tuple[str, ...] = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "signature",
    "sig",
    "auth",
    "code",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
)

#: Dict keys whose values are never logged, at any depth: a key equal to one of these or ending
#: in ``_<word>`` (``db_password``, ``access_token``, ``client_secret``) is redacted.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
)

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "notset": logging.NOTSET,
}
_KEY_CACHE_LIMIT = 4096
_CONTAINERS = frozenset({dict, list, tuple})
_HOSTNAME = socket.gethostname()
_found = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
#: structlog's ContextVar per bound key (private to structlog; None if that ever changes).
_CONTEXT_VARS: dict[str, Any] | None = _found if isinstance(_found, dict) else None
_PREFIX_LEN = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)
#: Marks the handler that configure_logging installed, so that calling it again replaces it.
_HANDLER_FLAG = "_prodkit_handler"


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Redactor:
    """A structlog processor that replaces secrets in an event with ``[REDACTED]``.

    What is redacted (all names compared case-insensitively, ``-`` and ``_`` alike):

    * the value of any key, at any depth of dicts and lists in the event, that is a secret
      header (``Authorization``, ``Cookie``, ``X-API-Key`` ...) or a secret word
      (``password``, ``token``, ``secret`` ...) or ends with ``_<word>`` (``db_password``);
    * in the event message (``event``) and in query strings: the values of secret query
      parameters (``?token=...``) and the credentials of ``Bearer``/``Basic`` authorization.

    Dicts and lists inside the event are copied before being changed: the caller's objects
    are left alone. Use it in any structlog chain (before the renderer), or through
    :func:`configure_logging`, which installs it by default.

    Arguments:
        keys: secret words for dict keys (default :data:`DEFAULT_REDACT_KEYS`).
        headers: header names whose values are secret (default :data:`DEFAULT_REDACT_HEADERS`).
        query_params: secret query parameters (default :data:`DEFAULT_REDACT_QUERY_PARAMS`).
        replacement: the text put in place of a secret.
    """

    __slots__ = (
        "_cache",
        "_exact",
        "_plain",
        "_query_names",
        "_suffixes",
        "_text",
        "_texts",
        "replacement",
    )

    def __init__(
        self,
        keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        headers: Iterable[str] = DEFAULT_REDACT_HEADERS,
        query_params: Iterable[str] = DEFAULT_REDACT_QUERY_PARAMS,
        *,
        replacement: str = REDACTED,
    ) -> None:
        for group in (keys, headers, query_params):
            if isinstance(group, str):
                raise ConfigurationError(
                    "keys, headers and query_params take a list of names, not one string"
                )
        words = {_normalize(k) for k in keys if k.strip()}
        self._exact = frozenset(words | {_normalize(h) for h in headers if h.strip()})
        self._suffixes = tuple(f"_{word}" for word in sorted(words))
        self._query_names = frozenset(_normalize(q) for q in query_params if q.strip())
        names = sorted({q.strip() for q in query_params if q.strip()}, key=len, reverse=True)
        alternatives = [r"\b(?:bearer|basic)\s+()[A-Za-z0-9._~+/=-]+"]
        if names:
            joined = "|".join(
                "[-_]".join(re.escape(part) for part in re.split(r"[-_]", name)) for name in names
            )
            alternatives.append(rf"(?:^|(?<=[?&;\s\"']))(?:{joined})=()[^&;\s\"'#]*")
        self._text = re.compile("|".join(alternatives), re.IGNORECASE)
        self._cache: dict[str, bool] = {}
        self._plain: set[Any] = set()
        self._texts: dict[str, str] = {}
        self.replacement = replacement

    def is_secret_key(self, key: str) -> bool:
        """Whether the value under dict key ``key`` is redacted."""
        found = self._cache.get(key)
        if found is None:
            norm = _normalize(key)
            found = norm in self._exact or norm.endswith(self._suffixes)
            if len(self._cache) < _KEY_CACHE_LIMIT:
                self._cache[key] = found
        return found

    def is_secret_param(self, name: str) -> bool:
        """Whether query parameter ``name`` is secret."""
        return _normalize(name) in self._query_names or self.is_secret_key(name)

    def redact_text(self, text: str) -> str:
        """Return ``text`` with secret query values and authorization credentials replaced."""
        if self._text.search(text) is None:
            return text
        return self._text.sub(self._replace_match, text)

    def _replace_match(self, match: re.Match[str]) -> str:
        whole = match.group(0)
        # The empty group marks where the secret starts: keep what precedes it.
        for index in range(1, (match.lastindex or 0) + 1):
            start = match.start(index)
            if start != -1:
                return whole[: start - match.start()] + self.replacement
        return self.replacement

    def redact_query(self, query: str) -> str:
        """Return a query string with the values of secret parameters replaced (order kept)."""
        if not query:
            return query
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            name, sep, _ = part.partition("=")
            if sep and self.is_secret_param(name):
                parts[index] = f"{name}={self.replacement}"
                changed = True
        return "&".join(parts) if changed else query

    def redact_mapping(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``values`` with secrets redacted at any depth."""
        return {key: self._value(key, value) for key, value in values.items()}

    def _value(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and self.is_secret_key(key):
            return self.replacement
        kind = type(value)
        if kind is dict:
            return self.redact_mapping(value)
        if kind is list or kind is tuple:
            return [self._value(None, item) for item in value]
        return value

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        # Hot path: most lines have the same few plain keys and flat values, so both checks
        # are set operations done in C; the per-key work happens only for new keys.
        plain = self._plain
        if not plain.issuperset(event_dict):  # no set is built when every key is known
            for key in event_dict.keys() - plain:
                if self.is_secret_key(key):
                    event_dict[key] = self.replacement
                elif len(plain) < _KEY_CACHE_LIMIT:
                    plain.add(key)
        if not _CONTAINERS.isdisjoint(map(type, event_dict.values())):
            for key, value in event_dict.items():
                if type(value) in _CONTAINERS:
                    event_dict[key] = self._value(None, value)
        event = event_dict.get("event")
        if type(event) is str:
            # Messages are mostly constant texts ("request completed"): remember their verdict.
            texts = self._texts
            redacted = texts.get(event)
            if redacted is None:
                redacted = self.redact_text(event)
                if len(texts) < _KEY_CACHE_LIMIT and len(event) <= 200:
                    texts[event] = redacted
            event_dict["event"] = redacted
        return event_dict


def add_request_context(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """A structlog processor adding ``request_id`` and ``trace_id`` of the current request."""
    if "request_id" not in event_dict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    if "trace_id" not in event_dict:
        trace_id = get_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


def add_process_info(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding ``pid`` and ``hostname``."""
    event_dict["pid"] = _process[0]
    event_dict["hostname"] = _HOSTNAME
    return event_dict


# The pid is read once per process (and again in a forked child), not once per line.
_process = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _process.__setitem__(0, os.getpid()))

# ISO 8601 timestamps: the text up to the seconds changes once a second; only the
# microseconds are formatted per line (structlog's TimeStamper builds a datetime each time).
# One tuple replaced whole, so that a thread never pairs one second's text with another's.
_second: list[tuple[int, str]] = [(-1, "")]


def _iso_now() -> str:
    micros = time.time_ns() // 1000
    whole = micros // 1_000_000
    cached = _second[0]
    if whole != cached[0]:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _second[0] = cached
    return "%s.%06dZ" % (cached[1], micros % 1_000_000)  # noqa: UP031 - faster than format


def merge_contextvars(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """:func:`structlog.contextvars.merge_contextvars`, reading structlog's variables directly.

    structlog's version scans every variable of the context on each line; this one looks only
    at the variables structlog created (one per key ever bound).
    """
    known = _CONTEXT_VARS
    if known is None:  # pragma: no cover - structlog's internals changed: use its own version
        return structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
    for name, var in tuple(known.items()):
        value = var.get(Ellipsis)
        if value is not Ellipsis:
            event_dict.setdefault(name[_PREFIX_LEN:], value)
    return event_dict


def add_standard_fields(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """A structlog processor adding every prodkit line's fields in one step.

    ``logger`` (the name given to ``get_logger``), ``level``, ``timestamp`` (ISO 8601, UTC,
    microseconds), ``pid``, ``hostname`` and, during a request, ``request_id`` and ``trace_id``.
    """
    if "logger" not in event_dict:
        name = getattr(logger, "name", None)
        if name:
            event_dict["logger"] = name
    event_dict["level"] = "error" if method_name == "exception" else method_name
    event_dict["timestamp"] = _iso_now()
    event_dict["pid"] = _process[0]
    event_dict["hostname"] = _HOSTNAME
    if "request_id" not in event_dict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict["request_id"] = request_id
    if "trace_id" not in event_dict:
        trace_id = get_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


def _only_with_exceptions(renderer: Processor) -> Processor:
    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        if "exc_info" in event_dict:
            return renderer(logger, method_name, event_dict)
        return event_dict

    return render


class _NamedWriteLoggerFactory:
    """structlog's ``WriteLoggerFactory``, keeping ``get_logger(name)``'s name for the lines."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        logger = structlog.WriteLogger(self._file)
        logger.name = args[0] if args and isinstance(args[0], str) else None  # type: ignore[attr-defined]
        return logger


def _drop_color_message(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # uvicorn attaches a second, ANSI-coloured copy of its message to every record.
    event_dict.pop("color_message", None)
    return event_dict


def _json_fallback(obj: Any) -> Any:
    # What structlog's JSONRenderer does with objects JSON cannot hold.
    method = getattr(obj, "__structlog__", None)
    return method() if method is not None else repr(obj)


class JSONRenderer:
    """Render an event as one compact JSON line (orjson when installed, else :mod:`json`).

    Objects JSON cannot hold are rendered by their ``__structlog__()`` or ``repr()``, as with
    :class:`structlog.processors.JSONRenderer`.
    """

    def __init__(self) -> None:
        try:
            import orjson
        except ImportError:  # pragma: no cover - orjson is optional
            self._orjson: Any = None
        else:
            self._orjson = orjson.dumps

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        if self._orjson is not None:
            try:
                return str(self._orjson(event_dict, default=_json_fallback).decode())
            except TypeError:  # non-string keys, integers beyond 64 bits: let json decide
                pass
        return json.dumps(event_dict, default=_json_fallback, separators=(",", ":"))


def parse_level(level: str | int) -> int:
    """Return the :mod:`logging` level number for a name (``"info"``) or number."""
    if isinstance(level, int):
        return level
    text = level.strip().lower()
    if text.isdigit():
        return int(text)
    if text not in _LEVELS:
        raise ConfigurationError(
            f"log level {level!r} is unknown; use debug, info, warning, error or critical"
        )
    return _LEVELS[text]


def shared_processors(
    redactor: Redactor | None = None, extra: Sequence[Processor] = ()
) -> list[Processor]:
    """The processors every line goes through before rendering, structlog's and stdlib's alike.

    Context-local values, :func:`add_standard_fields`, the ``extra`` processors, then the
    ``redactor`` last, so that it also sees what the extra processors added.
    """
    chain: list[Processor] = [merge_contextvars, add_standard_fields, *extra]
    if redactor is not None:
        chain.append(redactor)
    return chain


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
    as structured tracebacks (JSON) or plain text (console), never with local variables.
    Standard-library records (uvicorn, asyncpg, your own ``logging`` calls) are rendered by the
    same processors through the root logger. Calling it again replaces the earlier setup.

    Arguments:
        level: minimum level (name or number); default ``$LOG_LEVEL`` or ``info``.
        format: ``"json"`` or ``"console"``; default ``$LOG_FORMAT`` or ``json``.
        stream: where lines go (default ``sys.stdout``).
        redact: install :class:`Redactor` (default on), or pass a configured one.
        processors: extra processors, run after the standard ones and before redaction.
        uvicorn_access_log: keep uvicorn's own access log (off by default:
            :class:`~prodkit.logging.AccessLogMiddleware` writes a better one,
            and uvicorn's includes raw query strings).
        cache_loggers: structlog's ``cache_logger_on_first_use`` (faster; loggers keep the
            configuration they first saw).
    """
    level_value = parse_level(level if level is not None else os.environ.get("LOG_LEVEL", "info"))
    chosen = (format or os.environ.get("LOG_FORMAT") or "json").strip().lower()
    if chosen not in ("json", "console"):
        raise ConfigurationError(f"log format {chosen!r} is unknown; use 'json' or 'console'")
    output = stream if stream is not None else sys.stdout
    redactor = redact if isinstance(redact, Redactor) else (Redactor() if redact else None)

    shared = shared_processors(redactor, processors)
    renderer: Processor
    if chosen == "json":
        exceptions: list[Processor] = [
            _only_with_exceptions(
                structlog.processors.ExceptionRenderer(
                    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                )
            )
        ]
        renderer = JSONRenderer()
    else:
        exceptions = []
        renderer = structlog.dev.ConsoleRenderer(
            colors=output.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )

    chain = [*shared, *exceptions, renderer]
    installation = _Installation(
        chain,
        structlog.make_filtering_bound_logger(level_value),
        _NamedWriteLoggerFactory(output),
        level_value,
    )
    structlog.configure(
        processors=chain,
        wrapper_class=installation.wrapper,
        context_class=dict,
        logger_factory=installation.factory,
        cache_logger_on_first_use=cache_loggers,
    )
    while len(_INSTALLATIONS) >= 8:
        del _INSTALLATIONS[next(iter(_INSTALLATIONS))]
    _INSTALLATIONS[id(chain)] = installation

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, _drop_color_message, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exceptions,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_FLAG, False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level_value)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "hypercorn.error"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
        named.setLevel(logging.NOTSET)
    if not uvicorn_access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.CRITICAL + 1)
        logging.getLogger("hypercorn.access").setLevel(logging.CRITICAL + 1)


#: structlog's live configuration (private to structlog; None if that ever changes).
_STRUCTLOG_CONFIG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)


class _Installation:
    """What one :func:`configure_logging` call gave structlog, to recognise it later."""

    __slots__ = ("contents", "factory", "level", "processors", "wrapper", "writers")

    def __init__(self, processors: list[Processor], wrapper: Any, factory: Any, level: int) -> None:
        self.processors = processors
        self.contents = tuple(processors)
        self.wrapper = wrapper
        self.factory = factory
        self.level = level
        self.writers: dict[tuple[str, str], DirectWriter | bool] = {}

    def current(self, config: Any) -> bool:
        # structlog.configure() swaps these objects; capture_logs() edits the list in place.
        processors = self.processors
        return (
            config.default_processors is processors
            and config.default_wrapper_class is self.wrapper
            and config.logger_factory is self.factory
            and len(processors) == len(self.contents)
            and processors[-1] is self.contents[-1]
            and processors[0] is self.contents[0]
        )

    def writer(self, name: str, level: str) -> DirectWriter | bool:
        if _LEVELS[level] < self.level:
            return False  # what the filtering bound logger would drop
        logger = self.factory(name)
        processors = self.contents

        def write(event: str, fields: dict[str, Any]) -> None:
            fields["event"] = event
            line: Any = fields
            for processor in processors:
                line = processor(logger, level, line)
            logger.msg(line)

        return write


#: Recent configure_logging() installations by the id of their processors list (kept alive).
_INSTALLATIONS: dict[int, _Installation] = {}


DirectWriter = Callable[[str, dict[str, Any]], None]


def _direct_writer(name: str, level: str) -> DirectWriter | bool:
    """How to write an event of ``level`` from ``get_logger(name)`` without a bound logger.

    Only while the structlog configuration is one that :func:`configure_logging` installed
    (not replaced, not captured by ``capture_logs``) is there such a way: a function
    ``write(event, fields)`` that puts ``fields`` and ``event`` through the configured
    processors and writes the line exactly as ``get_logger(name).<level>(event, **fields)``
    would, minus structlog's per-call wrapper (a context copy and keyword repacking, which
    cost about as much as the processors). ``fields`` is consumed. Otherwise this returns
    ``True`` (log the usual way), or ``False`` when that configuration filters ``level`` out.
    """
    config = _STRUCTLOG_CONFIG
    if config is None:  # pragma: no cover - structlog's internals changed
        return True
    installation = _INSTALLATIONS.get(id(config.default_processors))
    if installation is None or not installation.current(config):
        return True
    found = installation.writers.get((name, level))
    if found is None:
        found = installation.writers[(name, level)] = installation.writer(name, level)
    return found


def get_logger(name: str, **initial_values: Any) -> Any:
    """Return a structlog logger whose lines carry ``logger=name`` (like a stdlib logger's)."""
    return structlog.get_logger(name, **initial_values)


def snapshot_contextvars() -> MutableMapping[Any, Any]:
    """Capture structlog's context-local values, to be put back by :func:`restore_contextvars`."""
    return {var: var.get() for var in _structlog_vars()}


def restore_contextvars(snapshot: MutableMapping[Any, Any]) -> None:
    """Undo every :func:`structlog.contextvars.bind_contextvars` since ``snapshot`` was taken.

    Keys bound since are unbound, changed keys get their old value back: what a request handler
    binds never leaks into the next request handled in the same context.
    """
    for var in _structlog_vars():
        old = snapshot.get(var, Ellipsis)
        if var.get() is not old:
            var.set(old)


def _structlog_vars() -> Iterable[Any]:
    # structlog keeps one ContextVar per key in this module-level dict; its values are read
    # directly because get_contextvars() scans the whole context twice per request.
    if _CONTEXT_VARS is not None:
        return tuple(_CONTEXT_VARS.values())
    import contextvars  # pragma: no cover - fallback if structlog's internals change

    return tuple(  # pragma: no cover
        var
        for var in contextvars.copy_context()
        if var.name.startswith(structlog.contextvars.STRUCTLOG_KEY_PREFIX)
    )


__all__ = [
    "DEFAULT_REDACT_HEADERS",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_QUERY_PARAMS",
    "REDACTED",
    "JSONRenderer",
    "LogFormat",
    "Redactor",
    "add_process_info",
    "add_request_context",
    "add_standard_fields",
    "configure_logging",
    "get_logger",
    "merge_contextvars",
    "parse_level",
    "restore_contextvars",
    "shared_processors",
    "snapshot_contextvars",
]
