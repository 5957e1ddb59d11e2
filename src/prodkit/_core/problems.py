"""RFC 9457 problem details: the exception apps raise, and the renderer every prodkit part uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prodkit._core.context import get_request_id
from prodkit._core.exceptions import ProdkitError
from prodkit._core.types import RawHeaders, Send

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: Prefix of the ``type`` URI of every problem prodkit generates; the code follows in kebab case.
#: A URN is used because a problem type must be stable and need not be dereferenceable
#: (RFC 9457 section 3.1.1); the codes are documented in ``docs/errors.md``.
PROBLEM_TYPE_PREFIX = "urn:prodkit:problem:"


def problem_type(code: str) -> str:
    """Return the stable ``type`` URI for a prodkit problem ``code`` (``RATE_LIMITED`` → ``…:rate-limited``)."""
    return PROBLEM_TYPE_PREFIX + code.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation error: where (an RFC 6901 JSON pointer into the request) and what."""

    pointer: str
    detail: str


class Problem(ProdkitError):
    """Raise this from an app (or a prodkit middleware) to answer with a problem+json response.

    :class:`~prodkit.ErrorMiddleware` renders it; it can also be rendered directly with :meth:`send`.

    Arguments:
        status: the HTTP status code, repeated as the ``status`` member.
        code: a stable UPPER_SNAKE identifier clients can switch on (listed in ``docs/errors.md``).
        detail: a human-readable explanation specific to this occurrence.
        title: a short summary of the problem type (default: the status's reason phrase).
        type: the problem type URI (default: :func:`problem_type` of ``code``).
        errors: validation errors, rendered as ``errors: [{"pointer", "detail"}]``.
        headers: extra response headers, e.g. ``{"Retry-After": "3"}``.
        extensions: further members added to the body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str | None = None,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.type = type
        self.errors = list(errors or ())
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The problem's JSON members, with ``request_id`` (defaults to the current request's)."""
        return problem_dict(
            self.status,
            self.code,
            self.detail,
            title=self.title,
            type=self.type,
            errors=self.errors,
            extensions=self.extensions,
            request_id=request_id,
        )

    async def send(self, send: Send, *, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Send this problem as a complete ASGI response.

        Rendering cannot fail the response: if the members or headers cannot be rendered (a
        value JSON cannot carry, a header that is not Latin-1), a minimal problem with the same
        status and code is sent instead (:func:`fallback_problem`).
        """
        headers = list(headers)
        try:
            status, body, raw = render_problem(self, headers)
        except Exception:
            status, body, raw = fallback_problem(self.status, self.code)
        await send_problem_body(send, status, body, raw)


def problem_dict(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    type: str | None = None,
    errors: Sequence[FieldError] = (),
    extensions: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Build the members of a problem object (RFC 9457) with prodkit's ``code`` and ``request_id``."""
    if title is None:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
    body: dict[str, Any] = {
        "type": type or problem_type(code),
        "title": title,
        "status": status,
        "detail": detail if detail is not None else title,
        "code": code,
    }
    if errors:
        body["errors"] = [{"pointer": e.pointer, "detail": e.detail} for e in errors]
    if extensions:
        for key, value in extensions.items():
            body.setdefault(key, value)
    body["request_id"] = request_id if request_id is not None else get_request_id()
    return body


def encode_problem(body: Mapping[str, Any]) -> bytes:
    """Serialise problem members as compact UTF-8 JSON.

    Text that UTF-8 cannot carry (a lone surrogate from a client's JSON, quoted back in a
    pointer) is written as ``\\uXXXX`` escapes instead, so the body is still valid JSON that
    names the same characters. Values JSON has no form for (``NaN``, arbitrary objects) raise
    ``ValueError`` or ``TypeError``; :meth:`Problem.send` and :func:`send_problem` then fall back
    to :func:`fallback_problem`.
    """
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("ascii")


#: A header name or value that could split or end the header block (RFC 9110 section 5.5).
_UNSAFE_HEADER = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
_FALLBACK_DETAIL = "The problem could not be rendered in full."


def render_problem(
    problem: Problem, headers: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[int, bytes, RawHeaders]:
    """The status, encoded body and headers of ``problem``; raises if any part cannot be sent.

    ``headers`` are added after the problem's own. Header names and values must be Latin-1
    text without control characters (``ValueError`` otherwise), so that nothing a problem
    carries can split the response's header block.
    """
    raw: RawHeaders = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()
    ]
    raw.extend(headers)
    for name, value in raw:
        if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value):
            raise ValueError(f"problem header {name!r} carries a control character")
    return problem.status, encode_problem(problem.to_dict()), raw


def fallback_problem(status: Any, code: Any) -> tuple[int, bytes, RawHeaders]:
    """A minimal problem that cannot fail to render: for when the real one could not be.

    It keeps ``status`` when it is a 4xx or 5xx and ``code`` when it is an UPPER_SNAKE string
    (else 500 and ``INTERNAL_ERROR``), and carries the current request's ``request_id``; every
    member is plain ASCII JSON. Returns the status, the body and no extra headers.
    """
    if not (type(status) is int and 400 <= status <= 599):
        status = 500
    if not (type(code) is str and _CODE.match(code)):
        code = "INTERNAL_ERROR"
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    request_id = get_request_id()
    body = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": _FALLBACK_DETAIL,
        "code": code,
        "request_id": request_id if type(request_id) is str else None,
    }
    return status, json.dumps(body, separators=(",", ":")).encode("ascii"), []


async def send_problem_body(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send an already encoded problem body as a complete, uncacheable response."""
    raw: RawHeaders = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        # Generated errors describe one moment (a limit, a drain); no cache may keep them.
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> None:
    """Answer with a problem+json response: the one way prodkit middlewares reject a request.

    ``headers`` are added as given (``{"Retry-After": "3"}``); ``request_id`` is filled from the
    current request context. Like :meth:`Problem.send`, it falls back to a minimal problem if
    the members or headers cannot be rendered.
    """
    problem = Problem(
        status,
        code,
        detail,
        title=title,
        errors=errors,
        headers=headers,
        extensions=extensions,
    )
    await problem.send(send)


__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "FieldError",
    "Problem",
    "encode_problem",
    "fallback_problem",
    "problem_dict",
    "problem_type",
    "render_problem",
    "send_problem",
    "send_problem_body",
]
