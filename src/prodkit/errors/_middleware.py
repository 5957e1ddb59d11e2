"""Unhandled exceptions and :class:`~prodkit.Problem` become RFC 9457 problem+json responses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from prodkit._core import options as valid
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit._core.observer import ReceiveWatcher, ResponseObserver
from prodkit._core.options import build_options
from prodkit._core.problems import (
    Problem,
    fallback_problem,
    render_problem,
    send_problem,
    send_problem_body,
)
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.errors._convert import body_kind, convert, header, is_problem

INTERNAL_ERROR = "INTERNAL_ERROR"
#: The code of the 503 answering an exception that means a dependency is unavailable.
DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
_SERVER_ERROR_DETAIL = "The server could not complete the request."
#: How far ``__cause__`` links are followed to find an unavailable dependency.
_MAX_CAUSES = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorOptions:
    """The options of :class:`ErrorMiddleware`, checked when made.

    Attributes:
        replace_server_errors: replace non-problem 500 responses by a problem (default
            ``True``).
        convert_framework_errors: convert the framework's other 4xx/5xx error responses into
            problems (default ``True``: one error shape whatever answered).
        hold_limit: bytes of an error response body held back for replacement or conversion
            (default ``65536``, 64 KiB).
        unavailable: exception classes that mean a dependency (a database, a cache, another
            service) is unavailable, besides :class:`~prodkit.BackendError` which always does:
            a driver's connection and timeout errors, ``OSError``, ``TimeoutError``. prodkit
            imports no driver; pass its classes. Kept as a tuple.
        unavailable_retry_after: ``Retry-After`` seconds of the 503, 1 to 60 (default ``2``).
        logger: a structlog logger (default: structlog's ``prodkit.errors`` logger).

    Raises:
        ConfigurationError: a negative ``hold_limit``, ``unavailable`` not a list of exception
            classes, or ``unavailable_retry_after`` not whole seconds from 1 to 60.
    """

    replace_server_errors: bool = True
    convert_framework_errors: bool = True
    hold_limit: int = 64 * 1024
    unavailable: Iterable[type[BaseException]] = ()
    unavailable_retry_after: int = 2
    logger: Any | None = None

    def __post_init__(self) -> None:
        valid.non_negative_int("hold_limit", self.hold_limit, example=65536)
        valid.positive_int(
            "unavailable_retry_after", self.unavailable_retry_after, example=2, maximum=60
        )
        object.__setattr__(self, "unavailable", _exception_classes(self.unavailable))


def _exception_classes(value: object) -> tuple[type[BaseException], ...]:
    """``unavailable`` as a tuple of exception classes, or a ``ConfigurationError``."""
    if isinstance(value, type):
        raise ConfigurationError(
            f"unavailable={value.__name__}: one class, not a list of exception classes; "
            f"write unavailable=[{value.__name__}]"
        )
    kinds = tuple(value) if isinstance(value, Iterable) else (value,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ConfigurationError(
                f"unavailable={list(kinds)!r}: {kind!r} is not an exception class; write "
                "classes such as unavailable=[OSError, TimeoutError]"
            )
    return kinds


class ErrorKeywords(TypedDict, total=False):
    """:class:`ErrorOptions`'s fields as keywords of :class:`ErrorMiddleware`."""

    replace_server_errors: bool
    convert_framework_errors: bool
    hold_limit: int
    unavailable: Iterable[type[BaseException]]
    unavailable_retry_after: int
    logger: Any | None


class ErrorMiddleware:
    """Answer unhandled exceptions with a 500 problem and raised :class:`Problem` with itself.

    * An exception that means a dependency is unavailable (an instance of one of the
      ``unavailable`` classes or of prodkit's :class:`~prodkit.BackendError`, raised itself, as
      the explicit cause — ``raise ... from`` — of what was raised, or as every member of an
      exception group) is answered with a 503 problem, code ``DEPENDENCY_UNAVAILABLE``, and
      ``Retry-After: unavailable_retry_after``. It is logged as a warning
      (``dependency unavailable``, with the exception's type, no traceback): the outage is
      not a bug in the code, and a traceback per request would bury the lines that are.
    * No stack trace or exception text reaches the client; the body has ``code``
      ``INTERNAL_ERROR`` and the ``request_id`` to quote to support.
    * The exception is logged once (``unhandled exception``, with the traceback) through
      structlog, and not re-raised, so the server does not log it a second time.
    * A client that disconnected before the response started is not a server error: the
      exception the app raised about it is logged at info level and nothing is sent (outer
      metrics and logs record 499).
    * If the response had already started, nothing more can be sent: the exception is logged
      and re-raised so that the server aborts the connection and the client sees a truncated
      response rather than a complete-looking one.
    * The error path cannot fail: a :class:`Problem` whose members or headers cannot be
      rendered is answered with a minimal problem of the same status and code (and logged).
    * Frameworks that catch exceptions themselves and answer a plain 500 (Starlette's
      ``ServerErrorMiddleware``, Litestar's default handler) are covered too: a 500 response
      that is not already problem+json is held back (up to ``hold_limit`` bytes) and replaced.
    * A framework's own answer to any other error (404 for an unknown route, 405, a failed
      validation, an ``HTTPException``) becomes a problem with the same status, a ``code``
      derived from it, the framework's detail when it is text, its validation errors as
      ``errors[].pointer`` and the ``request_id``. Plain text and HTML are always converted;
      JSON only when it is exactly FastAPI's ``{"detail": ...}`` or Litestar's
      ``{"status_code", "detail", "extra"}`` shape, so JSON the app wrote in a shape of its
      own passes as it is. Headers are kept but those describing the replaced body. Only
      4xx/5xx responses are read (up to ``hold_limit`` bytes; a larger body passes as it is);
      responses to ``HEAD`` have no body to convert and pass too.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.routing import Route

        from prodkit import ErrorMiddleware, Problem

        async def fund(request):
            raise Problem(404, "FUND_NOT_FOUND", "No fund 7 for this user.")

        async def report(request):
            raise RuntimeError("ledger out of balance")  # a bug: logged with its traceback

        app = ErrorMiddleware(Starlette(routes=[Route("/funds/7", fund), Route("/report", report)]))

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                missing = await client.get("/funds/7")
                failed = await client.get("/report")
            assert missing.status_code == 404 and missing.json()["code"] == "FUND_NOT_FOUND"
            assert failed.status_code == 500 and failed.json()["code"] == "INTERNAL_ERROR"
            assert failed.headers["Content-Type"] == "application/problem+json"
            assert "ledger" not in failed.text  # no exception text reaches the client

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`ErrorOptions`'s fields by name, instead of ``options``:
            ``ErrorMiddleware(app, unavailable=[OSError])``.

    Raises:
        ConfigurationError: an invalid option (see :class:`ErrorOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: ErrorOptions | None = None,
        **keywords: Unpack[ErrorKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(ErrorOptions, options, keywords)
        self.replace_server_errors = options.replace_server_errors
        self.convert_framework_errors = options.convert_framework_errors
        self.hold_limit = options.hold_limit
        self.unavailable: tuple[type[BaseException], ...] = (BackendError, *options.unavailable)
        self.unavailable_retry_after = retry_after = options.unavailable_retry_after
        self._unavailable_headers = {"Retry-After": str(retry_after)}
        self._unavailable_detail = (
            f"A service this request depends on is unavailable; retry in {retry_after} s."
        )
        self.logger = safe_logger("prodkit.errors", options.logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        responder = _Responder(
            send,
            self.replace_server_errors,
            # A response to HEAD has no body: there is nothing to read or to convert.
            self.convert_framework_errors and scope.get("method") != "HEAD",
            self.hold_limit,
        )
        watcher = ReceiveWatcher.shared(receive)
        try:
            await self.app(scope, watcher, responder)
        except Problem as problem:
            if responder.started:
                _log(self.logger.error, "exception after the response started", scope, problem)
                raise
            await _send_problem(send, problem, self.logger)
            return
        except Exception as exc:
            if watcher.disconnected and not responder.started:
                # The client went away mid-request and the app gave up reading (Starlette's
                # ClientDisconnect, say): nobody is left to answer, and it is not a server
                # error. Outer layers record the request as 499 (client closed request).
                _log(self.logger.info, "client disconnected before the response", scope, exc)
                return
            if not responder.started and _caused_by(exc, self.unavailable):
                await self._send_unavailable(send, scope, exc)
                return
            request_state(scope).error = exc  # for the access log and metrics outside
            _log(self.logger.exception, "unhandled exception", scope, exc)
            if responder.started:
                raise
            await send_problem(send, 500, INTERNAL_ERROR, _SERVER_ERROR_DETAIL)
            return
        if responder.converting:
            # The app returned before the end of an error body it was sending: as sent.
            await responder.flush()
        elif responder.held:
            # The framework answered a plain 500 itself: keep the contract that every server
            # error is a problem. Frameworks that swallow the exception (Litestar) send that 500
            # while handling it, so the responder saw it; log it here, once, as if raised.
            error = responder.exception
            if error is not None and _caused_by(error, self.unavailable):
                await self._send_unavailable(send, scope, error)
                return
            if error is not None:
                request_state(scope).error = error
                _log(self.logger.error, "unhandled exception", scope, error, exc_info=error)
            await send_problem(send, 500, INTERNAL_ERROR, _SERVER_ERROR_DETAIL)

    async def _send_unavailable(self, send: Send, scope: Scope, exc: BaseException) -> None:
        # Not left on the scope for the access log: like any 503 prodkit answers, this is an
        # expected outcome, logged at the level of its status rather than as an error.
        _log(self.logger.warning, "dependency unavailable", scope, exc, error=_text(exc))
        await send_problem(
            send,
            503,
            DEPENDENCY_UNAVAILABLE,
            self._unavailable_detail,
            headers=self._unavailable_headers,
        )


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` means a dependency is unavailable: it is one of ``kinds``, was raised
    from one (``__cause__``, never the implicit ``__context__``: a bug in an ``except`` block
    stays a bug), or is an exception group whose every member is."""
    error: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if error is None:
            return False
        if isinstance(error, kinds):
            return True
        if isinstance(error, BaseExceptionGroup):
            return all(_caused_by(member, kinds) for member in error.exceptions)
        error = error.__cause__
    return False


def _text(exc: BaseException) -> str:
    """The exception's message, bounded: a driver's text can be long."""
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"


async def _send_problem(send: Send, problem: Problem, logger: Any) -> None:
    """Send ``problem``, or a minimal problem if it cannot be rendered: the error path cannot fail.

    A problem that cannot be rendered (members JSON cannot carry, a header that is not
    Latin-1 text) is a bug in the code that raised it, so it is logged with the reason; the
    client still gets a problem+json body with the status, code and request id.
    """
    try:
        status, body, headers = render_problem(problem)
    except Exception as exc:
        logger.error(
            "problem could not be rendered",
            code=str(problem.code),
            exc_type=type(exc).__name__,
        )
        status, body, headers = fallback_problem(problem.status, problem.code)
    await send_problem_body(send, status, body, headers)


def _log(
    log: Callable[..., Any], event: str, scope: Scope, exc: BaseException, **extra: Any
) -> None:
    """Log ``event`` about ``exc`` with the request's method and path, through ``log``."""
    log(
        event,
        method=scope.get("method"),
        path=scope.get("path"),
        exc_type=type(exc).__name__,
        **extra,
    )


class _Responder(ResponseObserver):
    """One request's way out: sends the app's messages on, or holds back an error response.

    An observer (:class:`~prodkit.asgi.ResponseObserver`) that the layers inside hook into
    like any other: their start hooks run on the app's response start as it arrives, before
    it is held. It records the start (``status``), not the body. ``started`` says whether a
    response start reached the client (after which nothing of our own may be sent). ``held``
    is an error response kept back: a non-problem 500, to be replaced once the app returns
    (``exception`` is the one being handled when it was sent, if any), or another 4xx/5xx
    being ``converting``, rewritten when its last body part arrives. Success responses go
    straight through: one status comparison per response.
    """

    __slots__ = (
        "convert",
        "converting",
        "exception",
        "held",
        "held_bytes",
        "hold_limit",
        "kind",
        "replace",
    )

    def __init__(self, send: Send, replace: bool, convert: bool, hold_limit: int) -> None:
        # Only what an observer needs to take start hooks and record the start: the body is
        # not recorded here (ResponseObserver.__init__ would set that up too, per request).
        self._send = send
        self._hooks = None
        self.status = None
        self.headers = []
        self.started = False
        self.replace = replace
        self.convert = convert
        self.hold_limit = hold_limit
        self.converting = False
        self.kind = ""
        self.held: list[Message] = []
        self.held_bytes = 0
        self.exception: BaseException | None = None

    async def __call__(self, message: Message) -> None:
        held = self.held
        if held:
            held.append(message)
            self.held_bytes += len(message.get("body", b""))
            if self.held_bytes > self.hold_limit:
                await self.flush()
            elif self.converting:
                if message["type"] != "http.response.body":
                    await self.flush()  # a file to send, say: not a body that can be read
                elif not message.get("more_body", False):
                    await self._convert()
            return
        if message["type"] == "http.response.start":
            # take_start(), inlined: the inner layers' hooks, before anything is held.
            hooks = self._hooks
            if hooks is not None:
                for hook in hooks:
                    hook(message)
            self.status = message["status"]
            if self.status >= 400 and self._hold(message):
                held.append(message)
                return
            self.started = True
        await self._send(message)

    def _hold(self, message: Message) -> bool:
        """Whether the error response ``message`` starts is to be held back, and why."""
        status = message["status"]
        headers = message.get("headers") or ()
        content_type = header(headers, b"content-type")
        if status == 500:
            if self.replace and not is_problem(content_type):
                self.exception = sys.exception()
                return True
            return False
        if not self.convert or status > 599 or message.get("trailers"):
            return False
        kind = body_kind(content_type)
        if kind is None:
            return False
        encoding = header(headers, b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return False  # a compressed body cannot be read here
        length = header(headers, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.hold_limit):
            return False
        self.kind = kind
        self.converting = True
        return True

    async def _convert(self) -> None:
        """Send the held error response as a problem, or as it is if it is the app's own."""
        start, *parts = self.held
        body = b"".join(part.get("body", b"") for part in parts)
        problem = convert(start["status"], start.get("headers") or (), body, self.kind)
        if problem is None:
            await self.flush()
            return
        headers, encoded = problem
        self.held.clear()
        self.converting = False
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": start["status"], "headers": headers}
        )
        await self._send({"type": "http.response.body", "body": encoded, "more_body": False})

    async def flush(self) -> None:
        """Send what was held back as it is: too large, unreadable, or the app's own."""
        self.started = True
        self.converting = False
        messages = self.held[:]
        self.held.clear()
        for message in messages:
            await self._send(message)


__all__ = [
    "DEPENDENCY_UNAVAILABLE",
    "INTERNAL_ERROR",
    "ErrorKeywords",
    "ErrorMiddleware",
    "ErrorOptions",
]
